"""Which differences are real, per study: the frames of ``harness.report.comparison`` fed from the report's
one gate, the comparison and leaderboard files, and the mark on the tables' Averages.

The frames read what each table cell shows (``Gate.cell_sources``): the settings run the gate chose,
never a superseded record, so a comparison can never disagree with the table beside it.

* Base-to-new (Table 1): per (method, dataset, seed) the H of that seed's base and new accuracy
  (``comparison.harmonic_frame``); metric ``H``.
* Few-shot (``fewshot_<K>shot``): the accuracy at each shot count, one comparison per K; metric
  ``accuracy@K``.
* Transfer (Tables 2 and 3): the target accuracy (the source row left out); metric ``accuracy``.

Pairs are like with like: a method is compared on a dataset only where it ran at the baseline's backbone
and shot count (zero-shot CLIP at any shot count), and a method with no (dataset, seed) pair with the
baseline gets no row; ``Study.notes`` says what was left out and why.

A study is an experiment: its records in those tables are compared with its baseline, the method its
YAML names (``report: {baseline: ...}``, recorded by the sweep in ``expected.json`` beside the store),
or the one ``--baseline`` names for every study. A study with no baseline (e.g. bigger_coop) gets no
comparison. Methods are named as the records name them (``coop``), or ``<method>/<config>`` where the
study ran several configs of one method on one dataset at one shot count (the ablations' CoCoOp arms).

Files, per study: ``comparison_<experiment>.{md,csv}`` (``comparison.COLUMNS``, the Average row
labelled ``Average``, NaN empty), ``leaderboard_<experiment>.md`` (a section per metric) and
``figure_critical_difference_<experiment>[_<K>shot].{png,pdf,csv}``: always named after the study (and
the shot count), so that several studies in one store never overwrite each other's diagram.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harness.report import comparison as stats
from harness.report.gate import MIXED, Gate
from harness.report.tables import AVERAGE, Table, accuracy, is_zero_shot, method_names

#: The mark after an Average within noise of the study's baseline (†, ‡, § say what went into a number).
WITHIN_NOISE_MARK = "≈"
AVERAGE_LABEL = "Average"
FEWSHOT_PREFIX = "fewshot_"


class BaselineError(ValueError):
    """A baseline that no study has (names the methods present)."""


@dataclass
class Study:
    """One experiment's comparisons: {metric: tidy frame} and {metric: comparison table}."""

    experiment: str
    baseline: str | None
    frames: dict
    comparisons: dict
    # [(table, headline metric, {column group key: method name})]: where each method's Average stands
    columns: list = dataclasses.field(default_factory=list)
    # {method name: [table titles]} whose Average there mixes settings (§): set by ``note_mixed``
    mixed: dict = dataclasses.field(default_factory=dict)
    # what the comparison left out and why (another backbone or shot count than the baseline's, no pair)
    notes: list = dataclasses.field(default_factory=list)

    def table(self) -> pd.DataFrame:
        """Every metric's comparison, one after another (``comparison.COLUMNS``)."""
        if not self.comparisons:
            return pd.DataFrame(columns=list(stats.COLUMNS))
        return pd.concat(list(self.comparisons.values()), ignore_index=True)

    def verdict(self, method: str, metric: str) -> str | None:
        table = self.comparisons.get(metric)
        if table is None:
            return None
        rows = table[(table["method"] == method) & (table["dataset"] == AVERAGE)]
        return rows["verdict"].iloc[0] if len(rows) else None

    def versus_baseline(self, method: str, metric: str) -> str:
        """The Average comparison with the baseline in one cell: Δ [95 % interval] and the verdict."""
        if method == self.baseline:
            return "baseline"
        table = self.comparisons.get(metric)
        rows = table[(table["method"] == method) & (table["dataset"] == AVERAGE)] if table is not None else []
        if not len(rows):
            return ""
        row = rows.iloc[0]
        interval = f" [{_fmt(row.ci_low)}, {_fmt(row.ci_high)}]" if not pd.isna(row.ci_low) else ""
        return f"{row.mean_delta:+.2f}{interval} {row.verdict}"


def _metric_of(table: Table) -> tuple[str, str] | None:
    """(comparison metric, the table's headline metric key) of a study table, None for the others."""
    if table.key == "table1_base2new":
        return "H", "h"
    if table.key in ("table2_crossdataset", "table3_domaingen"):
        return "accuracy", "acc"
    if table.key.startswith(FEWSHOT_PREFIX):
        return f"accuracy@{table.key[len(FEWSHOT_PREFIX) : -len('shot')]}", "acc"
    return None


