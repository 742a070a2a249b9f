"""Experiments as data: an experiment YAML expands into jobs with dependencies.

An experiment file (see experiments/base2new.yaml) names a protocol, datasets, seeds and a set of
method variants, each pointing at a published method config:

    protocol: base2new          # train on base classes, evaluate base and new (PROTOCOL.md 12.1)
                                # or: transfer (train on `source`, evaluate `targets`, 12.2 / 12.3)
                                # or: fewshot (all classes, each of `shots: [1, 2, ...]`, PROTOCOL.md 20)
    datasets: [caltech101, ...]
    seeds: [1, 2, 3]
    methods:
      coop: {config: coop/vit_b16_ctxv1, per_dataset: {imagenet: coop/vit_b16_ep50_ctxv1}}
      # fewshot: per_shots, K -> a config or {config, run} (per_dataset wins over per_shots over config);
      # a per_dataset entry may be {per_shots: {...}}: that dataset's own configs per K (ProGrad's lambda)
    run: {num_workers: 8}       # run keys for every job
    profiles: {demo: {...}}     # named sets of overrides (the demo profile runs on generated data)
    default_methods: [coop]     # what runs without --methods (default: every method listed); the same
                                # with or without a profile, so a profile may not change it

Jobs:
  * ``train``: learn the prompt on the training classes and evaluate on them (Base accuracy, or
    the Source column); its folder is shared by every experiment that trains the same thing, so
    cross-dataset and domain generalisation reuse one ImageNet model per seed.
  * ``eval``: load the trained prompt and evaluate other classes or datasets (New accuracy,
    class-incremental, targets); depends on its ``train`` job.
  * zero-shot CLIP has no training and no seed: one ``eval`` job per dataset.
A job whose records all exist in the results store with its fingerprint (``harness.fingerprint``)
is skipped, so a re-run after a failure does only what is missing, and a job whose settings changed
(``--set epochs=2``, an edited config) runs again, in run folders of its own named by its fingerprint:
the earlier run's checkpoints are neither resumed nor overwritten, and its records stay.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import json
import os
from dataclasses import dataclass, field

import yaml

from harness import fingerprint as fingerprints
from harness import results
from harness.config import PROJECT_ROOT, ConfigError, RunSpec, build_spec, layer

EXPERIMENT_DIR = os.path.join(PROJECT_ROOT, "experiments")
EXPERIMENT_KEYS = {
    "name",
    "description",
    "protocol",
    "datasets",
    "seeds",
    "shots",
    "methods",
    "default_methods",
    "run",
    "launcher",
    "profiles",
    "source",
    "targets",
    "class_incremental",
    "data_root",
    "data",
    "backbone",
    "precision",
    "tracking",
    "report",
}
#: What an experiment's ``report:`` section may say: the method every other is compared with.
REPORT_KEYS = {"baseline"}
PROTOCOLS = ("base2new", "transfer", "fewshot")


@dataclass
class Job:
    name: str
    spec: RunSpec
    depends_on: list = field(default_factory=list)

    @property
    def kind(self) -> str:
        """``train`` | ``eval``: the spec's ``job_kind``."""
        return self.spec.job_kind

    def targets(self) -> list[tuple[str, str]]:
        return self.spec.eval_targets()

    @functools.cached_property
    def settings(self) -> dict:
        return fingerprints.settings_of(self.spec)

    @property
    def fingerprint(self) -> str:
        return fingerprints.fingerprint_of(self.settings)

    def pending_targets(self, done: set) -> list[tuple[str, str]]:
        """Targets without a record of this job's identity, fingerprint and images (``fingerprints.pending``)."""
        return fingerprints.pending(self.spec, done, self.fingerprint)


def experiment_path(name_or_path: str) -> str:
    if os.path.isfile(name_or_path):
        return name_or_path
    path = os.path.join(EXPERIMENT_DIR, f"{name_or_path}.yaml")
    if not os.path.isfile(path):
        known = sorted(f[:-5] for f in os.listdir(EXPERIMENT_DIR) if f.endswith(".yaml"))
        raise ConfigError(f"No experiment {name_or_path!r} (looked for {path}). Experiments: {', '.join(known)}.")
    return path


