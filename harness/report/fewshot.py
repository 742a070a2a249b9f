"""The few-shot study's report: a table per shot count and the accuracy-vs-shots figure (CoOp's Figure 3).

Records: the ``fewshot`` experiment's (``Gate.table_filter("fewshot")``), evaluated on all classes of
the dataset they learned from, and zero-shot CLIP on all classes. A column group per (method, backbone):
the configs that change with the shot count (CoOp's 50 / 100 / 200 epochs) are one method's curve.
Cells, marks and notes come from ``harness.report.gate``, as for every table: one settings run per
cell, the expected datasets (``expected.json``) as rows, and the shot counts expected but not run
listed as missing.

* ``fewshot_<K>shot.{md,tex,csv}``: per dataset and the average, mean ± std over seeds (a cell with
  fewer seeds than expected is marked, an average over fewer datasets too), zero-shot CLIP beside.
* ``figure_fewshot.{png,pdf,csv}``: accuracy against shots, one panel per dataset and the average;
  zero-shot CLIP at 0 shots, each method a curve with its std over seeds, the linear probe dashed;
  published values (``reports/paper/fewshot.csv``: dataset, method, backbone, shots, accuracy, source)
  as hollow markers beside ours, each with its source in the figure's CSV. The Average panel draws only
  Averages over the dataset set the gate chooses (``comparable_points``), saying what it left out; a
  point the gate marks as at other settings than the rest of its study (``Cell.rerun``) is ringed.
"""

from __future__ import annotations

from harness.report.figures import _figure, _save, color
from harness.report.gate import Gate, comparable_points, same_datasets
from harness.report.paper.coop import fewshot_rank
from harness.report.tables import (
    AVERAGE,
    LABEL_FIELD,
    PAPER_DATASETS,
    Group,
    Paper,
    Table,
    dataset_label,
    is_zero_shot,
    method_label,
)

PAPER_TABLE = "fewshot"  # reports/paper/fewshot.csv


def fewshot_records(ctx: Gate) -> list[dict]:
    """Zero-shot CLIP and few-shot learners, each evaluated on all classes of its own dataset."""

    def keep(r: dict) -> bool:
        if r.get("subsample") != "all":
            return False
        return is_zero_shot(r) or (r.get("train_subsample") == "all" and r.get("train_dataset") == r["dataset"])

    return ctx.select("fewshot", keep)


def _group_key(r: dict) -> tuple:
    """A curve: a method on a backbone (its configs change with the shot count: CoOp's 50 / 100 / 200
    epochs), and its settings run when the report shows each (``--all-variants``)."""
    return (r["method"], r.get("backbone"), r.get(LABEL_FIELD, ""))


def _groups(recs: list[dict]) -> list[Group]:
    keys = sorted({_group_key(r) for r in recs}, key=lambda k: (fewshot_rank(k[0]), str(k[1:])))
    backbones = {k[1] for k in keys}

    def label(key):
        extra = ([str(key[1])] if len(backbones) > 1 else []) + ([key[2]] if key[2] else [])
        return method_label(key[0]) + (f" ({', '.join(extra)})" if extra else "")

    return [Group(k, label(k), k[0], k[1]) for k in keys]


def _paper_ref(row, group, metric):
    """reports/paper/fewshot.csv's value for a cell (the gate matches its backbone and shots)."""
    return PAPER_TABLE, {"dataset": row, "method": group.method}, "accuracy"


def shot_counts(recs: list[dict]) -> list[int]:
    return sorted({int(r["shots"]) for r in recs if not is_zero_shot(r)})


def fewshot_tables(ctx: Gate) -> dict[int, Table]:
    """{K: the K-shot table}: datasets (those run and those expected) and their average, a column per
    method (zero-shot CLIP too); shot counts expected but not run are listed as missing."""
    recs = fewshot_records(ctx)
    tables = {}
    datasets = ctx.datasets(recs, PAPER_DATASETS)
    run = shot_counts(recs)
    never = [k for k in ctx.expected_shots(recs) if k not in run]
    for shots in run:
        mine = [r for r in recs if is_zero_shot(r) or int(r["shots"]) == shots]
        table = Table(
            f"fewshot_{shots}shot",
            f"Few-shot classification, {shots} shot{'s' if shots > 1 else ''}: accuracy (%) on all classes",
            "Dataset",
            [(d, dataset_label(d)) for d in datasets] + [(AVERAGE, "Average")],
            _groups(mine),
            [("acc", "Accuracy")],
        )
        for g in table.groups:
            for d in datasets:
                cell_recs = [r for r in mine if _group_key(r) == g.key and r["dataset"] == d]
                where = f"{table.title.split(':')[0]}: {g.label} {d}"
                ctx.add_seed_cell(table, g, d, "acc", cell_recs, _paper_ref, where)
            ctx.average(table, g, ["acc"], datasets, PAPER_DATASETS, paper=_paper_ref)
        table.notes += _paper_notes(ctx.paper, table, shots)
        tables[shots] = table
    if tables and never:  # no table of its own to say so
        tables[run[0]].missing += [f"Few-shot classification: {k} shots expected, no records" for k in never]
    return tables