def _sources(ctx: Gate, table: Table) -> list[tuple]:
    """[(row, group key, record)] of the table's cells, the transfer tables' source row left out."""
    return [
        (row, gkey, r)
        for (row, gkey), recs in ctx.cell_sources(table).items()
        if row != AVERAGE and row != table.source
        for r in recs
    ]


def _setting(record: dict) -> tuple:
    """What a pair must share besides the dataset and seed: the backbone, and the shot count of a learned
    prompt (zero-shot CLIP learns nothing: any shot count pairs with it)."""
    return record.get("backbone"), None if is_zero_shot(record) else record.get("shots")


def _show_setting(setting: tuple) -> str:
    backbone, shots = setting
    return f"{backbone}" + ("" if shots is None else f", {shots} shots")


def _alike(ours: set, theirs: set) -> bool:
    if len(ours) != 1 or len(theirs) != 1:
        return False
    (backbone, shots), (their_backbone, their_shots) = next(iter(ours)), next(iter(theirs))
    return backbone == their_backbone and (shots is None or their_shots is None or shots == their_shots)


def _like_the_baseline(frame: pd.DataFrame, sources: list[tuple], names: dict, baseline: str, metric: str):
    """(the frame's rows of the baseline and of each method on the datasets where it ran at the baseline's
    backbone and shot count, [why the others are left out]): a pair across backbones or shot counts
    measures them, not the method."""
    settings: dict = {}
    for row, _, r in sources:
        settings.setdefault((names[id(r)], row), set()).add(_setting(r))
    keep, apart, absent = [], {}, {}
    for method, dataset in zip(frame["method"], frame["dataset"]):
        ours, theirs = settings.get((method, dataset), set()), settings.get((baseline, dataset), set())
        like = method == baseline or _alike(ours, theirs)
        keep.append(like)
        if not like and theirs:
            shown = tuple("; ".join(map(_show_setting, sorted(s, key=str))) for s in (ours, theirs))
            apart.setdefault((method, shown), []).append(dataset)
        elif not theirs and method != baseline:
            absent.setdefault(method, []).append(dataset)
    notes = [
        f"{metric}: {baseline} has no records on {', '.join(dict.fromkeys(datasets))}: {method}'s comparison "
        "(its Average too) is over its other datasets only, not over those of its Average in the tables."
        for method, datasets in absent.items()
    ]
    notes += [
        f"{metric}: {method} is not compared with {baseline} on {', '.join(dict.fromkeys(datasets))}: it ran at "
        f"{ours} there, the baseline at {theirs} (a difference across backbones or shot counts is not the method's)."
        for (method, (ours, theirs)), datasets in apart.items()
    ]
    return frame[keep].reset_index(drop=True), notes


def _frame(metric: str, sources: list[tuple], names: dict) -> pd.DataFrame:
    """The tidy frame (``comparison.FRAME_COLUMNS``) of one study's records in one table."""
    if metric == "H":
        by_seed: dict = {}
        for row, _, r in sources:
            seed = None if is_zero_shot(r) else r.get("seed")
            by_seed.setdefault((names[id(r)], row, seed), {})[r.get("subsample")] = accuracy(r)
        rows = [(m, d, s, v.get("base", np.nan), v.get("new", np.nan)) for (m, d, s), v in by_seed.items()]
        return stats.harmonic_frame(pd.DataFrame(rows, columns=["method", "dataset", "seed", "base", "new"]))
    values: dict = {}
    for row, _, r in sources:  # later records win, as in the cell (a rerun of the same job)
        values[(names[id(r)], row, None if is_zero_shot(r) else r.get("seed"))] = accuracy(r)
    return pd.DataFrame([(*k, v) for k, v in values.items()], columns=list(stats.FRAME_COLUMNS))


def study_baselines(expectations: dict) -> dict:
    """{experiment: baseline} that the sweeps recorded beside the store (``expected.json``)."""
    return {name: e["baseline"] for name, e in (expectations or {}).items() if e.get("baseline")}


