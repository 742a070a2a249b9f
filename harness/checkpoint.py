"""Training checkpoints: save after every epoch, find the latest, resume exactly.

A checkpoint is the authors' file (``<run>/<folder>/model.pth.tar-<epoch>``, the folder the method
names, its authors' trainer's registered name: ``checkpoint_folder``, PROTOCOL.md 15; written by the
method so their tools load ours) plus what an exact resume needs, all held by one ``TrainingState``:
the optimiser, scheduler and gradient-scaler states, every random generator (Python, NumPy, torch CPU
and CUDA, the data loader's shuffling), the method's own between-epoch state (``training_state``),
the wall time of each epoch so far (a resumed job's training time sums its starts: ``harness.cost``),
and the run spec.
A text file ``checkpoint`` beside it names the newest, as the authors' framework writes it. Only the
last epoch's file holds what the authors' trainer saves in full (the whole model, frozen CLIP copies
included, for MaPLe and PromptSRC); the earlier ones, kept to resume, hold the learned tensors. Beside the
last one go the files the authors' own code writes in another layout than Dassl's (the method's
``authors_files``: CLIP-LoRA's ``save_lora`` file), where their loader looks for them.

Writes are atomic (``clipcore.atomic``), and the previous epoch's checkpoint is kept until the next
one exists, so a kill at any moment, during a write included, leaves a loadable checkpoint. A file
that cannot be read is set aside (renamed ``*.corrupt``) and the previous one is used; a checkpoint
written for a different training spec is refused with the keys that differ.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from clipcore.atomic import atomic_torch_save
from clipcore.checkpoint_file import load_checkpoint_file
from harness.config import LATER_TRAINING_KEYS, TRAINING_KEYS

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "model.pth.tar-"
POINTER = "checkpoint"
KEEP = 2  # the newest and the one before it


class ResumeError(RuntimeError):
    """A run folder's checkpoint belongs to another training spec, or none of its files loads."""


class LoadMismatchError(ResumeError):
    """A checkpoint to evaluate (``load_from``) was trained at other settings than the job's, or is
    not its training's last (the message names the differences and the ways out)."""


def checkpoint_path(run_dir: str, epoch: int, folder: str) -> str:
    """The checkpoint of ``epoch`` in the method's folder (``methods.CLIPMethod.checkpoint_folder``)."""
    return os.path.join(run_dir, folder, f"{CHECKPOINT_PREFIX}{epoch}")


def _epoch_of(path: str) -> int | None:
    match = re.search(r"-(\d+)$", path)
    return int(match.group(1)) if match else None


def checkpoints(run_dir: str) -> list[tuple[str, int]]:
    """(path, epoch) of every finished-epoch checkpoint in a run folder (whatever the method's folder),
    newest first."""
    found = [(p, _epoch_of(p)) for p in glob.glob(os.path.join(run_dir, "*", CHECKPOINT_PREFIX + "*"))]
    return sorted(((p, e) for p, e in found if e is not None and os.path.isfile(p)), key=lambda pe: -pe[1])


def latest_checkpoint(run_dir: str) -> tuple[str, int] | None:
    """(path, epoch) of the newest finished-epoch checkpoint in a run folder, or None."""
    found = checkpoints(run_dir)
    return found[0] if found else None


# -- what training carries from epoch to epoch --------------------------------------------------


@dataclass
class TrainingState:
    """Everything a training run carries from one epoch to the next: what a checkpoint saves beside the
    learned tensors, and what ``resume`` restores, so that a resumed run ends exactly where an
    uninterrupted one would. The process-wide generators (Python, NumPy, torch CPU and CUDA) are
    captured at each save and restored with the rest."""

    model: Any  # the method (methods.parts.base.CLIPMethod): learned tensors and its own ``training_state()``
    optimizer: torch.optim.Optimizer
    scheduler: Any  # a torch learning-rate scheduler, stepped once per epoch (per step with a step budget)
    scaler: torch.amp.GradScaler  # enabled only for amp on CUDA; a disabled one saves nothing
    loader_generator: torch.Generator  # the training loader's shuffling
    epoch: int = 0  # epochs finished
    # The wall time of each finished epoch, over every start of the job (None: a resumed checkpoint
    # written before times were kept), and how many starts trained: a resumed job's cost is their sum.
    epoch_seconds: list[float] | None = field(default_factory=list)
    starts: int = 0
    # A method's budget of optimiser steps (``step_schedule``): training stops there, mid-epoch; None: epochs.
    step_budget: int | None = None

    def resume_entries(self) -> dict:
        """The checkpoint's entries besides the authors' (``state_dict``, ``epoch``, ...), in file order."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "rng": capture_rng(self.loader_generator),
            "scaler": self.scaler.state_dict() if self.scaler.is_enabled() else None,
            "method_state": self.model.training_state(),
            "cost": {"epoch_seconds": self.epoch_seconds, "starts": self.starts},
        }

    def load_resume_entries(self, contents: dict, path: str) -> None:
        """Restore a checkpoint file's contents (``path``: named in errors) into this state."""
        self.model.load_checkpoint_state_dict(contents["state_dict"], path)
        self.model.load_training_state(contents.get("method_state") or {})
        self.optimizer.load_state_dict(contents["optimizer"])
        self.scheduler.load_state_dict(contents["scheduler"])
        restore_rng(contents["rng"], self.loader_generator)
        if self.scaler.is_enabled() and contents.get("scaler"):
            self.scaler.load_state_dict(contents["scaler"])
        cost = contents.get("cost") or {}
        self.epoch_seconds = list(cost["epoch_seconds"]) if cost.get("epoch_seconds") is not None else None
        self.starts = int(cost.get("starts", 1))  # a checkpoint exists, so at least one start trained