def _paper_notes(paper: Paper | None, table: Table, shots: int) -> list[str]:
    """Where the published values shown beside ours come from: each source once, as fewshot.csv names it (a
    value read from a copy of the authors' sheet says so there)."""
    if paper is None:
        return []
    sources = []
    for g in table.groups:
        for row, _ in table.rows:
            cell = table.cell(row, g, "acc")
            if cell is None or cell.paper is None:
                continue
            published = "0" if g.method == "zsclip" else str(shots)
            match = {"dataset": row, "method": g.method, "backbone": str(g.backbone), "shots": published}
            sources += [f"{r.get('source')} ({g.backbone})" for r in paper.rows(PAPER_TABLE, match, "accuracy")]
    return [f"Paper values (reports/paper/fewshot.csv): {source}." for source in dict.fromkeys(sources)]


def _published(paper: Paper | None, dataset: str, method: str, backbone) -> list[tuple[int, float, str]]:
    """[(shots, accuracy, source)] that reports/paper/fewshot.csv holds for one curve."""
    if paper is None:
        return []
    out = []
    for row in paper.rows(PAPER_TABLE, {"dataset": dataset, "method": method, "backbone": str(backbone)}, "accuracy"):
        out.append((int(row["shots"]), float(row["accuracy"]), row.get("source", "")))
    return sorted(out)


RERUN_LABEL = "re-run at other settings than the rest of the study (see that shot count's table notes)"


def _x(method: str, shots: int) -> int:
    """A point's shots on the figure: zero-shot CLIP's is 0 whatever table it is read from."""
    return 0 if method == "zsclip" else shots


def _average_points(tables: dict[int, Table], groups: list[Group]) -> tuple[tuple, dict]:
    """The Average panel's (dataset set, {(group key, shots): datasets} left out), as the gate chooses among
    every method's Average at every shot count and zero-shot CLIP's."""
    points = {}
    for g in groups:
        for k in sorted(tables):
            cell = tables[k].cell(AVERAGE, g, "acc")
            if cell is not None and cell.mean is not None:
                points.setdefault((g.key, _x(g.method, k)), cell)
    return comparable_points(points)


def _names(datasets) -> str:
    return ", ".join(dataset_label(d) for d in datasets)


def _left_out_text(cell, chosen: tuple) -> str:
    return (
        f"left out of the Average panel: over {_names(cell.datasets)}, the panel's Averages are over {_names(chosen)}"
    )


def _left_out_line(left_out: dict, chosen: tuple, groups: dict) -> str:
    """The figure's line on the Average panel's points left out: whose, over which datasets, and why."""
    parts = []
    for (key, shots), datasets in left_out.items():
        g = groups[key]
        at = "" if g.method == "zsclip" else f" {shots} shot{'s' if shots > 1 else ''}"
        parts.append(f"{g.label}{at} (over {_names(datasets)})")
    return (
        f"Average panel: over {_names(chosen)} only; left out, as Averages over other datasets: "
        + "; ".join(parts)
        + "."
    )


def _mark_reruns(ax, points: list[tuple]) -> None:
    """Ring the points [(x, Cell)] whose cell the gate marks as at other settings than the rest of the study."""
    marked = [(x, c) for x, c in points if c.rerun]
    if marked:
        ax.plot(
            [x for x, _ in marked],
            [c.mean for _, c in marked],
            marker="D",
            markersize=9,
            markerfacecolor="none",
            markeredgecolor="black",
            linestyle="",
            label=RERUN_LABEL,
        )


def _point(row: str, g: Group, shots: int, cell, note: str = "") -> dict:
    """A CSV row of ours: ``note`` says why a point is left out or marked."""
    return {
        "dataset": row,
        "method": g.method,
        "label": g.label,
        "shots": shots,
        "mean": cell.mean,
        "std": cell.std,
        "n": cell.n,
        "datasets": " ".join(cell.datasets),
        "source": "ours",
        "note": note or cell.rerun,
    }


