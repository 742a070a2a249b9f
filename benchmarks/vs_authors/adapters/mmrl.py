"""The authors' code of mmrl, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.entry import AuthorsCode, clear_eval_text_cache

MMRL_REP_LAYERS = list(range(6, 13))  # configs/trainers/MMRL/vit_b16.yaml: 1-indexed blocks 6..12 of 12


def fused_logits(output):
    """MMRL's scored logits on base classes of base-to-new (TASK B2N, SUBSAMPLE_CLASSES base): the third of
    its ``CustomCLIP``'s (logits, logits_rep, logits_fusion, image features, text features), as its test() picks."""
    return output[2]


ENTRY = AuthorsCode(
    "mmrl",
    "yunncheng/MMRL",
    "trainers.mmrl:MMRL",
    {
        "DATASET": {"NAME": "ImageNet", "SUBSAMPLE_CLASSES": "base"},
        "TASK": "B2N",
        "TRAINER": {
            "MMRL": {
                "ALPHA": 0.7,
                "REG_WEIGHT": 0.5,  # trainers/config.py: ImageNet
                "REP_LAYERS": MMRL_REP_LAYERS,
                "REP_DIM": 512,
                "N_REP_TOKENS": 5,
                "PREC": "fp32",
            }
        },
    },
    {
        "n_rep_tokens": 5,
        "rep_dim": 512,
        "rep_layers": MMRL_REP_LAYERS,
        "alpha": 0.7,
        "reg_weight": 0.5,
        "task": "B2N",
        "subsample": "base",
        "dataset": "imagenet",
    },
    logits=fused_logits,
    before_eval=clear_eval_text_cache,
    gradients=(
        ("representation_learner.compound_rep_tokens", "prompt_learner.compound_rep_tokens"),
        ("image_encoder.proj_rep", "prompt_learner.proj_rep"),
    ),
    note=(
        "base-to-new, base classes (TASK B2N, SUBSAMPLE_CLASSES base: the fused logits scored); their eval "
        "caches the text features at its first call (quirk 1): cleared before each of their evaluations, so "
        "each encodes the text once, as ours does; their AdamW at learning rate 0 replaced by the stubbed SGD; "
        "published in amp, which without CUDA runs fp32"
    ),
)
