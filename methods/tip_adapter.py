"""Tip-Adapter and Tip-Adapter-F (Zhang et al., ECCV 2022; docs/PROTOCOL-successors-3-fewshot.md "Tip-Adapter";
gaopengcuhk/Tip-Adapter@d0e2d6f, main.py and utils.py).

A cache model built from the few-shot training set, added to zero-shot CLIP's logits (the paper's Eq. 5-6):

    keys    F_train = normalise(mean over ``augment_epoch`` augmented passes of the unnormalised image
            features of the N = K x C training images)                       [N, D]  (utils.py:46-61)
    values  L_train = one_hot(labels)                                         [N, C]  (utils.py:62)
    A       = exp(-beta (1 - f F_train^T))      f the normalised image feature          (main.py:39-40)
    logits  = 100 f W^T + alpha A L_train       W the normalised class text features     (main.py:32, 42)

Tip-Adapter (``tip_adapter``) is training-free: the cache is built, then beta and alpha are searched on
the validation split (``search_hp``, utils.py:99-129: beta in ``search_step[0]`` values from 0.1 up to
``search_scale[0]``, alpha likewise, beta outer, the first best accuracy kept).

Tip-Adapter-F (``tip_adapter_f``) also fine-tunes the keys (main.py:66-132): they become a learned
``[N, D]`` matrix (the authors' ``adapter.weight``, a bias-free Linear), trained ``train_epoch`` epochs on
freshly augmented training images, batch ``batch_size``, cross-entropy of the logits above at the initial
beta and alpha, AdamW (lr ``lr``, eps 1e-4, weight decay torch's default 0.01) with a cosine schedule over
every step; then beta and alpha are searched on the validation split with the fine-tuned keys.

Both are ``fits_features`` methods fitted on the harness's few-shot draw (``draws_own_shots = False``: the
draw of (shots, seed) every prompt method trains on, the full validation split, and the training
transform's features through ``augmented``). Deviations (each beside its fact in the protocol page):
the authors keep the Tip-Adapter-F epoch with the best *test* accuracy and report the better of it and
the searched result (main.py:121-141): here the last epoch is kept and searched on validation, no test
image is seen before the evaluation; their GPU run holds features and keys in fp16, here fp32.
"""

from __future__ import annotations

import logging
import math
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bounds import Range, Satisfies
from clipcore import backbone
from methods.parts.base import CheckpointError, CLIPMethod, Templates
from methods.parts.registry import register_method
from methods.zsclip import DATASET_TEMPLATES, DEFAULT_TEMPLATE, IMAGENET_SELECTED_TEMPLATES, class_text_features

log = logging.getLogger(__name__)

# The authors' dataset names (configs/<name>.yaml's ``dataset``) where they are not the harness's keys.
AUTHORS_DATASETS = {"fgvc_aircraft": "fgvc"}

LOGIT_SCALE = 100.0  # main.py:32: a fixed 100, whatever CLIP's logit_scale
# configs/<dataset>.yaml by the harness's dataset keys: (init_beta, init_alpha, search_scale, train_epoch).
# search_step [200, 20], augment_epoch 10, lr 0.001 are the same in every file.
PUBLISHED = {
    "imagenet": (1.0, 1.17, (7.0, 3.0), 20),
    "caltech101": (1.0, 3.0, (12.0, 5.0), 20),
    "dtd": (1.0, 2.0, (13.0, 13.0), 20),
    "eurosat": (1.0, 2.0, (12.0, 10.0), 100),
    "fgvc_aircraft": (1.0, 5.0, (30.0, 30.0), 20),
    "food101": (1.0, 1.17, (10.0, 10.0), 20),
    "oxford_flowers": (1.0, 10.0, (50.0, 50.0), 20),
    "oxford_pets": (1.0, 1.17, (7.0, 3.0), 20),
    "stanford_cars": (1.0, 3.0, (20.0, 10.0), 20),
    "sun397": (1.0, 1.17, (12.0, 10.0), 20),
    "ucf101": (1.0, 3.0, (7.0, 3.0), 20),
}
# A dataset without a published config (the miniature world, a new one) takes ImageNet's: THE PROJECT'S CHOICE.
FALLBACK = "imagenet"
ADAMW_EPS = 1e-4  # main.py:72

