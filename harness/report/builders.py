"""The registry-driven tables: one builder per study table (Tables 1-4) and per Figure 4 ablation.

Rows and column groups come from the records and the method registry (labels, order), so a new method
or dataset appears without an edit here. Table 5, which compares the CoCoOp paper's own models, is
``harness.report.paper.cocoop``'s; ``BUILDERS`` lists every table in the report's order.
"""

from __future__ import annotations

from harness.report.gate import Gate
from harness.report.paper.cocoop import table5
from harness.report.tables import (
    AVERAGE,
    BASE_NEW_H,
    CROSS_TARGETS,
    DG_DATASETS,
    PAPER_DATASETS,
    Group,
    Table,
    dataset_label,
    group_labels,
    is_zero_shot,
    method_label,
    method_rank,
    ordered_datasets,
    trained_on_own_base,
    unique_labels,
    variant,
    variant_parts,
)

ACCURACY = [("acc", "Accuracy")]


def _experiment_rank(name) -> tuple:
    return (0, "") if name == "base2new" else (1, str(name))


def _per_experiment_groups(recs: list[dict]) -> list[Group]:
    """Column groups keyed by (experiment, variant): several experiments (e.g. "base2new" and
    "demo") or several configs of one method are shown side by side, never pooled."""
    keys = list(dict.fromkeys((r.get("experiment"), variant(r)) for r in recs))
    keys.sort(key=lambda k: (_experiment_rank(k[0]), method_rank(k[1][0]), str(k[1])))
    labels = group_labels(keys, lambda k: k[1][0], lambda k: [str(k[0])] + variant_parts(k[1]))
    return [Group(k, labels[k], k[1][0], k[1][2]) for k in keys]


def _variant_groups(recs: list[dict]) -> list[Group]:
    keys = list(dict.fromkeys(variant(r) for r in recs))
    keys.sort(key=lambda k: (method_rank(k[0]), str(k)))
    labels = group_labels(keys, lambda k: k[0], variant_parts)
    return [Group(k, labels[k], k[0], k[2]) for k in keys]


def _group_key(r: dict, per_experiment: bool) -> tuple:
    return (r.get("experiment"), variant(r)) if per_experiment else variant(r)


def _base_new_table(ctx: Gate, table: Table, recs: list[dict], per_experiment: bool, paper) -> Table:
    groups = table.groups or (_per_experiment_groups(recs) if per_experiment else _variant_groups(recs))
    # Rows: the datasets with records and those the experiment expects (a short sweep is marked, not hidden).
    datasets = ctx.datasets(recs, PAPER_DATASETS)
    table.groups = groups
    table.rows = [(d, dataset_label(d)) for d in datasets] + [(AVERAGE, "Average")]
    for g in groups:
        mine = [r for r in recs if _group_key(r, per_experiment) == g.key]
        for d in datasets:
            base = [r for r in mine if r["dataset"] == d and r["subsample"] == "base"]
            new = [r for r in mine if r["dataset"] == d and r["subsample"] == "new"]
            if not base and not new:
                table.missing.append(f"{table.title.split(':')[0]}: {g.label} has no records for {d}")
                continue
            ctx.add_base_new(table, g, d, base, new, paper)
        ctx.average(table, g, ["base", "new", "h"], datasets, PAPER_DATASETS, derived_h=True, paper=paper)
    return table


def table1(ctx: Gate) -> Table:
    t = Table("table1_base2new", "Table 1: base-to-new generalisation (accuracy %)", "Dataset", [], [], BASE_NEW_H)
    recs = ctx.select(
        "table1", lambda r: r["subsample"] in ("base", "new") and (is_zero_shot(r) or trained_on_own_base(r))
    )
    t.notes = [
        "Records: zero-shot CLIP evaluated on base/new classes, and prompts learned on a dataset's base classes "
        "evaluated on its base/new classes, from every experiment except crossdataset, domaingen and ablations; "
        "each (experiment, method config) is its own column group.",
        "Base/New: mean ± population std over seeds; H from the seed-averaged Base and New; "
        "Average: mean of the per-dataset Base and New over the datasets complete for that column, H from those.",
        "Paper values: each method's own publication (CLIP, CoOp, CoCoOp: the CoCoOp paper's Table 1; KgCoOp, "
        "MaPLe, PromptSRC: the 11-dataset averages in their authors' READMEs; CoOp + DePT: per dataset, from "
        "DePT's README result image; sources in reports/paper). Reproductions by others are never paper values: "
        "see reproductions.md.",
    ]
    if not recs:
        t.missing.append("Table 1: no base-to-new records")
        return t

    def paper(row, g, metric):
        if not (row in PAPER_DATASETS or row == AVERAGE):
            return None
        return "base2new", {"dataset": row, "method": g.method}, metric

    return _base_new_table(ctx, t, recs, True, paper)


