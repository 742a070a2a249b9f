"""Run specifications: one training-and/or-evaluation job, as plain data.

Configuration is layered here and nowhere else (``layer``, checked by ``build_spec``; the sweep calls
them), as in the authors' framework (PROTOCOL.md 1): the defaults of ``RunSpec`` < the method config
(``experiments/methods/<method>/<name>.yaml``, holding only what differs from the defaults) < the
experiment's values (its ``run`` section, its top-level keys, the method variant's ``run`` and
``options``) < the command line (``--set``), which always wins. Every key is checked before any work
starts (``validate``, which ``harness.runner.Run`` calls too): an unknown key, method, method option,
dataset or backbone, or a value outside the type and range declared beside its default (``RunSpec``'s
annotations; a method's options: its constructor's, ``methods.parts.registry.check_options``) is a one-line
error naming the key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Annotated

import yaml

from bounds import OneOf, OutOfBounds, Range, Satisfies, check, shorten
from harness.data.constants import CROP_SCALE
from harness.tracking import MODES as TRACKING_MODES

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METHOD_CONFIG_DIR = os.path.join(PROJECT_ROOT, "experiments", "methods")
RUN_PRECISIONS = ("fp16", "bf16", "fp32", "amp")
SUBSAMPLES = ("all", "base", "new")
OPTIMIZERS = ("sgd", "adam", "adamw")
MAX_SEED = 2**32 - 1  # numpy's seeds are 32-bit
EVALUATION_KEYS = ("dataset", "subsample")
# torch's optimisers turn a rate into a float32 (largest ~3.4e38) and crash past it; a rate this large
# already makes the first step non-finite, which the runner stops with advice (the tests train at 1e30).
MAX_RATE = 1e30


class ConfigError(ValueError):
    pass


def _known_device(device: str) -> bool:
    if device in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", device):
        return True
    if device == "mps":  # only where this torch is built with Apple's backend
        import torch

        mps = getattr(torch.backends, "mps", None)
        return bool(mps and mps.is_built())
    return False


DEVICE = Satisfies(_known_device, "auto | cpu | cuda | cuda:N (N a GPU index) | mps (torch built for Apple)")
CROP_SCALE_RANGE = Satisfies(
    lambda s: len(s) == 2 and 0 < s[0] <= s[1] <= 1,
    "[min, max] with 0 < min <= max <= 1 (the fraction of the image a training crop covers), e.g. [0.5, 1]",
)


@dataclass
class RunSpec:
    """One job: train ``method`` on ``dataset`` (classes ``subsample``) and evaluate ``evaluate``."""

    method: str = ""
    dataset: str = ""
    data_root: str = ""
    options: dict = field(default_factory=dict)
    config: str = ""
    experiment: str = "adhoc"
    shots: Annotated[int, Range(0)] = 16
    seed: Annotated[int, Range(0, MAX_SEED)] | None = 1
    subsample: Annotated[str, OneOf(SUBSAMPLES)] = "all"
    evaluate: list = field(default_factory=list)
    backbone: str = "ViT-B/16"
    precision: Annotated[str, OneOf(RUN_PRECISIONS)] = "fp16"
    epochs: Annotated[int, Range(0)] = 10
    batch_size: Annotated[int, Range(1)] = 1
    test_batch_size: Annotated[int, Range(1)] = 100
    # Both rates > 0: the warm-up's start factor is warmup_lr / lr, and a frozen epoch is no warm-up
    # (epochs=0 evaluates the initial prompt; warmup_epochs=0 skips the warm-up).
    lr: Annotated[float, Range(0, MAX_RATE, low_open=True)] = 0.002
    momentum: Annotated[float, Range(0, 1, high_open=True)] = 0.9
    # Published: 5e-4 (Dassl's SGD) and 1e-2 (AdamW); a decay of 1 already erases a step's weights, and a
    # huge one makes torch's optimiser crash converting it to float32.
    weight_decay: Annotated[float, Range(0, 1)] = 5e-4
    warmup_epochs: Annotated[int, Range(0)] = 1
    warmup_lr: Annotated[float, Range(0, MAX_RATE, low_open=True)] = 1e-5
    optimizer: Annotated[str, OneOf(OPTIMIZERS)] = "sgd"
    adam_eps: Annotated[float, Range(0, low_open=True)] = 1e-8
    crop_scale: Annotated[list[float], CROP_SCALE_RANGE] = field(default_factory=lambda: list(CROP_SCALE))
    num_workers: Annotated[int, Range(0)] | None = None
    device: Annotated[str, DEVICE] = "auto"
    output_dir: str = ""
    results: str = ""
    feature_cache: str = ""
    load_from: str = ""
    load_any: bool = False
    tracking: Annotated[str, OneOf(TRACKING_MODES)] = "auto"
    force: bool = False
    reevaluate: bool = False
    job: str = ""

    def eval_targets(self) -> list[tuple[str, str]]:
        """[(dataset, subsample)]; by default the training dataset and classes. An entry is a dataset key
        or {dataset, subsample} (dataset default: the training dataset, subsample default: all); any other
        key, or a key without a value, is an error: it would score another target than the one meant."""
        targets = self.evaluate or [{"dataset": self.dataset, "subsample": self.subsample}]
        out = []
        for t in targets:
            if isinstance(t, str) and t:
                t = {"dataset": t}
            if not isinstance(t, dict) or not t:
                raise ConfigError(
                    f"evaluate entry {t!r} must be a dataset key or {{dataset: KEY, subsample: all|base|new}}."
                )
            unknown = sorted(str(k) for k in set(t) - set(EVALUATION_KEYS))
            empty = [k for k in EVALUATION_KEYS if k in t and (t[k] is None or t[k] == "")]
            if unknown or empty:
                colon = any(":" in k for k in unknown)
                raise ConfigError(
                    f"evaluate entry {t!r} has "
                    + (f"unknown key(s) {unknown}" if unknown else f"no value for {empty}")
                    + f"; its keys are {', '.join(EVALUATION_KEYS)}"
                    + (" (YAML needs a space after the colon: {dataset: oxford_pets, subsample: new})" if colon else "")
                    + "."
                )
            out.append((t.get("dataset", self.dataset), t.get("subsample", "all")))
        return out

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def job_name(self) -> str:
        return self.job or f"{self.method}/{self.dataset}/seed{self.seed}"

    @property
    def learns(self) -> bool:
        """True when the method learns something (zero-shot CLIP does not). Its records then name where
        and how it learned (training dataset, shots, seed), also in a job that loads a trained prompt."""
        import methods

        return methods.method_class(self.method).trainable

    @property
    def trains(self) -> bool:
        """True when this job trains: the method learns and no trained prompt is loaded (``load_from``).
        The one answer to "does this job train?": the runner, the sweep and tracking read it."""
        return self.learns and not self.load_from

    @property
    def job_kind(self) -> str:
        """``train`` (this job trains) or ``eval`` (zero-shot, or a loaded prompt): the sweep's job kind
        and the W&B job type."""
        return "train" if self.trains else "eval"

    def identity(self) -> dict:
        """The fields of this job's result records that say which result they are (with the
        evaluated dataset and subsample: ``harness.results.record_key``)."""
        learns = self.learns
        return {
            "experiment": self.experiment,
            "job": self.job_name,
            "method": self.method,
            "config": self.config or None,
            "train_dataset": self.dataset if learns else None,
            "train_subsample": self.subsample if learns else None,
            "shots": self.shots if learns else 0,
            "seed": self.seed if learns else None,
            "backbone": self.backbone,
            "precision": self.precision,
        }

    def training_identity(self) -> dict:
        """The values of ``TRAINING_KEYS``, and of the ``LATER_TRAINING_KEYS`` that differ from their
        defaults: what the learned prompt depends on."""
        identity = {k: getattr(self, k) for k in TRAINING_KEYS}
        identity.update({k: getattr(self, k) for k, v in LATER_TRAINING_KEYS.items() if getattr(self, k) != v})
        return identity


# Keys that change what a training run learns: a sweep's training folder is keyed by them, and a
# checkpoint is resumed only by a spec equal on all of them (the data root may move).
TRAINING_KEYS = (
    "method",
    "options",
    "dataset",
    "shots",
    "seed",
    "subsample",
    "backbone",
    "precision",
    "epochs",
    "batch_size",
    "lr",
    "momentum",
    "weight_decay",
    "warmup_epochs",
    "warmup_lr",
)
# Training keys added later, with the defaults every earlier run used: a spec names them in its training
# identity only when it changes them, so the folders and resume checks of existing runs stay valid.
LATER_TRAINING_KEYS = {"optimizer": "sgd", "adam_eps": 1e-8, "crop_scale": list(CROP_SCALE)}


FIELD_HELP = {
    "method": "registered method (`prompt-harness methods` lists them with their papers and configs)",
    "dataset": "dataset key to train on (and evaluate by default), e.g. oxford_pets",
    "data_root": "folder holding each dataset's folder (PROTOCOL.md 3.2)",
    "options": "method options, e.g. {n_ctx: 4, ctx_init: 'a photo of a'}",
    "config": "method config under experiments/methods, e.g. cocoop/vit_b16_c4_ep10_batch1_ctxv1",
    "experiment": "experiment name stored with the results (base2new, crossdataset, ...)",
    "shots": "K training images per class (few-shot draw, PROTOCOL.md 4.2); 0 = all",
    "seed": "run seed (python, numpy, torch and the few-shot draw); null = unseeded",
    "subsample": "classes trained on: all | base | new",
    "evaluate": "evaluation targets: list of {dataset, subsample}; default the training set",
    "backbone": "ViT-B/16, RN50, ..., tiny, a plugin's (tiny-pretrained) or a path to an OpenAI-format file",
    "precision": "fp16 (the paper's) | bf16 | fp32 | amp",
    "epochs": "training epochs",
    "batch_size": "training batch size",
    "test_batch_size": "evaluation batch size (images per forward)",
    "lr": "learning rate after warm-up (a method's parameter group may scale it: lr_scale)",
    "momentum": "SGD momentum",
    "weight_decay": "weight decay (all trainable tensors; Adam: L2 added to the gradient, AdamW: decoupled)",
    "warmup_epochs": "constant warm-up epochs before the cosine schedule",
    "warmup_lr": "learning rate of every parameter group during warm-up",
    "optimizer": "sgd (default) | adam | adamw, as the method's authors publish (betas 0.9, 0.999)",
    "adam_eps": "Adam/AdamW epsilon (TCP: 1e-3); unused by SGD",
    "crop_scale": "training RandomResizedCrop scale range [min, max] (default [0.08, 1]; MMRL: [0.5, 1])",
    "num_workers": "data-loader workers (default: min(8, CPUs))",
    "device": "auto | cpu | cuda | cuda:N",
    "output_dir": "this run's folder (log, checkpoints, W&B files)",
    "results": "results store (folder or .jsonl); harness run's default: output (what make report reads); "
    "a RunSpec run from Python: the parent of output_dir",
    "feature_cache": "folder of cached test-image features; default <results folder>/feature_cache",
    "load_from": "evaluate a trained prompt: a run folder or a prompt checkpoint file (no training)",
    "load_any": "load_from: score a partial or differently trained prompt anyway (its records are marked)",
    "tracking": "W&B: auto | online | offline | disabled | none",
    "force": "redo the job from scratch, training included, in a fresh run folder beside the old one",
    "reevaluate": "score the run folder's finished checkpoint again (no training); its records say so",
    "job": "readable job name (default from method/dataset/seed)",
}
assert set(FIELD_HELP) == {f.name for f in dataclasses.fields(RunSpec)}


def method_config_names() -> list[str]:
    names = []
    for method in sorted(os.listdir(METHOD_CONFIG_DIR)) if os.path.isdir(METHOD_CONFIG_DIR) else []:
        folder = os.path.join(METHOD_CONFIG_DIR, method)
        names += [f"{method}/{f[:-5]}" for f in sorted(os.listdir(folder)) if f.endswith(".yaml")]
    return names


def _relative(path: str) -> str:
    """A path inside the project as the user sees it from the project's root."""
    inside = os.path.abspath(path).startswith(PROJECT_ROOT + os.sep)
    return os.path.relpath(path, PROJECT_ROOT) if inside else path


