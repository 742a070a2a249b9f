"""The authors' code of tcp, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.entry import AuthorsCode

ENTRY = AuthorsCode(
    "tcp",
    "htyao89/Textual-based_Class-aware_prompt_tuning",
    "trainers.tcp:TCP",
    {
        "DATASET": {"NAME": "ImageNet"},
        "TRAINER": {
            "COOP": {
                "N_CTX": 4,
                "CTX_INIT": False,
                "CSC": False,
                "PREC": "fp32",
                "CLASS_TOKEN_POSITION": "end",
                "W": 1.0,
            },
            "COCOOP": {"PREC": "fp32"},
        },
    },
    {"n_ctx": 4, "dataset": "imagenet"},
    gradients=(
        ("ctx", "prompt_learner.ctx"),
        ("meta_net.linear1.weight", "prompt_learner.meta_net.linear1.weight"),
    ),
    note=(
        "their optimiser is Adam with eps 1e-3 by a hand edit of Dassl's optimizer.py (their README); at "
        "learning rate 0 the stubbed SGD stands in for it, its step costs nothing measurable either way; their "
        "meta-net and frozen text teacher in fp32 (COCOOP.PREC fp32, their .half() kept fp32), as ours in fp32"
    ),
)
