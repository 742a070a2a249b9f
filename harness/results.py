"""The results store: one JSON record per finished evaluation, appended to ``<out>/results.jsonl``.

The report reads this file, not W&B and not logs. A record (all keys always present):

    experiment       "base2new", "crossdataset", "domaingen", "ablations", "demo", ...
    job              readable job name, e.g. "cocoop/oxford_pets/seed1"
    method           the registry name: "zsclip", "coop", "cocoop", "kgcoop", "maple", "promptsrc", ...
    config           method config name, e.g. "vit_b16_c4_ep10_batch1_ctxv1"
    options          the method's options as built, e.g. {"n_ctx": 4, "ctx_init": "a photo of a"}
    dataset          the evaluated dataset key
    subsample        the evaluated class set: "base" | "new" | "all"
    train_dataset    where the prompt was learned (None for zero-shot)
    train_subsample  on which classes it was learned (None for zero-shot)
    shots, seed      few-shot K and the run seed (seed None for zero-shot, which draws nothing)
    backbone, precision
    metrics          {"accuracy", "error", "macro_f1", "perclass_accuracy", "per_class_accuracy": [...],
                      "total", "correct"} in percent (PROTOCOL.md 13)
    epochs           epochs trained (0 for zero-shot)
    wall_time_s, git_commit, versions, timestamp, run_dir
    fingerprint      short hash of what the number depends on (``harness.fingerprint``); shared by a
                     training job's records and its evaluation job's
    settings         the run keys (not at their defaults) and the split digest it hashes
    reevaluated      true when an existing checkpoint was scored again (``reevaluate``), not trained
    images           a stamp of the evaluated test images (``harness.fingerprint.images_stamp``)
    cost             what the job cost, measured while it ran (``harness.cost``): training and evaluation
                     time, throughput, peak memory, GFLOPs per image, device; outside the fingerprint
    load_any         None; or, for a prompt loaded with ``load_any`` that is partial or was trained at
                     other settings than the job's, what differs ("epochs: 3 -> 10, ..."): its
                     ``settings`` are the training run's plus this note, a settings run of its own

A record of an earlier harness lacks the last six (a writer of that layout may still append it); it
counts as finished when its key matches (``harness.fingerprint``).

Appends are atomic: one ``write`` of a whole line on an O_APPEND descriptor under an exclusive
``flock``, then fsync, so parallel jobs (also on several nodes sharing the folder) lose nothing and
never interleave. A reader skips a torn last line (a writer killed mid-write on a filesystem
without atomic appends) with a warning instead of failing.
"""

from __future__ import annotations

import datetime
import fcntl
import functools
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterable

log = logging.getLogger(__name__)

RESULTS_FILE = "results.jsonl"
#: Where results live unless a command is told otherwise (relative to the working folder, the Makefile's
#: OUT): ``harness run`` and ``harness sweep`` write its results.jsonl, ``harness status``, ``harness report``
#: and ``make report`` read it. The demo keeps its own store below it (``output/demo``).
RESULTS_HOME = "output"


class ResultsError(ValueError):
    """A results store that cannot be used (names the file and what to do)."""


# The fields that say *which* result a record is; two records with the same key are the same run.
KEY_FIELDS = (
    "experiment",
    "method",
    "config",
    "dataset",
    "subsample",
    "train_dataset",
    "train_subsample",
    "shots",
    "seed",
    "backbone",
)

# Records are written in pieces of at most this size, as network file systems split large writes
# anyway: the lock is what keeps a record whole, on every file system.
WRITE_CHUNK = 64 * 1024

RECORD_FIELDS = KEY_FIELDS + (
    "job",
    "options",
    "precision",
    "metrics",
    "epochs",
    "wall_time_s",
    "git_commit",
    "versions",
    "timestamp",
    "run_dir",
    "fingerprint",
    "settings",
    "reevaluated",
    "images",
    "load_any",
    "cost",
)
# Fields added after records were first written: an older record, or a writer of the older layout, lacks them.
LATER_FIELDS = ("images", "load_any", "cost")


def results_path(out: str) -> str:
    """``out`` may be the output folder or the results file itself."""
    return out if out.endswith(".jsonl") else os.path.join(out, RESULTS_FILE)


def record_key(record: dict) -> tuple:
    return tuple(json.dumps(record.get(k), sort_keys=True) for k in KEY_FIELDS)