def method_configs(method: str) -> list[str]:
    """The method's published configs: the files of ``experiments/methods/<method>/``."""
    return [name for name in method_config_names() if name.split("/", 1)[0] == method]


def default_method_config(method: str) -> str:
    """The config a study runs ``method`` with when its YAML does not list it: the method's own
    ``default_config``, else the only file in its config folder."""
    import methods

    info = methods.method_info(method)
    configs = method_configs(method)
    where = _relative(inspect.getsourcefile(methods.method_class(method)) or method)
    if info.default_config:
        if info.default_config not in method_config_names():
            raise ConfigError(
                f"{where}: default_config {info.default_config!r} is not a config under {METHOD_CONFIG_DIR}. "
                f"Known: {', '.join(method_config_names())}."
            )
        return info.default_config
    if len(configs) == 1:
        return configs[0]
    folder = os.path.join(METHOD_CONFIG_DIR, method)
    if not configs:
        raise ConfigError(f"Method {method!r} has no config in {folder}: add its published config there.")
    raise ConfigError(
        f"Method {method!r} has {len(configs)} configs in {folder} ({', '.join(configs)}): name the one a study "
        f'runs it with as default_config = "{method}/<config>" in {where}.'
    )


def default_method_options(method: str) -> dict:
    """The method options of its default config (for the built-ins: the authors' base-to-new options)."""
    return dict(load_method_config(default_method_config(method)).get("options") or {})