PAIR = Satisfies(lambda v: len(v) == 2, "two values, [beta, alpha]")
SCALE = Satisfies(lambda v: len(v) == 2 and all(x > 0.1 for x in v), "two values above 0.1, [beta_max, alpha_max]")


def published_templates(dataset: str | None) -> list[str]:
    """datasets/*.py ``template``: ImageNet's 7-template ensemble, else the dataset's one (CoOp's)."""
    if dataset == "imagenet":
        return list(IMAGENET_SELECTED_TEMPLATES)
    return [DATASET_TEMPLATES.get(dataset, DEFAULT_TEMPLATE)]


def search_grid(scale: float, steps: int) -> list[float]:
    """utils.py:103-104: ``steps`` values from 0.1 towards ``scale`` (``scale`` itself is not reached)."""
    return [i * (scale - 0.1) / steps + 0.1 for i in range(steps)]


def cache_logits(features: torch.Tensor, keys_t: torch.Tensor, values: torch.Tensor, beta: float) -> torch.Tensor:
    """A L_train with A = exp(-beta (1 - f keys_t^T)); ``keys_t`` [N, D] (the adapter's weight layout)."""
    affinity = features @ keys_t.T
    return ((-1) * (beta - beta * affinity)).exp() @ values


def search_hp(features, labels, clip_logits, keys_t, values, scale, steps) -> tuple[float, float, float]:
    """(beta, alpha, accuracy %): the authors' grid search, beta outer, alpha inner, the first strictly
    better accuracy kept; (0, 0, 0) if none is above 0 (utils.py:106-107)."""
    alpha_list = search_grid(scale[1], steps[1])
    best = (0.0, 0.0, 0.0)
    for beta in search_grid(scale[0], steps[0]):
        cached = cache_logits(features, keys_t, values, beta)
        for alpha in alpha_list:
            hits = int(((clip_logits + cached * alpha).argmax(-1) == labels).sum())
            acc = 100.0 * hits / len(labels)
            if acc > best[2]:
                best = (beta, alpha, acc)
    return best


