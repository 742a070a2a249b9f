"""What every method shares: the frozen CLIP, image features, and the authors' checkpoint format.

A method sees an image only through CLIP's frozen image encoder, so its forward is split in two:
``encode_image`` (frozen, cacheable: the runner computes test features once and reuses them) and
``logits_from_features`` (the method's own part). ``forward(images)`` chains them.

Learnable state lives in ``self.prompt_learner``, whose state-dict keys are those of the authors'
checkpoints (``ctx``, ``token_prefix``, ``token_suffix``, ``meta_net.linear1.weight``, ...;
PROTOCOL.md 15).
"""

from __future__ import annotations

import io
import os
import pickle

import torch
from torch import nn

from harness import backbone
from harness.atomic import atomic_torch_save


class CLIPMethod(nn.Module):
    method_name = "?"
    trainable = True  # zero-shot CLIP sets False: the runner skips training
    # False: the class text features do not depend on the image, so a whole test set's features can
    # go through ``logits_from_features`` in one call (one text-encoder pass). CoCoOp sets True.
    text_depends_on_image = False

    def __init__(self, clip_model, classnames: list[str]):
        super().__init__()
        self.clip = clip_model
        self.classnames = list(classnames)
        self.prompt_learner = nn.Module()

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    @property
    def dtype(self) -> torch.dtype:
        return backbone.model_dtype(self.clip)

    def train(self, mode: bool = True):
        # PROTOCOL.md 8.3: only the prompt learner switches mode; the CLIP towers stay in eval.
        super().train(mode)
        self.clip.eval()
        return self

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return backbone.encode_image(self.clip, images)

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.encode_image(images))

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the prompt learner's parameters, nothing of CLIP."""
        return [p for p in self.prompt_learner.parameters() if p.requires_grad]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    # -- checkpoints in the authors' format -----------------------------------------------------

    def save_prompt_checkpoint(self, path: str, epoch: int, optimizer=None, scheduler=None, **extra) -> None:
        """Write ``{"state_dict", "epoch", "optimizer", "scheduler", "val_result", ...}`` atomically.

        The file is what the authors' framework writes as ``prompt_learner/model.pth.tar-<epoch>``,
        so their tools load ours; ``extra`` keys (RNG states, ...) are ignored by theirs.
        """
        state = {
            "state_dict": {k: v.detach().cpu() for k, v in self.prompt_learner.state_dict().items()},
            "epoch": int(epoch),
            "optimizer": optimizer,
            "scheduler": scheduler,
            "val_result": None,
            **extra,
        }
        atomic_torch_save(state, path)

    def load_prompt_checkpoint(self, path: str) -> dict:
        """Load ctx (and Meta-Net) from an authors'-format checkpoint; return the whole file.

        PROTOCOL.md 15.3: ``token_prefix`` / ``token_suffix`` are dropped (they were built from the
        training class names and are rebuilt from ours), the rest is copied in with dtype
        conversion. Shapes must agree: a class-specific context cannot move to another class set.
        """
        checkpoint = load_checkpoint_file(path)
        state = checkpoint["state_dict"] if isinstance(checkpoint, dict) and "state_dict" in checkpoint else checkpoint
        state = {k.removeprefix("module."): v for k, v in state.items() if k not in ("token_prefix", "token_suffix")}
        own = self.prompt_learner.state_dict()
        for key, value in state.items():
            if key in own and own[key].shape != value.shape:
                raise ValueError(
                    f"{path}: {key} has shape {tuple(value.shape)} but this {self.method_name} model expects "
                    f"{tuple(own[key].shape)}. Build the method with the options the checkpoint was trained with "
                    "(n_ctx, csc, ...); a class-specific context only loads for the same classes."
                )
        learnable = {k for k, _ in self.prompt_learner.named_parameters()}
        missing = sorted(learnable - set(state))
        if missing:
            raise ValueError(f"{path} lacks {missing}: it is not a {self.method_name} prompt checkpoint.")
        self.prompt_learner.load_state_dict(state, strict=False)
        return checkpoint


class _Missing:
    """Stands in for classes of frameworks that are not installed (e.g. Dassl's warm-up scheduler)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Missing,), {"__module__": module})


class _tolerant_pickle:  # a pickle-module stand-in for torch.load
    Unpickler = _TolerantUnpickler
    load = staticmethod(lambda f, **kw: _TolerantUnpickler(f, **kw).load())
    __name__ = "pickle"


def load_checkpoint_file(path: str):
    """torch.load a (trusted) checkpoint, also one whose pickled scheduler comes from another framework."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError):
        with open(path, "rb") as f:
            data = io.BytesIO(f.read())
        return torch.load(data, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