def load_method_config(name: str) -> dict:
    path = os.path.join(METHOD_CONFIG_DIR, f"{name}.yaml")
    if not os.path.isfile(path):
        raise ConfigError(f"Unknown method config {name!r} (no {path}). Known: {', '.join(method_config_names())}.")
    with open(path) as f:
        return yaml.safe_load(f) or {}


def layer(values: dict | None = None, overrides: dict | None = None) -> dict:
    """The run keys of ``values`` and ``overrides`` layered over the method config that either names
    (``config``), unchecked: method config < values < overrides, ``options`` merged key by key."""
    merged: dict = {}
    values = dict(values or {})
    overrides = dict(overrides or {})
    config_name = overrides.get("config", values.get("config"))
    if config_name:
        merged.update(load_method_config(config_name))
        merged["config"] = config_name
    for source in (values, overrides):
        for key, value in source.items():
            if key == "options" and isinstance(value, dict):
                merged["options"] = {**merged.get("options", {}), **value}
            else:
                merged[key] = value
    return merged


def build_spec(values: dict | None = None, overrides: dict | None = None) -> RunSpec:
    """A validated RunSpec from plain data (a YAML mapping) and overrides, layered by ``layer``."""
    merged = layer(values, overrides)
    known = [f.name for f in dataclasses.fields(RunSpec)]
    unknown = sorted(set(merged) - set(known))
    if unknown:
        raise ConfigError(f"Unknown run key(s) {unknown}. Valid keys: {', '.join(known)}.")
    spec = RunSpec(**merged)
    validate(spec)
    return spec


