"""The authors' code of coop_dept, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.entry import AuthorsCode

ENTRY = AuthorsCode(
    "coop_dept",
    "Koorye/DePT",
    "trainers.elp_coop:ExtrasLinearProbeCoOp",
    {
        "DATASET": {"NAME": "ImageNet", "SUBSAMPLE_CLASSES": "base"},
        "TRAINER": {
            "COOP": {"N_CTX": 16, "CTX_INIT": "", "CSC": False, "PREC": "fp32", "CLASS_TOKEN_POSITION": "end"},
            "LINEAR_PROBE": {"TYPE": "linear", "WEIGHT": 0.7, "TEST_TIME_FUSION": True},
            "FILM": {"LINEAR_PROBE": True},
            "NAMES_TO_UPDATE": ["prompt_learner", "linear_probe", "film"],
        },
        # their own build_optimizer (trainers/optim.py) reads these (train.py:71-75, Dassl's defaults)
        "OPTIM": {
            "WEIGHT_DECAY": 5e-4,
            "MOMENTUM": 0.9,
            "SGD_DAMPNING": 0,
            "SGD_NESTEROV": False,
            "RMSPROP_ALPHA": 0.99,
            "ADAM_BETA1": 0.9,
            "ADAM_BETA2": 0.999,
            "STAGED_LR": True,
            "NEW_LAYERS": ["linear_probe", "film"],
            "BASE_LR_MULT": 1.0,
            "LR_EXP": 6.5,
        },
    },
    {"n_ctx": 16, "ctx_init": "", "cat_weight": 0.7, "subsample": "base", "dataset": "imagenet"},
    unused_imports=("plotnine",),
    gradients=(
        ("prompt_learner.ctx", "prompt_learner.ctx"),
        ("film_lp_text.scale", "film_lp_text.scale"),
        ("linear_probe_proj.weight", "linear_probe_proj.weight"),
    ),
    note=(
        "base-to-new, base classes (SUBSAMPLE_CLASSES base: the CAT head trained and fused into the scored "
        "logits); their own staged-lr SGD (trainers/optim.py) at learning rate 0; plotnine, imported by their "
        "trainers and never called, stubbed where missing"
    ),
)
