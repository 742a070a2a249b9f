"""The fingerprint of a result: a short stable hash of everything its number depends on.

A job's *settings* are its run keys that can change the learned prompt or its evaluation (method,
options, training dataset and classes, shots, seed, backbone, precision, schedule, optimiser,
transforms: every ``RunSpec`` field but the bookkeeping below), plus what the run keys do not say:
``data``, the digest of the training dataset's split (``harness.data.digest``; the few-shot draw is
determined by it, the shots and the seed, and its cache is checked against it); ``images``, for a
method that learns, a stamp of the training images it reads (``harness.data.stamps``: each image's
relative path and size, so a moved data root keeps its results and a resized copy does not), and
``images_seed1``, the same of seed 1's draw: the seeds of one settings run draw other images, and
this is what they share (``variant_of``; a whole training split, ImageNet's 1.3M images, is not
stamped), so a study re-run on changed images is a settings run of its own in the report, not
averaged with the old one; ``weights``, the backbone's file by content (``backbone.weights_identity``:
left out for a backbone built by code, ``tiny``, and for the very file a name promises, OpenAI's
published one); ``option_files``, each file a method option names (CoPrompt's ``descriptions``) by content,
so an edited file is a new result. Not in them: where things are (``data_root``, ``output_dir``, ``results``,
``feature_cache``, ``load_from``), names (``job``, ``experiment``, ``config``: its values are in the
settings), what is evaluated
(``evaluate``: a train job's base record and its eval job's new record share one fingerprint, so H
pairs them, as do a cross-dataset training job and its evaluation jobs), and what cannot change a
number (``tracking``, ``num_workers``, ``test_batch_size``, ``device``, ``force``, ``reevaluate``,
``load_any``: a loaded prompt that needs it carries the training run's settings and a ``load_any``
note instead, ``runner.Run.loaded_checkpoint``). A key at its ``RunSpec`` default is left out, so
adding a run key later does not change the fingerprints of finished studies. A method that learns
nothing (zero-shot CLIP) has no training settings (shots, seed, epochs, optimiser, images...).

What is evaluated is stamped per record instead: ``images``, the ``stamps.evaluated_images`` of the
evaluated test split, so another dataset's or classes' images, changed, make that record's target
pending again without parting the fingerprint its job shares with its training job.

Each record carries ``fingerprint``, ``settings`` and ``images``; each run folder a
``fingerprint.json``. A job's target is finished when the results store holds a record of its identity
(``results.record_key``), its fingerprint and its images stamp (``pending``). Older records still read
(the report shows them): one written before fingerprints existed counts when its identity matches;
one written before the images stamps counts when its fingerprint matches, but a learning method's
fingerprints now hold the training images (and a backbone file's its weights), so a re-run of a store
written before then trains those jobs again, in new run folders (named by the new fingerprints), and
the report then shows the new settings run and notes the old one as superseded (a single ``run`` into
its old folder is refused as a folder of other settings: ``force`` or another ``output_dir``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import typing

from clipcore.atomic import atomic_write_text
from harness.config import LATER_TRAINING_KEYS, TRAINING_KEYS, RunSpec

FINGERPRINT_CHARS = 12
FOLDER_FILE = "fingerprint.json"

# Run keys that cannot change a number: paths, names, what is evaluated, how it is tracked or batched.
BOOKKEEPING = frozenset(
    {
        "data_root",
        "config",
        "experiment",
        "evaluate",
        "output_dir",
        "results",
        "feature_cache",
        "load_from",
        "load_any",
        "tracking",
        "num_workers",
        "test_batch_size",
        "device",
        "force",
        "reevaluate",
        "job",
    }
)
# The settings that stamp inputs rather than name run keys (a run folder older than them lacks them).
INPUT_STAMPS = frozenset({"images", "images_seed1", "weights", "option_files"})
# What a method that learns nothing still depends on, of the training keys.
EVALUATION_KEYS = frozenset({"method", "options", "dataset", "backbone", "precision"})


def _normal(name: str, value, hints: dict):
    """Values as the settings hold them: float keys as floats (``lr: 1`` and ``lr: 1.0`` are one)."""
    if hints.get(name) is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def settings_of(spec: RunSpec, data: str | None = None) -> dict:
    """The settings (see the module's docstring); ``data``: the split digest (read when not given)."""
    hints = typing.get_type_hints(RunSpec)
    defaults = RunSpec()
    trains = spec.learns
    out = {}
    for f in dataclasses.fields(RunSpec):
        name = f.name
        training_key = name in TRAINING_KEYS or name in LATER_TRAINING_KEYS
        if name in BOOKKEEPING or (not trains and training_key and name not in EVALUATION_KEYS):
            continue
        value = _normal(name, getattr(spec, name), hints)
        if value != _normal(name, getattr(defaults, name), hints):
            out[name] = value
    from clipcore.backbone import weights_identity
    from harness.data import digest, stamps

    weights = weights_identity(spec.backbone)
    if weights is not None:
        out["weights"] = weights
    files = option_files(spec.options)
    if files:
        out["option_files"] = files
    out["data"] = data if data is not None else digest.data_fingerprint(spec.dataset, spec.data_root)
    if trains:
        import methods

        fitted = methods.method_class(spec.method).fits_features
        for key, seed in (("images", spec.seed), ("images_seed1", 1)):
            out[key] = stamps.training_images(spec.dataset, spec.data_root, spec.shots, seed, spec.subsample, fitted)
    return out


def option_files(options: dict) -> dict:
    """{option: the first 16 hex digits of its file's sha256} of the options that name a file (CoPrompt's
    ``descriptions``): the file's content is what the number depends on, and an edited file keeps its name."""
    from clipcore.backbone import file_sha256

    return {
        k: file_sha256(v)[:16] for k, v in sorted(options.items()) if isinstance(v, str) and v and os.path.isfile(v)
    }


def images_of(spec: RunSpec, dataset: str, subsample: str) -> str:
    """The stamp of the test images a record of ``spec``'s target (``dataset``, ``subsample``) scores."""
    from harness.data.stamps import evaluated_images

    return evaluated_images(dataset, spec.data_root, subsample)


def pending(spec: RunSpec, done: set, fingerprint: str) -> list[tuple[str, str]]:
    """``spec``'s targets without a record of its identity, ``fingerprint`` and the target's images stamp
    among ``done`` (``finished``): the one test of "is this finished?" of the runner and the sweep."""
    identity = spec.identity()
    return [
        (d, s)
        for d, s in spec.eval_targets()
        if not is_finished(done, {**identity, "dataset": d, "subsample": s}, fingerprint, images_of(spec, d, s))
    ]


def fingerprint_of(settings: dict) -> str:
    blob = json.dumps(settings, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:FINGERPRINT_CHARS]


# Settings that follow from the seed: the seeds of one settings run differ in them.
SEEDED = frozenset({"seed", "images"})
# Settings that are each training dataset's own (its name, its split's digest, its images' stamps): the
# datasets of one settings run differ in them.
PER_DATASET = frozenset({"dataset", "data", "images", "images_seed1"})


def variant_of(settings: dict) -> str:
    """The fingerprint without the seed and what follows from it (the stamp of its draw's images; the
    stamp of seed 1's draw, ``images_seed1``, stands for the images every seed draws from): what the
    seeds of one table cell must share."""
    return fingerprint_of({k: v for k, v in settings.items() if k not in SEEDED})


def differences(old: dict | None, new: dict) -> dict:
    """{key: (old, new)} of two settings (a key left out is at its ``RunSpec`` default)."""
    defaults = {f.name: getattr(RunSpec(), f.name) for f in dataclasses.fields(RunSpec)}
    old = old or {}
    out = {}
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key, defaults.get(key)), new.get(key, defaults.get(key))
        if isinstance(a, dict) and isinstance(b, dict):  # options: name the option that changed
            out.update({f"{key}.{k}": (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)})
        elif a != b:
            out[key] = (a, b)
    return out