@functools.cache
def run_key_types() -> dict:
    """Each run key's type with its declared range (``bounds``), as written on ``RunSpec``."""
    return typing.get_type_hints(RunSpec, include_extras=True)


def validate(spec: RunSpec) -> None:
    """Everything that can be checked before any data is read or model built: every run key against its
    declared type and range, and every method option against the method's own declarations
    (``methods.parts.registry.check_options``). Every way to run a job passes here: ``build_spec`` (the
    command line, YAML files, the sweep) and ``harness.runner.Run`` (a RunSpec built in Python)."""
    import methods
    from clipcore import backbone
    from harness import data

    defaults = RunSpec()
    for key, annotation in run_key_types().items():
        try:
            check(f"Run key {key!r}", getattr(spec, key), annotation, f" (default {shorten(getattr(defaults, key))})")
        except OutOfBounds as error:
            raise ConfigError(str(error)) from None
    if not spec.method:
        raise ConfigError("No method given. Choose one of: " + ", ".join(methods.list_methods()))
    methods.method_class(spec.method)  # unknown method -> ValueError listing the registered ones
    accepted = methods.parts.registry.method_options(spec.method)
    unknown = sorted(set(spec.options) - set(accepted))
    if unknown:
        raise ConfigError(f"Method {spec.method!r} has no option(s) {unknown}. Options: {', '.join(accepted)}.")
    try:
        backbone.get_backbone(spec.backbone)
    except backbone.BackboneError:
        choices = ", ".join(backbone.available_backbones())
        raise ConfigError(f"Unknown backbone {spec.backbone!r}. Choices: {choices}.") from None
    known_datasets = set(data.list_datasets())
    if spec.dataset not in known_datasets:
        raise ConfigError(f"Unknown dataset {spec.dataset!r}. Datasets: {', '.join(sorted(known_datasets))}.")
    for dataset, subsample in spec.eval_targets():
        if dataset not in known_datasets:
            raise ConfigError(f"Unknown evaluation dataset {dataset!r}. Datasets: {', '.join(sorted(known_datasets))}.")
        if subsample not in SUBSAMPLES:
            raise ConfigError(f"Evaluation subsample must be one of {SUBSAMPLES}, got {subsample!r}.")
    if "dataset" in accepted and spec.options.get("dataset") not in (None, *known_datasets):
        # An unknown key would silently pick the method's default template or head.
        raise ConfigError(
            f"Option 'dataset' of method {spec.method!r} must be a registered dataset (it picks the dataset's "
            f"template or head), got {spec.options['dataset']!r}. Datasets: {', '.join(sorted(known_datasets))}."
        )
    # The options as each model of the job is built: a method that takes ``dataset`` gets each one's key.
    for dataset in dict.fromkeys([spec.dataset, *(d for d, _ in spec.eval_targets())]):
        options = dict(spec.options)
        if "dataset" in accepted:
            options.setdefault("dataset", dataset)
        try:
            methods.parts.registry.check_options(spec.method, options)
        except OutOfBounds as error:
            raise ConfigError(str(error)) from None
    method_cls = methods.method_class(spec.method)
    if not method_cls.transfers_to_other_classes:
        foreign = [(d, s) for d, s in spec.eval_targets() if (d, s) != (spec.dataset, spec.subsample)]
        if foreign:
            raise ConfigError(
                f"Method {spec.method!r} cannot be evaluated on {foreign}: it is a classifier fitted on the image "
                f"features of {spec.dataset}'s {spec.subsample!r} classes, one weight row per class, with no "
                "prompt to carry to new classes or another dataset. Evaluate it on the classes it is fitted on "
                "(the few-shot study: subsample all); it is not part of base-to-new or transfer studies."
            )
    if method_cls.fits_features and spec.shots < 1:
        raise ConfigError(f"Method {spec.method!r} draws its own few-shot training set: shots must be >= 1.")
    if callable(getattr(method_cls, "step_schedule", None)):
        check_step_schedule(spec, method_cls.default_config)
    if not spec.data_root:
        raise ConfigError("data_root is empty: give the folder that holds the datasets (PROTOCOL.md 3.2).")
    if not spec.output_dir:
        raise ConfigError("output_dir is empty: give this run's folder.")
    if spec.force and spec.reevaluate and spec.trains:
        # force trains anew in a fresh folder, where reevaluate would then find no checkpoint to score
        raise ConfigError(
            "force and reevaluate are both true: force trains the job anew in a fresh folder, reevaluate scores "
            "the finished checkpoint of its folder without training. Give one: --force, or --reevaluate."
        )


