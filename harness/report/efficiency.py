"""What each method of a study costs: ``efficiency_<experiment>.{md,csv,tex}`` and ``figure_cost_vs_<metric>``.

The numbers are the ``cost`` blocks the runner writes into every record (``harness.cost``), of the
records the gate shows (``gate.select``: the newest settings run of each family, nothing superseded).
One row per method of the study, named as the records name it (``coop``; ``<method>/<config>`` where
the study runs several configs of one method):

    learnable_params   the records' ``num_trainable_parameters`` (a range where they differ)
    gflops_per_image   median over the method's evaluations (the text side grows with the class count)
    train_s_median     median training time over the method's training jobs; train_s_total: their sum
    eval_images_per_s  median over evaluations that ran the image tower (those served by the feature
                       cache only when no other exists, marked *)
    peak_mem_mb        the largest peak over the method's jobs
    device, jobs       where it ran; how many jobs its records come from

Times are comparable only when measured on one device: the table's note names the devices, and a
method measured on several says so in its row. Records written before costs were kept show blanks.

The figure puts the study's headline metric (the gate's Average cells: H for base-to-new, accuracy
otherwise) against the median training time per job (log axis), one point per method, and draws the
Pareto front (less time, higher metric); a method that trains nothing (zero-shot) is a dashed line. A
study whose plotted training times come from several devices gets no panel (the report says why): its
front would rank the machines.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
from dataclasses import dataclass, field

from harness.report.figures import _figure, _save, color
from harness.report.render import latex_escape
from harness.report.tables import AVERAGE, Table, is_zero_shot, method_names, method_rank, variant

COLUMNS = (
    "method",
    "learnable_params",
    "gflops_per_image",
    "train_s_median",
    "train_s_total",
    "eval_images_per_s",
    "peak_mem_mb",
    "device",
    "jobs",
)
CACHED_MARK = "*"


@dataclass
class Efficiency:
    experiment: str
    rows: list  # [{column: value}] in COLUMNS order, methods in the report's order
    notes: list = field(default_factory=list)
    methods: dict = field(default_factory=dict)  # row name -> {(method, config)} of its records
    variants: dict = field(default_factory=dict)  # row name -> {tables.variant} of its records: its columns
    trains: dict = field(default_factory=dict)  # row name -> whether any of its records learned a prompt
    shots: dict = field(default_factory=dict)  # row name -> the shot counts its prompts were learned with
    train_s_at: dict = field(default_factory=dict)  # row name -> {shot count: median training time there}
    devices: list = field(default_factory=list)  # where the study's records were measured

    @property
    def key(self) -> str:
        return f"efficiency_{self.experiment}"

    @property
    def title(self) -> str:
        return f"Efficiency of {self.experiment}: what each method costs"

    @property
    def measured(self) -> bool:
        """Does any record of the study carry a cost? (else the table would hold blanks only)"""
        return bool(self.devices)

    def frame(self):
        """The table as shown (strings), for W&B."""
        import pandas as pd

        return pd.DataFrame([{c: _text(row[c]) for c in COLUMNS} for row in self.rows], columns=list(COLUMNS))


def _median(values: list) -> float | None:
    values = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return float(statistics.median(values)) if values else None


def _job(record: dict) -> tuple:
    """Which job wrote a record: a training job's evaluations share its cost of training."""
    return (record.get("job"), record.get("fingerprint"), record.get("run_dir"))


def _params(records: list[dict]):
    found = sorted(
        {
            int(v)
            for r in records
            if isinstance(v := (r.get("metrics") or {}).get("num_trainable_parameters"), (int, float))
        }
    )
    if not found:
        return None
    return found[0] if len(found) == 1 else (found[0], found[-1])  # a range: DePT's grows with the class count


def train_times(records: list[dict]) -> list[float]:
    """The training time of each training job among ``records``, counted once per job (a job's records,
    one per evaluation, all carry it)."""
    jobs: dict = {}
    for r in records:
        jobs.setdefault(_job(r), []).append(r)
    trained = [
        next((r["cost"]["train_s"] for r in recs if (r.get("cost") or {}).get("train_s") is not None), None)
        for recs in jobs.values()
    ]
    return [t for t in trained if t is not None]


