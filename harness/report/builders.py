"""One builder per table of the paper (Tables 1-5) and per Figure 4 ablation."""

from __future__ import annotations

from harness.report.gate import Gate
from harness.report.tables import (
    AVERAGE,
    CROSS_TARGETS,
    DG_DATASETS,
    PAPER_DATASETS,
    Cell,
    Group,
    Table,
    dataset_label,
    effective_n_ctx,
    group_labels,
    is_zero_shot,
    method_label,
    method_rank,
    ordered_datasets,
    trained_on_own_base,
    variant,
    variant_parts,
)

BASE_NEW_H = [("base", "Base"), ("new", "New"), ("h", "H")]
ACCURACY = [("acc", "Accuracy")]

# (embed_dim, text_width) of OpenAI's CLIPs, for the trainable-parameter counts of records that do not
# carry their own (the runner's records always do: metrics.num_trainable_parameters).
BACKBONE_DIMS = {
    "ViT-B/16": (512, 512),
    "ViT-B/32": (512, 512),
    "ViT-L/14": (768, 768),
    "ViT-L/14@336px": (768, 768),
    "RN50": (1024, 512),
    "RN101": (512, 512),
    "RN50x4": (640, 640),
    "RN50x16": (768, 768),
    "RN50x64": (1024, 1024),
    "tiny": (32, 64),  # clipcore.backbone.CLIP_SHAPES["tiny"]
}


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


def _unique_labels(variants: list[tuple], name) -> dict:
    """name(v), with config / backbone / shots added where two variants would share a name."""
    base = {v: name(v) for v in variants}
    names = dict(base)
    for v in variants:
        twins = [w for w in variants if base[w] == base[v] and w != v]
        if twins:
            extra = [p for i, p in enumerate(variant_parts(v)) if p and any(variant_parts(w)[i] != p for w in twins)]
            names[v] = f"{base[v]} ({', '.join(extra)})" if extra else base[v]
    return names


def _group_key(r: dict, per_experiment: bool) -> tuple:
    return (r.get("experiment"), variant(r)) if per_experiment else variant(r)


def _base_new_table(ctx: Gate, table: Table, recs: list[dict], per_experiment: bool, paper) -> Table:
    groups = table.groups or (_per_experiment_groups(recs) if per_experiment else _variant_groups(recs))
    # Rows: the datasets with records and those the experiment expects (a short sweep is marked, not hidden).
    datasets = ctx.datasets(recs, PAPER_DATASETS)
    table.groups = groups
    table.rows = [(d, dataset_label(d)) for d in datasets] + [(AVERAGE, "Average")]
    ctx.absent(table, PAPER_DATASETS, datasets)
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
    ctx.absent(t, known_targets, targets)
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
    ctx.absent(t, PAPER_DATASETS, datasets)

    def paper(row, g, metric):
        return ("class_incremental", {"method": g.method}, "accuracy") if row == AVERAGE else None

    _single_metric(ctx, t, recs, datasets, True, paper)
    for g in t.groups:
        ctx.average(t, g, ["acc"], datasets, PAPER_DATASETS, paper=paper)
    return t


def trainable_parameters(record: dict) -> int | None:
    """A count the record carries, else CoOp: n_ctx x text width; CoCoOp adds the Meta-Net
    (both linear layers with biases, hidden = embed_dim // 16)."""
    for source in (record, record.get("metrics") or {}, record.get("options") or {}):
        for name in ("trainable_params", "num_trainable_parameters", "n_params", "params"):
            if isinstance(source.get(name), (int, float)):
                return int(source[name])
    dims = BACKBONE_DIMS.get(record.get("backbone"))
    n_ctx = effective_n_ctx(record)
    if dims is None or n_ctx is None or (record.get("options") or {}).get("csc"):
        return None
    embed, width = dims
    count = n_ctx * width
    if record["method"] == "cocoop":
        hidden = max(1, embed // 16)
        count += embed * hidden + hidden + hidden * width + width
    return count


def _paper_model(v: tuple) -> str | None:
    method, _, _, _, n_ctx, init, _ = v
    if method == "coop" and n_ctx == 4 and init:
        return "coop_ctx4"
    if method == "coop" and n_ctx == 60:
        return "coop_ctx60"
    if method == "cocoop" and n_ctx == 4 and init:
        return "cocoop_ctx4"
    return None


def table5(ctx: Gate) -> Table:
    t = Table(
        "table5_bigger_coop",
        "Table 5: CoCoOp vs a bigger CoOp on ImageNet (accuracy %)",
        "Model",
        [],
        [],
        [("params", "Params")] + BASE_NEW_H,
    )
    t.notes = [
        "Trainable parameters: CoOp n_ctx x text width; CoCoOp adds the Meta-Net with its biases "
        "(35,360 for ViT-B/16; the paper's 34,816 leaves the biases out, PROTOCOL.md 18.4)."
    ]
    recs = ctx.select(
        "table5",
        lambda r: (
            r["dataset"] == "imagenet"
            and r["subsample"] in ("base", "new")
            and r["method"] in ("coop", "cocoop")
            and trained_on_own_base(r)
        ),
    )
    expected = {"coop_ctx4": "CoOp ctx 4", "coop_ctx60": "CoOp ctx 60", "cocoop_ctx4": "CoCoOp ctx 4"}
    # CoOp of any context length; CoCoOp as in the paper (its random-init variants are Figure 4's).
    variants = [v for v in dict.fromkeys(variant(r) for r in recs) if v[0] == "coop" or _paper_model(v)]
    variants.sort(key=lambda v: (method_rank(v[0]), v[4] or 0, v[5] == "", str(v)))
    recs = [r for r in recs if variant(r) in set(variants)]
    for model in sorted(set(expected) - {_paper_model(v) for v in variants}):
        t.missing.append(f"Table 5: no ImageNet base/new records for {expected[model]}")
    if not recs:
        return t
    group = Group(("imagenet",), "ImageNet", "")
    t.groups = [group]
    names = _unique_labels(
        variants, lambda v: f"{method_label(v[0])} (ctx {v[4]}{', random init' if v[5] == '' else ''})"
    )
    for v in variants:
        label = names[v]
        t.rows.append((label, label))
        model = _paper_model(v)

        def paper(row, g, metric, model=model):
            return None if model is None else ("bigger_coop", {"model": model}, metric)

        mine = [r for r in recs if variant(r) == v]
        ctx.add_base_new(
            t,
            group,
            label,
            [r for r in mine if r["subsample"] == "base"],
            [r for r in mine if r["subsample"] == "new"],
            paper,
        )
        count = trainable_parameters(mine[-1])
        if count is not None:
            params = Cell(float(count), None, 1, 1, "count", "")
            params.paper = ctx.published(t, paper, label, group, "params", mine)
            t.cells[(label, group.key, "params")] = params
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
    names = _unique_labels(
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


BUILDERS = (table1, table2, table3, table4, table5, fig4a, fig4b)
