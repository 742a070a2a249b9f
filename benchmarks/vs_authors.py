"""Benchmark: every method against its authors' own code, side by side (issue 28).

    python -m benchmarks.vs_authors --authors cocoop=DIR coop=DIR kgcoop=DIR maple=DIR promptsrc=DIR \
        prograd=DIR tcp=DIR coop_dept=DIR mmrl=DIR tip_adapter_f=DIR clip_lora=DIR

It writes its report (``--out``, default reports/bench-vs-authors.md); ``python -m benchmarks.readme vs-authors
[--from REPORT]`` copies its table into README.md.

For every method named with a checkout of its authors' repository (``git clone`` of the repository
in ``AUTHORS``; the commit it holds is read and written beside the figures, with a warning when it is
not the one ``docs/`` was read at), the authors' trainer class is imported from the checkout with the
few Dassl pieces it needs stubbed (``dassl_stub``; no network, no Dassl install) and the authors'
``clip`` package of that checkout. Both sides get the same random CLIP with OpenAI's ViT-B/16
dimensions: ours is built by ``harness.backbone``, its weights rounded through fp16 (the authors'
``build_model`` stores CLIP in fp16 before ``.float()``), and the authors' ``load_clip_to_cpu`` loads
that state dict from a file where it would have downloaded OpenAI's (their ``clip._download`` is
pointed at it). Same images, same class names (K ImageNet names), the same learned tensors (copied
from the authors' model into ours through the authors' checkpoint format).

Before timing, both must give the same evaluation logits (relative error < 1e-4 in fp32) and the
same training loss, and, where the entry names them, the same update left in the learned tensors'
``.grad`` (ProGrad's projected gradient); a difference aborts that method's line with the error. Then, fp32 on the CPU:
one training step (the authors' ``forward_backward``, forward + published objective + backward; its
optimiser has learning rate 0 so every run sees the same weights, and its update of the few prompt
parameters costs nothing measurable) against ours (``training_loss`` + backward, or the method's own
``backward`` where its update is not one loss's gradient, ``methods.base``), and one evaluation
of ``--eval-images`` images, both including the image encoder. Each time is the median of the runs
after a warm-up. The report goes to ``reports/bench-vs-authors.md`` with the machine and its load.

Adding a method is one ``AuthorsCode`` entry in ``AUTHORS``: the repository, the folder of the
checkout that holds ``trainers/`` and ``clip/``, the trainer class, the config keys it reads, our
options that correspond, and, where the authors' model returns more than logits, how to read them.
A trainer that calls a framework method beyond the stubbed ``TrainerX`` (ProGrad's
``prograd_backward_and_update`` of its bundled Dassl.ProGrad) gets that method from the checkout's own
framework file (``framework``), so the update compared is the authors' code too. A repository with no
trainer at all (Tip-Adapter's plain scripts) names a ``driver`` with ``AuthorsModel``'s interface instead.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import datetime
import importlib.util
import io
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import types
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn

import methods
from benchmarks.bench import (
    class_names,
    cocoop_floor_flops,
    image_encoder_flops,
    machine_description,
    matmul_throughput,
)
from benchmarks.cocoop_check import FP32_TOLERANCE, relative_error
from harness import backbone
from methods.clip_lora import TEMPLATE as CLIP_LORA_TEMPLATE
from methods.promptsrc import PROMPTSRC_TEMPLATES

REPORT = "reports/bench-vs-authors.md"
DOCS = (
    "docs/PROTOCOL.md",
    "docs/PROTOCOL-successors.md",
    "docs/PROTOCOL-successors-2.md",
    "docs/PROTOCOL-successors-3-fewshot.md",
)
README_BLOCK = "vs-authors:table"


# ---------------------------------------------------------------------------------------------------
# What each method's authors' code is
# ---------------------------------------------------------------------------------------------------


def _first(output):
    """The logits of a model that returns (logits, extra terms), as KgCoOp's ``CustomCLIP`` does."""
    return output[0] if isinstance(output, tuple) else output


def _fusion(output):
    """MMRL's scored logits on base classes of base-to-new (TASK B2N, SUBSAMPLE_CLASSES base): the third of
    its ``CustomCLIP``'s (logits, logits_rep, logits_fusion, image features, text features), as its test() picks."""
    return output[2]


def _clear_mmrl_eval_cache(model) -> None:
    """MMRL's eval forward caches the text features at its first call and keeps them (PROTOCOL-successors-2.md
    "DePT (on CoOp) and MMRL" 9, quirk 1): cleared, each timed evaluation encodes the text once, as ours does."""
    model.text_features_for_inference = None


@dataclass(frozen=True)
class AuthorsCode:
    """How to run one method in its authors' repository. ``cfg`` holds the config keys the trainer
    reads beyond the shared ones (``base_cfg``); ``options`` our method's options that correspond."""

    method: str  # our registry name
    repository: str  # GitHub owner/name; docs/ names the commit read as "owner/name @ <sha>"
    trainer: str  # "module:Class" inside the checkout folder
    cfg: dict
    options: dict
    folder: str = ""  # the folder of the checkout that holds trainers/ and clip/
    logits: Callable = _first  # eval logits from the authors' model output
    train_unavailable: str = ""  # why the authors' training step cannot run here (then only eval is timed)
    floor: Callable | None = None  # (clip, classnames, batch, eval_images) -> FLOPs no exact method avoids
    module_globals: dict = field(default_factory=dict)  # set in the trainer's module before it builds
    note: str = ""  # what differs from the published run, for the report
    eval_loops_over_images: bool = False  # the authors' eval encodes the prompts once per image (CoCoOp)
    loss_key: str = "loss"  # the entry of their forward_backward's summary that is our training loss
    # trainer method -> "path/in/checkout.py:Class.method": taken from the checkout's own framework file
    framework: dict = field(default_factory=dict)
    # (their parameter's name in the registered module, ours in our model): the update left in .grad must agree
    gradients: tuple = ()
    unused_imports: tuple = ()  # modules their trainers import but never call, stubbed empty where missing
    before_eval: Callable | None = None  # (their model) -> None, called before each of their evaluations
    update_labels: tuple = ()  # the update also compared on the train batch relabelled with each of these classes
    # a repository without a Dassl trainer (Tip-Adapter's plain scripts): (entry, checkout, clip, classnames) -> what
    # drives its functions, with ``AuthorsModel``'s interface (logits, step, update, checkpoint_state)
    driver: Callable | None = None


def cocoop_floor(clip, classnames, batch, eval_images) -> dict[str, dict[str, float]]:
    """FLOPs no exact method avoids, per case and part: the text side (``bench``'s floor, per image)
    and the frozen image encoder's forward, which both sides run on the same images."""
    return {
        "train": {
            "text": cocoop_floor_flops(clip, classnames, batch, training=True),
            "image encoder": image_encoder_flops(clip, batch),
        },
        "eval": {
            "text": cocoop_floor_flops(clip, classnames, eval_images),
            "image encoder": image_encoder_flops(clip, eval_images),
        },
    }


def coop_floor(clip, classnames, batch, eval_images) -> dict[str, dict[str, float]]:
    """As ``cocoop_floor`` with one context for all images: the text side is encoded once."""
    floor = cocoop_floor(clip, classnames, 1, 1)
    floor["train"]["image encoder"] = image_encoder_flops(clip, batch)
    floor["eval"]["image encoder"] = image_encoder_flops(clip, eval_images)
    return floor