def build_studies(ctx: Gate, tables: dict, baseline: str | None = None) -> dict:
    """{experiment: Study} of every study with a baseline, and the ≈ mark on the Averages of the tables'
    columns within noise of it. ``baseline`` (``--baseline``) replaces every study's own; a name no study
    has is a ``BaselineError`` listing the methods present."""
    recorded = study_baselines(ctx.expectations)
    per_study: dict = {}  # experiment -> [(table, metric, headline, sources)]
    for table in tables.values():
        found = _metric_of(table)
        if found is None or table.empty:
            continue
        by_experiment: dict = {}
        for source in _sources(ctx, table):
            by_experiment.setdefault(source[2].get("experiment"), []).append(source)
        for experiment, sources in by_experiment.items():
            per_study.setdefault(experiment, []).append((table, *found, sources))
    studies, present = {}, {}
    for experiment, parts in per_study.items():
        names = method_names([r for *_, sources in parts for _, _, r in sources])
        frames = {metric: _frame(metric, sources, names) for _, metric, _, sources in parts}
        present[experiment] = sorted({m for f in frames.values() for m in f["method"]})
        chosen = baseline or recorded.get(experiment)
        comparisons, notes = {}, []
        if chosen:
            for _, metric, _, sources in parts:
                frame = frames[metric]
                if chosen in set(frame["method"]) and len(set(frame["method"])) > 1:
                    paired, apart = _like_the_baseline(frame, sources, names, chosen, metric)
                    comparisons[metric] = stats.comparison(paired, chosen, metric)
                    notes += apart
                    notes += [
                        f"{metric}: {m} is not compared with {chosen}: no (dataset, seed) pair with it "
                        "(other seeds or other datasets)."
                        for m in stats.unpaired(paired, comparisons[metric], chosen)
                        if m in set(paired["method"])
                    ]
        studies[experiment] = Study(experiment, chosen, frames, comparisons, notes=notes)
        for table, metric, headline, sources in parts:
            _mark(table, studies[experiment], metric, headline, sources, names)
            by_group = {gkey: names[id(r)] for _, gkey, r in sources}
            studies[experiment].columns.append((table, headline, by_group))
    if baseline and not any(s.comparisons for s in studies.values()):
        listing = "; ".join(f"{e}: {', '.join(m)}" for e, m in present.items()) or "no study has records"
        raise BaselineError(f"--baseline {baseline!r}: no study has records of it. Methods present: {listing}.")
    return studies


def _mark(table: Table, study: Study, metric: str, headline: str, sources: list, names: dict) -> None:
    """≈ after the headline Average of each column whose method is within noise of the baseline."""
    by_group: dict = {}
    for _, gkey, r in sources:
        by_group.setdefault(gkey, set()).add(names[id(r)])
    marked = False
    for group in table.groups:
        methods = by_group.get(group.key, set())
        cell = table.cell(AVERAGE, group, headline)
        if len(methods) != 1 or cell is None:
            continue
        if study.verdict(next(iter(methods)), metric) == stats.WITHIN_NOISE:
            cell.flag = WITHIN_NOISE_MARK
            marked = True
    note = (
        f"{WITHIN_NOISE_MARK} within noise of {study.baseline} in {study.experiment}: the 95 % bootstrap interval "
        f"of its Average difference ({metric}, over datasets and seeds) includes 0 "
        f"(comparison_{study.experiment}.csv)."
    )
    if marked and note not in table.notes:
        table.notes.append(note)


def note_mixed(studies: dict) -> None:
    """Once the gate has finished the tables (its § marks): each study's methods whose Average mixes
    settings, so that their comparison and rank say so instead of passing for like-for-like numbers."""
    for study in studies.values():
        study.mixed = {}
        for table, headline, by_group in study.columns:
            for group in table.groups:
                cell = table.cell(AVERAGE, group, headline)
                if cell is not None and MIXED in cell.note and group.key in by_group:
                    study.mixed.setdefault(by_group[group.key], []).append(table.title)


def _mixed_notes(study: Study) -> list[str]:
    return [
        f"§ The Average of {method} mixes settings across datasets ({'; '.join(dict.fromkeys(titles))}: see its "
        "notes): its comparison and rank are not like-for-like. Re-run its datasets alike (or see --all-variants)."
        for method, titles in sorted(study.mixed.items())
    ]


# ----------------------------------------------------------------------------------------------
# Files


def _fmt(value, digits: int = 2) -> str:
    return "" if value is None or pd.isna(value) else f"{value:.{digits}f}"


def comparison_csv_frame(study: Study) -> pd.DataFrame:
    """The comparison as written: the Average rows labelled ``Average``."""
    table = study.table().copy()
    table["dataset"] = table["dataset"].replace({AVERAGE: AVERAGE_LABEL})
    return table


