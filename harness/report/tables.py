"""The report's vocabulary: cells, tables, labels, records' fields and the published values.

A table is rows x column groups x metrics of :class:`Cell`s. A seed cell holds the mean and the
population standard deviation (ddof=0, PROTOCOL.md 14) over the expected seeds; H is computed from the
seed-averaged base and new (PROTOCOL.md 12.1). What goes into a cell, and how a cell or Average that
falls short is marked, is decided in one place: ``harness.report.gate``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from harness.data.registry import DATASETS

PAPER_DATASETS = (
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
)
CROSS_TARGETS = PAPER_DATASETS[1:]
DG_DATASETS = ("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r")
AVERAGE = "average"
BASE_NEW_H = [("base", "Base"), ("new", "New"), ("h", "H")]  # a base-to-new table's metrics
#: What the marks after a number mean (every rendering of a table says it).
MARKS = (
    "± population std over seeds (ddof=0); † fewer seeds than expected; ‡ average over fewer datasets than "
    "expected; § average over datasets run at different settings (no paper comparison for a marked average)"
)
# A record's settings run label, set when the report shows several of one family (harness.report.gate).
LABEL_FIELD = "_settings_label"

# Experiments that feed a table unless the caller says otherwise (see ``table_filter``).
FEWSHOT_EXPERIMENT = "fewshot"
OWN_EXPERIMENTS = ("crossdataset", "domaingen", "ablations", FEWSHOT_EXPERIMENT)
TABLE_KEYS = {
    "table1": "table1_base2new",
    "table2": "table2_crossdataset",
    "table3": "table3_domaingen",
    "table4": "table4_class_incremental",
    "table5": "table5_bigger_coop",
    "fig4a": "fig4a_init_ablation",
    "fig4b": "fig4b_length_ablation",
}
#: The tables (short keys; "fewshot" for every ``fewshot_<K>shot``) each study asks the report for, by the
#: experiment name its sweep writes into ``expected.json``: what the report may call missing.
STUDY_TABLES = {
    "crossdataset": ("table2",),
    "domaingen": ("table3",),
    "ablations": ("fig4a", "fig4b"),
    "bigger_coop": ("table5",),
    "fewshot": ("fewshot",),
}
#: A study of any other name is a base-to-new one (base2new.yaml's): Table 1 and its class-incremental Table 4.
BASE2NEW_TABLES = ("table1", "table4")


def short_key(table_key: str) -> str:
    """``table1_base2new`` -> ``table1``, ``fewshot_4shot`` -> ``fewshot``: the key ``STUDY_TABLES`` uses."""
    return table_key.split("_")[0]


def dataset_label(key: str) -> str:
    """The dataset's name as its registry entry prints it (``DatasetInfo.label``), else its key."""
    if key == AVERAGE:
        return "Average"
    info = DATASETS.get(key)  # as registered so far: a report does not load plugins to name a dataset
    return (info.label if info else "") or key


def method_info(method: str):
    """The registered method's own description (``methods.method_info``), or None for a method no longer
    registered (a plugin's, in an old results store): it is shown by its name."""
    import methods

    try:
        return methods.method_info(method)
    except methods.parts.registry.UnknownMethodError:
        return None


def _ctx_init_sets_n_ctx(method: str) -> bool:
    """Do the method's init words fix its context length (CoOp, CoCoOp, KgCoOp), or does it learn the
    first n_ctx tokens of them and keep the rest as words (MaPLe, PromptSRC: PROTOCOL-successors.md 3)?"""
    import methods

    return method_info(method) is not None and methods.method_class(method).ctx_init_sets_n_ctx


def config_name(method: str, config) -> str:
    """A method config's name where a study runs several configs of one method: ``coop/vit_b16_ep50``
    (records name configs with or without their method's folder; either gives the same name)."""
    config = str(config or method)
    return config if config.startswith(f"{method}/") else f"{method}/{config}"


def method_names(records: list[dict]) -> dict:
    """{id(record): its method's name in a study's comparison and efficiency table}: the method, or its
    config where the study ran several configs of the method on one dataset at one shot count (a config
    per shot count, CoOp's epochs, is still one method); the backbone and the settings run
    (``--all-variants``) added where they, too, tell two of its columns apart. Outside the few-shot study
    (whose shot counts are each their own table and comparison) the shot count is added where a method
    learned on one dataset at several: its 4-shot and 16-shot columns are two methods, never one."""
    seen: dict = {}
    for r in records:
        seen.setdefault((r["method"], r.get("dataset"), None if is_zero_shot(r) else r.get("shots")), []).append(r)
    several: dict = {}
    for (method, *_), recs in seen.items():
        for part in ("config", "backbone", LABEL_FIELD):
            if len({str(r.get(part)) for r in recs}) > 1:
                several.setdefault(method, set()).add(part)
    shot_counts: dict = {}
    for r in records:
        if not is_zero_shot(r) and r.get("experiment") != FEWSHOT_EXPERIMENT:
            shot_counts.setdefault((r["method"], r.get("dataset")), set()).add(r.get("shots"))
    for (method, _), counts in shot_counts.items():
        if len(counts) > 1:
            several.setdefault(method, set()).add("shots")
    names = {}
    for r in records:
        method, parts = r["method"], several.get(r["method"], set())
        name = method
        if "config" in parts:
            name = config_name(method, r.get("config"))
        extra = [str(r.get(p)) for p in ("backbone", LABEL_FIELD) if p in parts and r.get(p)]
        if "shots" in parts and not is_zero_shot(r):
            extra.insert(0, f"{r.get('shots')} shots")
        names[id(r)] = name + (f" ({', '.join(extra)})" if extra else "")
    return names