def figure_fewshot(tables: dict[int, Table], out_dir: str, paper: Paper | None = None):
    """Accuracy against shots, a panel per dataset and the average; (paths, None) or (None, why)."""
    if not tables:
        return None, None  # no few-shot study in these records: nothing to draw, nothing missing
    shots = sorted(tables)
    rows = [r for r, _ in tables[shots[0]].rows]
    groups = {}
    for table in tables.values():
        for g in table.groups:
            groups.setdefault(g.key, g)
    ordered = sorted(groups.values(), key=lambda g: (fewshot_rank(g.method), str(g.key)))
    # Even spacing for 0, 1, 2, 4, 8, 16 (the CoOp figure's axis)
    positions = {k: i + 1 for i, k in enumerate(shots)}
    columns = min(4, len(rows))
    lines = -(-len(rows) // columns)
    fig, axes = _figure(lines, columns, figsize=(3.4 * columns, 2.8 * lines))
    plotted = []
    chosen, left_out = _average_points(tables, ordered)
    for i, row in enumerate(rows):
        ax = axes[i // columns][i % columns]
        for g in ordered:
            method, backbone = g.key[:2]
            cells = [(k, tables[k].cell(row, g, "acc")) for k in shots]
            cells = [(k, c) for k, c in cells if c is not None and c.mean is not None]
            if method == "zsclip":
                cells = cells[:1]  # no shots: the 0-shot point, the same in every table
            if row == AVERAGE:
                for k, c in cells:
                    if (g.key, _x(method, k)) in left_out:
                        plotted.append(_point(row, g, _x(method, k), c, _left_out_text(c, chosen)))
                cells = [(k, c) for k, c in cells if (g.key, _x(method, k)) not in left_out]
            if not cells:
                continue
            if method == "zsclip":
                cell = cells[0][1]
                ax.plot([0], [cell.mean], marker="*", markersize=11, color=color(method), linestyle="", label=g.label)
                _mark_reruns(ax, [(0, cell)])
                plotted.append(_point(row, g, 0, cell))
            else:
                style = "--" if method == "lpclip" else "-"
                # an Average joins only shot counts whose Averages hold the same datasets
                for n, segment in enumerate(same_datasets(cells) if row == AVERAGE else [cells]):
                    ax.errorbar(
                        [positions[k] for k, _ in segment],
                        [c.mean for _, c in segment],
                        yerr=[c.std or 0.0 for _, c in segment],
                        marker="o",
                        markersize=4,
                        linestyle=style,
                        color=color(method),
                        capsize=2,
                        label=g.label if n == 0 else "_nolegend_",
                    )
                _mark_reruns(ax, [(positions[k], c) for k, c in cells])
                plotted += [_point(row, g, k, c) for k, c in cells]
            published = _published(paper, row, method, backbone)
            if published:
                xs = [0 if k == 0 else positions.get(k) for k, _, _ in published]
                keep = [(x, v) for x, (_, v, _) in zip(xs, published) if x is not None]
                ax.plot(
                    [x for x, _ in keep],
                    [v for _, v in keep],
                    marker="o",
                    markerfacecolor="none",
                    linestyle=":",
                    color=color(method),
                    label=f"{g.label} (published)",
                )
                for k, v, source in published:
                    plotted.append(
                        {
                            "dataset": row,
                            "method": method,
                            "label": f"{g.label} (published)",
                            "shots": k,
                            "mean": v,
                            "std": None,
                            "n": None,
                            "source": source,
                        }
                    )
        ax.set_title(dataset_label(row), fontsize=10)
        ax.set_xticks([0] + [positions[k] for k in shots], ["0"] + [str(k) for k in shots])
        ax.grid(alpha=0.3)
        if i % columns == 0:
            ax.set_ylabel("accuracy (%)")
        if i // columns == lines - 1:
            ax.set_xlabel("shots per class")
    for j in range(len(rows), lines * columns):
        axes[j // columns][j % columns].set_visible(False)
    handles, labels = axes[0][0].get_legend_handles_labels()
    for ax_row in axes:
        for ax in ax_row:
            for h, lab in zip(*ax.get_legend_handles_labels()):
                if lab not in labels:
                    handles.append(h)
                    labels.append(lab)
    if RERUN_LABEL in labels:  # the mark's entry after the curves it marks
        at = labels.index(RERUN_LABEL)
        handles.append(handles.pop(at))
        labels.append(labels.pop(at))
    fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), bbox_to_anchor=(0.5, 1.0), frameon=False)
    fig.tight_layout()
    if left_out:
        fig.text(0.5, 0.0, _left_out_line(left_out, chosen, groups), ha="center", va="top", fontsize=8, wrap=True)
    return _save(fig, out_dir, "figure_fewshot", plotted), None