TEACHER_TEMPLATES = 4  # PromptSRC's teacher templates used here (of 60): see its note
MMRL_REP_LAYERS = list(range(6, 13))  # configs/trainers/MMRL/vit_b16.yaml: 1-indexed blocks 6..12 of 12

AUTHORS: dict[str, AuthorsCode] = {
    entry.method: entry
    for entry in (
        AuthorsCode(
            "coop",
            "KaiyangZhou/CoOp",
            "trainers.coop:CoOp",
            {
                "TRAINER": {
                    "COOP": {
                        "N_CTX": 4,
                        "CTX_INIT": "a photo of a",
                        "CSC": False,
                        "PREC": "fp32",
                        "CLASS_TOKEN_POSITION": "end",
                    }
                }
            },
            {"n_ctx": 4, "ctx_init": "a photo of a"},
            floor=coop_floor,
        ),
        AuthorsCode(
            "cocoop",
            "KaiyangZhou/CoOp",
            "trainers.cocoop:CoCoOp",
            {"TRAINER": {"COCOOP": {"N_CTX": 4, "CTX_INIT": "a photo of a", "PREC": "fp32"}}},
            {"n_ctx": 4, "ctx_init": "a photo of a"},
            floor=cocoop_floor,
            eval_loops_over_images=True,  # trainers/cocoop.py, CustomCLIP.forward
        ),
        AuthorsCode(
            "kgcoop",
            "htyao89/KgCoOp",
            "trainers.kgcoop:KgCoOp",
            {
                "DATASET": {"NAME": "ImageNet"},
                "TRAINER": {
                    "COOP": {
                        "N_CTX": 4,
                        "CTX_INIT": "a photo of a",
                        "CSC": False,
                        "PREC": "fp32",
                        "CLASS_TOKEN_POSITION": "end",
                        "W": 8.0,
                    },
                    "COCOOP": {"PREC": "fp32"},
                },
            },
            {"n_ctx": 4, "ctx_init": "a photo of a", "kg_weight": 8.0, "template": "a photo of a {}."},
            folder="KgCoOp",
        ),
        AuthorsCode(
            "maple",
            "muzairkhattak/multimodal-prompt-learning",
            "trainers.maple:MaPLe",
            {"TRAINER": {"MAPLE": {"N_CTX": 2, "CTX_INIT": "a photo of a", "PREC": "fp32", "PROMPT_DEPTH": 9}}},
            {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 9},
        ),
        AuthorsCode(
            "promptsrc",
            "muzairkhattak/PromptSRC",
            "trainers.promptsrc:PromptSRC",
            {
                "TRAINER": {
                    "PROMPTSRC": {
                        "N_CTX_TEXT": 4,
                        "N_CTX_VISION": 4,
                        "CTX_INIT": "a photo of a",
                        "PREC": "fp32",
                        "PROMPT_DEPTH_TEXT": 9,
                        "PROMPT_DEPTH_VISION": 9,
                        "TEXT_LOSS_WEIGHT": 25,
                        "IMAGE_LOSS_WEIGHT": 10,
                        "GPA_MEAN": 15,
                        "GPA_STD": 1,
                    }
                }
            },
            {
                "n_ctx_text": 4,
                "n_ctx_vision": 4,
                "prompt_depth_text": 9,
                "prompt_depth_vision": 9,
                "templates": PROMPTSRC_TEMPLATES[:TEACHER_TEMPLATES],
            },
            module_globals={"IMAGENET_TEMPLATES": list(PROMPTSRC_TEMPLATES[:TEACHER_TEMPLATES])},
            note=(
                f"the frozen text teacher averages the first {TEACHER_TEMPLATES} of the 60 templates on both sides "
                "(60 x K prompts at 77 positions take the authors' build ~20 min here; the teacher is computed "
                "once, before any timed step, so the times do not depend on it)"
            ),
        ),
        AuthorsCode(
            "prograd",
            "BeierZhu/Prompt-align",
            "trainers.prograd:ProGrad",
            {
                "DATASET": {"NAME": "ImageNet"},
                "TRAINER": {
                    "COOP": {
                        "N_CTX": 16,
                        "CTX_INIT": True,  # the dataset's template words
                        "CSC": False,
                        "PREC": "fp32",
                        "CLASS_TOKEN_POSITION": "end",
                    }
                },
                "LOSS": {"NAME": "prograd", "T": 1.0, "LAMBDA": 1.0},
            },
            {"n_ctx": 16, "dataset": "imagenet", "prograd_lambda": 1.0, "kl_temperature": 1.0},
            folder="ProGrad.public",
            loss_key="xe_loss",
            framework={
                "prograd_backward_and_update": (
                    "Dassl.ProGrad.pytorch/dassl/engine/trainer.py:TrainerBase.prograd_backward_and_update"
                )
            },
            gradients=(("ctx", "prompt_learner.ctx"),),
            # Whether the CE and KL gradients conflict (the projection applies) depends on the label: on this
            # benchmark's CLIP and batch some of the first five classes give each branch, at K = 5 and K = 100.
            update_labels=tuple(range(5)),
            note=(
                "published at RN50, 4 shots, timed here at ViT-B/16 as the study runs it; the loss compared is the CE "
                "(their xe_loss), and the update left in ctx.grad by their bundled Dassl.ProGrad's "
                "prograd_backward_and_update (taken from the checkout) against ours (ProGrad.backward), on the timed "
                "batch and on it relabelled with each of the first five classes (untimed), so that both the "
                "projected (conflicting gradients) and the plain branch are compared"
            ),
        ),
        AuthorsCode(
            "tcp",
            "htyao89/Textual-based_Class-aware_prompt_tuning",
            "trainers.tcp:TCP",
            {
                "DATASET": {"NAME": "ImageNet"},
                "TRAINER": {
                    "COOP": {
                        "N_CTX": 4,
                        "CTX_INIT": False,
                        "CSC": False,
                        "PREC": "fp32",
                        "CLASS_TOKEN_POSITION": "end",
                        "W": 1.0,
                    },
                    "COCOOP": {"PREC": "fp32"},
                },
            },
            {"n_ctx": 4, "dataset": "imagenet"},
            gradients=(
                ("ctx", "prompt_learner.ctx"),
                ("meta_net.linear1.weight", "prompt_learner.meta_net.linear1.weight"),
            ),
            note=(
                "their optimiser is Adam with eps 1e-3 by a hand edit of Dassl's optimizer.py (their README); at "
                "learning rate 0 the stubbed SGD stands in for it, its step costs nothing measurable either way; their "
                "meta-net and frozen text teacher in fp32 (COCOOP.PREC fp32, their .half() kept fp32), as ours in fp32"
            ),
        ),
        AuthorsCode(
            "coop_dept",
            "Koorye/DePT",
            "trainers.elp_coop:ExtrasLinearProbeCoOp",
            {
                "DATASET": {"NAME": "ImageNet", "SUBSAMPLE_CLASSES": "base"},
                "TRAINER": {
                    "COOP": {"N_CTX": 16, "CTX_INIT": "", "CSC": False, "PREC": "fp32", "CLASS_TOKEN_POSITION": "end"},
                    "LINEAR_PROBE": {"TYPE": "linear", "WEIGHT": 0.7, "TEST_TIME_FUSION": True},
                    "FILM": {"LINEAR_PROBE": True},
                    "NAMES_TO_UPDATE": ["prompt_learner", "linear_probe", "film"],
                },
                # their own build_optimizer (trainers/optim.py) reads these (train.py:71-75, Dassl's defaults)
                "OPTIM": {
                    "WEIGHT_DECAY": 5e-4,
                    "MOMENTUM": 0.9,
                    "SGD_DAMPNING": 0,
                    "SGD_NESTEROV": False,
                    "RMSPROP_ALPHA": 0.99,
                    "ADAM_BETA1": 0.9,
                    "ADAM_BETA2": 0.999,
                    "STAGED_LR": True,
                    "NEW_LAYERS": ["linear_probe", "film"],
                    "BASE_LR_MULT": 1.0,
                    "LR_EXP": 6.5,
                },
            },
            {"n_ctx": 16, "ctx_init": "", "cat_weight": 0.7, "subsample": "base", "dataset": "imagenet"},
            unused_imports=("plotnine",),
            gradients=(
                ("prompt_learner.ctx", "prompt_learner.ctx"),
                ("film_lp_text.scale", "film_lp_text.scale"),
                ("linear_probe_proj.weight", "linear_probe_proj.weight"),
            ),
            note=(
                "base-to-new, base classes (SUBSAMPLE_CLASSES base: the CAT head trained and fused into the scored "
                "logits); their own staged-lr SGD (trainers/optim.py) at learning rate 0; plotnine, imported by their "
                "trainers and never called, stubbed where missing"
            ),
        ),
        AuthorsCode(
            "mmrl",
            "yunncheng/MMRL",
            "trainers.mmrl:MMRL",
            {
                "DATASET": {"NAME": "ImageNet", "SUBSAMPLE_CLASSES": "base"},
                "TASK": "B2N",
                "TRAINER": {
                    "MMRL": {
                        "ALPHA": 0.7,
                        "REG_WEIGHT": 0.5,  # trainers/config.py: ImageNet
                        "REP_LAYERS": MMRL_REP_LAYERS,
                        "REP_DIM": 512,
                        "N_REP_TOKENS": 5,
                        "PREC": "fp32",
                    }
                },
            },
            {
                "n_rep_tokens": 5,
                "rep_dim": 512,
                "rep_layers": MMRL_REP_LAYERS,
                "alpha": 0.7,
                "reg_weight": 0.5,
                "task": "B2N",
                "subsample": "base",
                "dataset": "imagenet",
            },
            logits=_fusion,
            before_eval=_clear_mmrl_eval_cache,
            gradients=(
                ("representation_learner.compound_rep_tokens", "prompt_learner.compound_rep_tokens"),
                ("image_encoder.proj_rep", "prompt_learner.proj_rep"),
            ),
            note=(
                "base-to-new, base classes (TASK B2N, SUBSAMPLE_CLASSES base: the fused logits scored); their eval "
                "caches the text features at its first call (quirk 1): cleared before each of their evaluations, so "
                "each encodes the text once, as ours does; their AdamW at learning rate 0 replaced by the stubbed SGD; "
                "published in amp, which without CUDA runs fp32"
            ),
        ),
        AuthorsCode(
            "tip_adapter_f",
            "gaopengcuhk/Tip-Adapter",
            "main:run_tip_adapter_F",
            {
                "shots": 1,
                "augment_epoch": 1,
                "load_cache": False,
                "search_hp": True,
                "search_scale": [7, 3],
                "search_step": [1, 1],
                "init_beta": 1,
                "init_alpha": 1.17,
                "lr": 0.001,
                "template": ["a photo of a {}."],
            },
            {"templates": ["a photo of a {}."], "init_beta": 1.0, "init_alpha": 1.17, "search_step": [1, 1]},
            driver=lambda *args: TipAdapterDriver(*args),  # defined below, beside the plumbing it uses
            gradients=(("adapter.weight", "prompt_learner.adapter_weight"),),
            note=(
                "Tip-Adapter-F (its logits at the initial beta and alpha are Tip-Adapter's): a cache of K classes x 1 "
                "random image, one pass; the authors' train step is one epoch of one batch of run_tip_adapter_F "
                "(with its per-epoch test evaluation and a one-point search on the batch's features), their eval "
                "run_tip_adapter on the images' features (its zero-shot and Tip-Adapter logits, a one-point search)"
            ),
        ),
        AuthorsCode(
            "clip_lora",
            "MaxZanella/CLIP-LoRA",
            "lora:run_lora",
            {
                "backbone": "ViT-B/16",
                "encoder": "both",
                "position": "all",
                "params": ["q", "k", "v"],
                "r": 2,
                "alpha": 1,
                "dropout_rate": 1e-9,
                "lr": 0.0,
                "n_iters": 1,
                "shots": 1,
                "eval_only": False,
                "save_path": None,
            },
            {
                "encoder": "both",
                "position": "all",
                "params": ["q", "k", "v"],
                "r": 2,
                "alpha": 1.0,
                "dropout_rate": 1e-9,
            },
            driver=lambda *args: ClipLoraDriver(*args),  # defined below, beside the plumbing it uses
            gradients=tuple(
                (name, f"prompt_learner.{name}")
                for tower in ("visual.transformer", "transformer")
                for block in range(12)
                for projection in ("q_proj", "k_proj", "v_proj")
                for matrix in ("w_lora_A", "w_lora_B")
                for name in [f"{tower}.resblocks.{block}.attn.{projection}.{matrix}"]
            ),
            note=(
                "rank-2 adapters on q, k, v of every block of both towers, B drawn at random (theirs starts at zero); "
                "dropout 1e-9, which drops nothing in fp32 but takes their published dropout path (at 0.25 their "
                "text's 77 positions, ours cut after the last EOT, draw other masks; at exactly 0 their merge path's "
                "backward uses the un-adapted weight, PROTOCOL-successors-3 CLIP-LoRA 5); the authors' train step is "
                "run_lora with n_iters x shots = 1 (with its zero-shot "
                "classifier, one-image val and test preloads and final evaluation), their eval evaluate_lora"
            ),
        ),
    )
}


