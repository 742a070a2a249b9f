"""Weights & Biases tracking, with a no-op stand-in when it is off; every W&B name in one place.

``start_run(mode=...)``:
  * "auto" (default): follow W&B's own settings. ``WANDB_MODE`` wins when set; otherwise a
    logged-in key (``WANDB_API_KEY`` or ``wandb login``'s netrc entry) means online, and no key
    means offline, with a note on how to sync the run later.
  * "online" | "offline" | "disabled": passed to W&B as is.
  * "none": no W&B at all (not even imported).
The results store, not W&B, is what the report reads: tracking never decides a number.

Stable names (the dashboard, ``harness.dashboard``, reads exactly these; docs/reports.md "Tracking and
results" has the table):

  * config: every run key of the job's spec (``RunSpec.to_dict()``: ``experiment``, ``method``,
    ``dataset``, ``subsample``, ``seed``, ``shots``, ``backbone``, ``precision``, ``epochs``,
    ``options``, ...) plus ``method_config`` (the method config's name, else the method) and
    ``job_kind`` (``train``: learns a prompt; ``eval``: zero-shot or a trained prompt loaded).
  * tags: experiment, method, dataset, ``seed<N>`` (``zeroshot`` for an unseeded zero-shot job)
    and the job kind.
  * history, per training step: ``train/loss``, ``train/lr``, ``epoch``; per epoch (at the
    epoch's last step): ``epoch/loss``, ``epoch/train_accuracy``, ``epoch/lr``, ``epoch``; per
    evaluation: ``eval/<dataset>/<subsample>/accuracy`` and ``.../macro_f1``.
  * summary, per evaluation: ``eval/<dataset>/<subsample>/accuracy`` and ``.../macro_f1``, and
    ``accuracy/<subsample>`` when the evaluated dataset is the job's own (``config.dataset``), so
    a panel can group ``accuracy/base`` / ``accuracy/new`` / ``accuracy/all`` by any config key.
"""

from __future__ import annotations

import json
import logging
import netrc
import os
import subprocess
import sys
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

MODES = ("auto", "online", "offline", "disabled", "none")
DEFAULT_PROJECT = "prompt-harness"

# -- stable names ---------------------------------------------------------------------------------

TRAIN_LOSS = "train/loss"
TRAIN_LR = "train/lr"
EPOCH = "epoch"
EPOCH_LOSS = "epoch/loss"
EPOCH_TRAIN_ACCURACY = "epoch/train_accuracy"
EPOCH_LR = "epoch/lr"
STEP_KEYS = (TRAIN_LOSS, TRAIN_LR, EPOCH)
EPOCH_KEYS = (EPOCH_LOSS, EPOCH_TRAIN_ACCURACY, EPOCH_LR, EPOCH)

JOB_KINDS = ("train", "eval")
REPORT_JOB_TYPE = "report"  # the report stage's run (tables and figures)
SUBSAMPLES = ("base", "new", "all")
# The runs table of the dashboard: the config keys that say what a job is.
TABLE_CONFIG_KEYS = (
    "method",
    "method_config",
    "dataset",
    "subsample",
    "seed",
    "shots",
    "backbone",
    "precision",
    "epochs",
    "job_kind",
)


def eval_key(dataset: str, subsample: str, metric: str = "accuracy") -> str:
    """History and summary key of one evaluation's metric: ``eval/<dataset>/<subsample>/<metric>``."""
    return f"eval/{dataset}/{subsample}/{metric}"


def accuracy_key(subsample: str) -> str:
    """Summary key of the accuracy on the job's own dataset: ``accuracy/<subsample>``."""
    return f"accuracy/{subsample}"


def run_config(spec) -> dict:
    """The W&B config of a job: its whole spec plus ``method_config`` and ``job_kind`` (``RunSpec.job_kind``)."""
    config = spec.to_dict()
    config["method_config"] = spec.config or spec.method
    config["job_kind"] = spec.job_kind
    return config


def run_tags(spec) -> list[str]:
    seed = "zeroshot" if spec.seed is None else f"seed{spec.seed}"
    return [spec.experiment, spec.method, spec.dataset, seed, spec.job_kind]


def step_metrics(loss: float, lr: float, epoch: int) -> dict:
    return {TRAIN_LOSS: loss, TRAIN_LR: lr, EPOCH: epoch}


def epoch_metrics(loss: float, train_accuracy: float, lr: float, epoch: int) -> dict:
    return {EPOCH_LOSS: loss, EPOCH_TRAIN_ACCURACY: train_accuracy, EPOCH_LR: lr, EPOCH: epoch}