def check_step_schedule(spec: RunSpec, config: str) -> None:
    """A method with its own schedule of steps (``step_schedule``: CLIP-LoRA) budgets them per shot, from the
    run's lr. Shots 0 (every image) would give it no step, and zero-shot CLIP's score would be recorded under
    its name. A warm-up epoch would not act as one: the runner's warm-up lowers the rate to ``warmup_lr`` when
    it is built, and the method's cosine would then start there, not at ``lr``."""
    if spec.shots < 1:
        raise ConfigError(
            f"Run key 'shots' is {spec.shots} (every image), but method {spec.method!r} trains for a budget of "
            "steps per shot (its step_schedule): it would take no step and score as zero-shot CLIP. Give shots >= 1."
        )
    if spec.warmup_epochs > 0:
        raise ConfigError(
            f"Run key 'warmup_epochs' is {spec.warmup_epochs}, but method {spec.method!r} follows its own schedule "
            "of steps from lr, without a warm-up (its step_schedule): a warm-up would start that schedule at "
            f"warmup_lr {spec.warmup_lr:g} instead. Set warmup_epochs=0 (its config {config} does)."
        )


def load_spec_file(path: str, overrides: dict | None = None) -> RunSpec:
    if not os.path.isfile(path):
        raise ConfigError(f"No run config at {path}.")
    with open(path) as f:
        values = yaml.safe_load(f) or {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path} must hold a mapping of run keys, got {type(values).__name__}.")
    return build_spec(values, overrides)


_NUMBER = re.compile(r"^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")


def parse_value(raw: str):
    """A command-line value, read as YAML, except that numbers such as ``1e-3`` are numbers (YAML 1.1
    reads them as strings), so ``--lr 1e-3`` means what it says; a quoted ``"'1e-3'"`` stays a string."""
    value = yaml.safe_load(raw) if raw != "" else ""
    if isinstance(value, str) and value == raw.strip() and _NUMBER.match(value):  # quoted: a string, as asked
        return float(value)
    return value


def parse_overrides(pairs: list[str]) -> dict:
    """["epochs=5", "options.n_ctx=8"] -> {"epochs": 5, "options": {"n_ctx": 8}} (values parsed as YAML)."""
    out: dict = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"Override {pair!r} is not KEY=VALUE.")
        key, raw = pair.split("=", 1)
        value = parse_value(raw)
        if key.startswith("options."):
            out.setdefault("options", {})[key.split(".", 1)[1]] = value
        else:
            out[key] = value
    return out
