"""The README's methods table, made from the registry: one row per registered method that has a
base-to-new result (not the linear probe, a classifier of its training classes: see the few-shot study).

    python -m benchmarks.methods_table        print it (``python -m benchmarks.readme methods`` writes it
                                              into README.md's methods block)

Each row: the method's name, its label and paper (``methods.method_info``), the code it follows,
its trainable parameters counted by the code on a random ViT-B/16-shaped CLIP with the options of its
default config, its published H (the 11-dataset average in ``reports/paper/base2new.csv``, "–" where
none is recorded) and its H in the demo's reference run (``reports/demo-reference/``; "`METHODS=`"
for a method the reference run did not include).
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
DEMO_TABLE1 = os.path.join(ROOT, "reports", "demo-reference", "table1_base2new.csv")
BLOCK = "methods:table"
HEADER = (
    "| method | paper | code followed | trainable parameters, ViT-B/16 | published H (11-dataset average) "
    "| our demo H |\n| --- | --- | --- | ---: | ---: | ---: |\n"
)
NOT_IN_DEMO = "`METHODS=`"
NOT_PUBLISHED = "–"


def published_h() -> dict[str, str]:
    with open(PUBLISHED, newline="") as f:
        return {r["method"]: r["h"] for r in csv.DictReader(f) if r["dataset"] == "average"}


def demo_h() -> dict[str, str]:
    with open(DEMO_TABLE1, newline="") as f:
        return {r["method"]: r["shown"] for r in csv.DictReader(f) if r["row"] == "average" and r["metric"] == "H"}


def paper_cell(method: str) -> str:
    info = methods.method_info(method)
    return f"{info.label} ({info.citation})" if info.citation else info.label


def source_cell(method: str) -> str:
    return methods.method_info(method).source or NOT_PUBLISHED


def trainable_parameters(method: str, clip) -> int:
    torch.manual_seed(0)
    return methods.build_method(
        method, clip, ["golden retriever", "tabby cat"], **default_method_options(method)
    ).num_trainable_parameters()


def rows() -> list[list[str]]:
    """The table's rows, in the report's order of methods (their papers' years)."""
    from harness.report.tables import method_rank

    clip = backbone.freeze(backbone.build_random_clip("vit_b16"))
    published, demo = published_h(), demo_h()
    out = []
    for name in sorted(methods.list_methods(), key=method_rank):
        if not methods.method_class(name).transfers_to_other_classes:
            continue  # no base-to-new H to show (the linear probe): the few-shot study's tables have it
        out.append(
            [
                f"`{name}`",
                paper_cell(name),
                source_cell(name),
                f"{trainable_parameters(name, clip):,}",
                published.get(name, NOT_PUBLISHED),
                demo.get(name, NOT_IN_DEMO),
            ]
        )
    return out


def markdown() -> str:
    return HEADER + "".join("| " + " | ".join(row) + " |\n" for row in rows())


if __name__ == "__main__":
    print(markdown(), end="")
