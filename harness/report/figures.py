"""Figures of every method (matplotlib Agg canvas, no pyplot; PNG + PDF, and a CSV of exactly the numbers
drawn): Figure 4, a base-vs-new scatter, and the comparison of every method's averaged base / new / H
beside its published numbers; each method's colour. They draw whatever methods the tables hold. The
CoCoOp paper's CoCoOp-minus-CoOp figures are ``harness.report.paper.cocoop``'s.

A figure is drawn only from data that exist; ``None`` comes back (with the reason) otherwise, so
the report never writes an empty figure.
"""

from __future__ import annotations

import csv
import os

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Rectangle

from harness.report.gate import comparable_averages
from harness.report.tables import AVERAGE, Table, method_info, method_rank

# A method's colour is its own (``color`` in its file); a method without one gets the first of these not
# taken by any registered method, in the report's method order, so that no two methods share a colour
# and the same set of methods always gets the same colours. Past the list, hues spaced by the golden ratio.
FREE_COLORS = (
    "#2ca02c",
    "#e377c2",
    "#17becf",
    "#bcbd22",
    "#aec7e8",
    "#ffbb78",
    "#98df8a",
    "#ff9896",
    "#c5b0d5",
    "#c49c94",
    "#f7b6d2",
    "#dbdb8d",
    "#9edae5",
)
MARKERS = ("o", "s", "^", "D", "v", "P", "X")
_assigned: dict[str, str] = {}  # methods without a colour of their own -> the one they were given


def _spare_color(i: int) -> str:
    from matplotlib.colors import hsv_to_rgb, to_hex

    return to_hex(hsv_to_rgb(((0.11 + 0.618034 * i) % 1.0, 0.65, 0.8)))


def color(method: str) -> str:
    """The method's colour in every figure (see ``FREE_COLORS``)."""
    import methods

    info = method_info(method)
    if info is not None and info.color:
        return info.color
    if method not in _assigned:
        registered = [methods.method_info(m) for m in methods.list_methods()]
        taken = {i.color.lower() for i in registered if i.color} | {c.lower() for c in _assigned.values()}
        # Registered methods without a colour are served in order first, so their colours do not depend
        # on which figure asked first; then any other name (an unregistered plugin's records) as asked.
        waiting = [i.name for i in sorted(registered, key=lambda i: method_rank(i.name)) if not i.color]
        for name in [m for m in waiting if m not in _assigned] + ([] if method in waiting else [method]):
            candidates = (c for c in (*FREE_COLORS, *map(_spare_color, range(len(taken) + 64))) if c not in taken)
            _assigned[name] = next(candidates)
            taken.add(_assigned[name])
    return _assigned[method]