@register_method("tip_adapter")
class TipAdapter(CLIPMethod):
    """Training-free Tip-Adapter: ``fit`` builds the cache from augmented features and searches beta, alpha.

    ``prompt_learner`` holds the authors' files' tensors: ``cache_keys`` [D, N] (``keys_<K>shots.pt``),
    ``cache_values`` [N, C] (``values_<K>shots.pt``), and the searched ``beta``, ``alpha`` and their
    validation accuracy; Tip-Adapter-F adds ``adapter_weight`` [N, D] (``best_F_<K>shots.pt``).
    """

    label = "Tip-Adapter"
    paper = "Zhang et al., ECCV"
    year = 2022
    source = "gaopengcuhk/Tip-Adapter@d0e2d6f"
    color = "#843c39"
    default_config = "tip_adapter/vit_b16"
    checkpoint_folder = "tip_adapter"
    fits_features = True
    draws_own_shots = False
    transfers_to_other_classes = False

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        init_beta: Annotated[float, Range(0)] | None = None,
        init_alpha: Annotated[float, Range(0)] | None = None,
        search_scale: Annotated[list[float], SCALE] | None = None,
        search_step: Annotated[list[Annotated[int, Range(1, 10_000)]], PAIR] = [200, 20],  # noqa: B006 (copied)
        search: bool = True,
        augment_epoch: Annotated[int, Range(1, 1000)] = 10,
        templates: Templates | None = None,
        dataset: str | None = None,
    ):
        """init_beta, init_alpha: beta and alpha before the search (and Tip-Adapter-F's training values);
        search_scale: [beta_max, alpha_max] of the search grid; search_step: its sizes [200, 20]; search: False
        keeps the initial values (the authors' ``search_hp: False`` path fails, utils.py:101); augment_epoch:
        augmented passes averaged into the keys; templates: the text prompts (default: the dataset's). The
        values left None are the dataset's published ones (``PUBLISHED``; ImageNet's for other datasets)."""
        super().__init__(clip_model, classnames)
        beta, alpha, scale, self.default_train_epoch = PUBLISHED.get(dataset, PUBLISHED[FALLBACK])
        self.init_beta = float(init_beta if init_beta is not None else beta)
        self.init_alpha = float(init_alpha if init_alpha is not None else alpha)
        self.search_scale = tuple(float(s) for s in (search_scale if search_scale is not None else scale))
        self.search_step = tuple(int(s) for s in search_step)
        self.search = bool(search)
        self.augment_epoch = int(augment_epoch)
        self.templates = list(templates) if templates is not None else published_templates(dataset)
        self.dataset = dataset
        with torch.no_grad():
            text = class_text_features(clip_model, self.classnames, self.templates)
        self.register_buffer("text_features", text.float(), persistent=False)
        dim = backbone.embed_dim(clip_model)
        learner = self.prompt_learner
        learner.register_buffer("cache_keys", torch.zeros(dim, 0))
        learner.register_buffer("cache_values", torch.zeros(0, self.num_classes))
        for name in ("beta", "alpha", "val_acc"):
            learner.register_buffer(name, torch.tensor(float("nan"), dtype=torch.float64))

    # -- the forward --------------------------------------------------------------------------------

    def keys_t(self) -> torch.Tensor:
        """The keys as the affinity reads them, [N, D]: the cache's (Tip-Adapter), the learned (-F)."""
        return self.prompt_learner.cache_keys.T

    def tip_logits(self, image_features: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
        f = F.normalize(image_features.float(), dim=-1)
        clip_logits = LOGIT_SCALE * f @ self.text_features.T
        return clip_logits + alpha * cache_logits(f, self.keys_t(), self.prompt_learner.cache_values, beta)

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        if not self.fitted:
            raise RuntimeError(f"{self.label} is not fitted: call fit(...) or load its checkpoint first.")
        learner = self.prompt_learner
        return self.tip_logits(image_features, float(learner.beta), float(learner.alpha))

    @property
    def fitted(self) -> bool:
        return not bool(torch.isnan(self.prompt_learner.beta))

    # -- fitting ------------------------------------------------------------------------------------

    def fit(self, train_features, train_labels, val_features, val_labels, seed: int, shots: int, augmented=None):
        """Build the cache from ``augment_epoch`` passes of ``augmented`` (the few-shot draw through the
        training transform, in the draw's order), fine-tune it (Tip-Adapter-F), search beta and alpha on the
        validation features. With ``augmented`` (the runner gives it), ``train_features`` (the test
        transform's) are not read: the authors' cache uses augmented images only; without it, they are
        every pass."""
        device = self.text_features.device
        if augmented is None:  # called with features only (the Python API): every pass is ``train_features``
            given = torch.as_tensor(train_features)

            def augmented(_seed):
                return given

        labels = torch.as_tensor(train_labels, dtype=torch.long, device=device)
        total = None
        for augment_idx in range(self.augment_epoch):
            features = augmented(pass_seed(seed, augment_idx)).to(device, torch.float32)
            total = features if total is None else total + features
        keys = F.normalize(total / self.augment_epoch, dim=-1)  # mean of the raw features, then normalised
        learner = self.prompt_learner
        learner.cache_keys = keys.T.contiguous()
        learner.cache_values = F.one_hot(labels, self.num_classes).float()
        self.fine_tune(labels, augmented, seed)
        val = F.normalize(torch.as_tensor(val_features, device=device).float(), dim=-1)
        val_y = torch.as_tensor(val_labels, dtype=torch.long, device=device)
        if self.search:
            with torch.no_grad():
                clip_logits = LOGIT_SCALE * val @ self.text_features.T
                beta, alpha, acc = search_hp(
                    val, val_y, clip_logits, self.keys_t(), learner.cache_values, self.search_scale, self.search_step
                )
        else:
            beta, alpha = self.init_beta, self.init_alpha
            with torch.no_grad():
                acc = 100.0 * float((self.tip_logits(val, beta, alpha).argmax(-1) == val_y).float().mean())
        if self.search and acc == 0.0:  # the authors' search keeps (0, 0) when no pair scores: their cache is off
            log.warning(
                "%s: no beta and alpha of the search classified any of the %d validation images; the cache is off "
                "(beta = alpha = 0, as the authors' search leaves it) and the scores are zero-shot CLIP's.",
                self.method_name,
                len(val_y),
            )
        learner.beta.fill_(beta)
        learner.alpha.fill_(alpha)
        learner.val_acc.fill_(acc)

    def fine_tune(self, labels, augmented, seed: int) -> None:
        """Tip-Adapter-F's training of the keys; nothing for the training-free method."""

    # -- records and checkpoints -------------------------------------------------------------------

    def num_trainable_parameters(self) -> int:
        return 0  # training-free: the cache is built, not learned

    def authors_files(self, spec: dict) -> dict[str, object]:
        """The cache as the authors' code saves it (utils.py:64-65): bare tensors, keys [D, N] and values
        [N, C], in ``caches/<dataset>/`` (main.py:152), where their main.py with ``load_cache: True`` reads them
        when run in the checkpoint folder; fp32 here (theirs: CLIP's dtype, fp16 on CUDA)."""
        learner, shots = self.prompt_learner, spec["shots"]
        folder = f"caches/{AUTHORS_DATASETS.get(spec['dataset'], spec['dataset'])}"
        return {
            f"{folder}/keys_{shots}shots.pt": learner.cache_keys.detach().cpu().clone(),
            f"{folder}/values_{shots}shots.pt": learner.cache_values.detach().cpu().clone(),
        }

    def record_options(self) -> dict:
        learner = self.prompt_learner
        return {
            "init_beta": self.init_beta,
            "init_alpha": self.init_alpha,
            "search_scale": list(self.search_scale),
            "search_step": list(self.search_step),
            "search": self.search,
            "augment_epoch": self.augment_epoch,
            "templates": self.templates,
            "beta": float(learner.beta),
            "alpha": float(learner.alpha),
            "val_acc": float(learner.val_acc),
        }

    def load_checkpoint_state_dict(self, state: dict, path: str = "<state dict>") -> None:
        """The cache's size N is the training set's: the buffers take the checkpoint's shapes, whose
        feature width and class count must be this model's."""
        learner = self.prompt_learner
        own = learner.state_dict()
        missing = sorted(set(own) - set(state))
        foreign = sorted(set(state) - set(own))
        if missing or foreign:
            raise CheckpointError(
                f"{path} is not a {self.method_name} checkpoint: it lacks {missing} and holds {foreign[:6]}. "
                "Evaluate it with the method that fitted it."
            )
        dim, classes = learner.cache_keys.shape[0], self.num_classes
        keys, values = state["cache_keys"], state["cache_values"]
        if keys.shape[0] != dim or values.shape[1] != classes or keys.shape[1] != values.shape[0]:
            raise CheckpointError(
                f"{path}: cache keys {tuple(keys.shape)} and values {tuple(values.shape)} do not fit this model "
                f"([{dim}, N] and [N, {classes}]): it was fitted with another backbone or other classes."
            )
        for name, value in state.items():
            current = getattr(learner, name)
            value = value.to(current.device, current.dtype)
            if isinstance(current, nn.Parameter):
                setattr(learner, name, nn.Parameter(value.clone(), requires_grad=current.requires_grad))
            else:
                setattr(learner, name, value.clone())
        if not self.fitted:
            raise CheckpointError(f"{path} holds an unfitted {self.label} (beta is NaN): fit it again.")


def pass_seed(seed: int, index: int) -> int:
    """The seed of augmented pass ``index`` (cache passes from 0, Tip-Adapter-F's epochs after them): each
    pass its own random crops, the same ones in a rerun, whatever ran before."""
    return seed * 1_000_003 + index


@register_method("tip_adapter_f")
class TipAdapterF(TipAdapter):
    """Tip-Adapter-F: the training-free cache, its keys then fine-tuned (main.py:66-132)."""

    label = "Tip-Adapter-F"
    paper = "Zhang et al., ECCV"
    year = 2022
    source = "gaopengcuhk/Tip-Adapter@d0e2d6f"
    color = "#d6616b"
    default_config = "tip_adapter_f/vit_b16"
    checkpoint_folder = "tip_adapter_f"

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        train_epoch: Annotated[int, Range(0, 10_000)] | None = None,
        lr: Annotated[float, Range(0)] = 0.001,
        batch_size: Annotated[int, Range(1)] = 256,
        **cache_options,
    ):
        """train_epoch: epochs of fine-tuning (None: the dataset's published value, 100 on EuroSAT, else 20);
        lr: AdamW's learning rate; batch_size: training images per step; ``cache_options``: Tip-Adapter's
        (the registry reads them from its constructor)."""
        super().__init__(clip_model, classnames, **cache_options)
        self.train_epoch = int(train_epoch if train_epoch is not None else self.default_train_epoch)
        self.lr = float(lr)
        self.batch_size = int(batch_size)
        dim = backbone.embed_dim(clip_model)
        # learned inside ``fit`` only: outside it nothing trains it (the runner's optimiser sees no parameter)
        self.prompt_learner.adapter_weight = nn.Parameter(torch.zeros(0, dim), requires_grad=False)

    def keys_t(self) -> torch.Tensor:
        return self.prompt_learner.adapter_weight

    def step_loss(self, features: torch.Tensor, labels: torch.Tensor, details: dict | None = None) -> torch.Tensor:
        """One batch's loss (main.py:91-96): CE of the logits at the initial beta and alpha."""
        logits = self.tip_logits(features, self.init_beta, self.init_alpha)
        loss = F.cross_entropy(logits, labels)
        if details is not None:
            details.update(logits=logits.detach(), ce=loss.detach())
        return loss

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, *, details: dict | None = None) -> torch.Tensor:
        """The published objective for a batch of images (what ``fit`` trains, on their features)."""
        return self.step_loss(self.encode_image(images), labels, details)

    def build_optimizer(self, steps: int):
        """AdamW (eps 1e-4, torch's weight decay 0.01) and a cosine over every step (main.py:72-73)."""
        optimizer = torch.optim.AdamW([self.prompt_learner.adapter_weight], lr=self.lr, eps=ADAMW_EPS)
        return optimizer, torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))

    def fine_tune(self, labels, augmented, seed: int) -> None:
        learner = self.prompt_learner
        learner.adapter_weight = nn.Parameter(learner.cache_keys.T.clone())  # main.py:69-70
        n = len(labels)
        steps_per_epoch = math.ceil(n / self.batch_size)  # drop_last False (datasets/utils.py:373)
        optimizer, scheduler = self.build_optimizer(self.train_epoch * steps_per_epoch)
        order = torch.Generator().manual_seed(pass_seed(seed, -1))
        device = labels.device
        for epoch in range(self.train_epoch):
            # a fresh augmentation of every training image, visited in a fresh random order (main.py:85)
            features = augmented(pass_seed(seed, self.augment_epoch + epoch)).to(device, torch.float32)
            permutation = torch.randperm(n, generator=order).to(device)
            for start in range(0, n, self.batch_size):
                batch = permutation[start : start + self.batch_size]
                loss = self.step_loss(features[batch], labels[batch])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
        learner.adapter_weight.requires_grad_(False)

    def num_trainable_parameters(self) -> int:
        return self.prompt_learner.adapter_weight.numel()

    def authors_files(self, spec: dict) -> dict[str, object]:
        """The training-free cache's files and the fine-tuned keys, [N, D], as main.py:124 saves them."""
        files = super().authors_files(spec)
        keys = next(name for name in files if "/keys_" in name)
        files[keys.replace("/keys_", "/best_F_")] = self.prompt_learner.adapter_weight.detach().cpu().clone()
        return files

    def record_options(self) -> dict:
        return {
            **super().record_options(),
            "train_epoch": self.train_epoch,
            "lr": self.lr,
            "batch_size": self.batch_size,
        }