def capture_rng(loader_generator: torch.Generator) -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "loader": loader_generator.get_state(),
    }


def restore_rng(rng: dict, loader_generator: torch.Generator) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    loader_generator.set_state(rng["loader"])


# -- save and resume ----------------------------------------------------------------------------


def save(run_dir: str, state: TrainingState, spec: dict, final: bool) -> str:
    """Write the checkpoint of epoch ``state.epoch`` (``final``: in full, as the authors' trainer saves
    its last), point ``checkpoint`` at it, drop all but the newest ``KEEP``."""
    model = state.model
    path = checkpoint_path(run_dir, state.epoch, model.checkpoint_folder)
    if final:
        save_authors_files(model, path, spec)
    entries = state.resume_entries()
    model.save_prompt_checkpoint(
        path,
        state.epoch,
        entries.pop("optimizer"),
        entries.pop("scheduler"),
        full=final,
        **entries,
        classnames=model.classnames,
        spec=spec,
    )
    pointer = os.path.join(os.path.dirname(path), POINTER)
    with open(pointer + ".tmp", "w") as f:
        f.write(os.path.basename(path) + "\n")
    os.replace(pointer + ".tmp", pointer)
    for old, _ in checkpoints(run_dir)[KEEP:]:
        os.unlink(old)
    return path


def save_authors_files(model, path: str, spec: dict) -> list[str]:
    """Write the files the method's authors' own code writes when training ends (``authors_files``: their
    layout where it is not Dassl's), under the folder of the final checkpoint ``path``, before that checkpoint:
    its existence marks the training finished, so a job killed in between writes them again."""
    written = []
    for relative, contents in model.authors_files(spec).items():
        target = os.path.join(os.path.dirname(path), relative)
        atomic_torch_save(contents, target)
        log.info("The authors' file: %s", target)
        written.append(target)
    return written


def spec_differences(saved: dict | None, spec: dict) -> dict:
    """{key: (saved, now)} for the training keys on which a stored spec and this one differ."""
    if not saved:
        return {}
    differences = {k: (saved.get(k), spec.get(k)) for k in TRAINING_KEYS if saved.get(k) != spec.get(k)}
    for key, default in LATER_TRAINING_KEYS.items():  # absent = the default every earlier run used
        if saved.get(key, default) != spec.get(key, default):
            differences[key] = (saved.get(key, default), spec.get(key, default))
    return differences


def load_latest(run_dir: str) -> tuple[str, int, dict] | None:
    """(path, epoch, contents) of the newest checkpoint that loads; unreadable files are set aside."""
    for path, epoch in checkpoints(run_dir):
        try:
            contents = load_checkpoint_file(path)
            if not isinstance(contents, dict) or "state_dict" not in contents:
                raise ValueError("no state_dict in it")
        except Exception as exc:  # a truncated or corrupt file: any reader error
            aside = path + ".corrupt"
            os.replace(path, aside)
            log.warning(
                "Checkpoint %s cannot be read (%s: %s); set aside as %s, trying the previous one.",
                path,
                type(exc).__name__,
                exc,
                aside,
            )
            continue
        return path, epoch, contents
    return None


def check_resumable(run_dir: str, contents: dict, path: str, spec: dict) -> None:
    """Refuse to continue a checkpoint that another training spec wrote."""
    changed = spec_differences(contents.get("spec"), spec)
    if changed:
        lines = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changed.items())
        raise ResumeError(
            f"{path} was trained with a different spec ({lines}). Resuming would mix the two runs. "
            f"Use another output folder, or delete {os.path.dirname(path)} to start over."
        )


def resume(run_dir: str, state: TrainingState, spec: dict) -> int:
    """Restore the newest loadable checkpoint into ``state``; return its epoch (0: none, ``state`` as is)."""
    found = load_latest(run_dir)
    if found is None:
        return 0
    path, epoch, contents = found
    check_resumable(run_dir, contents, path, spec)
    state.load_resume_entries(contents, path)
    state.epoch = epoch
    log.info("Resuming from %s (epoch %d of %s)", path, epoch, spec.get("epochs"))
    return state.epoch