def load_experiment(name_or_path: str, profile: str | None = None, overrides: dict | None = None) -> dict:
    """The experiment mapping with a profile and overrides applied (later wins)."""
    path = experiment_path(name_or_path)
    with open(path) as f:
        experiment = yaml.safe_load(f) or {}
    experiment.setdefault("name", os.path.splitext(os.path.basename(path))[0])
    unknown = sorted(set(experiment) - EXPERIMENT_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}. Experiment keys: {', '.join(sorted(EXPERIMENT_KEYS))}.")
    for name, values in (experiment.get("profiles") or {}).items():
        if "default_methods" in (values or {}):
            raise ConfigError(
                f"{path}: profile {name!r} sets default_methods; the methods a study runs by default are the "
                "same with and without a profile: move default_methods to the top level of the file."
            )
    if profile:
        profiles = experiment.get("profiles") or {}
        if profile not in profiles:
            raise ConfigError(f"{path} has no profile {profile!r}. Profiles: {', '.join(profiles) or 'none'}.")
        experiment = merge(experiment, profiles[profile])
        experiment["profile"] = profile
    if overrides:
        experiment = merge(experiment, overrides)
    if experiment.get("protocol") not in PROTOCOLS:
        raise ConfigError(f"{path}: protocol must be one of {PROTOCOLS}, got {experiment.get('protocol')!r}.")
    check_report_section(path, experiment)
    return experiment


