"""Which launcher a sweep uses and with what options: ``experiments/launcher.yaml`` < the experiment's
``launcher`` section < the command line."""

from __future__ import annotations

import os

import yaml

from harness.config import PROJECT_ROOT, ConfigError

LAUNCHERS = ("local", "slurm", "debug")
DEFAULTS_FILE = os.path.join(PROJECT_ROOT, "experiments", "launcher.yaml")
SLURM_KEYS = {
    "partition",
    "account",
    "qos",
    "gpus_per_node",
    "cpus_per_task",
    "mem_gb",
    "timeout_min",
    "array_parallelism",
    "constraint",
    "additional",
    "setup",
}
# local: max_parallel, timeout_min, gpus_per_job and gpu_ids (``gpu_settings``; debug's jobs run in the
# sweep's process, on the GPUs it sees); debug: post_mortem (open the debugger on a failure at a terminal);
# both: threads (torch's threads per job; local's default the cores shared among its parallel jobs, debug's
# torch's own). One thread suits tiny models: two threads of small ops on a busy 2-core machine wait on
# each other and run many times slower than one.
LOCAL_KEYS = {"max_parallel", "timeout_min", "post_mortem", "threads", "gpus_per_job", "gpu_ids"}
WHERE_LOCAL = "experiments/launcher.yaml's local section or the experiment's launcher section"


def check_launcher(name: str) -> None:
    if name not in LAUNCHERS:
        raise ConfigError(f"Unknown launcher {name!r}; choose one of {LAUNCHERS}.")


def check_slurm_keys(cfg: dict) -> None:
    unknown = sorted(set(cfg) - SLURM_KEYS)
    if unknown:
        raise ConfigError(f"Unknown slurm launcher key(s) {unknown}. Keys: {', '.join(sorted(SLURM_KEYS))}.")


def gpu_settings(cfg: dict) -> tuple[int, list[int] | None]:
    """(GPUs each local job gets, the GPU ids to take them from or None for every GPU the sweep sees)."""
    per_job = cfg.get("gpus_per_job", 1)
    if isinstance(per_job, bool) or not isinstance(per_job, int) or per_job < 0:
        raise ConfigError(
            f"Launcher option gpus_per_job={per_job!r}: expected a whole number >= 0 (0: the jobs on the CPU); "
            f"set e.g. gpus_per_job: 1 in {WHERE_LOCAL}."
        )
    ids = cfg.get("gpu_ids")
    if ids is None:
        return per_job, None
    whole = lambda i: isinstance(i, int) and not isinstance(i, bool) and i >= 0  # noqa: E731
    if not isinstance(ids, (list, tuple)) or not ids or not all(map(whole, ids)) or len(set(ids)) < len(ids):
        raise ConfigError(
            f"Launcher option gpu_ids={ids!r}: expected a list of distinct GPU indices as CUDA_VISIBLE_DEVICES "
            f"numbers them, e.g. gpu_ids: [0, 1], or null for every GPU the sweep sees; set it in {WHERE_LOCAL}."
        )
    return per_job, list(ids)


def launcher_settings(experiment: dict, name: str = "", slurm: dict | None = None, max_parallel: int = 0):
    """(launcher name, its options): ``experiments/launcher.yaml`` < the experiment's ``launcher``
    section < the command line."""
    with open(DEFAULTS_FILE) as f:
        defaults = yaml.safe_load(f) or {}
    section = dict(experiment.get("launcher") or {})
    name = name or section.get("name") or defaults.get("name", "local")
    check_launcher(name)
    if name == "slurm":
        cfg = {**(defaults.get("slurm") or {}), **(section.get("slurm") or {}), **(slurm or {})}
        check_slurm_keys(cfg)
        return name, cfg
    local = {**(defaults.get("local") or {}), **{k: v for k, v in section.items() if k in LOCAL_KEYS}}
    if max_parallel:
        local["max_parallel"] = max_parallel
    return name, local
