"""From result records to the paper's tables: selection, seed aggregation, averages, paper values.

A table is rows x column groups x metrics of :class:`Cell`s. A seed cell holds the mean and the
population standard deviation (ddof=0, PROTOCOL.md 14) over the expected seeds; a cell with fewer
seeds than expected keeps its mean but is marked ``†(k/n seeds)`` and listed as missing. H is
computed from the seed-averaged base and new (PROTOCOL.md 12.1); an "Average" cell averages the
per-dataset means of the datasets complete for that column group only, and is marked
``‡(k/n datasets)`` when that is fewer than all of them; when no dataset has all its expected seeds (a
study narrowed to fewer seeds), it averages the datasets it has, marked ``†``
(and ``‡`` when those are fewer than all).
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

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
DATASET_LABELS = {
    "imagenet": "ImageNet",
    "caltech101": "Caltech101",
    "oxford_pets": "OxfordPets",
    "stanford_cars": "StanfordCars",
    "oxford_flowers": "Flowers102",
    "food101": "Food101",
    "fgvc_aircraft": "FGVCAircraft",
    "sun397": "SUN397",
    "dtd": "DTD",
    "eurosat": "EuroSAT",
    "ucf101": "UCF101",
    "imagenetv2": "ImageNetV2",
    "imagenet_sketch": "ImageNet-Sketch",
    "imagenet_a": "ImageNet-A",
    "imagenet_r": "ImageNet-R",
}
AVERAGE = "average"
#: What the marks after a number mean (every rendering of a table says it).
MARKS = (
    "± population std over seeds (ddof=0); † fewer seeds than expected; ‡ average over fewer datasets than "
    "expected; § average over datasets run at different settings (no paper comparison for a marked average)"
)
# A record's settings run label, set when the report shows several of one family (harness.report.variants).
LABEL_FIELD = "_settings_label"

# Experiments that feed a table unless the caller says otherwise (see ``table_filter``).
OWN_EXPERIMENTS = ("crossdataset", "domaingen", "ablations", "fewshot")
TABLE_KEYS = {
    "table1": "table1_base2new",
    "table2": "table2_crossdataset",
    "table3": "table3_domaingen",
    "table4": "table4_class_incremental",
    "table5": "table5_bigger_coop",
    "fig4a": "fig4a_init_ablation",
    "fig4b": "fig4b_length_ablation",
}


def dataset_label(key: str) -> str:
    return "Average" if key == AVERAGE else DATASET_LABELS.get(key, key)


def method_info(method: str):
    """The registered method's own description (``methods.method_info``), or None for a method no longer
    registered (a plugin's, in an old results store): it is shown by its name."""
    import methods

    try:
        return methods.method_info(method)
    except methods.registry.UnknownMethodError:
        return None


def _ctx_init_sets_n_ctx(method: str) -> bool:
    """Do the method's init words fix its context length (CoOp, CoCoOp, KgCoOp), or does it learn the
    first n_ctx tokens of them and keep the rest as words (MaPLe, PromptSRC: PROTOCOL-successors.md 3)?"""
    import methods

    return method_info(method) is not None and methods.method_class(method).ctx_init_sets_n_ctx


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
        return f"{body} {self.note}" if self.note else body

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
    settings run when the report shows several of one family (``variants.LABEL_FIELD``)."""
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
    def __init__(self, paper_dir: str | None):
        self.dir = paper_dir
        self.frames = {}
        if paper_dir and os.path.isdir(paper_dir):
            for name in os.listdir(paper_dir):
                if name.endswith(".csv"):
                    with open(os.path.join(paper_dir, name), newline="") as f:
                        self.frames[name[:-4]] = list(csv.DictReader(f))

    def value(self, table: str, match: dict, column: str) -> float | None:
        for row in self.frames.get(table, ()):
            if all(row.get(k) == v for k, v in match.items()) and row.get(column) not in (None, ""):
                return float(row[column])
        return None


# ----------------------------------------------------------------------------------------------
# Aggregation helpers


class Context:
    """Everything a table builder needs: records, the experiment filter, seeds, paper values."""

    def __init__(
        self,
        records: list[dict],
        experiments=None,
        expected_seeds=None,
        paper: Paper | None = None,
        with_paper=True,
        expectations: dict | None = None,
        seen: list[dict] | None = None,
    ):
        self.records = records
        self.experiments = experiments
        self.expected_seeds = None if expected_seeds is None else set(expected_seeds)
        self.paper = paper if with_paper else None
        # {experiment: {"datasets", "seeds", "ran"...}} recorded by the sweeps (harness.sweep.record_expectation)
        self.expectations = expectations or {}
        self.seeds_by_experiment: dict = {}
        for name, expected in self.expectations.items():
            self.seeds_by_experiment[name] = set(expected.get("seeds") or [])
        for r in records if seen is None else seen:  # seen: every settings run's records, not only those shown
            if not is_zero_shot(r) and r.get("seed") is not None:
                self.seeds_by_experiment.setdefault(r.get("experiment"), set()).add(r["seed"])

    def expected_datasets(self, recs: list[dict]) -> list[str]:
        """The datasets the experiments of ``recs`` expect (from their sweeps' records)."""
        out = []
        for name in dict.fromkeys(r.get("experiment") for r in recs):
            out += (self.expectations.get(name) or {}).get("datasets") or []
        return list(dict.fromkeys(out))

    def table_filter(self, table: str) -> Callable[[str], bool]:
        """Default: Tables 1 and 4 read every experiment but crossdataset/domaingen/ablations;
        Table 2 reads crossdataset and Table 3 domaingen (each one's source row also the other's:
        their trainings are shared); Table 5 and the Figure 4 ablations read every experiment but
        crossdataset/domaingen. A list of names narrows every table to those; a dict
        {table: [names]} replaces a table's default."""
        if table == "table2":
            default = lambda e: e == "crossdataset"  # noqa: E731
        elif table == "table3":
            default = lambda e: e == "domaingen"  # noqa: E731
        elif table in ("table5", "fig4a", "fig4b"):
            default = lambda e: e not in ("crossdataset", "domaingen", "fewshot")  # noqa: E731
        elif table == "fewshot":
            default = lambda e: e == "fewshot"  # noqa: E731
        else:
            default = lambda e: e not in OWN_EXPERIMENTS  # noqa: E731
        chosen = self.experiments
        if chosen is None:
            return default
        if isinstance(chosen, dict):
            names = chosen.get(table, chosen.get(TABLE_KEYS.get(table, table)))
            return default if names is None else (lambda e: e in set(names))
        names = {chosen} if isinstance(chosen, str) else set(chosen)
        return lambda e: default(e) and e in names

    def select(self, table: str, predicate: Callable[[dict], bool]) -> list[dict]:
        keep = self.table_filter(table)
        return [r for r in self.records if keep(r.get("experiment")) and predicate(r)]

    def seed_cell(self, recs: list[dict]) -> tuple[Cell | None, str]:
        """Mean ± population std over the expected seeds; (cell, note for the missing list)."""
        if not recs:
            return None, ""
        by_seed = {}
        for r in recs:  # later records win (a rerun of the same job)
            by_seed[r.get("seed")] = accuracy(r)
        if is_zero_shot(recs[0]):
            value = list(by_seed.values())[-1]
            return Cell(value, None, 1, 1, "seeds"), ""
        if self.expected_seeds is not None:
            expected = set(self.expected_seeds)
        else:
            expected = set()
            for e in {r.get("experiment") for r in recs}:
                expected |= self.seeds_by_experiment.get(e, set())
        used = sorted((s for s in by_seed if s in expected), key=str)
        if not used:
            return None, f"none of the expected seeds {sorted(expected, key=str)} (has {sorted(by_seed, key=str)})"
        values = np.array([by_seed[s] for s in used], dtype=float)
        cell = Cell(float(values.mean()), float(values.std(ddof=0)), len(used), len(expected), "seeds")
        if len(used) < len(expected):
            lacking = sorted(expected - set(used), key=str)
            cell.note = f"†({len(used)}/{len(expected)} seeds)"
            return (
                cell,
                f"seed{'s' if len(lacking) > 1 else ''} {', '.join(map(str, lacking))} missing "
                f"({len(used)}/{len(expected)})",
            )
        return cell, ""


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


def variant_parts(v: tuple) -> list[str]:
    method, config, backbone, shots, n_ctx, init, settings = v
    ctx = f"ctx {n_ctx}" if n_ctx is not None else ""
    init_text = "" if init is None else ("random init" if init == "" else f"init “{init}”")
    return [config or "", backbone or "", f"{shots} shots" if shots is not None else "", ctx, init_text, settings]


def ordered_datasets(datasets: Iterable[str], known: tuple) -> list[str]:
    present = set(datasets)
    return [d for d in known if d in present] + sorted(present - set(known))


def fill_average(
    table: Table,
    group: Group,
    metrics: list[str],
    universe: list[str],
    label_total: int | None = None,
    derived_h: bool = False,
    paper: Callable | None = None,
) -> None:
    """Average row: mean of the per-row means over rows complete for the group (all metrics
    present and unmarked); H (when derived_h) from the averaged base and new."""
    base_metrics = [m for m in metrics if not (derived_h and m == "h")]
    present, complete = [], []
    for row in universe:
        cells = [table.cell(row, group, m) for m in base_metrics]
        if all(c is not None and c.mean is not None for c in cells):
            present.append(row)
            if not any(c.incomplete for c in cells):
                complete.append(row)
    total = label_total or len(universe)
    note = f"‡({len(complete)}/{total} datasets)" if len(complete) < total else ""
    if not complete and present:
        # No dataset has every expected seed (a study narrowed to fewer seeds, SEEDS=1): average what there is
        # rather than show nothing, marked as such (never compared with the paper).
        complete = present
        marks = "†‡" if len(present) < total else "†"
        note = f"{marks}({len(present)}/{total} datasets, fewer seeds than expected)"
    if not complete:
        return
    left_out = [r for r in universe if r not in complete]
    if left_out:
        table.missing.append(
            f"{table.title.split(':')[0]}: {group.label} Average over {len(complete)}/{total} datasets "
            f"(incomplete: {', '.join(left_out)})"
        )
    for m in base_metrics:
        mean = float(np.mean([table.cell(r, group, m).mean for r in complete]))
        table.cells[(AVERAGE, group.key, m)] = Cell(mean, None, len(complete), total, "average", note)
    if derived_h:
        h = harmonic(table.cell(AVERAGE, group, "base").mean, table.cell(AVERAGE, group, "new").mean)
        table.cells[(AVERAGE, group.key, "h")] = Cell(h, None, len(complete), total, "average", note)
    if paper is not None and not note:
        for m in metrics:
            table.cells[(AVERAGE, group.key, m)].paper = paper(AVERAGE, group, m)


def add_seed_cell(
    ctx: Context,
    table: Table,
    group: Group,
    row: str,
    metric: str,
    recs: list,
    paper: Callable | None,
    where: str | None = None,
) -> Cell | None:
    """One seed-averaged cell with its paper value; an absent or incomplete cell goes to the missing list."""
    cell, why = ctx.seed_cell(recs)
    where = where or f"{table.title.split(':')[0]}: {group.label} {row} {metric}"
    if cell is None:
        table.missing.append(f"{where}: no records" + (f" ({why})" if why else ""))
        return None
    if why:
        table.missing.append(f"{where}: {why}")
    if paper is not None:
        cell.paper = paper(row, group, metric)
    table.cells[(row, group.key, metric)] = cell
    return cell


def add_base_new(
    ctx: Context, table: Table, group: Group, row: str, base_recs: list, new_recs: list, paper: Callable | None
) -> None:
    """Seed-averaged base and new cells and their H for one row; gaps go to the missing list."""
    for metric, recs in (("base", base_recs), ("new", new_recs)):
        add_seed_cell(ctx, table, group, row, metric, recs, paper)
    base, new = table.cell(row, group, "base"), table.cell(row, group, "new")
    if base is not None and new is not None:
        marked = base.incomplete or new.incomplete
        h = Cell(
            harmonic(base.mean, new.mean),
            None,
            min(base.n, new.n),
            max(base.expected, new.expected),
            "derived",
            "†(from incomplete seeds)" if marked else "",
        )
        if paper is not None:
            h.paper = paper(row, group, "h")
        table.cells[(row, group.key, "h")] = h