def method_label(method: str) -> str:
    info = method_info(method)
    return info.label if info else method


def method_rank(method: str) -> tuple:
    """Methods in the order of their papers' years (ties: registration order), unregistered ones last."""
    info = method_info(method)
    if info is None:
        return (1, 0, 0, method)
    return (0, info.year or 9999, info.order, method)


def harmonic(base: float | None, new: float | None) -> float | None:
    if base is None or new is None:
        return None
    return 0.0 if base + new == 0 else 2 * base * new / (base + new)


# ----------------------------------------------------------------------------------------------
# Cells and tables


@dataclass
class Cell:
    mean: float | None
    std: float | None = None
    n: int = 1  # seeds (or datasets, for an average) that went in
    expected: int = 1
    kind: str = "seeds"  # "seeds" | "derived" (H) | "average" | "count"
    note: str = ""  # the marker shown after the number, e.g. "†(2/3 seeds)"
    paper: float | None = None
    datasets: tuple = ()  # an Average's: the datasets it is over
    # A mark on what the number means beside others, not on what went into it (e.g. ≈ within the baseline's
    # noise): unlike ``note`` it neither makes the cell incomplete nor stops the paper comparison.
    flag: str = ""
    # Set by the gate when the cell shows a settings run other than the rest of its config's in the study (a
    # re-run, a ``--set`` on part of it): why, for a figure to mark the point; the table says it in its notes.
    rerun: str = ""

    @property
    def incomplete(self) -> bool:
        return bool(self.note)

    @property
    def delta(self) -> float | None:
        if self.paper is None or self.mean is None:
            return None
        return self.mean - self.paper

    def text(self) -> str:
        if self.mean is None:
            return "–"
        if self.kind == "count":
            body = f"{int(round(self.mean)):,}"
        elif self.kind == "seeds" and self.expected > 1:
            body = f"{self.mean:.2f} ± {self.std or 0.0:.2f}"
        else:
            body = f"{self.mean:.2f}"
        return " ".join(part for part in (body, self.note, self.flag) if part)

    def paper_text(self) -> str:
        if self.paper is None:
            return ""
        return f"{int(round(self.paper)):,}" if self.kind == "count" else f"{self.paper:.2f}"

    def delta_text(self) -> str:
        d = self.delta
        if d is None:
            return ""
        if self.kind == "count":
            return "0" if round(d) == 0 else f"{d:+,.0f}"
        return "0.00" if abs(d) < 0.005 else f"{d:+.2f}"


@dataclass
class Group:
    key: tuple
    label: str
    method: str
    backbone: str | None = None  # its records' (a figure compares two methods only on one backbone)


@dataclass
class Table:
    key: str
    title: str
    row_header: str
    rows: list  # [(key, label)]
    groups: list  # [Group]
    metrics: list  # [(key, label)]
    cells: dict = field(default_factory=dict)  # (row, group key, metric) -> Cell
    notes: list = field(default_factory=list)
    missing: list = field(default_factory=list)
    source: str | None = None  # Tables 2 and 3: the row of the dataset the prompts were learned on

    def cell(self, row, group, metric) -> Cell | None:
        gkey = group.key if isinstance(group, Group) else group
        return self.cells.get((row, gkey, metric))

    def group_for(self, method: str) -> Group | None:
        return next((g for g in self.groups if g.method == method), None)

    def has_paper(self, group: Group, metric: str) -> bool:
        return any(
            self.cell(r, group, metric) is not None and self.cell(r, group, metric).paper is not None
            for r, _ in self.rows
        )

    @property
    def empty(self) -> bool:
        return not any(c.mean is not None for c in self.cells.values())


# ----------------------------------------------------------------------------------------------
# Records


def accuracy(record: dict) -> float:
    return float((record.get("metrics") or {})["accuracy"])


def effective_n_ctx(record: dict) -> int | None:
    options = record.get("options") or {}
    init = options.get("ctx_init")
    if init and _ctx_init_sets_n_ctx(record.get("method", "")):  # one token per word (PROTOCOL.md 7.1)
        return len(str(init).replace("_", " ").split())
    return options.get("n_ctx", options.get("n_ctx_text"))


