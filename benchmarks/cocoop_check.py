"""CoCoOp's fast text path against the published per-image path, on the same random features: the check
every benchmark runs before timing anything (and the tests run on the tiny CLIP).

The reference is CoCoOp with ``batched=False`` (one text-encoder pass per image over all 77
positions); the fast path is any other option set. Eval logits, training logits, loss and every
gradient must agree to ``tolerance`` (relative error), else ``FastPathMismatch``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

import methods
from clipcore import backbone

FP32_TOLERANCE = 1e-4  # relative error allowed between the two paths in fp32


class FastPathMismatch(AssertionError):
    """The fast path does not reproduce the published computation."""


def relative_error(got: torch.Tensor, reference: torch.Tensor) -> float:
    got, reference = got.detach().double(), reference.detach().double()
    return ((got - reference).norm() / reference.norm().clamp_min(1e-30)).item()


def compare(what: str, got, reference, tolerance: float) -> float:
    """``relative_error``, or ``FastPathMismatch`` when it is not below ``tolerance``."""
    error = relative_error(got, reference)
    if not error < tolerance:
        raise FastPathMismatch(
            f"\n{'!' * 80}\nMISMATCH: {what}: relative error {error:.3g} >= {tolerance:g} between the fast "
            f"path and the published per-image path.\n{'!' * 80}"
        )
    return error


def train_step(model, features: torch.Tensor, labels: torch.Tensor | None):
    """From image features: logits (eval, no_grad), or (logits, loss, gradients) of a training step."""
    if labels is None:
        model.eval()
        with torch.no_grad():
            return model.logits_from_features(features)
    model.train()
    for p in model.trainable_parameters():
        p.grad = None
    logits = model.logits_from_features(features)
    loss = F.cross_entropy(logits, labels)
    loss.backward()
    return logits.detach(), loss.detach(), [p.grad for p in model.trainable_parameters()]


def check_fast_path(
    clip, classnames: list[str], batch: int = 3, tolerance: float = FP32_TOLERANCE, seed: int = 0, **fast_options
) -> dict[str, float]:
    """Relative errors of the fast path against ``batched=False`` on random features: eval logits,
    training logits, loss and every gradient. Raises ``FastPathMismatch`` above ``tolerance``."""
    generator = torch.Generator().manual_seed(seed)
    device = clip.positional_embedding.device
    features = torch.randn(batch, backbone.embed_dim(clip), generator=generator).to(device)
    labels = torch.randint(len(classnames), (batch,), generator=generator).to(device)
    torch.manual_seed(seed)
    reference = methods.build_method("cocoop", clip, classnames, batched=False)
    fast = methods.build_method("cocoop", clip, classnames, **fast_options)
    fast.prompt_learner.load_state_dict(reference.prompt_learner.state_dict())
    with torch.no_grad():  # a Meta-Net that is not at its init, so pi(x) matters
        for a, b in zip(reference.trainable_parameters(), fast.trainable_parameters()):
            a.add_(0.05 * torch.randn(a.shape, generator=generator).to(a))
            b.copy_(a)
    errors = {
        "eval logits": compare(
            "eval logits", train_step(fast, features, None), train_step(reference, features, None), tolerance
        )
    }
    ref_logits, ref_loss, ref_grads = train_step(reference, features, labels)
    logits, loss, grads = train_step(fast, features, labels)
    errors["train logits"] = compare("train logits", logits, ref_logits, tolerance)
    errors["loss"] = compare("loss", loss, ref_loss, tolerance)
    names = [n for n, p in fast.prompt_learner.named_parameters() if p.requires_grad]
    for name, g, ref in zip(names, grads, ref_grads):
        errors[f"grad {name}"] = compare(f"gradient of {name}", g, ref, tolerance)
    return errors
