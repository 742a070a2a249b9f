"""Weights & Biases tracking, with a no-op stand-in when it is off.

``start_run(mode=...)``:
  * "auto" (default): follow W&B's own settings. ``WANDB_MODE`` wins when set; otherwise a
    logged-in key (``WANDB_API_KEY`` or ``wandb login``'s netrc entry) means online, and no key
    means offline, with a note on how to sync the run later.
  * "online" | "offline" | "disabled": passed to W&B as is.
  * "none": no W&B at all (not even imported).
The results store, not W&B, is what the report reads: tracking never decides a number.
"""

from __future__ import annotations

import logging
import netrc
import os

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled", "none")
DEFAULT_PROJECT = "prompt-harness"


class Tracker:
    """The interface the runner and the report use; this base class does nothing."""

    mode = "none"
    run_dir = None

    def log(self, metrics: dict, step: int | None = None) -> None:
        pass

    def summary(self, metrics: dict) -> None:
        pass

    def log_table(self, name: str, frame) -> None:
        pass

    def log_image(self, name: str, path: str) -> None:
        pass

    def finish(self, failed: bool = False) -> None:
        pass


class WandbTracker(Tracker):
    def __init__(self, mode: str, **init_kwargs):
        import wandb

        self._wandb = wandb
        self.mode = mode
        self.run = wandb.init(mode=mode, reinit="finish_previous", **init_kwargs)
        self.run_dir = getattr(self.run, "dir", None)
        if mode == "offline":
            log.info(
                "W&B is offline (no API key found). Sync later with: wandb sync %s", os.path.dirname(self.run_dir or "")
            )

    def log(self, metrics, step=None):
        self.run.log(metrics, step=step)

    def summary(self, metrics):
        for key, value in metrics.items():
            self.run.summary[key] = value

    def log_table(self, name, frame):
        self.run.log({name: self._wandb.Table(dataframe=frame.reset_index(drop=True))})

    def log_image(self, name, path):
        self.run.log({name: self._wandb.Image(path)})

    def finish(self, failed=False):
        self.run.finish(exit_code=1 if failed else 0)
        # finish() can return before W&B's service process has flushed the run file (seen in
        # offline mode); teardown waits for it, so a job's files are complete when it returns.
        self._wandb.teardown()


def wandb_has_key() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].rstrip("/")
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def resolve_mode(mode: str = "auto") -> str:
    if mode not in MODES:
        raise ValueError(f"Unknown tracking mode {mode!r}; choose one of {MODES}.")
    if mode != "auto":
        return mode
    env = os.environ.get("WANDB_MODE")
    if env:
        return {"dryrun": "offline", "run": "online"}.get(env, env)
    return "online" if wandb_has_key() else "offline"


def start_run(
    mode: str = "auto",
    *,
    name: str | None = None,
    group: str | None = None,
    tags: list[str] | tuple = (),
    config: dict | None = None,
    job_type: str = "train",
    dir: str | None = None,
    project: str | None = None,
) -> Tracker:
    resolved = resolve_mode(mode)
    if resolved == "none":
        return Tracker()
    if dir:
        os.makedirs(dir, exist_ok=True)
    return WandbTracker(
        resolved,
        project=project or os.environ.get("WANDB_PROJECT", DEFAULT_PROJECT),
        name=name,
        group=group,
        tags=[str(t) for t in tags],
        config=config or {},
        job_type=job_type,
        dir=dir,
    )
