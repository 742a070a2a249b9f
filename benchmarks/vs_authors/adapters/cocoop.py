"""The authors' code of cocoop, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.entry import AuthorsCode, cocoop_floor

ENTRY = AuthorsCode(
    "cocoop",
    "KaiyangZhou/CoOp",
    "trainers.cocoop:CoCoOp",
    {"TRAINER": {"COCOOP": {"N_CTX": 4, "CTX_INIT": "a photo of a", "PREC": "fp32"}}},
    {"n_ctx": 4, "ctx_init": "a photo of a"},
    floor=cocoop_floor,
    eval_loops_over_images=True,  # trainers/cocoop.py, CustomCLIP.forward
)
