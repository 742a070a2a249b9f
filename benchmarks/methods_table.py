"""The README's methods table, made from the registry: one row per registered method.

    python -m benchmarks.methods_table        print it (``python -m benchmarks.readme methods`` writes it
                                              into README.md's methods block)

Each row: the method's name, its label and paper (``methods.method_info``), the code it follows, its trainable
parameters counted by the code on a random ViT-B/16-shaped CLIP with the options of its default config ("F + P
per class" where they grow with the classes); for the base-to-new study its published H (the 11-dataset
average in ``reports/paper/base2new.csv``) and its H in the demo's reference run
(``reports/demo-reference/``); for the few-shot study its published 16-shot accuracy (the ViT-B/16 11-dataset
average in ``reports/paper/fewshot.csv``) and its 16-shot accuracy in the few-shot demo's reference run
(``reports/demo-reference/fewshot/``). "–": nothing published; "`METHODS=`": a method of the study the
reference run did not include; "n/a": the study does not run the method (its YAML does not list it).
"""

from __future__ import annotations

import csv
import os

import torch

import methods
from clipcore import backbone
from harness.config import default_method_options

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PUBLISHED = os.path.join(ROOT, "reports", "paper", "base2new.csv")
PUBLISHED_FEWSHOT = os.path.join(ROOT, "reports", "paper", "fewshot.csv")
DEMO_TABLE1 = os.path.join(ROOT, "reports", "demo-reference", "table1_base2new.csv")
DEMO_FEWSHOT = os.path.join(ROOT, "reports", "demo-reference", "fewshot", "fewshot_16shot.csv")
#: the shot count and backbone of the few-shot columns (the published averages are ViT-B/16's)
FEWSHOT_SHOTS, FEWSHOT_BACKBONE = 16, "ViT-B/16"
BLOCK = "methods:table"
HEADER = (
    "| method | paper | code followed | trainable parameters, ViT-B/16 | published H | our demo H "
    "| published 16-shot | our demo 16-shot |\n| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |\n"
)
NOT_IN_DEMO = "`METHODS=`"
NOT_PUBLISHED = "–"
NOT_IN_STUDY = "n/a"


def published_h() -> dict[str, str]:
    with open(PUBLISHED, newline="") as f:
        return {r["method"]: r["h"] for r in csv.DictReader(f) if r["dataset"] == "average"}


def published_fewshot() -> dict[str, str]:
    with open(PUBLISHED_FEWSHOT, newline="") as f:
        return {
            r["method"]: f"{float(r['accuracy']):.2f}"
            for r in csv.DictReader(f)
            if r["dataset"] == "average" and r["backbone"] == FEWSHOT_BACKBONE and int(r["shots"]) == FEWSHOT_SHOTS
        }


def demo_average(path: str, metric: str) -> dict[str, str]:
    """{method: its Average cell as the reference report shows it} for one metric of one table."""
    with open(path, newline="") as f:
        return {r["method"]: r["shown"] for r in csv.DictReader(f) if r["row"] == "average" and r["metric"] == metric}


def demo_h() -> dict[str, str]:
    return demo_average(DEMO_TABLE1, "H")


def demo_fewshot() -> dict[str, str]:
    return demo_average(DEMO_FEWSHOT, "Accuracy")


def study_methods(experiment: str) -> set[str]:
    from harness import sweep

    return set(sweep.load_experiment(experiment)["methods"])


def cells(method: str, in_study: bool, published: dict, demo: dict) -> list[str]:
    """A study's two cells for a method: published and demo, or "n/a" twice if the study does not run it."""
    if not in_study:
        return [NOT_IN_STUDY, NOT_IN_STUDY]
    return [published.get(method, NOT_PUBLISHED), demo.get(method, NOT_IN_DEMO)]


def paper_cell(method: str) -> str:
    info = methods.method_info(method)
    return f"{info.label} ({info.citation})" if info.citation else info.label


def source_cell(method: str) -> str:
    return methods.method_info(method).source or NOT_PUBLISHED


def trainable_parameters(method: str, clip, classes: int = 2) -> int:
    """Counted for ``classes`` classes; a method that learns in ``fit`` (Tip-Adapter-F's cache keys, the linear
    probe) is fitted first, on random features of ``FEWSHOT_SHOTS`` pictures per class: what it learns grows
    with the pictures it is given."""
    torch.manual_seed(0)
    classnames = ["golden retriever", "tabby cat", "red fox", "barn owl"][:classes]
    model = methods.build_method(method, clip, classnames, **default_method_options(method))
    if type(model).fit is not methods.CLIPMethod.fit:
        labels = torch.arange(len(classnames)).repeat_interleave(FEWSHOT_SHOTS)
        features = torch.nn.functional.normalize(torch.randn(len(labels), backbone.embed_dim(clip)), dim=-1)
        model.fit(features, labels, features, labels, seed=1, shots=FEWSHOT_SHOTS)
    return model.num_trainable_parameters()


def parameters_cell(method: str, clip) -> str:
    """The count, or "F + P per class" where it grows with the classes (a head or a cache of one row per
    class): a count at two classes would pass for a method's whole size on a study of a hundred."""
    two, three = trainable_parameters(method, clip, 2), trainable_parameters(method, clip, 3)
    per_class = three - two
    if not per_class:
        return f"{two:,}"
    fixed = two - 2 * per_class
    return (f"{fixed:,} + " if fixed else "") + f"{per_class:,} per class"


def rows() -> list[list[str]]:
    """The table's rows, in the report's order of methods (their papers' years)."""
    from harness.report.tables import method_rank

    clip = backbone.freeze(backbone.build_random_clip("vit_b16"))
    base2new, fewshot = study_methods("base2new"), study_methods("fewshot")
    published, demo = published_h(), demo_h()
    published_k, demo_k = published_fewshot(), demo_fewshot()
    out = []
    for name in sorted(methods.list_methods(), key=method_rank):
        out.append(
            [
                f"`{name}`",
                paper_cell(name),
                source_cell(name),
                parameters_cell(name, clip),
                *cells(name, name in base2new, published, demo),
                *cells(name, name in fewshot, published_k, demo_k),
            ]
        )
    return out


def markdown() -> str:
    return HEADER + "".join("| " + " | ".join(row) + " |\n" for row in rows())


if __name__ == "__main__":
    print(markdown(), end="")
