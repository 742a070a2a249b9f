"""Contrastive pre-training of the tiny CLIP, and its cache.

The loss is CLIP's symmetric InfoNCE over a batch of (picture, caption) pairs; AdamW with linear
warm-up and cosine decay; the project's tiny open_clip architecture with CLIP's real tokenizer.
A second process renders the next batches while this one trains.

Pinned weights: the arithmetic runs on one thread (the order of floating-point sums then does not
depend on the core count), oneDNN is off, and when the weights are made for the cache the training
runs in a fresh process with MKL's conditional numerical reproducibility on its AVX2 code path
(``MKL_CBWR=AVX2,STRICT``) and ATen's AVX2 kernels (``ATEN_CPU_CAPABILITY=avx2``). On one CPU the
weights are then bit-identical whatever the thread count or the AVX2/AVX-512 choice (the tests check
it). Across CPU models they are not: a user's AMD EPYC (AVX-512), with the same torch, made other
weights than the reference Intel Xeon (docs/demo.md, "The miniature world"). ``weights_sha256`` is printed
after training and by ``python -m miniworld pretrain`` for cached weights.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from clipcore import backbone
from clipcore.paths import cache_dir
from harness.data.transforms import build_transform
from harness.logs import Progress
from miniworld import datasets

log = logging.getLogger(__name__)

WORLD_VERSION = 2  # bump when the renderer, the captions or the training loop change

#: The environment the cached weights are trained under (see the module's docstring).
PINNED_ENV = {
    "MKL_CBWR": "AVX2,STRICT",
    "ATEN_CPU_CAPABILITY": "avx2",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
}


@dataclass(frozen=True)
class PretrainConfig:
    model: backbone.CLIPShape = backbone.CLIP_SHAPES["miniworld"]
    steps: int = 500
    batch_size: int = 128
    # A ViT this small learns shapes only below ~1e-3 (10 shapes, 150 supervised steps: 77 % at
    # 5e-4, 61 % at 1e-3, chance at 2e-3).
    lr: float = 1e-3
    warmup: int = 20
    # Whether CLIP's 49,408 word vectors are trained (the world uses ~100 of them); frozen at their
    # random initialisation, each step is a fifth faster but shapes are learned later.
    train_token_embedding: bool = True
    weight_decay: float = 0.1
    init_temperature: float = 0.07
    seed: int = 0

    def fingerprint(self) -> str:
        blob = json.dumps(dataclasses.asdict(self), sort_keys=True) + f"|world{WORLD_VERSION}"
        return hashlib.sha256(blob.encode()).hexdigest()[:8]


DEFAULT_PRETRAIN = PretrainConfig()


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


class PretrainingPairs(torch.utils.data.Dataset):
    """Pre-training pair ``index`` as (picture tensor, token ids); step t holds indices t*B .. t*B+B-1."""

    def __init__(self, config: PretrainConfig):
        self.config = config
        # the harness's test transform: pictures are drawn at the model's size, so it only normalises
        self.transform = build_transform(train=False, size=config.model.image_size)

    def __len__(self) -> int:
        return self.config.steps * self.config.batch_size

    def __getitem__(self, index: int):
        image, text, _ = datasets.pretraining_sample(self.config.seed, index, self.config.model.image_size)
        ids = backbone.tokenize(text, self.config.model.context_length)[0]
        return self.transform(image), ids


def _one_thread(_worker_id: int) -> None:
    torch.set_num_threads(1)


def batches(config: PretrainConfig, workers: int = 1):
    loader = torch.utils.data.DataLoader(
        PretrainingPairs(config),
        batch_size=config.batch_size,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=_one_thread if workers else None,
        prefetch_factor=4 if workers else None,
    )
    return iter(loader)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def contrastive_loss(model, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric InfoNCE: picture i belongs with caption i and with no other in the batch."""
    image_features = F.normalize(model.encode_image(images), dim=-1)
    text_features = F.normalize(backbone.encode_text_embeddings(model, model.token_embedding(ids), ids), dim=-1)
    logits = model.logit_scale.exp() * image_features @ text_features.t()
    target = torch.arange(len(logits))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def _param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if p.ndim < 2 or "embedding" in name or "logit_scale" in name or name.endswith("class_embedding"):
            no_decay.append(p)
        else:
            decay.append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def init_model(config: PretrainConfig = DEFAULT_PRETRAIN):
    """The random model pre-training starts from (temperature 0.07, learnable)."""
    model = backbone.build_random_clip(config.model, seed=config.seed)
    with torch.no_grad():
        model.logit_scale.fill_(math.log(1.0 / config.init_temperature))
    return model


def learning_rate(config: PretrainConfig, step: int) -> float:
    if step < config.warmup:
        return config.lr * (step + 1) / config.warmup
    t = (step - config.warmup) / max(1, config.steps - config.warmup)
    return 0.5 * config.lr * (1 + math.cos(math.pi * t))