def describe(changes: dict) -> str:
    """``epochs: 100 -> 2, lr: 0.002 -> 0.01, options.n_ctx: 4 -> 2``."""
    return ", ".join(f"{k}: {show(a)} -> {show(b)}" for k, (a, b) in changes.items())


def show(value) -> str:
    """A setting's value as the messages show it."""
    return json.dumps(value, sort_keys=True, default=str) if isinstance(value, (dict, list)) else str(value)


# ---------------------------------------------------------------------------------------------
# The results store: which jobs are finished
# ---------------------------------------------------------------------------------------------


def finished(records: list[dict]) -> set[tuple]:
    """{(record key, fingerprint, images stamp)} of the records of a store (None: written before
    fingerprints, or before images stamps)."""
    from harness.results import record_key

    return {(record_key(r), r.get("fingerprint"), r.get("images")) for r in records}


def is_finished(done: set[tuple], record: dict, fingerprint: str, images: str | None = None) -> bool:
    """A record of ``record``'s key with ``fingerprint`` and the ``images`` stamp is among ``done``; one
    without a stamp, or without a fingerprint, counts (see the module's docstring)."""
    from harness.results import record_key

    key = record_key(record)
    return (key, fingerprint, images) in done or (key, fingerprint, None) in done or (key, None, None) in done