def _single_metric(ctx: Gate, table: Table, recs: list[dict], rows: list[str], per_experiment: bool, paper) -> None:
    name = table.title.split(":")[0]
    for g in table.groups:
        mine = [r for r in recs if _group_key(r, per_experiment) == g.key]
        for d in rows:
            ctx.add_seed_cell(
                table, g, d, "acc", [r for r in mine if r["dataset"] == d], paper, where=f"{name}: {g.label} {d}"
            )


def _is_transfer(r: dict) -> bool:
    """An evaluation on all classes of a dataset by zero-shot CLIP or by a prompt learned on all classes
    of a (source) dataset: the records of Tables 2 and 3."""
    return r["subsample"] == "all" and (is_zero_shot(r) or r.get("train_subsample") == "all")


def _transfer_table(ctx: Gate, t: Table, own: str, partner: str, known_targets: tuple, paper) -> Table:
    """Rows: the source (the dataset the prompts were learned on) and the targets, both read from the
    records: the targets are what the table's own experiment evaluated; the source row may come from
    the other transfer experiment's records too, since the two share their trainings (the first to
    run wrote it). Average: the targets, the source excluded."""
    name = t.title.split(":")[0]
    recs = ctx.select(own, _is_transfer)
    shared = ctx.select(partner, _is_transfer)
    trained = [r["train_dataset"] for r in recs if not is_zero_shot(r)] or [
        r["train_dataset"] for r in shared if not is_zero_shot(r)
    ]
    sources = list(dict.fromkeys(trained))
    if len(sources) > 1:
        t.missing.append(f"{name}: prompts learned on several sources ({', '.join(sources)}); showing {sources[0]}")
    source = sources[0] if sources else None
    recs = [r for r in recs if is_zero_shot(r) or r.get("train_dataset") == source]
    targets = set(ctx.datasets(recs, known_targets)) - {source}  # those run and those the experiment expects
    recs += [r for r in shared if r["dataset"] == source and (is_zero_shot(r) or r.get("train_dataset") == source)]
    label = dataset_label(source) if source else "the source"
    t.title = t.title.format(source=label)
    t.notes = [note.format(source=label, shots=_shots(recs)) for note in t.notes]
    if not recs:
        return t
    targets = ordered_datasets(targets, known_targets)
    t.source = source
    t.groups = _variant_groups(recs)
    t.rows = ([(source, f"{label} (source)")] if source else []) + [(d, dataset_label(d)) for d in targets]
    t.rows.append((AVERAGE, "Average"))
    _single_metric(ctx, t, recs, [row for row, _ in t.rows[:-1]], False, paper)
    for g in t.groups:  # the Average is over the targets, the source excluded
        ctx.average(t, g, ["acc"], targets, known_targets, paper=paper)
    return t


def _shots(recs: list[dict]) -> str:
    shots = sorted({r.get("shots") for r in recs if not is_zero_shot(r) and r.get("shots")})
    return "/".join(map(str, shots)) or "?"


_TRANSFER_PAPER_NOTE = (
    "Paper values: CLIP, CoOp, CoCoOp: the CoCoOp paper's Table {table}; CoOp + DePT: DePT's README result image "
    "(sources in reports/paper). Reproductions by others are never paper values: see reproductions.md."
)


def table2(ctx: Gate) -> Table:
    t = Table(
        "table2_crossdataset", "Table 2: cross-dataset transfer from {source} (accuracy %)", "Dataset", [], [], ACCURACY
    )
    t.notes = [
        "Prompts learned on all {source} classes ({shots} shots), evaluated on every class of each dataset; "
        "rows are datasets (the paper's table transposed). Average: the targets, {source} (source) excluded.",
        _TRANSFER_PAPER_NOTE.format(table=2),
    ]

    def paper(row, g, metric):
        return "crossdataset", {"method": g.method}, row

    _transfer_table(ctx, t, "table2", "table3", CROSS_TARGETS, paper)
    if t.empty:
        t.missing.append("Table 2: no cross-dataset records")
    return t


