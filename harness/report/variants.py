"""One settings run per table cell: the report never averages records of different settings.

Records of one *family* (experiment, method, config, where and on which classes the prompt was
learned, shots, backbone; zero-shot CLIP: per evaluated dataset) may come from several settings runs
(``harness.fingerprint``: other epochs, learning rate, precision, options, data). Their seeds differ
only in the seed, so a settings run is the fingerprint of the settings without the seed
(``fingerprint.variant_of``). By default the newest settings run of each family is shown and the
records of the others are listed as superseded in the table notes; with ``all_variants`` each
settings run is its own column group, labelled by the settings that tell it from the family's
others. A record written before fingerprints existed is its own settings run, "no fingerprint".
"""

from __future__ import annotations

from dataclasses import dataclass

from harness import fingerprint as fingerprints
from harness import results
from harness.report.tables import LABEL_FIELD, method_label

LEGACY = "no fingerprint"


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


def _labels(runs: dict) -> dict:
    """{run: the settings that differ between the family's runs, "key value, ..."} (a key a run leaves
    out is at its ``RunSpec`` default)."""
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


def _default(key: str):
    import dataclasses

    from harness.config import RunSpec

    fields = {f.name: f for f in dataclasses.fields(RunSpec)}
    return getattr(RunSpec(), key) if key in fields else None


def select(records: list[dict], all_variants: bool = False) -> tuple[list[dict], list[Superseded]]:
    """(records to tabulate, superseded settings runs). With ``all_variants`` every record is kept and
    those of families with several settings runs carry ``LABEL_FIELD`` (their column group's label)."""
    families: dict = {}
    for r in records:
        families.setdefault(family(r), []).append(r)
    kept, superseded = [], []
    for fam, recs in families.items():
        runs: dict = {}
        for r in recs:
            runs.setdefault(settings_run(r), r.get("settings"))
        if len(runs) == 1:
            kept += recs
            continue
        labels = _labels(runs)
        if all_variants:
            kept += [{**r, LABEL_FIELD: labels[settings_run(r)]} for r in recs]
            continue
        shown = settings_run(results.newest(recs))
        kept += [r for r in recs if settings_run(r) == shown]
        for run in runs:
            if run != shown:
                old = [r for r in recs if settings_run(r) == run]
                datasets = sorted({f"{r.get('dataset')}/{r.get('subsample')}" for r in old})
                superseded.append(
                    Superseded(
                        fam,
                        labels[run],
                        labels[shown],
                        datasets,
                        len(old),
                        _unseeded(runs[run]),
                        _unseeded(runs[shown]),
                    )
                )
    return kept, superseded


def table_notes(table, records: list[dict], superseded: list[Superseded]) -> list[str]:
    """The notes that say which settings a table's numbers come from: backbone, precision, shots and
    epochs of its records, those without a fingerprint, and the superseded settings runs of its cells."""
    methods = {g.method for g in table.groups}
    rows = {key for key, _ in table.rows}
    mine = [r for r in records if r.get("method") in methods and r.get("dataset") in rows]
    if not mine:
        return []

    def values(field, learned_only=False):
        found = {r.get(field) for r in mine if not (learned_only and r.get("train_dataset") is None)}
        return ", ".join(sorted(map(str, found - {None}))) or "–"

    epochs = {}
    for r in mine:
        if r.get("train_dataset") is not None and r.get("epochs"):  # the linear probe fits, with no epochs
            epochs.setdefault(method_label(r["method"]), set()).add(r.get("epochs"))
    per_method = "; ".join(f"{m} {', '.join(map(str, sorted(e, key=str)))}" for m, e in epochs.items())
    notes = [
        f"Settings: backbone {values('backbone')}; precision {values('precision')}; "
        f"shots {values('shots', True)}; epochs {per_method or '–'}."
    ]
    legacy = sum(1 for r in mine if not r.get("fingerprint"))
    if legacy:
        notes.append(
            f"{legacy} record(s) lack a fingerprint (written before fingerprints): their settings are not checked."
        )
    for s in superseded:
        if s.method in methods and any(d.split("/")[0] in rows for d in s.datasets):
            notes.append(s.text())
    return notes


# Settings that are the dataset's own, never a sign of a study run at two settings.
OWN_SETTINGS = frozenset({"dataset", "data", "seed"})


def mixed_reruns(records: list[dict], superseded: list[Superseded]) -> list[tuple[Superseded, list[str], list[str]]]:
    """The re-runs that left a column mixed: a dataset's prompts re-learned at changed settings while
    other datasets of the same method, config, shots and backbone still hold the value it moved away from
    (CoOp on dtd re-run at epochs 2, the other datasets still at the epochs 100 dtd had). Per-dataset
    settings of the study itself (ImageNet's shorter schedule) are not flagged: nothing was re-run.
    [(the superseded run, its changed keys, the datasets still at the old values)]."""
    out = []
    for s in superseded:
        old, new = s.old_settings or {}, s.shown_settings or {}
        changed = sorted((set(old) | set(new)) - OWN_SETTINGS)
        changed = [k for k in changed if old.get(k, _default(k)) != new.get(k, _default(k))]
        if not changed or s.family[3] is None:  # zero-shot CLIP: one family per evaluated dataset
            continue
        siblings = {}
        for r in records:
            fam = family(r)
            same_column = fam[:3] + fam[4:7] == s.family[:3] + s.family[4:7]
            if same_column and fam[3] not in (None, s.family[3]) and r.get("settings"):
                siblings.setdefault(fam[3], _unseeded(r["settings"]))
        behind = sorted(
            d
            for d, theirs in siblings.items()
            if any(theirs.get(k, _default(k)) == old.get(k, _default(k)) for k in changed)
        )
        if behind:
            out.append((s, changed, behind))
    return out


def _method_and_config(group, s: Superseded) -> bool:
    v = group.key[1] if isinstance(group.key[1], tuple) else group.key  # (experiment, variant) or variant
    return (group.method, v[1]) == s.family[1:3]


def mark_mixed_averages(table, records: list[dict], superseded: list[Superseded], same_column=None) -> list[str]:
    """Mark ``§(mixed settings)`` on each Average of a column whose datasets come from settings runs a
    re-run left apart (``mixed_reruns``); no paper value is compared with it. Returns the table's notes.
    same_column(group, superseded): whether the run is one of that column group's (default: its method
    and config, as the paper's tables group them)."""
    from harness.report.tables import AVERAGE

    same_column = same_column or _method_and_config
    notes = []
    rows = {key for key, _ in table.rows}
    for s, changed, behind in mixed_reruns(records, superseded):
        rerun = s.family[3]
        if rerun not in rows or not rows & set(behind):
            continue
        marked = False
        for group in table.groups:
            if not same_column(group, s):
                continue
            for (row, gkey, _metric), cell in table.cells.items():
                if row == AVERAGE and gkey == group.key and "§" not in cell.note:
                    cell.note = f"{cell.note} §(mixed settings)".strip()
                    cell.paper = None
                    marked = True
        if marked:
            what = ", ".join(f"{k} {fingerprints.show(s.shown_settings.get(k, _default(k)))}" for k in changed)
            was = ", ".join(f"{k} {fingerprints.show(s.old_settings.get(k, _default(k)))}" for k in changed)
            notes.append(
                f"§ The Average of {method_label(s.method)} mixes settings: {rerun} was re-run with {what}; "
                f"{', '.join(behind)} still at {was}. Re-run them alike (or see --all-variants)."
            )
    return notes