def check_report_section(path: str, experiment: dict) -> None:
    """``report: {baseline: METHOD}``: METHOD one of the experiment's methods (the report compares every
    other method with it)."""
    report = experiment.get("report")
    if report is None:
        return
    if not isinstance(report, dict) or set(report) - REPORT_KEYS:
        raise ConfigError(
            f"{path}: report must be a mapping with the key(s) {sorted(REPORT_KEYS)}, got {report!r}; "
            "e.g. report: {baseline: cocoop}."
        )
    baseline, methods = report.get("baseline"), list(experiment.get("methods") or {})
    if baseline is not None and baseline not in methods:
        raise ConfigError(
            f"{path}: report.baseline {baseline!r} is not one of the experiment's methods ({', '.join(methods)}); "
            "name the method every other is compared with."
        )


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; lists and scalars in ``update`` replace those in ``base``."""
    out = copy.deepcopy(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# Run keys the sweep sets for each job: a --set of one of them would make every job the same.
PER_JOB_KEYS = {
    "dataset": "--datasets",
    "subsample": "the experiment's protocol",
    "seed": "--seeds",
    "evaluate": "the experiment's protocol",
    "output_dir": "--out",
    "job": "the experiment's name",
    "load_from": "the sweep's training jobs",
    "experiment": "the experiment file's name",
    "data_root": "--data-root",
    "results": "--out",
}


def shots_entry(method_cfg: dict, shots: int, config_name: str | None, run: dict) -> tuple[str | None, dict]:
    """(config, run keys) at ``shots`` from ``method_cfg``'s per_shots (K -> a config name, or
    {config: ..., run: {...}}); what was given when it has no entry for K."""
    entry = (method_cfg.get("per_shots") or {}).get(shots)
    if entry is None:
        return config_name, run
    entry = entry if isinstance(entry, dict) else {"config": entry}
    return entry.get("config", config_name), dict(entry.get("run") or {})


def expand(experiment: dict, data_root: str, out: str, overrides: dict | None = None) -> list[Job]:
    """All jobs of an experiment, in dependency order; ``overrides`` (the command line's run keys)
    win over everything the experiment and method configs say."""
    name = experiment["name"]
    methods_cfg = experiment.get("methods") or {}
    if not methods_cfg:
        raise ConfigError(f"Experiment {name!r} lists no methods.")
    overrides = dict(overrides or {})
    for key in sorted(set(overrides) & set(PER_JOB_KEYS)):
        raise ConfigError(
            f"{key!r} is set for each job by the sweep and cannot be given with --set: use {PER_JOB_KEYS[key]}."
        )
    seeds = [int(s) for s in experiment.get("seeds", [1, 2, 3])]
    fewshot = experiment["protocol"] == "fewshot"
    if fewshot and "shots" in overrides:
        raise ConfigError(
            "A few-shot study sets shots per job from its 'shots' list: narrow it with --shots, not --set."
        )
    common = dict(experiment.get("run") or {})
    for key in ("backbone", "precision", "tracking") + (() if fewshot else ("shots",)):
        if experiment.get(key) is not None:
            common[key] = experiment[key]
    common.update(data_root=data_root, experiment=name, results=os.path.join(out, results.RESULTS_FILE))
    common.setdefault("feature_cache", os.path.join(out, "feature_cache"))

    # (dataset, training classes, evaluated by the training job, evaluated by a job loading it, shots or None)
    if experiment["protocol"] == "base2new":
        plan = [
            (
                d,
                "base",
                [(d, "base")],
                [(d, "new")] + ([(d, "all")] if experiment.get("class_incremental") else []),
                None,
            )
            for d in experiment.get("datasets") or []
        ]
    elif fewshot:
        plan = [
            (d, "all", [(d, "all")], [], k) for d in experiment.get("datasets") or [] for k in fewshot_shots(experiment)
        ]
    else:
        source = experiment.get("source", "imagenet")
        targets = [(t, "all") for t in experiment.get("targets") or []]
        plan = [(source, "all", [(source, "all")], targets, None)]
    if not plan:
        raise ConfigError(f"Experiment {name!r} has no datasets.")

    def targets(pairs):
        return [{"dataset": d, "subsample": s} for d, s in pairs]

    jobs: list[Job] = []
    for variant, method_cfg in methods_cfg.items():
        method_cfg = dict(method_cfg or {})
        for dataset, train_subsample, train_evals, other_evals, shots in plan:
            config_name, shots_run = method_cfg.get("config"), {}
            if shots is not None:
                config_name, shots_run = shots_entry(method_cfg, shots, config_name, shots_run)
            dataset_entry = (method_cfg.get("per_dataset") or {}).get(dataset, config_name)
            if isinstance(dataset_entry, dict):  # {per_shots: ...}: this dataset's own configs per shot count
                if set(dataset_entry) != {"per_shots"} or shots is None:
                    raise ConfigError(
                        f"Experiment {name!r}, method {variant!r}: per_dataset.{dataset} must be a config name, "
                        f"or {{per_shots: {{K: config}}}} in a few-shot study; got {dataset_entry!r}."
                    )
                config_name, shots_run = shots_entry(dataset_entry, shots, config_name, shots_run)
            else:
                config_name = dataset_entry
            values = {**common, **(method_cfg.get("run") or {}), **shots_run, "config": config_name or ""}
            if shots is not None:
                values["shots"] = shots
            if method_cfg.get("options"):
                values["options"] = method_cfg["options"]
            values.setdefault("method", layer(values).get("method") or variant)
            values.update(dataset=dataset, subsample=train_subsample)
            if not build_spec({**values, "output_dir": out}, overrides).learns:
                if any(job.name == f"{name}/{variant}/{dataset}" for job in jobs):
                    continue  # zero-shot: one job per dataset, whatever the shot counts
                zero_shot = {**values, "seed": None, "evaluate": targets(train_evals + other_evals)}
                fingerprint = fingerprints.fingerprint_of(
                    fingerprints.settings_of(build_spec({**zero_shot, "output_dir": out}, overrides))
                )
                spec = build_spec(
                    {
                        **zero_shot,
                        "output_dir": os.path.join(out, name, "zeroshot", variant, f"{dataset}_{fingerprint[:8]}"),
                        "job": f"{name}/{variant}/{dataset}",
                    },
                    overrides,
                )
                jobs.append(Job(spec.job, spec))
                continue
            shot_part = f"/{shots}shot" if shots is not None else ""
            for seed in seeds:
                base = {**values, "seed": seed}
                probe = build_spec({**base, "output_dir": out}, overrides)
                # One folder per settings run: a changed setting never resumes or overwrites another's.
                fingerprint = fingerprints.fingerprint_of(fingerprints.settings_of(probe))
                folder = os.path.join(out, "runs", config_name or values["method"], f"{dataset}_{train_subsample}")
                train_dir = os.path.join(folder, f"shots{probe.shots}_seed{seed}_{fingerprint[:8]}")
                # A training folder of a sweep made before fingerprints (named by the training keys and the
                # data root) is still found, so its evaluation jobs load the prompt it holds.
                legacy_key = {**probe.training_identity(), "data_root": probe.data_root}
                legacy_hash = hashlib.sha1(json.dumps(legacy_key, sort_keys=True, default=str).encode()).hexdigest()
                legacy = os.path.join(folder, f"shots{probe.shots}_seed{seed}_{legacy_hash[:8]}")
                if not os.path.isdir(train_dir) and os.path.isdir(legacy) and not fingerprints.read_folder(legacy):
                    train_dir = legacy
                train = build_spec(
                    {
                        **base,
                        "output_dir": train_dir,
                        "evaluate": targets(train_evals),
                        "job": f"{name}/{variant}/{dataset}{shot_part}/seed{seed}/train",
                    },
                    overrides,
                )
                jobs.append(Job(train.job, train))
                if other_evals:
                    evaluation = build_spec(
                        {
                            **base,
                            "load_from": train_dir,
                            "evaluate": targets(other_evals),
                            "output_dir": os.path.join(
                                out, name, "evals", variant, dataset, f"seed{seed}_{fingerprint[:8]}"
                            ),
                            "job": f"{name}/{variant}/{dataset}/seed{seed}/eval",
                        },
                        overrides,
                    )
                    jobs.append(Job(evaluation.job, evaluation, depends_on=[train.job]))
    return jobs


def fewshot_shots(experiment: dict) -> list[int]:
    """The shot counts of a few-shot study (its ``shots`` list), checked."""
    shots = experiment.get("shots", [1, 2, 4, 8, 16])
    shots = shots if isinstance(shots, list) else [shots]
    if not shots or not all(isinstance(k, int) and not isinstance(k, bool) and k >= 1 for k in shots):
        raise ConfigError(f"Experiment {experiment['name']!r}: shots must be a list of counts >= 1, got {shots!r}.")
    return shots


#: ``--methods all`` (``METHODS=all``): every method the experiment lists, not only its default roster.
ALL_METHODS = "all"


def default_roster(experiment: dict) -> list[str]:
    """The methods a study runs without --methods: its ``default_methods`` (the paper's, e.g. zero-shot
    CLIP, CoOp and CoCoOp), else every method it lists. The one rule, with or without data."""
    listed = list(experiment.get("methods") or {})
    return list(experiment.get("default_methods") or listed)


def narrow(experiment: dict, datasets=None, seeds=None, methods=None, shots=None) -> dict:
    """Apply DATASETS= / SEEDS= / METHODS= / SHOTS= narrowing, checking each name exists in the experiment.
    Without METHODS, the ``default_roster``; ``METHODS=all``, every method the experiment lists; a
    registered method that the experiment does not list runs when named, with its default config."""
    out = copy.deepcopy(experiment)
    if shots:
        if out["protocol"] != "fewshot":
            raise ConfigError(f"--shots narrows a few-shot study; {out['name']!r} is a {out['protocol']} study.")
        known = fewshot_shots(out)
        bad = [k for k in shots if int(k) not in known]
        if bad:
            raise ConfigError(f"{bad} not in this experiment's shots: {', '.join(map(str, known))}.")
        out["shots"] = [int(k) for k in shots]
    if list(methods or []) == [ALL_METHODS]:
        methods = list(out.get("methods") or {})
    methods = methods or default_roster(out)
    out.pop("default_methods", None)
    if datasets:
        key = "targets" if out["protocol"] == "transfer" else "datasets"
        known = out.get(key) or []
        bad = [d for d in datasets if d not in known and not (key == "targets" and d == out.get("source"))]
        if bad:
            raise ConfigError(f"{bad} not in this experiment's {key}: {', '.join(known)}.")
        out[key] = [d for d in datasets if d in known]
    if seeds:
        out["seeds"] = [int(s) for s in seeds]
    if methods:
        listed = out.get("methods") or {}
        out["methods"] = {m: listed[m] if m in listed else _unlisted_method(m, listed) for m in methods}
    return out


def _unlisted_method(name: str, listed: dict) -> dict:
    """A registered method the experiment does not list runs with its default config."""
    import methods
    from harness.config import default_method_config

    if name not in methods.list_methods():
        raise ConfigError(
            f"{name!r} is neither one of this experiment's methods ({', '.join(listed)}) nor a registered "
            f"method ({', '.join(methods.list_methods())})."
        )
    return {"config": default_method_config(name)}


def experiment_datasets(experiment: dict) -> list[str]:
    """Every dataset an experiment reads: its datasets (base-to-new) or its source and targets."""
    if experiment["protocol"] in ("base2new", "fewshot"):
        return list(experiment.get("datasets") or [])
    return [experiment.get("source", "imagenet"), *(experiment.get("targets") or [])]


def prepare_data(experiment: dict, data_root: str, out: str) -> str:
    """The data root to use: the user's, or, for a profile with ``data: generated``, a folder under
    ``out`` where each of the experiment's datasets is written by its registered generator."""
    from harness import data

    if data_root:
        return os.path.abspath(os.path.expanduser(data_root))
    if experiment.get("data") != "generated":
        raise ConfigError(
            f"Experiment {experiment['name']!r} needs a data root: pass --data-root (make ... DATA_ROOT=/path), "
            "the folder that holds the datasets as PROTOCOL.md 3.2 lays them out. Check it with: "
            "python -m harness.data check --root /path"
        )
    root = os.path.join(out, "demo-data")
    for key in experiment_datasets(experiment):
        info = data.get_info(key)
        if info.generate is None:
            raise ConfigError(f"Dataset {key!r} cannot be generated: give --data-root with its folder.")
        info.generate(root)
    return root


def prepare_backbones(jobs: list[Job], printer=print) -> None:
    """Run each backbone's preparation step once, here, before jobs start: the tiny pre-trained CLIP
    is trained with a progress bar on this console (not silently inside the first job), and
    OpenAI's weights are downloaded once rather than by every job. A failure here is only a warning:
    the jobs' machines may have the file where this one does not."""
    from clipcore import backbone

    for spec in sorted({job.spec.backbone for job in jobs}):
        try:
            backbone.prepare_backbone(spec)
        except Exception as exc:  # noqa: BLE001 - reported, and the jobs try again on their machines
            printer(f"warning: could not prepare backbone {spec!r} here ({exc}); each job will try itself")


def check_data_folders(jobs: list[Job]) -> None:
    """Fail before submitting anything when a dataset folder the jobs need is absent."""
    from harness import data

    missing = {}
    for job in jobs:
        for dataset in {job.spec.dataset, *(d for d, _ in job.targets())}:
            folder = os.path.join(job.spec.data_root, data.get_info(dataset).folder)
            if not os.path.isdir(folder):
                missing[dataset] = folder
    if missing:
        root = jobs[0].spec.data_root
        raise ConfigError(
            "Dataset folders missing under the data root: "
            + ", ".join(f"{d} ({f})" for d, f in sorted(missing.items()))
            + f". See what to fetch with: python -m harness.data check --root {root}"
            + "; or narrow the sweep with --datasets."
        )


EXPECTATION_FILE = "expected.json"


def expectation_path(out: str, experiment: str) -> str:
    return os.path.join(out, experiment, EXPECTATION_FILE)


def record_expectation(out: str, ran: dict, expected: dict, jobs: list[Job] = ()) -> str:
    """Write ``<out>/<experiment>/expected.json`` beside the results store: the datasets, seeds and
    methods (and a few-shot study's shot counts) the experiment (with its profile) expects, and what
    the sweeps run here so far narrowed it to, so that the report marks every cell and Average that
    falls short of the experiment; and ``jobs``, each job these sweeps ran with its spec, so that
    ``status`` reports on them without being given the sweeps' flags again (``recorded_jobs``)."""
    from clipcore.atomic import atomic_write_text

    path = expectation_path(out, ran["name"])
    previous = read_expectation(path) if os.path.isfile(path) else {}
    before = previous.get("ran") or {}
    union = lambda key, now: sorted(set(before.get(key) or []) | set(now), key=str)  # noqa: E731
    entry = {
        "experiment": ran["name"],
        "profile": expected.get("profile"),
        "protocol": expected["protocol"],
        "datasets": experiment_datasets(expected),
        "seeds": [int(s) for s in expected.get("seeds", [1, 2, 3])],
        "methods": list(expected.get("methods") or {}),
        "ran": {
            "datasets": union("datasets", experiment_datasets(ran)),
            "seeds": union("seeds", [int(s) for s in ran.get("seeds", [1, 2, 3])]),
            "methods": union("methods", list(ran.get("methods") or {})),
        },
    }
    baseline = (expected.get("report") or {}).get("baseline")
    if baseline:  # the report runs without the YAML: it learns the study's baseline here
        entry["baseline"] = baseline
    if expected["protocol"] == "fewshot":  # the report lists the shot counts expected and never run
        entry["shots"] = fewshot_shots(expected)
        entry["ran"]["shots"] = union("shots", fewshot_shots(ran))
    recorded = dict(previous.get("jobs") or {})
    for job in jobs:  # a later sweep's job of the same name (other settings) replaces the earlier one
        recorded.pop(job.name, None)
        recorded[job.name] = {"depends_on": list(job.depends_on), "spec": job.spec.to_dict()}
    entry["jobs"] = recorded
    atomic_write_text(path, json.dumps(entry, indent=1) + "\n")
    return path


def recorded_jobs(out: str, experiment: str) -> list[Job]:
    """The jobs the sweeps of ``experiment`` into ``out`` ran, as they recorded them (``record_expectation``),
    whatever flags (--datasets, --backbone, --set ...) each sweep was given."""
    path = expectation_path(out, experiment)
    if not os.path.isfile(path):
        recorded = sorted(read_expectations(out))
        raise ConfigError(
            f"No sweep of {experiment!r} is recorded in {out} (no {path}). "
            + (f"Sweeps recorded there: {', '.join(recorded)}. " if recorded else "")
            + "Give the --out (OUT=) the sweep wrote to, or run the sweep first."
        )
    jobs = read_expectation(path).get("jobs")
    if not jobs:
        raise ConfigError(
            f"{path} was written by a sweep that did not record its jobs (an earlier harness): run the sweep "
            "once more (it skips every finished job and records them), then ask for its status again."
        )
    fields = {f.name for f in dataclasses.fields(RunSpec)}
    return [
        Job(name, RunSpec(**{k: v for k, v in entry["spec"].items() if k in fields}), list(entry["depends_on"]))
        for name, entry in jobs.items()
    ]


def read_expectations(out: str) -> dict:
    """{experiment: expectation} of the sweeps recorded beside a results store (``record_expectation``)."""
    found = {}
    folder = os.path.dirname(os.path.abspath(results.results_path(out)))
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name, EXPECTATION_FILE)
        if os.path.isfile(path):
            found[name] = read_expectation(path)
    return found


def read_expectation(path: str) -> dict:
    """One ``expected.json`` (``record_expectation``); a damaged one is a ConfigError saying how to re-make it."""
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        entry = e
    if not isinstance(entry, dict):
        why = str(entry) if isinstance(entry, Exception) else f"a JSON {type(entry).__name__}, not an object"
        raise ConfigError(
            f"{path} is damaged ({why}); it records what the sweeps into its folder asked for and ran: delete it "
            "and run its sweeps again (their finished jobs are skipped; it is written anew)"
        )
    return entry