def table3(ctx: Gate) -> Table:
    t = Table(
        "table3_domaingen", "Table 3: domain generalisation from {source} (accuracy %)", "Dataset", [], [], ACCURACY
    )
    t.notes = [
        "{source}-trained prompts (all classes, {shots} shots) on {source} and the same classes in other domains "
        "(the targets); CLIP is zero-shot. Rows are datasets (the paper's table transposed). "
        "Average: the targets, {source} (source) excluded.",
        _TRANSFER_PAPER_NOTE.format(table=3),
    ]

    def paper(row, g, metric):
        return "domaingen", {"method": g.method}, row

    _transfer_table(ctx, t, "table3", "table2", DG_DATASETS[1:], paper)
    if t.empty:
        t.missing.append("Table 3: no domain-generalisation records")
    return t


def table4(ctx: Gate) -> Table:
    t = Table(
        "table4_class_incremental",
        "Table 4: class-incremental test, base and new classes together (accuracy %)",
        "Dataset",
        [],
        [],
        ACCURACY,
    )
    t.notes = [
        "Prompts learned on a dataset's base classes (CLIP: zero-shot), evaluated with one classifier over all "
        "its classes. Average over the datasets complete for that column (the paper reports only the 11-dataset "
        "average)."
    ]
    recs = ctx.select("table4", lambda r: r["subsample"] == "all" and (is_zero_shot(r) or trained_on_own_base(r)))
    if not recs:
        t.missing.append("Table 4: no class-incremental records")
        return t
    datasets = ctx.datasets(recs, PAPER_DATASETS)
    t.groups = _per_experiment_groups(recs)
    t.rows = [(d, dataset_label(d)) for d in datasets] + [(AVERAGE, "Average")]

    def paper(row, g, metric):
        return ("class_incremental", {"method": g.method}, "accuracy") if row == AVERAGE else None

    _single_metric(ctx, t, recs, datasets, True, paper)
    for g in t.groups:
        ctx.average(t, g, ["acc"], datasets, PAPER_DATASETS, paper=paper)
    return t


def _ablation(ctx: Gate, which: str) -> Table:
    if which == "fig4a":
        t = Table(
            "fig4a_init_ablation",
            "Figure 4a: context initialisation, word embeddings vs random (accuracy %)",
            "Dataset",
            [],
            [],
            BASE_NEW_H,
        )
    else:
        t = Table(
            "fig4b_length_ablation",
            "Figure 4b: context length with random initialisation (accuracy %)",
            "Dataset",
            [],
            [],
            BASE_NEW_H,
        )
    recs = ctx.select(
        which, lambda r: r["subsample"] in ("base", "new") and not is_zero_shot(r) and trained_on_own_base(r)
    )
    families: dict = {}
    for r in recs:
        v = variant(r)
        families.setdefault((v[0], v[2], v[3]), set()).add(v)
    chosen = []
    for vs in families.values():
        if which == "fig4a":
            four = [v for v in vs if v[4] == 4]
            if any(v[5] for v in four) and any(v[5] == "" for v in four):
                chosen += four
        else:
            rand = [v for v in vs if v[5] == ""]
            if len({v[4] for v in rand}) > 1:
                chosen += rand
    if not chosen:
        what = (
            "an initialised and a randomly initialised 4-token"
            if which == "fig4a"
            else "two or more context lengths of a random-init"
        )
        t.missing.append(f"{t.title.split(':')[0]}: no method has base-to-new records of {what} prompt")
        return t
    chosen.sort(key=lambda v: (method_rank(v[0]), v[4] or 0, v[5] == "", str(v)))
    names = unique_labels(
        chosen,
        lambda v: (
            f"{method_label(v[0])} " + ((f"“{v[5]}”" if v[5] else "random") if which == "fig4a" else f"ctx {v[4]}")
        ),
    )
    t.groups = [Group(v, names[v], v[0], v[2]) for v in chosen]
    recs = [r for r in recs if variant(r) in set(chosen)]
    t.notes = ["Prompts learned on base classes, seeds averaged per dataset; the figure shows the Average row."]
    return _base_new_table(ctx, t, recs, False, None)


def fig4a(ctx: Gate) -> Table:
    return _ablation(ctx, "fig4a")


def fig4b(ctx: Gate) -> Table:
    return _ablation(ctx, "fig4b")


BUILDERS = (table1, table2, table3, table4, table5, fig4a, fig4b)  # the report's order
