"""The few Dassl pieces the authors' trainers import, stubbed: no Dassl install, no network. What a trainer
calls beyond them raises ``StubNotProvided``."""

from __future__ import annotations

import types

import torch
import torch.nn as nn


class StubNotProvided(RuntimeError):
    """The authors' code called a Dassl piece the benchmark does not provide."""


def _not_provided(name: str):
    def call(*args, **kwargs):
        raise StubNotProvided(f"dassl.{name} is stubbed by benchmarks/vs_authors/dassl_stub.py and does nothing here")

    return call


class TrainerX:
    """Dassl's ``TrainerX``, as far as the authors' ``build_model`` and ``forward_backward`` use it (and the
    framework methods an entry takes from the checkout, such as ProGrad's update, call)."""

    def register_model(self, name, model=None, optim=None, sched=None):
        self._models = getattr(self, "_models", {})
        self._optims = getattr(self, "_optims", {})
        self._models[name], self._optims[name] = model, optim

    def get_model_names(self, names=None):
        return list(self._models) if names is None else ([names] if isinstance(names, str) else list(names))

    def model_zero_grad(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].zero_grad()

    def detect_anomaly(self, loss):
        if not torch.isfinite(loss).all():
            raise FloatingPointError("Loss is infinite or NaN!")

    def model_update(self, names=None):
        for name in self.get_model_names(names):
            if self._optims[name] is not None:
                self._optims[name].step()

    def model_backward_and_update(self, loss, names=None):
        self.model_zero_grad(names)
        self.detect_anomaly(loss)
        loss.backward()
        self.model_update(names)

    def update_lr(self, names=None):
        pass


class _Registry:
    def register(self, obj=None):
        return obj if obj is not None else (lambda cls: cls)


def _build_optimizer(model, optim_cfg):
    # learning rate 0: every timed step sees the same weights; the update itself still runs
    return torch.optim.SGD([p for p in model.parameters() if p.requires_grad] or [nn.Parameter(torch.zeros(1))], lr=0.0)


def _compute_accuracy(output, target, topk=(1,)):
    return [(output.argmax(dim=1) == target).float().mean() * 100]


def stub_modules() -> dict[str, types.ModuleType]:
    """The Dassl modules the authors' trainers import, stubbed."""
    names = ("dassl", "dassl.engine", "dassl.engine.trainer", "dassl.metrics", "dassl.utils", "dassl.utils.tools")
    modules = {name: types.ModuleType(name) for name in (*names, "dassl.optim", "dassl.optim.radam")}
    modules["dassl.engine"].TRAINER_REGISTRY = _Registry()
    modules["dassl.engine"].TrainerX = modules["dassl.engine.trainer"].TrainerX = TrainerX
    # DePT's trainers/base.py subclasses dassl.engine.trainer.TrainerX and imports its epoch loop's meters
    for name in ("MetricMeter", "AverageMeter", "SummaryWriter"):
        setattr(modules["dassl.engine.trainer"], name, _not_provided(f"engine.trainer.{name}"))
    modules["dassl.metrics"].compute_accuracy = _compute_accuracy
    modules["dassl.utils"].load_pretrained_weights = _not_provided("utils.load_pretrained_weights")
    modules["dassl.utils"].load_checkpoint = _not_provided("utils.load_checkpoint")
    modules["dassl.utils.tools"].mkdir_if_missing = _not_provided("utils.tools.mkdir_if_missing")
    modules["dassl.optim"].build_optimizer = _build_optimizer
    modules["dassl.optim"].build_lr_scheduler = lambda optim, optim_cfg: None
    modules["dassl.optim.radam"].RAdam = _not_provided("optim.radam.RAdam")
    for name, module in modules.items():
        if "." in name:
            parent, child = name.rsplit(".", 1)
            setattr(modules[parent], child, module)
    return modules