def method_row(name: str, records: list[dict]) -> tuple[dict, list[str]]:
    """(the efficiency row of one method's records, notes about it)."""
    notes = []
    costs = [r["cost"] for r in records if isinstance(r.get("cost"), dict)]
    trained = train_times(records)
    uncached = [c.get("eval_images_per_s") for c in costs if not c.get("eval_features_cached")]
    throughput = _median(uncached)
    cached = throughput is None and _median([c.get("eval_images_per_s") for c in costs]) is not None
    if cached:
        throughput = _median([c.get("eval_images_per_s") for c in costs])
    devices = sorted({str(c["device"]) for c in costs if c.get("device")})
    if len(devices) > 1:
        notes.append(
            f"{name} was measured on several devices ({'; '.join(devices)}): its times mix them and compare with "
            "no other row."
        )
    if len(costs) < len(records):
        notes.append(
            f"{len(records) - len(costs)} record(s) of {name} carry no cost (written before costs were recorded)."
        )
    kinds = sorted({str(c.get("peak_mem_kind")) for c in costs if c.get("peak_mem_kind")})
    if len(kinds) > 1:
        notes.append(f"{name}'s peak memory mixes kinds ({', '.join(kinds)}).")
    peaks = [c.get("peak_mem_mb") for c in costs if isinstance(c.get("peak_mem_mb"), (int, float))]
    row = {
        "method": name,
        "learnable_params": _params(records),
        "gflops_per_image": _median([c.get("gflops_per_image") for c in costs]),
        "train_s_median": _median(trained),
        "train_s_total": float(sum(trained)) if trained else None,
        "eval_images_per_s": throughput,
        "peak_mem_mb": max(peaks) if peaks else None,
        "device": " + ".join(devices) or None,
        "jobs": len({_job(r) for r in records}),
    }
    if cached:
        row["eval_images_per_s"] = f"{throughput:.1f}{CACHED_MARK}"
    return row, notes


def efficiency_tables(shown: list[dict], experiments=None) -> dict[str, Efficiency]:
    """{experiment: its efficiency table} from the records the gate shows (``gate.select``), for the
    experiments asked for (a name or a list; a dict of table keys or None: every experiment)."""
    wanted = None if experiments is None or isinstance(experiments, dict) else experiments
    wanted = {wanted} if isinstance(wanted, str) else wanted
    by_experiment: dict = {}
    for r in shown:
        if wanted is None or r.get("experiment") in set(wanted):
            by_experiment.setdefault(str(r.get("experiment")), []).append(r)
    out = {}
    for experiment, recs in sorted(by_experiment.items()):
        names = method_names(recs)
        table = Efficiency(experiment, [])
        groups: dict = {}
        for r in recs:
            groups.setdefault(names[id(r)], []).append(r)
        for name in sorted(groups, key=lambda n: (method_rank(groups[n][0]["method"]), n)):
            row, notes = method_row(name, groups[name])
            table.rows.append(row)
            table.notes += notes
            table.methods[name] = {(r.get("method"), r.get("config")) for r in groups[name]}
            table.variants[name] = {variant(r) for r in groups[name]}
            table.trains[name] = not all(is_zero_shot(r) for r in groups[name])
            table.shots[name] = sorted(
                {int(r["shots"]) for r in groups[name] if not is_zero_shot(r) and r.get("shots")}
            )
            table.train_s_at[name] = {
                k: _median(train_times([r for r in groups[name] if not is_zero_shot(r) and r.get("shots") == k]))
                for k in table.shots[name]
            }
        devices = sorted({str(c["device"]) for r in recs if isinstance(c := r.get("cost"), dict) and c.get("device")})
        table.devices = devices
        where = f"on {devices[0]}" if len(devices) == 1 else f"on several devices ({'; '.join(devices)})"
        table.notes.insert(
            0,
            f"Times measured by the runner {where}." if devices else "No record of this study carries a cost.",
        )
        table.notes.insert(
            1,
            "Times from different devices are not comparable and are never compared. train_s: training epochs "
            "only (no evaluation), a resumed job summed over its starts; median and total over the method's "
            "training jobs. GFLOPs: one image at the evaluated class count (median over evaluations). "
            "Peak memory: the largest over the method's jobs.",
        )
        if any(isinstance(row["eval_images_per_s"], str) for row in table.rows):
            table.notes.append(
                f"{CACHED_MARK}: every evaluation of this method read its image features from the feature cache: the "
                "throughput is the scoring's alone."
            )
        out[experiment] = table
    return out