def _figure(*shape, figsize) -> tuple:
    """A figure on the Agg canvas, without pyplot (no global backend switch, nothing to close)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(*shape, squeeze=False)


def _save(fig, out_dir: str, name: str, plotted: list[dict]) -> dict:
    """Write the figure as PNG and PDF and the numbers it draws (one row per mark) as CSV."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{name}.{ext}") for ext in ("png", "pdf", "csv")}
    fig.savefig(paths["png"], dpi=150, bbox_inches="tight")
    fig.savefig(paths["pdf"], bbox_inches="tight", metadata={"CreationDate": None})
    with open(paths["csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(dict.fromkeys(k for row in plotted for k in row)))
        writer.writeheader()
        writer.writerows({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()} for row in plotted)
    return paths


def _experiments(table: Table) -> list:
    """Table 1's experiments, "base2new" first, then in column order."""
    names = list(dict.fromkeys(g.key[0] for g in table.groups))
    return sorted(names, key=lambda e: e != "base2new")


def _value(table, row, group, metric):
    cell = table.cell(row, group, metric)
    return None if cell is None else cell.mean


def scatter(table1: Table, out_dir: str):
    """Base vs new accuracy of every method and dataset (the average row as a big star)."""
    experiments = _experiments(table1)
    if not experiments:
        return None, "Base-vs-new scatter: no base-to-new results"
    experiment = experiments[0]
    fig, axes = _figure(1, 1, figsize=(6.5, 6))
    ax = axes[0][0]
    plotted, points = [], 0
    seen_methods = {}
    groups = [g for g in table1.groups if g.key[0] == experiment]
    stars = {g.key for g in comparable_averages(table1, groups, "base")}  # Averages over the same datasets
    for g in groups:
        marker = MARKERS[seen_methods.setdefault(g.method, []).__len__() % len(MARKERS)]
        seen_methods[g.method].append(g)
        xs, ys, names = [], [], []
        for row, label in table1.rows:
            b, n = _value(table1, row, g, "base"), _value(table1, row, g, "new")
            if b is None or n is None or (row == AVERAGE and g.key not in stars):
                continue
            plotted.append({"method": g.label, "dataset": label, "base": b, "new": n})
            if row == AVERAGE:
                ax.scatter([b], [n], marker="*", s=260, color=color(g.method), edgecolor="black", zorder=3)
            else:
                xs.append(b), ys.append(n), names.append(label)
        if xs:
            points += len(xs)
            ax.scatter(xs, ys, color=color(g.method), marker=marker, label=g.label, alpha=0.85, zorder=2)
    if not points:
        return None, "Base-vs-new scatter: no dataset with both base and new accuracy"
    lo, hi = ax.get_xlim()[0], ax.get_xlim()[1]
    lo, hi = min(lo, ax.get_ylim()[0]), max(hi, ax.get_ylim()[1])
    pad = 0.05 * (hi - lo) or 1.0  # keep markers at the extremes fully inside the axes
    lo, hi = lo - pad, hi + pad
    ax.plot([lo, hi], [lo, hi], linestyle="--", color="black", linewidth=0.8, label="base = new")
    ax.scatter([], [], marker="*", s=160, color="white", edgecolor="black", label="Average (star)")
    ax.set_xlim(lo, hi), ax.set_ylim(lo, hi)
    ax.set_xlabel("Base-class accuracy (%)")
    ax.set_ylabel("New-class accuracy (%)")
    ax.set_title(f"Base vs new accuracy per dataset (experiment {experiment})")
    ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, out_dir, "figure_base_vs_new", plotted), None


def figure4(init: Table, length: Table, out_dir: str):
    """(a) initialisation and (b) context length: averaged base / new / H."""
    panels = []
    missing = []
    if any(init.cell(AVERAGE, g, "base") for g in init.groups):
        panels.append("init")
    else:
        missing.append("Figure 4a (initialisation): no averaged ablation results")
    if any(length.cell(AVERAGE, g, "base") for g in length.groups):
        panels.append("length")
    else:
        missing.append("Figure 4b (context length): no averaged ablation results")
    if not panels:
        return None, missing
    fig, axes = _figure(1, len(panels), figsize=(6 * len(panels), 4.2))
    metrics = (("base", "Base"), ("new", "New"), ("h", "H"))
    plotted = []
    for ax, panel in zip(axes[0], panels):
        if panel == "init":
            groups = comparable_averages(init, init.groups, "base")  # bars of Averages over the same datasets
            width = 0.8 / len(groups)
            for i, g in enumerate(groups):
                values = [_value(init, AVERAGE, g, m) or 0.0 for m, _ in metrics]
                for (m, _), v in zip(metrics, values):
                    plotted.append({"panel": "init", "method": g.label, "metric": m, "value": v})
                random = g.key[5] == ""
                bars = ax.bar(
                    [j + (i - (len(groups) - 1) / 2) * width for j in range(3)],
                    values,
                    width,
                    color=color(g.method),
                    alpha=0.45 if random else 0.95,
                    hatch="//" if random else None,
                    edgecolor="black",
                    label=g.label,
                )
                ax.bar_label(bars, labels=[f"{v:.1f}" for v in values], fontsize=7, padding=2)
            ax.set_xticks(range(3), [label for _, label in metrics])
            ax.set_xlabel("Metric (Average over datasets)")
            ax.set_title("(a) Context initialisation")
            top = max(_value(init, AVERAGE, g, m) or 0.0 for g in groups for m, _ in metrics)
            ax.set_ylim(0, top * 1.35)  # head-room above the bars for the legend
        else:
            by_method = {}
            for g in comparable_averages(length, length.groups, "base"):  # a line joins one dataset set
                by_method.setdefault(g.method, []).append(g)
            for method, groups in by_method.items():
                groups.sort(key=lambda g: g.key[4])
                xs = [g.key[4] for g in groups]
                for (m, label), style in zip(metrics, ("-", "--", ":")):
                    ys = [_value(length, AVERAGE, g, m) for g in groups]
                    for x, y in zip(xs, ys):
                        plotted.append({"panel": "length", "method": method, "metric": m, "n_ctx": x, "value": y})
                    ax.plot(
                        xs,
                        ys,
                        linestyle=style,
                        marker="o",
                        color=color(method),
                        label=f"{groups[0].label.split(' ')[0]} {label}",
                    )
                ax.set_xticks(sorted({x for x in xs}))
            ax.set_xlabel("Context length (tokens, random init)")
            ax.set_title("(b) Context length")
        ax.set_ylabel("Accuracy (%)")
        ax.legend(fontsize=8, loc="upper center" if panel == "init" else "best", ncol=2 if panel == "init" else 1)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Figure 4: ablations (base-to-new, averaged over datasets)")
    fig.tight_layout()
    return _save(fig, out_dir, "figure4_ablations", plotted), (missing or None)


def method_averages(table1: Table) -> tuple[str | None, list[dict]]:
    """(experiment, rows): for each column group of Table 1's first experiment ("base2new" when it has
        results) whose Average row has base, new and H over the same datasets as the widest of them
    (``gate.comparable_averages``), {"method", "label", "base", "new", "h"} and the
        paper's values as "paper_base", "paper_new", "paper_h" (None where the paper has none), and the
        method's colour as "color"."""
    experiments = _experiments(table1)
    if not experiments:
        return None, []
    experiment = experiments[0]
    rows = []
    for g in comparable_averages(table1, [g for g in table1.groups if g.key[0] == experiment], "h"):
        cells = {m: table1.cell(AVERAGE, g, m) for m in ("base", "new", "h")}
        if any(c is None or c.mean is None for c in cells.values()):
            continue
        row = {"method": g.method, "label": g.label, "color": color(g.method)}
        for m, c in cells.items():
            row[m], row[f"paper_{m}"] = c.mean, c.paper
        rows.append(row)
    return experiment, rows


def methods_comparison(table1: Table, out_dir: str):
    """Every method's Average base, new and H (Table 1) side by side; its published value as a black tick."""
    experiment, rows = method_averages(table1)
    if not rows:
        return None, "Methods comparison: no method has a complete Average row in Table 1"
    metrics = (("base", "Base", 0.95, None), ("new", "New", 0.6, "//"), ("h", "H", 0.35, ".."))
    fig, axes = _figure(1, 1, figsize=(max(6.0, 1.6 * len(rows) + 2), 4.6))
    ax = axes[0][0]
    width = 0.26
    published = False
    for i, row in enumerate(rows):
        for j, (m, _, alpha, hatch) in enumerate(metrics):
            x = i + (j - 1) * width
            bar = ax.bar([x], [row[m]], width, color=color(row["method"]), alpha=alpha, hatch=hatch, edgecolor="black")
            ax.bar_label(bar, labels=[f"{row[m]:.1f}"], fontsize=7, label_type="center", rotation=90)
            if row[f"paper_{m}"] is not None:
                published = True
                ax.plot([x - width / 2, x + width / 2], [row[f"paper_{m}"]] * 2, color="black", linewidth=2.2)
    ax.set_xticks(range(len(rows)), [row["label"] for row in rows], rotation=20, ha="right")
    handles = [
        Rectangle((0, 0), 1, 1, facecolor="#bbbbbb", alpha=a, hatch=h, edgecolor="black") for _, _, a, h in metrics
    ]
    labels = [label for _, label, _, _ in metrics]
    if published:
        handles.append(Line2D([0], [0], color="black", linewidth=2.2))
        labels.append("published (own paper / README)")
    ax.legend(handles, labels, fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.set_ylabel("Accuracy (%), average over datasets")
    ax.set_ylim(0, 1.15 * max(max(r[m] for m, _, _, _ in metrics) for r in rows))
    ax.set_title(f"Base-to-new: every method, Table 1's Average row (experiment {experiment})")
    ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return _save(fig, out_dir, "figure_methods_base_new_h", rows), None