def eval_metrics(dataset: str, subsample: str, metrics: dict) -> dict:
    return {
        eval_key(dataset, subsample): metrics["accuracy"],
        eval_key(dataset, subsample, "macro_f1"): metrics["macro_f1"],
    }


def summary_metrics(record: dict, run_dataset: str) -> dict:
    """Summary keys of one results-store record, for a job whose own dataset is ``run_dataset``."""
    out = eval_metrics(record["dataset"], record["subsample"], record["metrics"])
    if record["dataset"] == run_dataset:
        out[accuracy_key(record["subsample"])] = record["metrics"]["accuracy"]
    return out


# -- the tracker ----------------------------------------------------------------------------------


class Tracker:
    """The interface the runner and the report use; this base class does nothing."""

    mode = "none"
    run_dir = None
    run_id = None
    project = None

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
        self.run_id = getattr(self.run, "id", None)
        self.project = init_kwargs.get("project")
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


def project_name(project: str | None = None) -> str:
    """The W&B project: the one given, else ``WANDB_PROJECT``, else ``prompt-harness``."""
    return project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT


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
        project=project_name(project),
        name=name,
        group=group,
        tags=[str(t) for t in tags],
        config=config or {},
        job_type=job_type,
        dir=dir,
    )


# -- reading an offline run back ------------------------------------------------------------------


@dataclass
class OfflineRun:
    """One run as W&B's own reader (``wandb leet inspect``) sees its ``.wandb`` file."""

    path: str
    run_id: str
    name: str
    group: str
    job_type: str
    project: str
    tags: list
    config: dict
    summary: dict  # W&B's own final summary (nested: a table is {"_type": "table-file", "path": ...})
    history: list = field(default_factory=list)  # one dict per history row, with "_step"
    exit_code: int | None = None
    state: str = ""

    @property
    def files_dir(self) -> str:
        return os.path.join(os.path.dirname(self.path), "files")

    def series(self, key: str) -> list[tuple[int, object]]:
        """[(step, value)] of a history key, in logging order."""
        return [(row["_step"], row[key]) for row in self.history if key in row]


def _inspect(path: str, *flags: str) -> str:
    cmd = [sys.executable, "-m", "wandb", "leet", "inspect", *flags, "--json", path]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(
            f"W&B's reader failed on {path} ({' '.join(cmd[1:])}): {done.stderr.strip() or done.stdout.strip()}. "
            "It needs a wandb with `wandb leet inspect` (0.31 is tested)."
        )
    return done.stdout


def read_offline_run(path: str) -> OfflineRun:
    """Read a run's ``.wandb`` file (or its run folder) with W&B's own reader, ``wandb leet inspect``.

    The records give the run's name, group, job type, config and history rows; the summary is
    W&B's own reduction of the summary records (``--summary``)."""
    if os.path.isdir(path):
        found = [f for f in os.listdir(path) if f.startswith("run-") and f.endswith(".wandb")]
        if len(found) != 1:
            raise FileNotFoundError(f"{path} holds {len(found)} run-*.wandb files, expected one")
        path = os.path.join(path, found[0])
    records = [json.loads(line) for line in _inspect(path).splitlines() if line.strip()]
    final = json.loads(_inspect(path, "--summary"))
    meta = next((r["run"] for r in records if r.get("type") == "run"), {})
    config = {}
    for r in records:
        if r.get("type") == "run":
            config.update((r["run"].get("config") or {}).get("update") or {})
        elif r.get("type") == "config":
            config.update((r["config"] or {}).get("update") or {})
            for key in (r["config"] or {}).get("remove") or []:
                config.pop(key, None)
    config.pop("_wandb", None)
    history = [r["history"]["item"] for r in records if r.get("type") == "history"]
    exit_code = next((r["exit"].get("exit_code", 0) for r in records if r.get("type") == "exit"), None)
    return OfflineRun(
        path=os.path.abspath(path),
        run_id=meta.get("run_id", final.get("run_id", "")),
        name=meta.get("display_name", final.get("name", "")),
        group=meta.get("run_group", ""),
        job_type=meta.get("job_type", ""),
        project=meta.get("project", final.get("project", "")),
        tags=list(meta.get("tags") or []),
        config=config,
        summary=final.get("summary") or {},
        history=history,
        exit_code=exit_code,
        state=final.get("state", ""),
    )


def offline_runs(folder: str) -> list[str]:
    """Every offline run folder (``offline-run-*``) under ``folder``, sorted."""
    found = []
    for root, dirs, _ in os.walk(folder):
        for d in dirs:
            if d.startswith("offline-run-"):
                found.append(os.path.join(root, d))
    return sorted(found)
