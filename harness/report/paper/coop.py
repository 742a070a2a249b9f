"""The CoOp paper's own pieces (Zhou et al., IJCV 2022): the order its few-shot figure (Figure 3) draws
the methods in, which the few-shot table and figure keep (``harness.report.fewshot``); methods the paper
does not show follow in the registry's order."""

from __future__ import annotations

from harness.report.tables import method_rank

FEWSHOT_ORDER = ("zsclip", "lpclip", "coop", "cocoop")


def fewshot_rank(method: str) -> tuple:
    """Sort key: the paper's methods in its order, then every other in the registry's."""
    return (FEWSHOT_ORDER.index(method), "") if method in FEWSHOT_ORDER else (len(FEWSHOT_ORDER), *method_rank(method))
