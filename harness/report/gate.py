"""The one gate from result records to table cells: every table and figure of the report passes here.

Table builders (``builders``, ``fewshot``) choose rows, column groups and which published value a cell
is compared with; the gate decides what goes into each cell, and marks what falls short:

* **One settings run per cell.** Records of one *family* (experiment, method, config, where and on
  which classes the prompt was learned, shots, backbone; zero-shot CLIP: per evaluated dataset) may
  come from several settings runs (``harness.fingerprint``: other epochs, learning rate, options,
  data); a settings run is the fingerprint of the settings without the seed. The newest run of each
  family is shown and the others are listed as superseded (``select``); with ``all_variants`` each run
  is its own column group. A cell whose column spans families (the few-shot columns span configs) is
  narrowed again to its newest run (``cell_records``): no cell ever averages two settings runs.
* **Seeds (†).** Mean ± population std over the expected seeds (``expected.json`` beside the store,
  else every seed of the experiment); fewer is marked ``†(k/n seeds)`` and listed as missing. A record
  whose accuracy is not a finite number measured nothing: its seed counts as missing (and is listed).
* **Datasets (‡).** An Average is over the datasets complete for its column, out of those the
  experiment expects (``expected.json``) or, without one, those with records; fewer is ``‡(k/n)``. The
  Averages of one row are over one dataset set or say which datasets each holds (a table note), and a
  curve joins only points over the same datasets (``same_datasets``).
* **Settings across datasets (§).** A study runs one config at the same settings on every dataset;
  datasets of one config at different settings (a re-run of one, a ``--set`` on another) make the
  Average ``§(mixed settings)``, named in a note (the epochs of a method that trains for a budget of steps,
  CLIP-LoRA's, are each dataset's own: the steps an epoch takes differ with its size). A cell the notes
  name so (a superseded run's family, the dataset of a § Average off its config's settings, such an
  Average) carries the reason in
  ``Cell.rerun``, for a figure to mark the point; a figure draws only Averages over the dataset set
  ``comparable_points`` chooses.
* **Published values** are compared only for the backbone and protocol they were published for
  (``Paper.protocol``); a record of another backbone or shot count gets no paper value and no Δ, and
  the table's notes say why. A marked Average (†, ‡, §) is never compared.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from harness import fingerprint as fingerprints
from harness import results
from harness.report.tables import (
    AVERAGE,
    BASE2NEW_TABLES,
    LABEL_FIELD,
    OWN_EXPERIMENTS,
    STUDY_TABLES,
    TABLE_KEYS,
    Cell,
    Group,
    Paper,
    Table,
    accuracy,
    harmonic,
    is_zero_shot,
    method_info,
    method_label,
    ordered_datasets,
    short_key,
)

LEGACY = "no fingerprint"
# Settings that are each dataset's own (its name, its split's digest, its images) or each seed's: never a
# sign that a column's datasets were run at different settings.
OWN_SETTINGS = fingerprints.PER_DATASET | fingerprints.SEEDED
MIXED = "§(mixed settings)"


# ----------------------------------------------------------------------------------------------
# Settings runs


@dataclass
class Superseded:
    family: tuple
    label: str  # what differs, e.g. "epochs 10, precision fp32"
    shown: str  # the same of the newer settings run shown instead
    datasets: list
    count: int
    old_settings: dict | None = None  # the superseded run's settings, without the seed
    shown_settings: dict | None = None  # the newer run's, shown instead

    @property
    def method(self) -> str:
        return self.family[1]

    def text(self) -> str:
        experiment, method, config = self.family[:3]
        where = ", ".join(self.datasets)
        return (
            f"Superseded: {self.count} record(s) of {method} ({config or method}, {experiment}) on {where} "
            f"with {self.label}; shown instead: the newer {self.shown} (--all-variants shows both)."
        )


def family(record: dict) -> tuple:
    zero_shot = record.get("train_dataset") is None
    return (
        record.get("experiment"),
        record.get("method"),
        record.get("config"),
        record.get("train_dataset"),
        record.get("train_subsample"),
        record.get("shots"),
        record.get("backbone"),
        record.get("dataset") if zero_shot else None,
    )


def settings_run(record: dict) -> str:
    settings = record.get("settings")
    return fingerprints.variant_of(settings) if record.get("fingerprint") and settings else LEGACY


def _unseeded(settings: dict | None) -> dict:
    return {k: v for k, v in (settings or {}).items() if k not in fingerprints.SEEDED}


def _default(key: str):
    from harness.config import RunSpec

    fields = {f.name for f in dataclasses.fields(RunSpec)}
    return getattr(RunSpec(), key) if key in fields else None


def _labels(runs: dict) -> dict:
    """{run: the settings that differ between the runs, "key value, ..."} (a key a run leaves out is at
    its ``RunSpec`` default)."""
    settings = {run: _unseeded(s) for run, s in runs.items()}
    keys = sorted({k for s in settings.values() for k in s})
    filled = {run: {k: s.get(k, _default(k)) for k in keys} for run, s in settings.items()}
    differing = [k for k in keys if len({repr(f[k]) for f in filled.values()}) > 1]
    out = {}
    for run in runs:
        if run == LEGACY:
            out[run] = LEGACY
            continue
        out[run] = ", ".join(f"{k} {fingerprints.show(filled[run][k])}" for k in differing) or f"settings {run[:8]}"
    return out


def _newest_run(recs: list[dict]) -> tuple[list[dict], list[Superseded]]:
    """(the records of the newest settings run of ``recs``, the other runs as superseded)."""
    runs: dict = {}
    for r in recs:
        runs.setdefault(settings_run(r), r.get("settings"))
    if len(runs) <= 1:
        return recs, []
    labels = _labels(runs)
    newest = results.newest(recs)
    shown = settings_run(newest)
    superseded = []
    for run in runs:
        if run == shown:
            continue
        old = [r for r in recs if settings_run(r) == run]
        datasets = sorted({f"{r.get('dataset')}/{r.get('subsample')}" for r in old})
        superseded.append(
            Superseded(
                family(old[0]),
                labels[run],
                labels[shown],
                datasets,
                len(old),
                _unseeded(runs[run]),
                _unseeded(runs[shown]),
            )
        )
    return [r for r in recs if settings_run(r) == shown], superseded


def select(records: list[dict], all_variants: bool = False) -> tuple[list[dict], list[Superseded]]:
    """(records to tabulate, superseded settings runs): the newest run of each family. With
    ``all_variants`` every record is kept and those of families with several settings runs carry
    ``LABEL_FIELD`` (their column group's label)."""
    families: dict = {}
    for r in records:
        families.setdefault(family(r), []).append(r)
    kept, superseded = [], []
    for recs in families.values():
        if all_variants:
            runs: dict = {}
            for r in recs:
                runs.setdefault(settings_run(r), r.get("settings"))
            if len(runs) > 1:
                labels = _labels(runs)
                kept += [{**r, LABEL_FIELD: labels[settings_run(r)]} for r in recs]
                continue
            kept += recs
            continue
        shown, old = _newest_run(recs)
        kept += shown
        superseded += old
    return kept, superseded


def _column_settings(recs: list[dict]) -> dict | None:
    """The settings a cell's records share, but the dataset's own (None: a record without settings)."""
    if not recs or any(not r.get("settings") for r in recs):
        return None
    own = OWN_SETTINGS | ({"epochs"} if _budgets_steps(recs[0].get("method")) else set())
    return {k: v for k, v in recs[0]["settings"].items() if k not in own}


def _budgets_steps(method) -> bool:
    """Does the method train for a budget of steps (``step_schedule``: CLIP-LoRA's n_iters x shots)? Its epochs
    are then the ones those steps take on each dataset, which it refuses to differ from: a dataset's own."""
    import methods

    info = method_info(method) if method else None
    return info is not None and callable(getattr(methods.method_class(method), "step_schedule", None))


def _show_settings(settings: dict, keys: list[str]) -> str:
    return ", ".join(f"{k} {fingerprints.show(settings.get(k, _default(k)))}" for k in keys)


# ----------------------------------------------------------------------------------------------
# The gate


class Gate:
    """Records in, cells out (see the module's docstring). One per report; builders take it as ``ctx``."""

    def __init__(
        self,
        records: list[dict],
        experiments=None,
        expected_seeds=None,
        paper: Paper | None = None,
        with_paper=True,
        expectations: dict | None = None,
        seen: list[dict] | None = None,
        superseded: list[Superseded] | None = None,
    ):
        self.records = records
        self.experiments = experiments
        self.expected_seeds = None if expected_seeds is None else set(expected_seeds)
        self.paper = paper if with_paper else None
        # {experiment: {"datasets", "seeds", "shots", "ran"...}} recorded by the sweeps (harness.sweep)
        self.expectations = expectations or {}
        self.superseded = list(superseded or [])
        self.seeds_by_experiment: dict = {}
        for name, expected in self.expectations.items():
            self.seeds_by_experiment[name] = set(expected.get("seeds") or [])
        for r in records if seen is None else seen:  # seen: every settings run's records, not only those shown
            if not is_zero_shot(r) and r.get("seed") is not None:
                self.seeds_by_experiment.setdefault(r.get("experiment"), set()).add(r["seed"])
        # What went into each table's cells, for its notes and marks: {table key: {(row, group key): records}}
        self._cells: dict = {}
        self._cell_superseded: dict = {}
        self._notes: dict = {}
        # {table key: [(group key, {row: its settings that differ})]}: one config's datasets in a § Average
        self._mixed_rows: dict = {}

    # -- which records feed a table ------------------------------------------------------------

    def table_filter(self, table: str) -> Callable[[str], bool]:
        """Default: Tables 1 and 4 read every experiment but crossdataset/domaingen/ablations/fewshot;
        Table 2 reads crossdataset and Table 3 domaingen (each one's source row also the other's:
        their trainings are shared); Table 5 and the Figure 4 ablations read every experiment but
        crossdataset/domaingen/fewshot; the few-shot tables read fewshot. A list of names narrows every
        table to those; a dict {table: [names]} replaces a table's default."""
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

    def _expected(self, recs: list[dict], what: str) -> list:
        out = []
        for name in dict.fromkeys(r.get("experiment") for r in recs):
            out += (self.expectations.get(name) or {}).get(what) or []
        return list(dict.fromkeys(out))

    def expected_datasets(self, recs: list[dict]) -> list[str]:
        """The datasets the experiments of ``recs`` expect (from their sweeps' ``expected.json``)."""
        return self._expected(recs, "datasets")

    def expected_shots(self, recs: list[dict]) -> list[int]:
        """The shot counts the few-shot experiments of ``recs`` expect (``expected.json``)."""
        return sorted({int(k) for k in self._expected(recs, "shots")})

    def asks_for(self, table_key: str) -> bool:
        """Whether a sweep beside the store asked for this table (its study's ``STUDY_TABLES``, named by
        its ``expected.json``) and the report reads that study into it: only then is what it lacks missing."""
        short = short_key(table_key)
        reads = self.table_filter(short)
        return any(short in STUDY_TABLES.get(name, BASE2NEW_TABLES) and reads(name) for name in self.expectations)

    def datasets(self, recs: list[dict], known: tuple) -> list[str]:
        """A table's dataset rows: those with records and those the experiments expect, so that a short
        sweep is marked (‡) and listed, not hidden."""
        return ordered_datasets({r["dataset"] for r in recs} | set(self.expected_datasets(recs)), known)

    # -- cells -----------------------------------------------------------------------------------

    def cell_records(self, table: Table, recs: list[dict]) -> list[dict]:
        """The records of the newest settings run among a cell's (the others listed in the table's notes)."""
        kept, old = _newest_run(recs)
        self._cell_superseded.setdefault(table.key, []).extend(old)
        return kept

    def seeds_expected(self, recs: list[dict]) -> set:
        """The seeds a cell of ``recs`` averages over: those asked for, else its experiments' seeds."""
        if self.expected_seeds is not None:
            return set(self.expected_seeds)
        expected = set()
        for e in {r.get("experiment") for r in recs}:
            expected |= self.seeds_by_experiment.get(e, set())
        return expected

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
        expected = self.seeds_expected(recs)
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

    def add_seed_cell(
        self,
        table: Table,
        group: Group,
        row: str,
        metric: str,
        recs: list,
        paper: Callable | None,
        where: str | None = None,
    ) -> Cell | None:
        """One seed-averaged cell of one settings run, with its published value where the backbone and
        protocol are the published ones; an absent or incomplete cell goes to the missing list."""
        recs = self.cell_records(table, recs)
        where = where or f"{table.title.split(':')[0]}: {group.label} {row} {metric}"
        # A non-finite accuracy measured nothing: left out as a missing seed (†, listed), never averaged
        # into a nan cell or paired by the statistics beside the table.
        broken = [r for r in recs if not math.isfinite(accuracy(r))]
        if broken:
            recs = [r for r in recs if math.isfinite(accuracy(r))]
            seeds = ", ".join(str(r.get("seed")) for r in broken)
            table.missing.append(f"{where}: accuracy not a finite number in {len(broken)} record(s) (seed {seeds})")
        cell, why = self.seed_cell(recs)
        if cell is None:
            table.missing.append(f"{where}: no records" + (f" ({why})" if why else ""))
            return None
        if why:
            table.missing.append(f"{where}: {why}")
        if not is_zero_shot(recs[0]):  # what the cell shows, for the statistics beside it: its seeds only
            expected = self.seeds_expected(recs)
            recs = [r for r in recs if r.get("seed") in expected]
        self._cells.setdefault(table.key, {}).setdefault((row, group.key), []).extend(recs)
        cell.paper = self.published(table, paper, row, group, metric, recs)
        table.cells[(row, group.key, metric)] = cell
        return cell

    def add_base_new(
        self, table: Table, group: Group, row: str, base_recs: list, new_recs: list, paper: Callable | None
    ) -> None:
        """Seed-averaged base and new cells of one settings run and their H; gaps go to the missing list."""
        kept = {id(r) for r in self.cell_records(table, base_recs + new_recs)}  # one run: H pairs them
        base_recs = [r for r in base_recs if id(r) in kept]
        new_recs = [r for r in new_recs if id(r) in kept]
        for metric, recs in (("base", base_recs), ("new", new_recs)):
            self.add_seed_cell(table, group, row, metric, recs, paper)
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
            h.paper = self.published(table, paper, row, group, "h", base_recs + new_recs)
            table.cells[(row, group.key, "h")] = h

    def cell_sources(self, table: Table) -> dict:
        """{(row, group key): the records of the settings run each of a table's cells shows}: what the
        statistics of a study (``harness.report.studies``) read, so that they compare what the table shows."""
        return self._cells.get(table.key, {})

    # -- averages --------------------------------------------------------------------------------

    def average(
        self,
        table: Table,
        group: Group,
        metrics: list[str],
        rows: list[str],
        published: tuple = (),
        derived_h: bool = False,
        paper: Callable | None = None,
    ) -> None:
        """Average row: mean of the per-row means over rows complete for the group (all metrics
        present and unmarked); H (when derived_h) from the averaged base and new. Marked ‡ over fewer
        datasets, † when no dataset has every seed, § when its datasets ran at different settings.
        ``published``: the datasets the paper averages over; when the rows hold any of them the Average
        is over those (out of all of them) and compared with the paper's, else over the rows, uncompared."""
        universe = [d for d in rows if d in published]
        label_total = len(published) if universe else None
        paper = paper if universe else None
        universe = universe or list(rows)
        base_metrics = [m for m in metrics if not (derived_h and m == "h")]
        present, complete = [], []
        for row in universe:
            cells = [table.cell(row, group, m) for m in base_metrics]
            if all(c is not None and c.mean is not None for c in cells):
                present.append(row)
                if not any(c.incomplete for c in cells):
                    complete.append(row)
        total = max(label_total or 0, len(universe))
        note = f"‡({len(complete)}/{total} datasets)" if len(complete) < total else ""
        if not complete and present:
            # No dataset has every expected seed (a study narrowed to fewer seeds, SEEDS=1): average what
            # there is rather than show nothing, marked as such (never compared with the paper).
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
        cell_recs = self._cells.get(table.key, {})
        mixed = self._mixed_settings(table, group, {row: cell_recs.get((row, group.key), []) for row in complete})
        if mixed:
            note = f"{note} {MIXED}".strip()
        for m in base_metrics:
            mean = float(np.mean([table.cell(r, group, m).mean for r in complete]))
            table.cells[(AVERAGE, group.key, m)] = Cell(mean, None, len(complete), total, "average", note)
        if derived_h:
            h = harmonic(table.cell(AVERAGE, group, "base").mean, table.cell(AVERAGE, group, "new").mean)
            table.cells[(AVERAGE, group.key, "h")] = Cell(h, None, len(complete), total, "average", note)
        used = [r for row in complete for r in cell_recs.get((row, group.key), [])]
        for m in metrics:
            cell = table.cells[(AVERAGE, group.key, m)]
            cell.datasets = tuple(complete)
            if not note:
                cell.paper = self.published(table, paper, AVERAGE, group, m, used)

    def _mixed_settings(self, table: Table, group: Group, by_row: dict) -> bool:
        """Do datasets of one config in this Average hold different settings? (a note says which)."""
        by_config: dict = {}
        for row, recs in by_row.items():
            settings = _column_settings(recs)
            if settings is not None:
                by_config.setdefault(recs[0].get("config"), {})[row] = settings
        found = False
        for rows in by_config.values():
            keys = sorted({k for s in rows.values() for k in s})
            differing = [k for k in keys if len({repr(s.get(k, _default(k))) for s in rows.values()}) > 1]
            if not differing:
                continue
            found = True
            shown = {row: _show_settings(settings, differing) for row, settings in rows.items()}
            self._mixed_rows.setdefault(table.key, []).append((group.key, shown))
            self._notes.setdefault(table.key, []).append(
                f"§ The Average of {group.label} mixes settings: {self._mixed_text(rows, differing)}. "
                "Re-run them alike (or see --all-variants)."
            )
        return found

    def _mixed_text(self, rows: dict, keys: list[str]) -> str:
        """'dtd was re-run with epochs 2; eurosat still at epochs 10' where a superseded run says so,
        else 'epochs 2 on dtd; epochs 10 on eurosat'."""
        parts: dict = {}
        for row, settings in rows.items():
            parts.setdefault(_show_settings(settings, keys), []).append(row)
        superseded = self.superseded + [s for ss in self._cell_superseded.values() for s in ss]
        for shown, datasets in parts.items():
            for s in superseded:
                rerun = s.family[3] or (s.datasets[0].split("/")[0] if s.datasets else None)
                was = _show_settings(s.old_settings or {}, keys)
                if rerun in datasets and _show_settings(s.shown_settings or {}, keys) == shown and was in parts:
                    rest = [f"{', '.join(sorted(parts[was]))} still at {was}"]
                    rest += [f"{', '.join(sorted(r))} at {t}" for t, r in parts.items() if t not in (shown, was)]
                    return f"{', '.join(sorted(datasets))} was re-run with {shown}; {'; '.join(rest)}"
        return "; ".join(f"{text} on {', '.join(sorted(r))}" for text, r in parts.items())

    # -- published values ------------------------------------------------------------------------

    def published(self, table: Table, paper: Callable | None, row, group: Group, metric: str, recs: list[dict]):
        """The published value a builder names for a cell (``paper(row, group, metric)`` -> (csv table,
        match, column)), if the cell's records are of the backbone and shot count it was published for."""
        if paper is None or self.paper is None or not recs:
            return None
        ref = paper(row, group, metric)
        if ref is None:
            return None
        name, match, column = ref
        facts = {(r.get("backbone"), None if is_zero_shot(r) else r.get("shots")) for r in recs}
        if len(facts) > 1:
            return None
        backbone, shots = facts.pop()
        value = self.paper.value(name, match, column, backbone=backbone, shots=shots)
        if value is None and self.paper.value(name, match, column) is not None:
            protocol = self.paper.protocol_text(name, match, column)
            ours = f"{backbone}" + ("" if shots is None else f", {shots} shots")
            self._notes.setdefault(table.key, []).append(
                f"No paper value or Δ beside {method_label(group.method)} ({ours}): "
                f"the published values are for {protocol}."
            )
        return value

    # -- the table's notes and its Average row ---------------------------------------------------

    def finish(self, table: Table) -> None:
        """Once a table is laid out: the notes on the settings of its records, the settings runs its cells
        left out, its § Averages, Averages over different datasets, and published values not compared."""
        if table.empty:
            return
        used = [r for recs in self._cells.get(table.key, {}).values() for r in recs]
        families = {family(r) for r in used}
        superseded = [s for s in self.superseded if s.family in families]
        superseded += self._cell_superseded.get(table.key, [])
        table.notes += settings_notes(used) + list(dict.fromkeys(s.text() for s in superseded))
        table.notes += list(dict.fromkeys(self._notes.get(table.key, [])))
        self._mark_reruns(table, superseded)
        averages = {}
        for g in table.groups:
            cell = next((table.cell(AVERAGE, g, m) for m, _ in table.metrics if table.cell(AVERAGE, g, m)), None)
            if cell is not None and cell.datasets:
                averages[g.label] = cell.datasets
        if len(set(averages.values())) > 1:
            table.notes.append(
                "‡ The Averages of this table are over different datasets and are not comparable across "
                "columns: " + "; ".join(f"{label} over {', '.join(ds)}" for label, ds in averages.items()) + "."
            )

    def _mark_reruns(self, table: Table, superseded: list[Superseded]) -> None:
        """``Cell.rerun`` on the cells the table's notes name as at other settings than the rest of their
        config's: a cell of a family with a superseded run, a dataset of a § Average off its config's
        settings, and an Average that is § or holds such a cell."""
        name = table.title.split(":")[0]
        sources = self._cells.get(table.key, {})
        by_family = {}
        for s in superseded:
            by_family.setdefault(s.family, s)
        for (row, group_key, _), cell in table.cells.items():
            if row == AVERAGE:
                continue
            old = next(
                (by_family[f] for f in {family(r) for r in sources.get((row, group_key), [])} if f in by_family), None
            )
            if old is not None:
                cell.rerun = f"re-run at {old.shown}, superseding {old.label} (see the notes of {name})"
        for group_key, shown in self._mixed_rows.get(table.key, []):
            cells = {row: [c for (r, g, _), c in table.cells.items() if (r, g) == (row, group_key)] for row in shown}
            if any(c.rerun for cs in cells.values() for c in cs):
                continue  # a re-run explains the § (the other datasets are still at the study's settings)
            # a --set on part of the study: the datasets off the settings most of them share (no majority: all)
            counts = {text: list(shown.values()).count(text) for text in shown.values()}
            top = max(counts.values())
            tied = sum(1 for c in counts.values() if c == top) > 1
            for row, text in shown.items():
                if tied or counts[text] < top:
                    for c in cells[row]:
                        c.rerun = f"at other settings than its config's other datasets (§, see the notes of {name})"
        for (row, group_key, metric), cell in table.cells.items():
            if row != AVERAGE:
                continue
            held = [table.cells.get((d, group_key, metric)) for d in cell.datasets]
            rerun = [d for d, c in zip(cell.datasets, held) if c is not None and c.rerun]
            if MIXED in cell.note:
                cell.rerun = f"its datasets ran at different settings (§, see the notes of {name})"
            elif rerun:
                cell.rerun = f"holds {', '.join(rerun)} re-run at other settings (see the notes of {name})"


def settings_notes(records: list[dict]) -> list[str]:
    """The settings a table's numbers come from: backbone, precision, shots and epochs of the records
    in its cells, and those without a fingerprint."""
    if not records:
        return []

    def values(field, learned_only=False):
        found = {r.get(field) for r in records if not (learned_only and is_zero_shot(r))}
        return ", ".join(sorted(map(str, found - {None}))) or "–"

    epochs: dict = {}
    for r in records:
        if not is_zero_shot(r) and r.get("epochs"):  # the linear probe fits, with no epochs
            epochs.setdefault(method_label(r["method"]), set()).add(r.get("epochs"))
    per_method = "; ".join(f"{m} {', '.join(map(str, sorted(e, key=str)))}" for m, e in epochs.items())
    notes = [
        f"Settings: backbone {values('backbone')}; precision {values('precision')}; "
        f"shots {values('shots', True)}; epochs {per_method or '–'}."
    ]
    legacy = len({id(r) for r in records if not r.get("fingerprint")})
    if legacy:
        notes.append(
            f"{legacy} record(s) lack a fingerprint (written before fingerprints): their settings are not checked."
        )
    return notes


def same_datasets(points: list[tuple]) -> list[list[tuple]]:
    """Split a curve's [(x, Cell)] into runs of consecutive points whose Averages hold the same
    datasets: a line never joins an Average of some datasets to one of others."""
    segments: list = []
    for x, cell in points:
        if segments and segments[-1][-1][1].datasets == cell.datasets:
            segments[-1].append((x, cell))
        else:
            segments.append([(x, cell)])
    return segments


def pair(groups: list[Group], first: str, second: str) -> tuple[Group | None, Group | None]:
    """The first column groups of two methods on one backbone: a figure never subtracts across backbones."""
    for a in (g for g in groups if g.method == first):
        b = next((g for g in groups if g.method == second and g.backbone == a.backbone), None)
        if b is not None:
            return a, b
    return None, None


def comparable_points(cells: dict) -> tuple[tuple, dict]:
    """Of a figure's Averages {point: Cell} (a method's column, a method at a shot count), (the dataset set
    it draws them over, {point: its datasets} for those it leaves out): a figure sets side by side only
    Averages over the same datasets. The set is the widest; of equally wide ones, the one most points hold
    (the first among ties). A point with no Average is neither drawn nor listed."""
    sets = {point: cell.datasets for point, cell in cells.items() if cell is not None and cell.datasets}
    held = list(sets.values())
    chosen = max(held, key=lambda s: (len(s), held.count(s)), default=())
    return chosen, {point: s for point, s in sets.items() if s != chosen}


def comparable_averages(table: Table, groups: list[Group], metric: str) -> list[Group]:
    """Of ``groups``, those whose Average is over the dataset set ``comparable_points`` chooses."""
    cells = {g.key: table.cell(AVERAGE, g, metric) for g in groups}
    chosen, _ = comparable_points(cells)
    return [g for g in groups if cells[g.key] is not None and cells[g.key].datasets == chosen and chosen]
