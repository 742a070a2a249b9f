"""The authors' code of kgcoop, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.entry import AuthorsCode

ENTRY = AuthorsCode(
    "kgcoop",
    "htyao89/KgCoOp",
    "trainers.kgcoop:KgCoOp",
    {
        "DATASET": {"NAME": "ImageNet"},
        "TRAINER": {
            "COOP": {
                "N_CTX": 4,
                "CTX_INIT": "a photo of a",
                "CSC": False,
                "PREC": "fp32",
                "CLASS_TOKEN_POSITION": "end",
                "W": 8.0,
            },
            "COCOOP": {"PREC": "fp32"},
        },
    },
    {"n_ctx": 4, "ctx_init": "a photo of a", "kg_weight": 8.0, "template": "a photo of a {}."},
    folder="KgCoOp",
)