def comparison_markdown(study: Study) -> str:
    table = comparison_csv_frame(study)
    lines = [
        f"## Comparison with {study.baseline}: {study.experiment}",
        "",
        "| " + " | ".join(stats.COLUMNS) + " |",
        "|" + "|".join(["---"] * 4 + ["---:"] * 5 + ["---"]) + "|",
    ]
    for row in table.itertuples(index=False):
        cells = [row.method, row.baseline, row.metric, row.dataset, str(row.n_pairs)]
        cells += [_fmt(row.mean_delta), _fmt(row.ci_low), _fmt(row.ci_high), _fmt(row.p_value, 3), row.verdict]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "Pairs are (dataset, seed): the same seed gives both methods the same few-shot draw; a method without seeds "
        "(zero-shot CLIP) pairs with every seed. Per dataset: mean difference over seeds (method − baseline), its 95 % "
        "Student-t interval and the paired t-test (none with one seed). Average: mean over datasets, the Wilcoxon "
        "signed-rank test over datasets and a 95 % bootstrap interval resampling datasets and seeds. Verdict: better / "
        "worse when the whole interval is above / below 0, else within noise.",
        "",
    ]
    lines += [*_mixed_notes(study), ""] if study.mixed else []
    lines += [*study.notes, ""] if study.notes else []
    return "\n".join(lines)


def leaderboard_markdown(study: Study) -> str:
    lines = [f"# Leaderboard: {study.experiment}", ""]
    for metric, frame in study.frames.items():
        board = stats.leaderboard(frame)
        lines += [
            f"## {metric}",
            "",
            f"| rank | method | average | mean rank | groups | vs {study.baseline or 'baseline'} |",
            "|---:|---|---:|---:|---|---|",
        ]
        for row in board.table.itertuples(index=False):
            versus = study.versus_baseline(row.method, metric)
            lines.append(
                f"| {row.rank} | {row.method} | {row.average:.2f} | {row.mean_rank:.2f} | {row.groups} | {versus} |"
            )
        lines.append("")
        if board.untested is None:
            friedman = (
                f"Friedman test over {len(board.datasets)} datasets: χ² = {board.friedman_statistic:.2f}, "
                f"p = {board.friedman_p:.3g}"
                if not np.isnan(board.friedman_p)
                else f"Over {len(board.datasets)} datasets"
            )
            lines.append(
                f"{friedman}; Nemenyi critical difference of mean ranks {board.critical_difference:.2f} at "
                f"α = {stats.ALPHA}. Methods sharing a letter in groups are not distinguishable."
            )
        lines += [f"* {note}" for note in board.notes] + [""]
        if metric == "H":  # what the pairs are, so not Table 1's H of the averaged base and new
            lines += ["The average is of the per-seed H (the comparison's pairs), not Table 1's H of the averages.", ""]
    lines.append(
        "Ranked by the average over datasets of each dataset's mean over seeds; mean rank over datasets (1 = best). "
        f"vs {study.baseline or 'baseline'}: the comparison's Average row (mean difference in points, its 95 % "
        "bootstrap interval over datasets and seeds, and the verdict: better / worse when the whole interval is "
        "above / below 0, else within noise)."
    )
    lines += ["", *_mixed_notes(study)] if study.mixed else []
    lines += ["", *study.notes] if study.notes else []
    return "\n".join(lines) + "\n"


def figure_name(experiment: str, metric: str) -> str:
    shots = metric.split("@")[1] + "shot" if "@" in metric else ""
    return "_".join(p for p in (stats.FIGURE_NAME, experiment, shots) if p)


def write_study(study: Study, out_dir: str) -> tuple[dict, dict, list[str]]:
    """({name: path} of the comparison and leaderboard files, {figure: paths}, [why no diagram])."""
    files, figures, missing = {}, {}, []
    if study.comparisons:
        stem = os.path.join(out_dir, f"comparison_{study.experiment}")
        comparison_csv_frame(study).to_csv(f"{stem}.csv", index=False, na_rep="")
        with open(f"{stem}.md", "w") as f:
            f.write(comparison_markdown(study))
        files[f"comparison_{study.experiment}"] = {"csv": f"{stem}.csv", "md": f"{stem}.md"}
    elif study.baseline:
        missing.append(f"{study.experiment}: no comparison: the baseline {study.baseline} has no records to pair with")
    missing += [f"comparison_{study.experiment}: {note}" for note in study.notes]
    if not study.baseline:
        return files, figures, missing
    path = os.path.join(out_dir, f"leaderboard_{study.experiment}.md")
    with open(path, "w") as f:
        f.write(leaderboard_markdown(study))
    files[f"leaderboard_{study.experiment}"] = {"md": path}
    for metric, frame in study.frames.items():
        name = figure_name(study.experiment, metric)
        paths, why = stats.figure_critical_difference(frame, out_dir, name)
        if paths:
            figures[name] = paths
        if why:
            missing.append(f"{name}: {why}")
    return files, figures, missing
