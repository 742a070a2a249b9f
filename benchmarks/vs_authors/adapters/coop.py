"""The authors' code of coop, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.entry import AuthorsCode, coop_floor

ENTRY = AuthorsCode(
    "coop",
    "KaiyangZhou/CoOp",
    "trainers.coop:CoOp",
    {
        "TRAINER": {
            "COOP": {
                "N_CTX": 4,
                "CTX_INIT": "a photo of a",
                "CSC": False,
                "PREC": "fp32",
                "CLASS_TOKEN_POSITION": "end",
            }
        }
    },
    {"n_ctx": 4, "ctx_init": "a photo of a"},
    floor=coop_floor,
)
