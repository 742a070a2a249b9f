"""The authors' code of promptsrc, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.entry import AuthorsCode
from methods.promptsrc import PROMPTSRC_TEMPLATES

TEACHER_TEMPLATES = 4  # PromptSRC's teacher templates used here (of 60): see its note

ENTRY = AuthorsCode(
    "promptsrc",
    "muzairkhattak/PromptSRC",
    "trainers.promptsrc:PromptSRC",
    {
        "TRAINER": {
            "PROMPTSRC": {
                "N_CTX_TEXT": 4,
                "N_CTX_VISION": 4,
                "CTX_INIT": "a photo of a",
                "PREC": "fp32",
                "PROMPT_DEPTH_TEXT": 9,
                "PROMPT_DEPTH_VISION": 9,
                "TEXT_LOSS_WEIGHT": 25,
                "IMAGE_LOSS_WEIGHT": 10,
                "GPA_MEAN": 15,
                "GPA_STD": 1,
            }
        }
    },
    {
        "n_ctx_text": 4,
        "n_ctx_vision": 4,
        "prompt_depth_text": 9,
        "prompt_depth_vision": 9,
        "templates": PROMPTSRC_TEMPLATES[:TEACHER_TEMPLATES],
    },
    module_globals={"IMAGENET_TEMPLATES": list(PROMPTSRC_TEMPLATES[:TEACHER_TEMPLATES])},
    note=(
        f"the frozen text teacher averages the first {TEACHER_TEMPLATES} of the 60 templates on both sides "
        "(60 x K prompts at 77 positions take the authors' build ~20 min here; the teacher is computed "
        "once, before any timed step, so the times do not depend on it)"
    ),
)
