"""The authors' code of clip_lora, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.drivers import ClipLoraDriver
from benchmarks.vs_authors.entry import AuthorsCode

ENTRY = AuthorsCode(
    "clip_lora",
    "MaxZanella/CLIP-LoRA",
    "lora:run_lora",
    {
        "backbone": "ViT-B/16",
        "encoder": "both",
        "position": "all",
        "params": ["q", "k", "v"],
        "r": 2,
        "alpha": 1,
        "dropout_rate": 1e-9,
        "lr": 0.0,
        "n_iters": 1,
        "shots": 1,
        "eval_only": False,
        "save_path": None,
    },
    {
        "encoder": "both",
        "position": "all",
        "params": ["q", "k", "v"],
        "r": 2,
        "alpha": 1.0,
        "dropout_rate": 1e-9,
    },
    driver=ClipLoraDriver,
    gradients=tuple(
        (name, f"prompt_learner.{name}")
        for tower in ("visual.transformer", "transformer")
        for block in range(12)
        for projection in ("q_proj", "k_proj", "v_proj")
        for matrix in ("w_lora_A", "w_lora_B")
        for name in [f"{tower}.resblocks.{block}.attn.{projection}.{matrix}"]
    ),
    note=(
        "rank-2 adapters on q, k, v of every block of both towers, B drawn at random (theirs starts at zero); "
        "dropout 1e-9, which drops nothing in fp32 but takes their published dropout path (at 0.25 their "
        "text's 77 positions, ours cut after the last EOT, draw other masks; at exactly 0 their merge path's "
        "backward uses the un-adapted weight, PROTOCOL-successors-3 CLIP-LoRA 5); the authors' train step is "
        "run_lora with n_iters x shots = 1 (with its zero-shot "
        "classifier, one-image val and test preloads and final evaluation), their eval evaluate_lora"
    ),
)
