"""The successors' numbers collected in ``shared/paper-results/successors.csv``, sorted into published
values and reproductions by others.

``reports/paper/successor_names.csv`` is the one table from that file's method names to registry keys;
its ``role`` says what the name's rows are:

* ``published``: the method's own authors' numbers; written into base2new.csv, crossdataset.csv and
  domaingen.csv, where the report shows them in the "(paper)" columns.
* ``average``: the authors' 11-dataset average, already in base2new.csv with its curated source
  (tests check the numbers agree); nothing is written.
* ``reproduction``: someone else's run of the method (``reproduced_by``); written only to
  reproductions.csv, which the report shows apart, never as a paper value.
* ``none``: no registry method (e.g. DePT on top of CoCoOp); not used.

``python -m benchmarks.paper_successors [--successors PATH] [--paper-dir DIR]`` rewrites those rows from
the shared file, so no number is typed by hand."""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path

ROLES = ("published", "average", "reproduction", "none")
STUDIES = ("base2new", "crossdataset", "domaingen")
REPRODUCTION_COLUMNS = ["study", "dataset", "method", "base", "new", "h", "accuracy", "reproduced_by", "source"]


def default_successors_path() -> str:
    """``../shared/paper-results/successors.csv`` beside the checkout."""
    return str(Path(__file__).resolve().parents[3] / "shared" / "paper-results" / "successors.csv")


def _read(path: str) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def read_names(paper_dir: str) -> dict[str, dict]:
    """{successors.csv name: {"method", "role", "reproduced_by"}} from ``successor_names.csv``."""
    path = os.path.join(paper_dir, "successor_names.csv")
    names = {}
    for row in _read(path):
        if row.get("role") not in ROLES:
            raise ValueError(f"{path}: name {row.get('name')!r} has role {row.get('role')!r}; expected one of {ROLES}")
        if (row["role"] == "none") != (not row.get("method")):
            raise ValueError(
                f"{path}: name {row['name']!r}: a registry key is needed exactly when the role is not none"
            )
        if (row["role"] == "reproduction") != bool(row.get("reproduced_by")):
            raise ValueError(f"{path}: name {row['name']!r}: reproduced_by is needed exactly for reproductions")
        names[row["name"]] = {k: row[k] for k in ("method", "role", "reproduced_by")}
    return names


def classify(successors: list[dict], names: dict[str, dict], path: str = "successors.csv") -> list[dict]:
    """Each successors.csv row with its name's ``method``, ``role`` and ``reproduced_by``."""
    out = []
    for row in successors:
        if row["method"] not in names:
            raise ValueError(
                f"{path}: method name {row['method']!r} is not in successor_names.csv; add a row "
                f"name,method,role,reproduced_by for it (role one of {ROLES})"
            )
        if row["study"] not in STUDIES:
            raise ValueError(f"{path}: study {row['study']!r} of {row['method']!r}; expected one of {STUDIES}")
        out.append({**row, "name": row["method"], **names[row["method"]]})
    return out


def _plain_source(source: str) -> str:
    """The source without its per-row annotation ("[source dataset]", "[avg over 10 targets]")."""
    return re.sub(r"\s*\[[^\]]*\]$", "", source)


def _upsert_base2new(path: str, rows: list[dict]) -> None:
    table = _read(path)
    columns = list(table[0].keys())
    new = {(r["dataset"], r["method"]): {c: r[c] for c in columns} for r in rows}
    kept = [r for r in table if (r["dataset"], r["method"]) not in new]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns, lineterminator="\n")
        w.writeheader()
        w.writerows(kept + list(new.values()))


def _upsert_transfer(path: str, method: str, rows: list[dict]) -> None:
    """One method row of crossdataset.csv / domaingen.csv (a ``source`` column is added if absent)."""
    table = _read(path)
    columns = list(table[0].keys())
    if "source" not in columns:
        columns.append("source")
    sources = {_plain_source(r["source"]) for r in rows}
    if len(sources) != 1:
        raise ValueError(f"{path}: {method} rows give several sources: {sorted(sources)}")
    values = {r["dataset"]: r["base"] for r in rows}
    unknown = set(values) - set(columns)
    if unknown:
        raise ValueError(f"{path}: no column for {sorted(unknown)} of {method}; columns are {columns}")
    line = {c: values.get(c, "") for c in columns} | {"method": method, "source": sources.pop()}
    kept = [r for r in table if r["method"] != method]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, columns, lineterminator="\n", restval="")
        w.writeheader()
        w.writerows(kept + [line])


def write(paper_dir: str, successors_path: str) -> dict:
    """Write the published rows into the paper tables and the reproductions into reproductions.csv."""
    rows = classify(_read(successors_path), read_names(paper_dir), successors_path)
    published = [r for r in rows if r["role"] == "published"]
    _upsert_base2new(os.path.join(paper_dir, "base2new.csv"), [r for r in published if r["study"] == "base2new"])
    for study in ("crossdataset", "domaingen"):
        for method in dict.fromkeys(r["method"] for r in published if r["study"] == study):
            mine = [r for r in published if r["study"] == study and r["method"] == method]
            _upsert_transfer(os.path.join(paper_dir, f"{study}.csv"), method, mine)
    reproductions = []
    for r in rows:
        if r["role"] != "reproduction":
            continue
        line = {c: r.get(c, "") for c in REPRODUCTION_COLUMNS}
        if r["study"] != "base2new":  # one accuracy per dataset, in successors.csv's base column
            line.update(base="", accuracy=r["base"])
        reproductions.append(line)
    with open(os.path.join(paper_dir, "reproductions.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, REPRODUCTION_COLUMNS, lineterminator="\n")
        w.writeheader()
        w.writerows(reproductions)
    return {"published": len(published), "reproductions": len(reproductions)}


def reproductions_markdown(paper_dir: str) -> str | None:
    """reproductions.csv as a markdown page, marked as others' runs; None when the file is absent."""
    path = os.path.join(paper_dir, "reproductions.csv")
    if not os.path.exists(path):
        return None
    lines = [
        "# Reproductions by others (not published values)",
        "",
        "Runs of a method by someone other than its authors, with who ran it and where it was read. They are "
        "never shown as a method's paper value in Tables 1-3; those columns hold the authors' own numbers only.",
        "",
        "| study | dataset | method | base | new | H | accuracy | reproduced by | source |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in _read(path):
        lines.append("| " + " | ".join(r[c] for c in REPRODUCTION_COLUMNS) + " |")
    return "\n".join(lines) + "\n"
