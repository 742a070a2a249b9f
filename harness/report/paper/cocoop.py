"""The CoCoOp paper's own table and figures (Zhou et al., CVPR 2022), reproduced as published.

Unlike the rest of the report, these do not read the method registry for what to show: they compare
two named methods as the paper does.

* Table 5 (``table5``): CoCoOp against a bigger CoOp on ImageNet, with the trainable-parameter count
  (``trainable_parameters``) of each of the paper's three models.
* Figure 3 (``figure3``): CoCoOp minus CoOp per dataset, new and base accuracy, from Table 1.
* The same difference per target of Tables 2 and 3 (``transfer_gap``).

A study's table that any method fills belongs in ``harness.report.builders``; a figure of every method
in ``harness.report.figures``.
"""

from __future__ import annotations

from matplotlib.patches import Rectangle

from harness.report.figures import _experiments, _figure, _save, _value, color
from harness.report.gate import Gate, pair
from harness.report.tables import (
    AVERAGE,
    BASE_NEW_H,
    Cell,
    Group,
    Table,
    dataset_label,
    effective_n_ctx,
    method_label,
    method_rank,
    trained_on_own_base,
    unique_labels,
    variant,
)

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
    names = unique_labels(
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


def _gap_bars(ax, pairs: list[tuple[str, float]], xlabel: str) -> None:
    """One panel of CoCoOp minus CoOp: a bar per (name, difference), coloured by the method ahead."""
    diffs = [d for _, d in pairs]
    bars = ax.bar(range(len(pairs)), diffs, color=[color("cocoop") if d >= 0 else color("coop") for d in diffs])
    ax.bar_label(bars, labels=[f"{d:+.2f}" for d in diffs], fontsize=7, padding=2)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(range(len(pairs)), [p[0] for p in pairs], rotation=45, ha="right")
    ax.set_ylabel("CoCoOp − CoOp accuracy (% points)")
    ax.set_xlabel(xlabel)
    ax.margins(y=0.15)


def _gap_legend() -> tuple[list, list[str]]:
    return [Rectangle((0, 0), 1, 1, color=color(m)) for m in ("cocoop", "coop")], ["CoCoOp better", "CoOp better"]


def figure3(table1: Table, out_dir: str):
    """CoCoOp minus CoOp per dataset, new (a) and base (b) accuracy, sorted bars."""
    for experiment in _experiments(table1):
        cocoop, coop = pair([g for g in table1.groups if g.key[0] == experiment], "cocoop", "coop")
        if coop and cocoop:
            break
    else:
        return None, "Figure 3: needs CoOp and CoCoOp base-to-new results of one experiment and backbone"
    fig, axes = _figure(1, 2, figsize=(12, 4.2))
    axes = axes[0]
    plotted = []
    for ax, metric, title in zip(axes, ("new", "base"), ("(a) New classes", "(b) Base classes")):
        pairs = []
        for row, _ in table1.rows:
            a, b = _value(table1, row, cocoop, metric), _value(table1, row, coop, metric)
            if row != AVERAGE and a is not None and b is not None:
                pairs.append((dataset_label(row), a - b))
        pairs.sort(key=lambda p: p[1], reverse=True)
        if not pairs:
            ax.set_visible(False)
            continue
        plotted += [{"panel": metric, "dataset": name, "cocoop_minus_coop": d} for name, d in pairs]
        _gap_bars(ax, pairs, "Dataset")
        ax.set_title(title)
    if not plotted:
        return None, "Figure 3: no dataset with both CoOp and CoCoOp results"
    fig.legend(*_gap_legend(), loc="upper right")
    fig.suptitle(f"Figure 3: CoCoOp vs CoOp, base-to-new (experiment {experiment})")
    fig.tight_layout()
    return _save(fig, out_dir, "figure3_cocoop_vs_coop", plotted), None


def transfer_gap(table: Table, out_dir: str, name: str):
    """CoCoOp minus CoOp on each target of Table 2 or 3 (its source and Average rows left out), sorted bars."""
    what = table.title.split(":")[0]
    cocoop, coop = pair(table.groups, "cocoop", "coop")
    if not (coop and cocoop):
        return None, f"{what}'s figure: needs CoOp and CoCoOp transfer results on one backbone"
    pairs = []
    for row, label in table.rows:
        a, b = _value(table, row, cocoop, "acc"), _value(table, row, coop, "acc")
        if row not in (AVERAGE, table.source) and a is not None and b is not None:
            pairs.append((label, a - b))
    if not pairs:
        return None, f"{what}'s figure: no target with both CoOp and CoCoOp results"
    pairs.sort(key=lambda p: p[1], reverse=True)
    fig, axes = _figure(1, 1, figsize=(max(5.0, 0.8 * len(pairs) + 2.5), 4.2))
    ax = axes[0][0]
    _gap_bars(ax, pairs, "Target dataset")
    ax.legend(*_gap_legend(), fontsize=8, loc="best")
    ax.set_title(f"{what}: CoCoOp vs CoOp per target", fontsize=10)
    fig.tight_layout()
    plotted = [{"dataset": label, "cocoop_minus_coop": d} for label, d in pairs]
    return _save(fig, out_dir, name, plotted), None