def base_cfg(image_size: int) -> dict:
    """The config keys every authors' trainer reads."""
    return {
        "MODEL": {"BACKBONE": {"NAME": "ViT-B/16"}, "INIT_WEIGHTS": ""},
        "INPUT": {"SIZE": (image_size, image_size)},
        "OPTIM": {"NAME": "sgd", "LR": 0.0, "MAX_EPOCH": 20},
    }


class Cfg(types.SimpleNamespace):
    """A yacs-like node: attribute access to nested dicts; a missing key names itself."""

    @classmethod
    def of(cls, tree: dict) -> Cfg:
        return cls(**{k: cls.of(v) if isinstance(v, dict) else v for k, v in tree.items()})

    def __getattr__(self, name):
        raise AttributeError(f"the benchmark's config for the authors' trainer has no key {name!r}: add it to AUTHORS")


def _merge(a: dict, b: dict) -> dict:
    out = dict(a)
    for k, v in b.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# ---------------------------------------------------------------------------------------------------
# Commits
# ---------------------------------------------------------------------------------------------------


def documented_commit(repository: str, docs: tuple[str, ...] = DOCS) -> str | None:
    """The commit docs/ was read at, written there as ``owner/name @ <sha>``; None when docs/ names none."""
    pattern = re.compile(re.escape(repository) + r" @ `?([0-9a-f]{7,40})")
    for path in docs:
        with contextlib.suppress(OSError), open(path, encoding="utf-8") as f:
            match = pattern.search(f.read())
            if match:
                return match.group(1)
    return None


