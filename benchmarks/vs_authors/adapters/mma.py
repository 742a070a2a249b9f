"""The authors' code of mma, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.entry import AuthorsCode, clear_eval_text_cache

# configs/trainers/MultiModalAdapter/vit_b16_ep5.yaml (PROTOCOL-successors-3.md MMA 1)
MMA_CFG = {
    "TEXT_CTX_INIT": "a photo of a",
    "ADAPTER_START": 5,
    "ADAPTER_END": 12,
    "ADAPTER_DIM": 32,
    "ADAPTER_SCALE": 0.001,
}

ENTRY = AuthorsCode(
    "mma",
    "ZjjConan/Multi-Modal-Adapter",
    "trainers.mmadapter:MultiModalAdapter",
    {"TRAINER": {"MMADAPTER": {**MMA_CFG, "PREC": "fp32"}}},
    {
        "template": "a photo of a {}.",
        "adapter_start": 5,
        "adapter_end": 12,
        "adapter_dim": 32,
        "adapter_scale": MMA_CFG["ADAPTER_SCALE"],
    },
    before_eval=clear_eval_text_cache,
    gradients=(
        ("text_adapter.5.down.0.weight", "prompt_learner.text_adapter.5.down.0.weight"),
        ("text_adapter.12.up.bias", "prompt_learner.text_adapter.12.up.bias"),
        ("visual_adapter.5.up.weight", "prompt_learner.visual_adapter.5.up.weight"),
        ("visual_adapter.12.down.0.weight", "prompt_learner.visual_adapter.12.down.0.weight"),
        ("shared_adapter.5.0.weight", "prompt_learner.shared_adapter.5.0.weight"),
        ("shared_adapter.12.0.bias", "prompt_learner.shared_adapter.12.0.bias"),
    ),
    note=(
        "the update compared on the adapters of the first and last blocks of both towers and the shared ones; "
        "their eval caches the text features at its first call (quirk 1): cleared before each of their "
        "evaluations; published in amp, which without CUDA runs fp32"
    ),
)