def pretrain(config: PretrainConfig = DEFAULT_PRETRAIN, workers: int = 1, progress: Progress | None = None):
    """Pre-train a tiny CLIP from scratch; returns (model in eval mode and frozen, loss per step)."""
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    torch.set_num_threads(1)
    torch.backends.mkldnn.enabled = False
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(config.seed)
            model = init_model(config).train()
            model.token_embedding.weight.requires_grad_(config.train_token_embedding)
            opt = torch.optim.AdamW(
                _param_groups(model, config.weight_decay), lr=config.lr, betas=(0.9, 0.98), eps=1e-6
            )
            losses: list[float] = []
            for step, (images, ids) in enumerate(batches(config, workers)):
                for group in opt.param_groups:
                    group["lr"] = learning_rate(config, step)
                loss = contrastive_loss(model, images, ids)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(0, math.log(100.0))
                losses.append(float(loss.detach()))
                if progress is not None:
                    progress.update(loss=float(np.mean(losses[-20:])))
    finally:
        torch.set_num_threads(threads)
        torch.backends.mkldnn.enabled = onednn
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model, losses


def weights_sha256(model) -> str:
    """Hash of every tensor's bytes, in key order: equal hashes mean bit-identical weights."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        digest.update(key.encode())
        digest.update(tensor.detach().contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------
# Cache
# ---------------------------------------------------------------------------------------------


def cache_path(config: PretrainConfig = DEFAULT_PRETRAIN) -> str:
    return os.path.join(cache_dir(), f"tiny-pretrained-v{WORLD_VERSION}-{config.fingerprint()}.pt")


def published_sha256(config: PretrainConfig = DEFAULT_PRETRAIN) -> str | None:
    """The sha256 of the weights file its pre-training wrote (its sidecar says; None for a sidecar of an
    earlier harness, which did not record it)."""
    try:
        with open(cache_path(config) + ".json") as f:
            return json.load(f).get("file_sha256")
    except (OSError, ValueError, AttributeError):
        return None


def cached_weights_sha256(config: PretrainConfig = DEFAULT_PRETRAIN) -> str:
    """``weights_sha256`` of the cached weights: as their pre-training recorded it in the sidecar, else (a
    sidecar of an earlier harness) computed from the file."""
    try:
        with open(cache_path(config) + ".json") as f:
            recorded = json.load(f).get("weights_sha256")
    except (OSError, ValueError, AttributeError):
        recorded = None
    return recorded or weights_sha256(backbone.load_openai_file(cache_path(config), precision="fp32"))


def train_and_save(config: PretrainConfig, path: str) -> dict:
    """Pre-train in this process and write the weights (atomically) and a JSON sidecar of facts."""
    start = time.time()
    with Progress(config.steps, "pre-training the tiny CLIP", unit="step") as bar:
        model, losses = pretrain(config, progress=bar)
    facts = {
        "weights_sha256": weights_sha256(model),
        "seconds": round(time.time() - start, 1),
        "loss_first": round(float(np.mean(losses[:10])), 4),
        "loss_last": round(float(np.mean(losses[-20:])), 4),
        "config": dataclasses.asdict(config),
        "world_version": WORLD_VERSION,
        "torch": torch.__version__,
    }
    backbone.save_openai_state_dict(model, path)
    facts["file_sha256"] = backbone.file_sha256(path)  # the file this cache promises (backbone.weights_identity)
    from clipcore.atomic import atomic_write_text

    atomic_write_text(path + ".json", json.dumps(facts, indent=2) + "\n")
    log.warning(
        "Pre-trained the tiny CLIP in %.0f s (loss %.3f -> %.3f); weights sha256 %s; cached at %s",
        facts["seconds"],
        facts["loss_first"],
        facts["loss_last"],
        facts["weights_sha256"],
        path,
    )
    return facts


def pretrain_in_subprocess(config: PretrainConfig, path: str, extra_env: dict | None = None) -> None:
    """Run ``python -m miniworld pretrain`` for ``config`` in a fresh process under ``PINNED_ENV``."""
    env = {**os.environ, **PINNED_ENV, **(extra_env or {})}
    config_json = json.dumps(dataclasses.asdict(config))
    cmd = [sys.executable, "-m", "miniworld", "pretrain", "--out", path, "--config", config_json]
    subprocess.run(cmd, env=env, check=True)


def config_from_json(blob: dict) -> PretrainConfig:
    blob = dict(blob)
    blob["model"] = backbone.CLIPShape(**blob["model"])
    return PretrainConfig(**blob)


def ensure_pretrained(config: PretrainConfig = DEFAULT_PRETRAIN, force: bool = False) -> str:
    """Path of the cached weights for ``config``, training them first (once, under a file lock)."""
    from filelock import FileLock

    path = cache_path(config)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileLock(path + ".lock"):
        if os.path.isfile(path) and not force:
            return path
        log.warning(
            "Pre-training the miniature world's tiny CLIP (%d steps of %d pairs): once, about %s on a "
            "CPU; the weights are cached at %s",
            config.steps,
            config.batch_size,
            "5 minutes",
            path,
        )
        pretrain_in_subprocess(config, path)
        return path


def prepare_pretrained() -> str:
    """The backbone's preparation step (run once by a sweep's driver): pre-train unless cached."""
    return ensure_pretrained()


def load_pretrained_tiny(precision: str = "fp32", config: PretrainConfig = DEFAULT_PRETRAIN):
    """The pre-trained tiny CLIP (eval mode, frozen): from the cache, trained first if missing."""
    return backbone.load_openai_file(ensure_pretrained(config), precision=precision)


def load_pretrained_tiny_for(precision: str) -> torch.nn.Module:
    return load_pretrained_tiny(precision=precision)
