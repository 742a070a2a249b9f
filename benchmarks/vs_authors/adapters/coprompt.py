"""The authors' code of coprompt, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

import json
import os

from benchmarks.vs_authors.entry import AuthorsCode

# configs/trainers/coprompt.yaml (PROTOCOL-successors-3.md CoPrompt 1)
COPROMPT_CFG = {"N_CTX": 2, "CTX_INIT": "a photo of a", "PROMPT_DEPTH": 9}


def coprompt_descriptions(folder: str, classnames: list[str]) -> dict:
    """gpt_file/imagenet_prompt.json (DATASET.NAME ImageNet) with three sentences per class, for both sides."""
    table = {
        n.replace("_", " "): [f"a photo of a {n}, {w}." for w in ("seen up close", "far away", "at night")]
        for n in classnames
    }
    path = os.path.join(folder, "gpt_file", "imagenet_prompt.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(table, f)
    return {"descriptions": path}


ENTRY = AuthorsCode(
    "coprompt",
    "ShuvenduRoy/CoPrompt",
    "trainers.coprompt:CoPrompt",
    {
        "DATASET": {"NAME": "ImageNet"},
        "TRAINER": {"CoPrompt": {**COPROMPT_CFG, "PREC": "fp32"}, "W": 1.0, "DISTILL": "cosine"},
    },
    {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 9, "weight": 1.0, "distill": "cosine"},
    working_files=coprompt_descriptions,
    views=2,
    gradients=(
        ("prompt_learner.ctx", "prompt_learner.ctx"),
        ("prompt_learner.proj.weight", "prompt_learner.proj.weight"),
        ("prompt_learner.compound_prompts_text.7", "prompt_learner.compound_prompts_text.7"),
        (
            "prompt_learner.compound_prompt_projections.0.weight",
            "prompt_learner.compound_prompt_projections.0.weight",
        ),
        ("adapter_image.fc.0.weight", "adapter_image.fc.0.weight"),
        ("adapter_text.fc.2.weight", "adapter_text.fc.2.weight"),
    ),
    note=(
        "the train step on two views of the batch (the second its images rolled), Python's random seeded "
        "before each step on both sides (the drawn description); descriptions: three generated sentences per "
        "class; published in fp16, here fp32"
    ),
)