# -- rendering ------------------------------------------------------------------------------------


def _text(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, tuple):
        return "–".join(_text(v) for v in value)
    if isinstance(value, str) and value.endswith(CACHED_MARK):
        return _text(float(value[: -len(CACHED_MARK)])) + CACHED_MARK
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 10 else f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(table: Efficiency) -> str:
    lines = [f"## {table.title}", "", "| " + " | ".join(COLUMNS) + " |"]
    lines.append("|" + "|".join("---" for _ in COLUMNS) + "|")
    lines += ["| " + " | ".join(_text(row[c]) for c in COLUMNS) + " |" for row in table.rows]
    return "\n".join(lines + [""] + [f"* {note}" for note in table.notes]) + "\n"


def latex(table: Efficiency) -> str:
    head = " & ".join(latex_escape(c) for c in COLUMNS)
    body = [" & ".join(latex_escape(_text(row[c])) for c in COLUMNS) + r" \\" for row in table.rows]
    return "\n".join(
        [r"\begin{tabular}{l" + "r" * (len(COLUMNS) - 3) + "lr}", r"\toprule", head + r" \\", r"\midrule"]
        + body
        + [r"\bottomrule", r"\end{tabular}", ""]
    )


def _csv_value(value):
    if value is None:
        return ""
    return "–".join(map(str, value)) if isinstance(value, tuple) else value


def csv_text(table: Efficiency) -> str:
    """The numbers, one line per method (empty where there are none)."""
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(COLUMNS), lineterminator="\n")
    writer.writeheader()
    writer.writerows({c: _csv_value(row[c]) for c in COLUMNS} for row in table.rows)
    return out.getvalue()


def write_efficiency(table: Efficiency, out_dir: str) -> dict:
    """Write the table as md, csv (the numbers, one line per method) and tex; {ext: path}."""
    os.makedirs(out_dir, exist_ok=True)
    paths = {ext: os.path.join(out_dir, f"{table.key}.{ext}") for ext in ("md", "csv", "tex")}
    with open(paths["md"], "w") as f:
        f.write(markdown(table))
    with open(paths["csv"], "w", newline="") as f:
        f.write(csv_text(table))
    with open(paths["tex"], "w") as f:
        f.write(latex(table))
    return paths


# -- the figure -----------------------------------------------------------------------------------


def pareto_front(points: list[tuple]) -> list[tuple]:
    """The points (name, time, metric) no other point beats: none takes at most as long with at least
    as high a metric and is better in one of them. Sorted by time."""
    front = [
        p for p in points if not any(q[1] <= p[1] and q[2] >= p[2] and (q[1] < p[1] or q[2] > p[2]) for q in points)
    ]
    return sorted(front, key=lambda p: (p[1], -p[2]))


def headline(experiment: str, study: Efficiency, tables: dict) -> tuple[str | None, dict]:
    """(metric, {row name: Average Cell}) of a study: H of Table 1's column groups of this experiment;
    otherwise accuracy, from the table that holds the experiment (cross-dataset, domain generalisation,
    the few-shot table at each method's shot count, Table 4). A row is matched to the column of its own
    variant (method, config, backbone, shots, context, settings run): two rows of one method and config
    (on two backbones, at two shot counts) each get their own column's Average."""
    by_variant = {v: n for n, variants in study.variants.items() for v in variants}

    def name_of(key):
        return by_variant.get(key)

    found: dict = {}
    table1 = tables.get("table1_base2new")
    for g in table1.groups if table1 else []:
        cell = table1.cell(AVERAGE, g, "h")
        name = name_of(g.key[1]) if g.key[0] == experiment else None
        if name and cell is not None and cell.mean is not None:
            found.setdefault(name, cell)
    if found:
        return "H", found
    transfer = {"crossdataset": "table2_crossdataset", "domaingen": "table3_domaingen"}.get(experiment)
    candidates: list[tuple[Table, object]] = []
    if transfer and tables.get(transfer):
        candidates += [(tables[transfer], g) for g in tables[transfer].groups]
    table4 = tables.get("table4_class_incremental")
    candidates += [(table4, g) for g in (table4.groups if table4 else []) if g.key[0] == experiment]
    for table, g in candidates:
        key = g.key[1] if g.key and isinstance(g.key[0], str) and isinstance(g.key[1], tuple) else g.key
        name = name_of(key)
        cell = table.cell(AVERAGE, g, "acc")
        if name and cell is not None and cell.mean is not None:
            found.setdefault(name, cell)
    if experiment == "fewshot":
        shots = {int(k[len("fewshot_") : -len("shot")]): t for k, t in tables.items() if k.startswith("fewshot_")}
        for name, variants in study.variants.items():
            curves = {(v[0], v[2], v[6]) for v in variants}  # a few-shot column: method, backbone, settings run
            # A learner at the most shots it learned with (the figure takes its training time there);
            # zero-shot CLIP beside the most shots of the study.
            k = (study.shots.get(name) or [max(shots, default=None)])[-1]
            t = shots.get(k)
            g = next((g for g in t.groups if g.key in curves), None) if t else None
            cell = t.cell(AVERAGE, g, "acc") if g else None
            if cell is not None and cell.mean is not None:
                found.setdefault(name, cell)
    return ("accuracy", found) if found else (None, {})


