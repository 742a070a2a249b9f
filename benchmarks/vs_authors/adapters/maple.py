"""The authors' code of maple, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.entry import AuthorsCode

ENTRY = AuthorsCode(
    "maple",
    "muzairkhattak/multimodal-prompt-learning",
    "trainers.maple:MaPLe",
    {"TRAINER": {"MAPLE": {"N_CTX": 2, "CTX_INIT": "a photo of a", "PREC": "fp32", "PROMPT_DEPTH": 9}}},
    {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 9},
)