def is_zero_shot(record: dict) -> bool:
    return record.get("train_dataset") is None


def variant(record: dict) -> tuple:
    """What tells two methods apart in a table: method, config, backbone, shots, context, and the
    settings run when the report shows several of one family (``LABEL_FIELD``)."""
    init = (record.get("options") or {}).get("ctx_init")
    settings = record.get(LABEL_FIELD, "")
    if is_zero_shot(record):
        return (record["method"], record.get("config"), record.get("backbone"), None, None, None, settings)
    return (
        record["method"],
        record.get("config"),
        record.get("backbone"),
        record.get("shots"),
        effective_n_ctx(record),
        init,
        settings,
    )


def trained_on_own_base(record: dict) -> bool:
    return record.get("train_subsample") == "base" and record.get("train_dataset") == record.get("dataset")


# ----------------------------------------------------------------------------------------------
# Paper values (read from reports/paper/*.csv at run time)


class Paper:
    """The published values of ``paper_dir``'s CSV files, each for the backbone and shot count it was
    published at: a row's own ``backbone`` / ``shots`` columns where the file has them (fewshot.csv),
    else its file's line in ``protocol.csv`` (table, backbone, shots)."""

    PROTOCOL = "protocol"  # protocol.csv

    def __init__(self, paper_dir: str | None):
        self.dir = paper_dir
        self.frames = {}
        if paper_dir and os.path.isdir(paper_dir):
            for name in os.listdir(paper_dir):
                if name.endswith(".csv"):
                    with open(os.path.join(paper_dir, name), newline="") as f:
                        self.frames[name[:-4]] = list(csv.DictReader(f))
        self.protocols = {row["table"]: row for row in self.frames.get(self.PROTOCOL, ())}

    def _of(self, table: str, row: dict, key: str) -> str | None:
        return row.get(key) or (self.protocols.get(table) or {}).get(key) or None

    def rows(self, table: str, match: dict, column: str) -> list[dict]:
        return [
            row
            for row in self.frames.get(table, ())
            if all(row.get(k) == v for k, v in match.items()) and row.get(column) not in (None, "")
        ]

    def value(self, table: str, match: dict, column: str, backbone=None, shots=None) -> float | None:
        """The published value; given a backbone, only one published for it (and, for a learned prompt,
        ``shots``; for zero-shot CLIP, None: a row that has its own shots must say 0)."""
        for row in self.rows(table, match, column):
            if backbone is not None:
                if self._of(table, row, "backbone") != str(backbone):
                    continue
                published = self._of(table, row, "shots")
                if shots is None and row.get("shots") not in (None, "", "0"):
                    continue
                if shots is not None and published != str(shots):
                    continue
            return float(row[column])
        return None

    def protocol_text(self, table: str, match: dict, column: str) -> str:
        """'ViT-B/16, 16 shots': what the published values of a cell are for."""
        found = []
        for row in self.rows(table, match, column):
            backbone, shots = self._of(table, row, "backbone"), self._of(table, row, "shots")
            found.append(f"{backbone or 'an unnamed backbone'}" + (f", {shots} shots" if shots else ""))
        return " or ".join(dict.fromkeys(found)) or "another backbone"


# ----------------------------------------------------------------------------------------------
# Labels


def group_labels(keys: list[tuple], method_of: Callable, parts: Callable) -> dict:
    """Method label, plus the parts that differ between groups of the same method."""
    labels = {}
    for key in keys:
        same = [k for k in keys if method_of(k) == method_of(key)]
        extra = []
        if len(same) > 1:
            mine = parts(key)
            for i, part in enumerate(mine):
                if part and len({parts(k)[i] for k in same}) > 1:
                    extra.append(part)
        labels[key] = method_label(method_of(key)) + (f" ({', '.join(extra)})" if extra else "")
    return labels


def unique_labels(variants: list[tuple], name) -> dict:
    """name(v), with config / backbone / shots added where two variants would share a name."""
    base = {v: name(v) for v in variants}
    names = dict(base)
    for v in variants:
        twins = [w for w in variants if base[w] == base[v] and w != v]
        if twins:
            extra = [p for i, p in enumerate(variant_parts(v)) if p and any(variant_parts(w)[i] != p for w in twins)]
            names[v] = f"{base[v]} ({', '.join(extra)})" if extra else base[v]
    return names


def variant_parts(v: tuple) -> list[str]:
    method, config, backbone, shots, n_ctx, init, settings = v
    ctx = f"ctx {n_ctx}" if n_ctx is not None else ""
    init_text = "" if init is None else ("random init" if init == "" else f"init “{init}”")
    return [config or "", backbone or "", f"{shots} shots" if shots is not None else "", ctx, init_text, settings]


def ordered_datasets(datasets: Iterable[str], known: tuple) -> list[str]:
    present = set(datasets)
    return [d for d in known if d in present] + sorted(present - set(known))