def checkout_commit(directory: str) -> str | None:
    """HEAD of the git checkout ``directory`` (or of the repository it lies in); None when it is not one."""
    try:
        out = subprocess.run(
            ["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


DOCUMENTATION = (".md", ".rst", ".txt", ".bib", ".png", ".jpg", ".jpeg", ".gif", ".pdf")


def changed_files(directory: str, old: str, new: str) -> list[str] | None:
    """The files that differ between two commits of the checkout ``directory``; None when git cannot
    tell (a commit the checkout does not hold)."""
    try:
        out = subprocess.run(
            ["git", "-C", directory, "diff", "--name-only", old, new],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.split()


def commit_warning(repository: str, held: str | None, documented: str | None, checkout: str | None = None) -> str:
    """'' when the checkout holds the commit docs/ was read at; else what differs (with ``checkout``:
    whether only documentation files do, so that the reader knows the code timed is the code read)."""
    if held is None:
        return f"the checkout of {repository} is not a git checkout: its commit is unknown"
    if documented is None:
        return f"docs/ names no commit for {repository}: the figures are for {held[:7]}"
    if held.startswith(documented):
        return ""
    warning = f"the checkout holds {held[:7]}, docs/ was read at {documented[:7]}"
    changed = changed_files(checkout, documented, held) if checkout else None
    if changed is None:
        return warning
    if all(name.lower().endswith(DOCUMENTATION) for name in changed):
        return f"{warning} (they differ only in documentation: {', '.join(changed) or 'nothing'}; the code is the same)"
    code = [name for name in changed if not name.lower().endswith(DOCUMENTATION)]
    return f"{warning} (code differs: {', '.join(code[:5])}{' ...' if len(code) > 5 else ''})"


# ---------------------------------------------------------------------------------------------------
# Importing the authors' code: Dassl stubbed, their clip package, CUDA calls kept on the CPU
# ---------------------------------------------------------------------------------------------------


class StubNotProvided(RuntimeError):
    """The authors' code called a Dassl piece the benchmark does not provide."""


def _not_provided(name: str):
    def call(*args, **kwargs):
        raise StubNotProvided(f"dassl.{name} is stubbed by benchmarks/vs_authors.py and does nothing here")

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


def dassl_stub() -> dict[str, types.ModuleType]:
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


# the authors' packages (each checkout has its own clip/trainers; DePT's also clip_maple/ and utils/; Tip-Adapter's
# main.py, utils.py and datasets/)
_TOP_LEVEL = ("dassl", "clip", "trainers", "clip_maple", "utils", "main", "datasets", "lora", "loralib", "run_utils")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def authors_import_path(root: str, unused_imports: tuple = ()):
    """Import from ``root`` with Dassl stubbed, and each of ``unused_imports`` that is not installed as an
    empty module; afterwards sys.modules and sys.path are as before (the imported modules stay alive
    through the objects that refer to them)."""
    stubbed = {name: types.ModuleType(name) for name in unused_imports if not _importable(name)}
    if not _importable("pkg_resources"):  # setuptools absent: OpenAI's clip.py imports only its packaging
        import packaging.version

        stubbed["pkg_resources"] = types.ModuleType("pkg_resources")
        stubbed["pkg_resources"].packaging = packaging
    top_level = _TOP_LEVEL + tuple(stubbed)

    def ours(name):
        return name.split(".")[0] in top_level

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(dassl_stub())
    sys.modules.update(stubbed)
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


@contextlib.contextmanager
def fp32_on_cpu():
    """Run the authors' code in fp32 on the CPU. Without a GPU, their ``.cuda()`` calls (KgCoOp's and
    PromptSRC's frozen teachers) keep things where they are. Their ``.half()`` calls (CLIP's
    ``convert_weights``; MaPLe's ``proj``, PromptSRC's teacher logits, both converted whatever the
    precision, so their published code runs in fp16 only) keep fp32, as their fp32 setting intends
    and as our fp32 mode does; the weights are rounded through fp16 first (``round_through_fp16``)."""
    patched = [(torch.Tensor, "half"), (nn.Module, "half")]
    if not torch.cuda.is_available():
        patched += [(torch.Tensor, "cuda"), (nn.Module, "cuda")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in patched]
    for owner, name in patched:
        setattr(owner, name, lambda self, *args, **kwargs: self)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def round_through_fp16(clip) -> None:
    """Make every weight exactly representable in fp16: the authors' ``build_model`` stores CLIP in
    fp16 and their fp32 setting calls ``.float()`` on it, so this is what both sides then hold."""
    with torch.no_grad():
        for p in clip.parameters():
            p.copy_(p.half().float())


def framework_method(checkout: str, spec: str):
    """The function ``Class.method`` of the framework file ``path`` in the checkout (``spec`` =
    "path:Class.method"), compiled from that file's source alone (the framework's other imports are not
    needed): the authors' code of a trainer method the stubbed ``TrainerX`` lacks."""
    path, _, qualname = spec.partition(":")
    class_name, _, method_name = qualname.partition(".")
    filename = os.path.join(checkout, path)
    with open(filename, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename)
    found = [
        item
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == class_name
        for item in node.body
        if isinstance(item, ast.FunctionDef) and item.name == method_name
    ]
    if not found:
        raise StubNotProvided(f"{filename} has no {class_name}.{method_name}: not a checkout of the repository?")
    namespace = {"torch": torch, "nn": nn}
    exec(compile(ast.Module(body=found[:1], type_ignores=[]), filename, "exec"), namespace)
    return namespace[method_name]


class AuthorsModel:
    """The authors' trainer of one method built on ``clip``'s weights: ``logits(images)``,
    ``step(images, labels)`` (their ``forward_backward``), the update it leaves in the learned tensors'
    ``.grad`` and the state their checkpoint would hold."""

    def __init__(self, entry: AuthorsCode, checkout: str, clip, classnames: list[str]):
        self.entry = entry
        root = os.path.join(checkout, entry.folder)
        if not os.path.isdir(os.path.join(root, "trainers")):
            raise FileNotFoundError(
                f"{root} has no trainers/ folder: give a checkout of {entry.repository} "
                f"(git clone https://github.com/{entry.repository})"
            )
        module_name, class_name = entry.trainer.split(":")
        cfg = Cfg.of(_merge(base_cfg(backbone.image_size(clip)), entry.cfg))
        methods_from_framework = {name: framework_method(checkout, spec) for name, spec in entry.framework.items()}
        with (
            tempfile.TemporaryDirectory() as tmp,
            authors_import_path(root, entry.unused_imports),
            fp32_on_cpu(),
        ):
            weights = os.path.join(tmp, "openai-format.pt")
            torch.save({k: v.detach().cpu() for k, v in clip.state_dict().items()}, weights)
            module = __import__(module_name, fromlist=[class_name])
            # where OpenAI's file would be, in every clip package of the checkout (TCP's trainers/clip_text,
            # DePT's clip and clip_maple; a trainer may load CLIP through another module's, as DePT's does)
            for loaded in [m for name, m in sys.modules.items() if name.split(".")[0] in _TOP_LEVEL]:
                if hasattr(loaded, "_MODELS") and hasattr(loaded, "_download"):
                    loaded._download = lambda url, root=None: weights
            for name, value in entry.module_globals.items():
                setattr(module, name, value)
            trainer = object.__new__(getattr(module, class_name))
            for name, function in methods_from_framework.items():
                setattr(trainer, name, types.MethodType(function, trainer))
            trainer.cfg, trainer.device = cfg, torch.device("cpu")
            trainer.dm = types.SimpleNamespace(dataset=types.SimpleNamespace(classnames=list(classnames)))
            trainer.batch_idx, trainer.num_batches, trainer.epoch = 0, 2, 0  # not an epoch's last batch
            with contextlib.redirect_stdout(io.StringIO()):  # they print every prompt
                trainer.build_model()
        self.trainer, self.model = trainer, trainer.model

    def checkpoint_state(self) -> dict:
        """What the authors' checkpoint of the registered module holds (our methods load this format)."""
        (module,) = self.trainer._models.values()
        return module.state_dict()

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        self.model.eval()
        if self.entry.before_eval is not None:
            self.entry.before_eval(self.model)
        with torch.no_grad(), fp32_on_cpu():
            return self.entry.logits(self.model(images))

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        self.model.train()
        with fp32_on_cpu():
            return self.trainer.forward_backward({"img": images, "label": labels})[self.entry.loss_key]

    def update(self) -> dict[str, torch.Tensor]:
        """The ``.grad`` of the entry's parameters of the registered module after their last step (the
        optimiser at learning rate 0 leaves it as the update it was handed)."""
        (module,) = self.trainer._models.values()
        params = dict(module.named_parameters())
        return {name: params[name].grad for name, _ in self.entry.gradients}


class TipAdapterDriver:
    """Tip-Adapter's plain scripts (no trainer, no Dassl): ``utils.py``'s ``clip_classifier`` and
    ``build_cache_model`` build the text classifier and the cache on the checkout's own ``clip`` package (loaded
    from the same weights), and ``main.py``'s ``run_tip_adapter`` / ``run_tip_adapter_F`` compute the logits, the
    loss and the update, read where their code hands them on: the logits given to ``cls_acc``, the loss given to
    ``F.cross_entropy``, the keys' gradient at AdamW's step (a recording AdamW that leaves the keys as they are,
    like the others' learning rate 0). The cache is K classes x ``shots`` random images, one augmented pass."""

    def __init__(self, entry: AuthorsCode, checkout: str, clip, classnames: list[str]):
        self.entry, self.cfg = entry, dict(entry.cfg)
        root = os.path.join(checkout, entry.folder)
        if not os.path.isfile(os.path.join(root, "main.py")):
            raise FileNotFoundError(
                f"{root} has no main.py: give a checkout of {entry.repository} "
                f"(git clone https://github.com/{entry.repository})"
            )
        self.tmp = tempfile.TemporaryDirectory()
        self.cfg["cache_dir"] = self.tmp.name
        size, shots = backbone.image_size(clip), self.cfg["shots"]
        generator = torch.Generator().manual_seed(1)
        images = torch.randn(len(classnames) * shots, 3, size, size, generator=generator)
        labels = torch.arange(len(classnames)).repeat(shots)
        with authors_import_path(root, entry.unused_imports), fp32_on_cpu(), contextlib.redirect_stdout(io.StringIO()):
            weights = os.path.join(self.tmp.name, "openai-format.pt")
            torch.save({k: v.detach().cpu() for k, v in clip.state_dict().items()}, weights)
            their_clip = importlib.import_module("clip")
            self.main = importlib.import_module("main")
            self.model = their_clip.load(weights, device="cpu", jit=False)[0].float().eval()
            with torch.no_grad():
                self.clip_weights = self.main.clip_classifier(classnames, self.cfg["template"], self.model)
            batches = [(images[i : i + 64], labels[i : i + 64]) for i in range(0, len(images), 64)]
            self.keys, values = self.main.build_cache_model(self.cfg, self.model, batches)
        # their one-hot values are made fp16 by ``.half()`` (utils.py:62), which fp32_on_cpu keeps as it is: the
        # fp32 equivalent of the exact 0/1 values is float
        self.values = values.float()
        self.records: dict[str, list] = {}

    @contextlib.contextmanager
    def recording(self):
        """Their functions with ``cls_acc``, ``F.cross_entropy`` and ``torch.optim.AdamW`` recording what
        they are given; the best-epoch file their Tip-Adapter-F reloads is there from the start."""
        self.records = {"logits": [], "loss": [], "grad": []}
        records, main = self.records, self.main
        utils = main.search_hp.__globals__  # utils.py's namespace, where search_hp finds its cls_acc
        cls_acc, functional = main.cls_acc, main.F

        def recorded_acc(output, target, topk=1):
            """utils.py:10-15, whose ``float()`` of a one-element array NumPy 2 refuses: the same count, by
            ``.item()``."""
            records["logits"].append(output.detach().clone())
            pred = output.topk(topk, 1, True, True)[1].t()
            correct = pred.eq(target.view(1, -1).expand_as(pred))
            return 100 * correct[:topk].reshape(-1).float().sum().item() / target.shape[0]

        def cross_entropy(logits, target, *args, **kwargs):
            loss = functional.cross_entropy(logits, target, *args, **kwargs)
            records["loss"].append(loss.detach().clone())
            return loss

        class RecordingAdamW(torch.optim.AdamW):
            @torch.no_grad()
            def step(self, closure=None):
                records["grad"].append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])

        shim = types.SimpleNamespace(**{k: getattr(functional, k) for k in dir(functional) if not k.startswith("_")})
        shim.cross_entropy = cross_entropy
        adamw = torch.optim.AdamW
        best = os.path.join(self.cfg["cache_dir"], f"best_F_{self.cfg['shots']}shots.pt")
        torch.save(nn.Parameter(self.keys.t().detach().clone()), best)  # as theirs saves adapter.weight
        main.cls_acc, utils["cls_acc"], main.F, torch.optim.AdamW = recorded_acc, recorded_acc, shim, RecordingAdamW
        try:
            with fp32_on_cpu(), contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # their scheduler steps after a skipped optimiser step
                yield records
        finally:
            main.cls_acc, utils["cls_acc"], main.F, torch.optim.AdamW = cls_acc, cls_acc, functional, adamw

    def features(self, images: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            f = self.model.encode_image(images)
        return f / f.norm(dim=-1, keepdim=True)  # utils.py:83

    def checkpoint_state(self) -> dict:
        """The tensors of their files keys_<K>shots.pt, values_<K>shots.pt, best_F_<K>shots.pt (the keys
        before training) and the config's beta and alpha, under our checkpoint's names."""
        scalar = lambda v: torch.tensor(float(v), dtype=torch.float64)  # noqa: E731
        return {
            "cache_keys": self.keys.detach().clone(),
            "cache_values": self.values.detach().clone(),
            "adapter_weight": self.keys.t().detach().clone(),
            "beta": scalar(self.cfg["init_beta"]),
            "alpha": scalar(self.cfg["init_alpha"]),
            "val_acc": scalar(0.0),
        }

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """``run_tip_adapter``'s Tip-Adapter logits at the initial beta and alpha (main.py:37-43), the images as
        its val set (and test set, its search a single point)."""
        f = self.features(images)
        labels = torch.zeros(len(f), dtype=torch.long)
        with self.recording() as records, torch.no_grad():
            self.main.run_tip_adapter(self.cfg, self.keys, self.values, f, labels, f, labels, self.clip_weights)
        return records["logits"][1]

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """One epoch of one batch of ``run_tip_adapter_F`` (main.py:85-106): its encoder forward, logits, loss
        and backward; then its test evaluation and search, on the batch's features, cost a few matrix products."""
        cfg = {**self.cfg, "train_epoch": 1}
        f = self.features(images)
        with self.recording() as records:
            self.main.run_tip_adapter_F(
                cfg, self.keys, self.values, f, labels, f, labels, self.clip_weights, self.model, [(images, labels)]
            )
        return float(records["loss"][0])

    def update(self) -> dict[str, torch.Tensor]:
        return {"adapter.weight": self.records["grad"][0][0]}


class ClipLoraDriver:
    """CLIP-LoRA's plain scripts (no trainer, no Dassl): ``loralib.utils.apply_lora`` adapts the checkout's own
    ``clip`` model (loaded from the same weights), ``lora.py``'s ``evaluate_lora`` gives the logits and ``run_lora``
    one training step (``n_iters x shots`` = 1), read where their code hands them on: the cosines given to
    ``cls_acc`` (x100, the literal scale of their training logits), the loss given to ``F.cross_entropy``, every
    adapter's gradient at AdamW's step (a recording AdamW that leaves the weights as they are, like the others'
    learning rate 0). Their B starts at zero, so that every adapter acts and learns B is drawn N(0, 0.02^2) first
    (seeded) and copied into ours with A."""

    def __init__(self, entry: AuthorsCode, checkout: str, clip, classnames: list[str]):
        self.entry, self.args = entry, types.SimpleNamespace(**entry.cfg)
        root = os.path.join(checkout, entry.folder)
        if not os.path.isfile(os.path.join(root, "lora.py")):
            raise FileNotFoundError(
                f"{root} has no lora.py: give a checkout of {entry.repository} "
                f"(git clone https://github.com/{entry.repository})"
            )
        self.tmp = tempfile.TemporaryDirectory()
        self.dataset = types.SimpleNamespace(classnames=list(classnames), template=[CLIP_LORA_TEMPLATE])
        with authors_import_path(root, entry.unused_imports), fp32_on_cpu(), contextlib.redirect_stdout(io.StringIO()):
            weights = os.path.join(self.tmp.name, "openai-format.pt")
            torch.save({k: v.detach().cpu() for k, v in clip.state_dict().items()}, weights)
            their_clip = importlib.import_module("clip")
            self.lora = importlib.import_module("lora")
            self.model = their_clip.load(weights, device="cpu", jit=False)[0].float().eval()
            self.lora.apply_lora(self.args, self.model)
        generator = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                if name.endswith("w_lora_B"):
                    p.copy_(0.02 * torch.randn(p.shape, generator=generator))
        self.records: dict[str, list] = {}

    @contextlib.contextmanager
    def recording(self):
        """lora.py with ``cls_acc``, ``F.cross_entropy`` and ``torch.optim.AdamW`` recording what they are given."""
        self.records = {"logits": [], "loss": [], "grad": []}
        records, lora = self.records, self.lora
        cls_acc, functional = lora.cls_acc, lora.F

        def recorded_acc(output, target, topk=1):
            records["logits"].append(output.detach().clone())
            return 0.0

        def cross_entropy(logits, target, *args, **kwargs):
            loss = functional.cross_entropy(logits, target, *args, **kwargs)
            records["loss"].append(loss.detach().clone())
            return loss

        class RecordingAdamW(torch.optim.AdamW):
            @torch.no_grad()
            def step(self, closure=None):
                records["grad"].append([p.grad.detach().clone() for g in self.param_groups for p in g["params"]])

        shim = types.SimpleNamespace(**{k: getattr(functional, k) for k in dir(functional) if not k.startswith("_")})
        shim.cross_entropy = cross_entropy
        adamw = torch.optim.AdamW
        lora.cls_acc, lora.F, torch.optim.AdamW = recorded_acc, shim, RecordingAdamW
        try:
            with (
                fp32_on_cpu(),
                contextlib.redirect_stdout(io.StringIO()),
                contextlib.redirect_stderr(io.StringIO()),  # their tqdm bars
                warnings.catch_warnings(),
            ):
                warnings.simplefilter("ignore")  # their CUDA autocast and GradScaler, disabled without CUDA
                yield records
        finally:
            lora.cls_acc, lora.F, torch.optim.AdamW = cls_acc, functional, adamw

    def lora_names(self) -> list[str]:
        return [name for name, _ in self.model.named_parameters() if "lora_" in name]  # get_lora_parameters' order

    def checkpoint_state(self) -> dict:
        """``loralib.utils.lora_state_dict`` of their model: our checkpoint's keys."""
        return {k: v.detach().clone() for k, v in self.lora.lora_state_dict(self.model).items()}

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        with self.recording() as records, torch.no_grad():
            self.lora.evaluate_lora(self.args, self.model, [(images, torch.zeros(len(images)))], self.dataset)
        return 100 * records["logits"][0]

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> float:
        """``run_lora`` with one training step on the batch (also its zero-shot classifier, its preload of a
        one-image val and test set and its final one-image evaluation: part of their timed step)."""
        one = [(images[:1], labels[:1])]
        with self.recording() as records:
            self.lora.run_lora(self.args, self.model, 100, self.dataset, [(images, labels)], one, one)
        return float(records["loss"][0])

    def update(self) -> dict[str, torch.Tensor]:
        return dict(zip(self.lora_names(), self.records["grad"][0], strict=True))


def build_ours(entry: AuthorsCode, clip, classnames: list[str], authors: AuthorsModel):
    model = methods.build_method(entry.method, clip, classnames, **entry.options)
    model.load_checkpoint_state_dict(authors.checkpoint_state(), path=f"the authors' {entry.method} model")
    for _, name in entry.gradients:  # a fitted method trains these inside its fit only: here the step reaches them
        model.get_parameter(name).requires_grad_(True)
    return model


def our_step(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    model.train()
    for p in model.trainable_parameters():
        p.grad = None
    if callable(getattr(model, "backward", None)):  # an update that is not one loss's gradient (methods.base)
        return model.backward(images, labels).item()
    loss = model.training_loss(images, labels)
    loss.backward()
    return loss.item()


def our_update(model, entry: AuthorsCode) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {theirs: params[ours].grad for theirs, ours in entry.gradients}


def our_logits(model, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(images)


# ---------------------------------------------------------------------------------------------------
# One method's line
# ---------------------------------------------------------------------------------------------------


class AuthorsMismatch(AssertionError):
    """Our method and the authors' code disagree: the line is aborted."""


def check_equal(what: str, ours, theirs, tolerance: float) -> float:
    ours, theirs = torch.as_tensor(ours), torch.as_tensor(theirs)
    error = relative_error(ours, theirs) if ours.shape == theirs.shape else float("inf")
    if not error < tolerance:
        raise AuthorsMismatch(
            f"{what}: relative error {error:.3g} >= {tolerance:g} between ours and the authors' "
            f"(shapes {tuple(ours.shape)} and {tuple(theirs.shape)})"
        )
    return error


def timed(fn: Callable[[], object], runs: int, budget_s: float) -> tuple[float, int, object]:
    """(median seconds, timed runs, first output): a warm-up call (its output returned), then up to
    ``runs`` timed calls, at least one, stopping once ``budget_s`` is spent."""
    out = fn()
    times: list[float] = []
    while len(times) < max(1, runs) and (not times or sum(times) + times[-1] <= budget_s):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times), out


@dataclass
class Line:
    method: str
    repository: str
    commit: str | None = None
    documented: str | None = None
    warning: str = ""
    error: str = ""  # why the line was aborted
    check: dict = field(default_factory=dict)  # relative errors of the checks
    train: tuple[float, float] | None = None  # (authors' s, ours s)
    evaluation: tuple[float, float] | None = None
    runs: dict = field(default_factory=dict)
    note: str = ""
    floor: tuple[float, float] | None = None  # (train, eval) seconds at the measured matmul rate
    floor_flops: dict = field(default_factory=dict)  # {"train": {part: FLOPs}, "eval": {...}}


@dataclass
class Settings:
    k: int = 100
    batch: int = 1
    eval_images: int = 32
    check_images: int = 2
    runs: int = 3
    budget_s: float = 60.0
    tolerance: float = FP32_TOLERANCE
    loop_eval_images: int = 0  # > 0: the authors' eval of a per-image loop timed on this many images, scaled


def compare_updates(entry: AuthorsCode, authors: AuthorsModel, ours, tolerance: float, what: str = "") -> dict:
    """Relative errors of the update each side left in the entry's learned tensors after its last step."""
    theirs_update, ours_update = authors.update(), our_update(ours, entry)
    errors = {}
    for name, grad in theirs_update.items():
        where = f"{entry.method} update of {name}" + (f", {what}" if what else "")
        if grad is None or ours_update[name] is None:
            raise AuthorsMismatch(f"{where}: no gradient on one side")
        errors[f"update {name}"] = check_equal(where, ours_update[name], grad, tolerance)
    return errors


def compare_method(
    entry: AuthorsCode, checkout: str, clip, settings: Settings, log=print, docs=DOCS, flops_per_s: float = 0.0
) -> Line:
    line = Line(entry.method, entry.repository)
    line.commit, line.documented = checkout_commit(checkout), documented_commit(entry.repository, docs)
    line.warning = commit_warning(entry.repository, line.commit, line.documented, checkout)
    if line.warning:
        log(f"WARNING ({entry.method}): {line.warning}")
    names = class_names(settings.k) if settings.k > 0 else []
    generator = torch.Generator().manual_seed(0)
    size = backbone.image_size(clip)
    images = torch.randn(settings.eval_images, 3, size, size, generator=generator)
    labels = torch.arange(settings.batch) % settings.k
    batch = images[: settings.batch]
    if entry.floor is not None and flops_per_s > 0:
        line.floor_flops = entry.floor(clip, names, settings.batch, settings.eval_images)
        line.floor = tuple(sum(line.floor_flops[case].values()) / flops_per_s for case in ("train", "eval"))
    try:
        torch.manual_seed(0)
        authors = (entry.driver or AuthorsModel)(entry, checkout, clip, names)
        ours = build_ours(entry, clip, names, authors)
        check = images[: settings.check_images]
        line.check["eval logits"] = check_equal(
            f"{entry.method} eval logits", our_logits(ours, check), authors.logits(check), settings.tolerance
        )
        line.note = entry.note
        if entry.train_unavailable:
            line.note = "; ".join(filter(None, [line.note, f"train step not timed: {entry.train_unavailable}"]))
        else:
            t_theirs, n_theirs, loss_theirs = timed(
                lambda: authors.step(batch, labels), settings.runs, settings.budget_s
            )
            t_ours, n_ours, loss_ours = timed(lambda: our_step(ours, batch, labels), settings.runs, settings.budget_s)
            # learning rate 0: the warm-up step saw the same weights on both sides
            line.check["training loss"] = check_equal(
                f"{entry.method} training loss", loss_ours, loss_theirs, settings.tolerance
            )
            line.check.update(compare_updates(entry, authors, ours, settings.tolerance))
            # the same batch under other labels, one untimed step each: another branch of the update (ProGrad's)
            extra = [label % settings.k for label in entry.update_labels if label % settings.k != int(labels[0])]
            for label in sorted(set(extra)):
                relabelled = torch.full_like(labels, label)
                what = f"label {label}"
                theirs_loss, ours_loss = authors.step(batch, relabelled), our_step(ours, batch, relabelled)
                errors = {
                    "training loss": check_equal(
                        f"{entry.method} training loss, {what}", ours_loss, theirs_loss, settings.tolerance
                    )
                }
                errors.update(compare_updates(entry, authors, ours, settings.tolerance, what))
                for key, error in errors.items():
                    key = f"{key}, other labels"
                    line.check[key] = max(line.check.get(key, 0.0), error)
            line.train, line.runs["train"] = (t_theirs, t_ours), (n_theirs, n_ours)
        # The authors' per-image loop costs the same for every image: time a few and scale when asked.
        few = settings.loop_eval_images if entry.eval_loops_over_images and settings.loop_eval_images else len(images)
        few = min(few, len(images))
        t_theirs, n_theirs, out_theirs = timed(lambda: authors.logits(images[:few]), settings.runs, settings.budget_s)
        t_theirs *= len(images) / few
        t_ours, n_ours, out_ours = timed(lambda: our_logits(ours, images), settings.runs, settings.budget_s)
        line.check["eval logits, all images"] = check_equal(
            f"{entry.method} eval logits ({few} images)", out_ours[:few], out_theirs, settings.tolerance
        )
        if few < len(images):
            scaled = f"the authors' eval timed on {few} images, x{len(images) / few:g} (a loop over images)"
            line.note = "; ".join(filter(None, [line.note, scaled]))
        line.evaluation, line.runs["eval"] = (t_theirs, t_ours), (n_theirs, n_ours)
    except AuthorsMismatch as error:
        line.error, line.train, line.evaluation = f"MISMATCH: {error}", None, None
        log(f"ABORTED ({entry.method}): {line.error}")
    except Exception as error:  # the authors' code did not run here: say so in the line, time the others
        line.error, line.train, line.evaluation = f"FAILED: {type(error).__name__}: {error}", None, None
        log(f"FAILED ({entry.method}): {line.error}")
    return line


# ---------------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------------


def _ratio(pair) -> str:
    return f"{pair[0] / pair[1]:.1f}×" if pair else "—"


def _secs(pair, i) -> str:
    return f"{pair[i]:.3g}" if pair else "—"


def table(lines: list[Line]) -> str:
    rows = [
        "| method | authors' code @ commit | train step, authors (s) | ours (s) | speed-up | floor (s) | "
        "eval, authors (s) | ours (s) | speed-up | floor (s) | same logits (max rel. error) |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for line in lines:
        commit = line.commit[:7] if line.commit else "unknown"
        error = " ".join(line.error.split())  # one table cell: one line
        same = error[:300] + " …" if len(error) > 300 else error
        same = same or (f"yes ({max(line.check.values()):.1e})" if line.check else "—")
        rows.append(
            f"| {line.method} | {line.repository} @ {commit} | {_secs(line.train, 0)} | {_secs(line.train, 1)} | "
            f"{_ratio(line.train)} | {_secs(line.floor, 0)} | {_secs(line.evaluation, 0)} | "
            f"{_secs(line.evaluation, 1)} | {_ratio(line.evaluation)} | {_secs(line.floor, 1)} | {same} |"
        )
    return "\n".join(rows)


def load_description() -> str:
    try:
        with open("/proc/loadavg") as f:
            one, five, fifteen = f.read().split()[:3]
        return f"load average {one} / {five} / {fifteen} (1 / 5 / 15 min) on {os.cpu_count()} logical CPUs"
    except OSError:
        return "load unknown"


def render(
    lines: list[Line],
    settings: Settings,
    machine: str,
    load_before: str,
    load_after: str,
    note: str,
    flops_per_s: float = 0.0,
) -> str:
    out = [
        "# Every method against its authors' code",
        "",
        f"Made by `python -m benchmarks.vs_authors` on {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC.",
        f"Machine: {machine}. Before: {load_before}; after: {load_after}." + (f" {note}" if note else ""),
        "",
        f"Random CLIP with OpenAI's ViT-B/16 dimensions (weights rounded through fp16, as the authors' loader "
        f"holds them), fp32 on the CPU, K = {settings.k} ImageNet class names. Train step: batch {settings.batch}, "
        f"forward + the published objective + backward (the authors' `forward_backward`, learning rate 0). "
        f"Eval: {settings.eval_images} images, including the image encoder. Median of up to {settings.runs} runs "
        f"after a warm-up (runs per cell below). Speed-up: the authors' time over ours. Both sides first gave "
        f"the same eval logits and training loss, and the same update where the checks name one (relative error < "
        f"{settings.tolerance:g}), or the line says why not. "
        f"Floor: the FLOPs no exact method avoids (the text positions up to each EOT, the image encoder's forward; "
        f"`benchmarks/bench.py`) at this machine's measured fp32 matmul rate ({flops_per_s / 1e9:.0f} GFLOP/s, the "
        f"fastest of a probe before each method), where the method has one.",
        "",
        table(lines),
        "",
    ]
    for line in lines:
        details = []
        if line.warning:
            details.append(f"WARNING: {line.warning}")
        if line.runs:
            details.append("runs (authors, ours): " + ", ".join(f"{k} {a}, {b}" for k, (a, b) in line.runs.items()))
        if line.check:
            details.append("checks: " + ", ".join(f"{k} {v:.1e}" for k, v in line.check.items()))
        if line.note:
            details.append(line.note)
        if line.floor_flops:
            details.append(
                "floor: "
                + "; ".join(
                    f"{case} " + " + ".join(f"{part} {flops / 1e9:.0f}" for part, flops in parts.items()) + " GFLOP"
                    for case, parts in line.floor_flops.items()
                )
            )
        if line.commit:
            details.append(f"commit {line.commit}" + (f" (docs/: {line.documented})" if line.documented else ""))
        out.append(f"* {line.method}: " + "; ".join(details) + ".")
    return "\n".join(out) + "\n"


def readme_block(report: str = REPORT) -> str:
    """README.md's block: the table (and the line naming machine and load) of ``report``."""
    with open(report, encoding="utf-8") as f:
        text = f.read()
    machine = next(line for line in text.splitlines() if line.startswith("Machine:"))
    body = "\n".join(line for line in text.splitlines() if line.startswith("|"))
    return f"{body}\n\n{machine} (`{report}`)\n"


# ---------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------


def parse_authors(items: list[str], known: dict[str, AuthorsCode]) -> dict[str, str]:
    checkouts = {}
    for item in items:
        method, sep, directory = item.partition("=")
        if not sep or not directory:
            raise SystemExit(f"--authors {item!r}: expected METHOD=DIR, e.g. cocoop=/path/to/CoOp")
        if method not in known:
            raise SystemExit(f"--authors {item!r}: no authors' adapter for {method!r}; known: {', '.join(known)}")
        if not os.path.isdir(directory):
            raise SystemExit(
                f"--authors {item!r}: {directory} is not a folder; clone it: "
                f"git clone https://github.com/{known[method].repository} {directory}"
            )
        checkouts[method] = directory
    return checkouts


def main(argv: list[str] | None = None, adapters: dict[str, AuthorsCode] = AUTHORS, clip=None, docs=DOCS) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.vs_authors", description=__doc__.split("\n\n")[0])
    parser.add_argument("--authors", nargs="*", default=[], metavar="METHOD=DIR")
    parser.add_argument("--k", type=int, default=100)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--eval-images", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=60.0, help="timing budget per measurement after warm-up")
    parser.add_argument(
        "--loop-eval-images",
        type=int,
        default=0,
        help="time the authors' per-image eval loop (CoCoOp) on this many images and scale (0: all)",
    )
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--note", default="", help="a sentence for the report, e.g. about other load")
    parser.add_argument("--out", default=REPORT)
    args = parser.parse_args(argv)
    checkouts = parse_authors(args.authors, adapters)
    if not checkouts:
        parser.error("name at least one METHOD=DIR with --authors")
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = Settings(
        k=args.k,
        batch=args.batch,
        eval_images=args.eval_images,
        runs=args.runs,
        budget_s=args.budget_s,
        loop_eval_images=args.loop_eval_images,
    )
    if clip is None:
        clip = backbone.freeze(backbone.build_random_clip("vit_b16", seed=0))
    round_through_fp16(clip)
    load_before = load_description()
    flops_per_s = matmul_throughput(torch.device("cpu"))
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    machine, lines = machine_description(torch.device("cpu")), []
    for method, checkout in checkouts.items():
        print(f"{method}: {adapters[method].repository} from {checkout}", flush=True)
        # The floor must stay a lower bound: on a shared machine one probe can catch a busy moment, so the
        # rate is probed again before each method and the fastest seen serves every line.
        flops_per_s = max(flops_per_s, matmul_throughput(torch.device("cpu")))
        lines.append(compare_method(adapters[method], checkout, clip, settings, docs=docs, flops_per_s=flops_per_s))
        for line in lines:
            if line.floor_flops:
                line.floor = tuple(sum(line.floor_flops[case].values()) / flops_per_s for case in ("train", "eval"))
        print(table(lines[-1:]).splitlines()[-1], flush=True)
        # written after every method, so a run stopped early keeps what it measured and says what it did not
        pending = [Line(m, adapters[m].repository, error="not measured: the run stopped before it") for m in checkouts]
        pending = pending[len(lines) :]
        text = render(lines + pending, settings, machine, load_before, load_description(), args.note, flops_per_s)
        with open(args.out, "w", encoding="utf-8") as f:
            f.write(text)
    print(text)
    print(f"wrote {args.out}")
    return 1 if any(line.error for line in lines) else 0


if __name__ == "__main__":
    sys.exit(main())