def figure_cost(efficiency: dict[str, Efficiency], tables: dict, out_dir: str):
    """``figure_cost_vs_<metric>``: one panel per study with that headline metric; (paths by figure
    name, (experiment, reason) for each study not drawn)."""
    panels: dict = {}
    why = []
    for experiment, table in efficiency.items():
        metric, cells = headline(experiment, table, tables)
        rows = {row["method"]: row for row in table.rows}
        points, lines = [], []
        for name, cell in cells.items():
            time_s = rows[name]["train_s_median"] if name in rows else None
            if experiment == "fewshot" and table.shots.get(name):  # the time at the shot count plotted
                time_s = table.train_s_at[name].get(table.shots[name][-1])
            (method,) = {m for m, _ in table.methods[name]}
            if time_s is not None and time_s > 0:
                points.append((name, time_s, cell.mean, method, cell.note))
            elif not table.trains[name]:
                lines.append((name, cell.mean, method, cell.note))
        if not points:
            why.append(
                (experiment, f"Cost figure: no method of {experiment} has both a training time and a headline Average")
            )
            continue
        devices = sorted({d for name, *_ in points for d in str(rows[name]["device"]).split(" + ")})
        if len(devices) > 1:  # a Pareto front across devices would rank the machines, not the methods
            why.append(
                (
                    experiment,
                    f"Cost figure: the training times of {experiment} were measured on several devices "
                    f"({'; '.join(devices)}) and are not set side by side; re-run its methods on one device",
                )
            )
            continue
        panels.setdefault(metric, []).append((experiment, points, lines))
    figures = {}
    for metric, studies in panels.items():
        name = f"figure_cost_vs_{metric.lower()}"
        fig, axes = _figure(1, len(studies), figsize=(6.2 * len(studies), 4.6))
        plotted = []
        for ax, (experiment, points, lines) in zip(axes[0], studies):
            front = pareto_front([p[:3] for p in points])
            on_front = {p[0] for p in front}
            for label, time_s, value, method, note in points:
                ax.scatter([time_s], [value], color=color(method), s=60, edgecolor="black", zorder=3)
                ax.annotate(
                    f"{label}{' ' + note if note else ''}",
                    (time_s, value),
                    fontsize=7,
                    xytext=(4, 4),
                    textcoords="offset points",
                )
                plotted.append(
                    {
                        "experiment": experiment,
                        "method": label,
                        "train_s_median": time_s,
                        metric: value,
                        "pareto": label in on_front,
                        "note": note,
                    }
                )
            ax.plot(
                [p[1] for p in front],
                [p[2] for p in front],
                color="black",
                linewidth=1,
                drawstyle="steps-post",  # the best metric reached within a given time
                zorder=2,
                label="Pareto front",
            )
            for label, value, method, note in lines:
                ax.axhline(value, color=color(method), linestyle="--", linewidth=1, label=f"{label} (trains nothing)")
                plotted.append(
                    {
                        "experiment": experiment,
                        "method": label,
                        "train_s_median": None,
                        metric: value,
                        "pareto": None,
                        "note": note,
                    }
                )
            ax.set_xscale("log")
            ax.set_xlabel("training time per job, median (s, log scale)")
            ax.set_ylabel(f"{metric}, Average over datasets (%)")
            ax.set_title(f"{experiment}: {metric} against training time")
            ax.grid(alpha=0.3, which="both")
            ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        figures[name] = _save(fig, out_dir, name, plotted)
    return figures, why