def superseded(records: list[dict], identity: dict, targets, fingerprint: str) -> dict | None:
    """The newest record of this identity (any target) with another fingerprint, or None."""
    from harness.results import newest, record_key

    keys = {record_key({**identity, "dataset": d, "subsample": s}) for d, s in targets}
    others = [r for r in records if record_key(r) in keys and r.get("fingerprint") not in (None, fingerprint)]
    return newest(others) if others else None


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------


class FolderMismatchError(RuntimeError):
    """A run folder holds a run of other settings (the message names them and the ways out)."""


def read_folder(run_dir: str) -> dict | None:
    path = os.path.join(run_dir, FOLDER_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def write_folder(run_dir: str, settings: dict, fingerprint: str, **state) -> None:
    os.makedirs(run_dir, exist_ok=True)
    entry = {"fingerprint": fingerprint, "settings": settings, **state}
    atomic_write_text(os.path.join(run_dir, FOLDER_FILE), json.dumps(entry, indent=1, sort_keys=True) + "\n")


def check_folder(run_dir: str, settings: dict, fingerprint: str) -> None:
    """Refuse a run folder that holds a run of other settings (its checkpoints would be resumed or
    overwritten, its log mixed)."""
    held = read_folder(run_dir)
    if held and held.get("fingerprint") != fingerprint:
        changes = describe(differences(held.get("settings"), settings)) or "the data"
        raise FolderMismatchError(
            f"{run_dir} holds a run of other settings (fingerprint {held.get('fingerprint')}, this run "
            f"{fingerprint}: {changes}). Use another output folder (--output-dir), or --force to redo this job "
            "from scratch in a fresh folder beside it; the sweep gives each settings run a folder of its own."
        )


def folder_in_use(run_dir: str) -> bool:
    return os.path.isdir(run_dir) and any(name != ".run.lock" for name in os.listdir(run_dir))


def fresh_run_dir(run_dir: str) -> str:
    """``run_dir`` if it is empty or absent, else the first free ``<run_dir>-2``, ``-3``... beside it."""
    run_dir = run_dir.rstrip(os.sep)
    if not folder_in_use(run_dir):
        return run_dir
    n = 2
    while folder_in_use(f"{run_dir}-{n}"):
        n += 1
    return f"{run_dir}-{n}"
