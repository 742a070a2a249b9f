"""Frozen zero-shot teachers: CLIP's text features of hand-made prompts, which KgCoOp and PromptSRC pull
their learned prompts towards; computed once per (CLIP, class set, templates, dtype, combine) and
shared by every model built for them."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from clipcore import backbone
from methods.parts import prompt_encoder

_TEACHERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _in_dtype(clip, dtype: torch.dtype):
    """``clip`` itself when its layout computes in ``dtype``, else a temporary copy converted to it (the
    authors build a separate fp32 CLIP for PromptSRC's text teacher even in an fp16 run)."""
    if dtype == backbone.model_dtype(clip):
        return clip
    if dtype != torch.float32:
        raise ValueError(f"A teacher computes in the model's dtype or in fp32, not {dtype}.")
    return copy.deepcopy(clip).float()


def _encode_texts(clip, texts: Sequence[str], chunk: int = 1000) -> torch.Tensor:
    """``backbone.encode_texts`` grouped by length: each bucket of similar lengths cut after its own last
    EOT (exact: the text tower is causal), in chunks of ``chunk`` sequences."""
    ids = backbone.tokenize(list(texts), clip.context_length).to(clip.positional_embedding.device)

    def encode_rows(rows):
        return backbone.encode_text_embeddings(clip, backbone.token_embeddings(clip, ids[rows]), ids[rows])

    return prompt_encoder.encode_in_length_buckets(ids, encode_rows, chunk)


@torch.no_grad()
def teacher_text_features(
    clip, classnames: Sequence[str], templates: Sequence[str], *, dtype: torch.dtype | None = None, combine: str
) -> torch.Tensor:
    """Frozen CLIP text features of the hand-made prompts, [K, E], computed once per CLIP object, class
    list, templates, dtype and ``combine`` and then shared by every model built for them.

    combine = "normalise": one template, features L2-normalised (KgCoOp, kgcoop.py:132-144);
    "mean": the un-normalised features averaged over the templates (PromptSRC's ``fixed_embeddings``,
    promptsrc.py:112-128; the caller normalises). Class names get "_" -> " " first. ``dtype`` is the
    dtype the teacher computes in (default: the model's).
    """
    if combine not in ("normalise", "mean"):
        raise ValueError(f"combine must be 'normalise' or 'mean', got {combine!r}.")
    dtype = dtype or backbone.model_dtype(clip)
    key = (tuple(classnames), tuple(templates), dtype, combine)
    cache = _TEACHERS.setdefault(clip, {})
    if key in cache:
        return cache[key]
    if combine == "normalise" and len(templates) != 1:
        raise ValueError("combine='normalise' is for a single template.")
    for template in templates:
        if "{}" not in template:
            raise ValueError(f"Template {template!r} has no '{{}}' for the class name.")
    model = _in_dtype(clip, dtype)
    names = [name.replace("_", " ") for name in classnames]
    # All templates' prompts together, in length buckets; [K, T, E] like the authors' torch.cat(..., dim=1).
    texts = [template.format(n) for template in templates for n in names]
    # Computed in ``dtype`` even when first asked for inside an amp step's autocast: the cache keeps them.
    with torch.autocast(clip.positional_embedding.device.type, enabled=False):
        features = _encode_texts(model, texts).reshape(len(templates), len(names), -1).transpose(0, 1)
    out = features.mean(dim=1) if combine == "mean" else F.normalize(features[:, 0], dim=-1)
    del model
    cache[key] = out
    return out


def knowledge_guidance(text_features: torch.Tensor, teacher_text: torch.Tensor) -> torch.Tensor:
    """KgCoOp's pull towards the frozen hand-made prompt (and TCP's, which reuses it): 1 - the mean over
    classes of the cosine between the learned and the teacher's text features, both normalised (the
    authors' forward normalises the teacher again, kgcoop.py:239, tcp.py:244; eps as torch's 1e-7 there)."""
    text = F.normalize(text_features, dim=-1)
    teacher = F.normalize(teacher_text, dim=-1)
    return 1.0 - torch.mean(F.cosine_similarity(text, teacher.to(text.dtype), dim=1, eps=1e-7))


def knowledge_guided_loss(model, images: torch.Tensor, labels: torch.Tensor, details: dict | None) -> torch.Tensor:
    """KgCoOp's objective, which TCP keeps: cross-entropy plus ``model.kg_weight`` x ``knowledge_guidance``
    of the model's text features (all classes, encoded once for both terms) against ``model.teacher_text``.
    ``details`` (the contract's ``training_loss``) receives the logits and both terms."""
    image_features = model.encode_image(images)
    text_features = model.text_features()
    logits = backbone.cosine_logits(model.clip, image_features, text_features)
    ce = F.cross_entropy(logits, labels)
    kg = model.kg_weight * knowledge_guidance(text_features, model.teacher_text)
    if details is not None:
        details.update(logits=logits.detach(), ce=ce.detach(), kg=kg.detach())
    return ce + kg