def append_record(out: str, record: dict) -> None:
    missing = [k for k in RECORD_FIELDS if k not in record and k not in LATER_FIELDS]
    if missing:
        raise ValueError(f"Result record lacks {missing}; every record carries {list(RECORD_FIELDS)}.")
    line = (json.dumps(record, sort_keys=True, default=str) + "\n").encode()
    path = results_path(out)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        # The lock, not O_APPEND, is what keeps writers apart: appends are not atomic on NFS, where
        # jobs on several nodes share one store.
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            size = os.fstat(fd).st_size
            if size and os.pread(fd, 1, size - 1) != b"\n":
                line = b"\n" + line  # a writer killed mid-line left a torn line: ours starts a new one
            view = memoryview(line)
            while view:
                written = os.write(fd, view[:WRITE_CHUNK])
                view = view[written:]
            os.fsync(fd)
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def newest(records: list[dict]) -> dict:
    """The most recently written of ``records`` (in store order). Timestamps are whole seconds, so of
    records written within one second the later in the store wins: records are appended as written."""
    return max(enumerate(records), key=lambda entry: (str(entry[1].get("timestamp")), entry[0]))[1]


def read_records(out: str) -> list[dict]:
    """All complete records of a store (an absent store is empty). A line that is not a record (a torn
    line of a writer killed mid-write, JSON that is not a result record) is skipped with a warning
    giving its line number; nothing after it is lost."""
    path = results_path(out)
    if not os.path.exists(path):
        return []
    records, skipped = [], []
    with open(path, "rb") as f:
        data = f.read()
    for number, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            skipped.append((number, "not a complete JSON record (a writer killed mid-line?)"))
            continue
        if not isinstance(record, dict) or any(k not in record for k in KEY_FIELDS):
            skipped.append((number, f"valid JSON but not a result record ({type(record).__name__})"))
            continue
        records.append(record)
    for number, why in skipped:
        log.warning("%s line %d is %s; skipped", path, number, why)
    return records


def existing_keys(out: str) -> set[tuple]:
    return {record_key(r) for r in read_records(out)}


def pending_targets(identity: dict, targets: list[tuple[str, str]], done_keys: set) -> list[tuple[str, str]]:
    """The (dataset, subsample) targets of a job (``RunSpec.identity()``) that have no record among
    ``done_keys`` (``existing_keys``)."""
    return [(d, s) for d, s in targets if record_key({**identity, "dataset": d, "subsample": s}) not in done_keys]


def make_record(
    identity: dict,
    dataset: str,
    subsample: str,
    evaluation: dict,
    epochs: int,
    started: float,
    run_dir: str,
    cost: dict | None = None,
) -> dict:
    """The record of one evaluation of a job: its ``identity`` (``RunSpec.identity()``), the evaluated
    dataset and classes, the evaluation's ``options`` and ``metrics``, the epochs trained, the wall time
    since ``started`` (``time.time()``), where it ran and what it cost (``harness.cost``)."""
    return {
        **identity,
        "dataset": dataset,
        "subsample": subsample,
        "options": evaluation["options"],
        "metrics": evaluation["metrics"],
        "epochs": epochs,
        "wall_time_s": round(time.time() - started, 2),
        "git_commit": git_commit(),
        "versions": package_versions(),
        "timestamp": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "run_dir": run_dir,
        "cost": cost,
    }


def records_frame(records: Iterable[dict]):
    """A flat pandas DataFrame: record fields plus ``accuracy``, ``error``, ``macro_f1``, ``cost_<field>``."""
    import pandas as pd

    rows = []
    for r in records:
        row = {k: v for k, v in r.items() if k not in ("metrics", "options", "versions", "cost")}
        row.update({f"cost_{name}": value for name, value in (r.get("cost") or {}).items()})
        for metric in ("accuracy", "error", "macro_f1", "perclass_accuracy"):
            row[metric] = (r.get("metrics") or {}).get(metric)
        for name, value in (r.get("options") or {}).items():
            row[f"opt_{name}"] = value
        rows.append(row)
    return pd.DataFrame(rows)


@functools.cache
def git_commit() -> str | None:
    """The checkout's commit, stored with every record."""
    try:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        out = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def package_versions() -> dict:
    import open_clip
    import torch

    import harness

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "open_clip": getattr(open_clip, "__version__", "?"),
        "harness": harness.__version__,
    }
