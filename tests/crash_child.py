"""A training job that the tests kill with SIGKILL at a chosen moment (no hook in production code).

    python tests/crash_child.py SPEC.json MOMENT MARKER

runs ``harness.runner.run`` on the spec. At ``MOMENT`` it creates the file ``MARKER`` and sleeps, so
that the test (which waits for the marker) kills a real process exactly there:

* ``first-step``: inside the first training step, before any checkpoint exists;
* ``mid-epoch:E``: in the middle of epoch E (after its first step), checkpoints of epochs < E exist;
* ``checkpoint-write:E``: while the checkpoint of epoch E is half written to its temporary file;
* ``before-eval``: training finished (final checkpoint written), before the first evaluation.

The pause is injected from here by wrapping library functions, as any external event would hit them.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import harness.runner
import methods
from harness.config import build_spec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def kill_at(spec_values: dict, moment: str, folder) -> None:
    """Run the spec in a child process, SIGKILL it at ``moment`` (see tests/crash_child.py)."""
    spec_path, marker, output = folder / "spec.json", folder / "paused", folder / "child.log"
    spec_path.write_text(json.dumps(spec_values))
    with open(output, "w") as log:  # a file, not a pipe: a full pipe would block the child
        child = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), str(spec_path), moment, str(marker)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.time() + 240
        while not marker.exists():
            assert child.poll() is None, f"the child ended before {moment}: {output.read_text()[-2000:]}"
            assert time.time() < deadline, f"the child never reached {moment}"
            time.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=60)
    assert child.returncode == -signal.SIGKILL


def pause(marker: str) -> None:
    with open(marker, "w") as f:
        f.write(str(os.getpid()))
    time.sleep(600)  # the test kills us long before this ends


def main() -> None:
    spec_path, moment, marker = sys.argv[1:4]
    with open(spec_path) as f:
        spec = build_spec(json.load(f))
    arm(spec, moment, marker)
    harness.runner.run(spec)


def arm(spec, moment: str, marker: str) -> None:
    """Make this process pause at ``moment`` of a run of ``spec`` (see the module's docstring)."""
    name, _, arg = moment.partition(":")
    epoch = int(arg) if arg else None

    if name in ("first-step", "mid-epoch"):
        # What the runner calls once per step: the method's own backward if it has one (methods.parts.base),
        # else its objective (its own, or the contract's default cross-entropy).
        method_class = methods.method_class(spec.method)
        step_name = "backward" if callable(getattr(method_class, "backward", None)) else "training_loss"
        original = getattr(method_class, step_name)
        state = {"calls": 0, "epoch_steps": None}

        def training_step(self, images, labels, *args, **kw):
            state["calls"] += 1
            if name == "first-step" or (
                state["epoch_steps"] and state["calls"] == (epoch - 1) * state["epoch_steps"] + 2
            ):
                pause(marker)
            return original(self, images, labels, *args, **kw)

        # steps per epoch = the loader's length: known once the run has built it
        original_build_loader = harness.runner.data.build_loader

        def build_loader(items, transform, batch_size, train, **kw):
            loader = original_build_loader(items, transform, batch_size, train, **kw)
            if train:
                state["epoch_steps"] = len(loader)
            return loader

        harness.runner.data.build_loader = build_loader
        setattr(method_class, step_name, training_step)
    elif name == "checkpoint-write":
        import torch

        original_save = torch.save

        def save(obj, f, *args, **kw):
            if isinstance(obj, dict) and obj.get("epoch") == epoch and "state_dict" in obj:
                original_save(obj, f, *args, **kw)
                f.flush()
                f.truncate(max(1, f.tell() // 2))  # half a file on disk under the temporary name
                f.flush()
                pause(marker)
            return original_save(obj, f, *args, **kw)

        torch.save = save
    elif name == "before-eval":

        def evaluate(self, *args, **kw):
            pause(marker)

        harness.runner.Run.evaluate = evaluate
    else:
        raise SystemExit(f"unknown moment {moment!r}")


if __name__ == "__main__":
    main()
