"""What KgCoOp, MaPLe and PromptSRC share: deep prompts inside open_clip's own transformers, the
prompt text around a learnable span, the frozen zero-shot teachers, and the authors' whole-model
checkpoint layout (PROTOCOL-successors.md 2-5).

Deep prompts (PROTOCOL-successors.md 3, "Placement"; MaPLe and PromptSRC alike)
-------------------------------------------------------------------------------
With depth D, prompts P_0 (the input prompts) and P_1 .. P_{D-1} (one set per deep block):

    text tower     x_0 = [SOS, P_0, rest of the prompt] + positional embedding      positions 1..n
                   block i, 1 <= i < D:   x[1 : 1 + n] := P_i, then the block
    vision tower   x_0 = ln_pre([CLS, patches] + positional embedding || P_0)       appended last, so
                                                                                    no positional embedding,
                                                                                    but ln_pre applies
                   block i, 1 <= i < D:   x[-n:] := P_i, then the block

Block 0 never has prompts of its own (it sees P_0); blocks at or beyond D let whatever the previous
block made of the prompt positions pass through. The replacement happens at the *input* of each deep
block, i.e. the outputs of block i-1 at the prompt positions are discarded.

How: forward pre-hooks on open_clip's ``ResidualAttentionBlock``s (``clip.transformer.resblocks``,
``clip.visual.transformer.resblocks``) and on ``clip.visual.ln_pre``, registered only for the
duration of a prompted forward (``prompted``) and removed afterwards, so CLIP is neither forked nor
copied and the same object serves un-prompted (the teachers, other methods) outside the ``with``
block. Prompts are cast to the activations' dtype where they enter: that is the authors' ``.half()``
in an fp16 run (their prompt parameters may be fp32: MaPLe's deep text prompts and projections,
PromptSRC's VPT tensors), bf16 likewise, and nothing in fp32.

Text side speed: the text transformer is causal, so everything after a prompt's EOT can be dropped
exactly (deep prompts sit at positions 1..n, before every EOT). Classes are grouped into length
buckets (``prompt_encoder.plan_buckets``), each cut after its own longest EOT. CoCoOp's prefix
key/value cache is *not* used: deep prompts replace the context positions inside the blocks, which
that cache assumes fixed.
"""

from __future__ import annotations

import copy
import logging
import weakref
from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from harness import backbone
from methods import prompt_encoder
from methods.base import CheckpointError

log = logging.getLogger(__name__)


class DeepPromptError(ValueError):
    """A backbone or option that deep prompts cannot be put into."""


# ---------------------------------------------------------------------------------------------------
# The towers
# ---------------------------------------------------------------------------------------------------


def vision_width(clip) -> int:
    return clip.visual.conv1.weight.shape[0]


def text_blocks(clip) -> nn.ModuleList:
    return clip.transformer.resblocks


def vision_blocks(clip) -> nn.ModuleList:
    visual = clip.visual
    ok = (
        hasattr(visual, "conv1")
        and hasattr(visual, "ln_pre")
        and hasattr(getattr(visual, "transformer", None), "resblocks")
        and getattr(visual, "attn_pool", None) is None
        and getattr(visual, "pool_type", "tok") == "tok"
    )
    if not ok:
        raise DeepPromptError(
            "Vision prompts go into a ViT image encoder that pools its class token (open_clip's "
            f"VisionTransformer); this backbone's image encoder is a {type(visual).__name__}. Use a ViT backbone "
            "(ViT-B/16, ViT-B/32, ViT-L/14, tiny, ...)."
        )
    return visual.transformer.resblocks


def effective_depth(depth: int, layers: int, what: str) -> int:
    """``depth`` checked (>= 0) and clamped to the tower's ``layers`` (deeper prompts would have no block
    to enter: the authors' code would create them and never use them)."""
    if depth < 0:
        raise DeepPromptError(f"{what} must be at least 0, got {depth}.")
    if depth > layers:
        log.warning("%s %d is more than the %d blocks of this CLIP: using %d", what, depth, layers, layers)
        return layers
    return depth


def _batch_first(transformer) -> bool:
    return getattr(transformer, "batch_first", True)


# ---------------------------------------------------------------------------------------------------
# Injection
# ---------------------------------------------------------------------------------------------------


def _expand(prompt: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """[n, D] -> [N, n, D] in the activations' dtype (the authors' ``.half()`` in fp16)."""
    return prompt.to(like.dtype).unsqueeze(0).expand(like.shape[0], -1, -1)


def _replacing(prompt: torch.Tensor, where: str, batch_first: bool):
    """A pre-hook replacing the prompt positions of a block's input by ``prompt`` [n, D]:
    ``where`` = "text": positions 1..n (after SOS); "vision": the last n tokens."""
    n = prompt.shape[0]

    def hook(module, args):
        x = args[0] if batch_first else args[0].transpose(0, 1)
        p = _expand(prompt, x)
        if where == "text":
            x = torch.cat([x[:, :1], p, x[:, 1 + n :]], dim=1)
        else:
            x = torch.cat([x[:, : x.shape[1] - n], p], dim=1)
        return (x if batch_first else x.transpose(0, 1), *args[1:])

    return hook


def _appending(prompt: torch.Tensor):
    """A pre-hook on ``visual.ln_pre``: its input [B, 1 + patches, W] (positional embedding already
    added) gets the prompt tokens appended, and ln_pre normalises them with the rest."""

    def hook(module, args):
        x = args[0]
        return (torch.cat([x, _expand(prompt, x)], dim=1), *args[1:])

    return hook


@contextmanager
def prompted(
    clip,
    text: Sequence[torch.Tensor] = (),
    vision_input: torch.Tensor | None = None,
    vision: Sequence[torch.Tensor] = (),
):
    """Within the block, ``clip``'s forward passes carry deep prompts:

    text: P_1..P_k [n, text width] for text blocks 1..k (the input prompts P_0 are part of the prompt
    embeddings the caller builds); vision_input: P_0 [n, vision width] appended before ``ln_pre``;
    vision: P_1..P_k [n, vision width] for vision blocks 1..k. Hooks are removed on exit.
    """
    handles = []
    try:
        if text:
            blocks = text_blocks(clip)
            if len(text) >= len(blocks):
                raise DeepPromptError(f"{len(text)} deep text prompts but only blocks 1..{len(blocks) - 1} take them.")
            first = _batch_first(clip.transformer)
            for i, p in enumerate(text, start=1):
                handles.append(blocks[i].register_forward_pre_hook(_replacing(p, "text", first)))
        if vision_input is not None or vision:
            blocks = vision_blocks(clip)
            if vision and vision_input is None:
                raise DeepPromptError("Deep vision prompts need input vision prompts to replace.")
            if len(vision) >= len(blocks):
                raise DeepPromptError(
                    f"{len(vision)} deep vision prompts but only blocks 1..{len(blocks) - 1} take them."
                )
            handles.append(clip.visual.ln_pre.register_forward_pre_hook(_appending(vision_input)))
            first = _batch_first(clip.visual.transformer)
            for i, p in enumerate(vision, start=1):
                if p.shape[0] != vision_input.shape[0]:
                    raise DeepPromptError("Every vision prompt must have as many tokens as the input prompt.")
                handles.append(blocks[i].register_forward_pre_hook(_replacing(p, "vision", first)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def encode_text(
    clip, prompts: torch.Tensor, token_ids: torch.Tensor, deep: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """Unnormalised text features [K, E] of prompt embeddings [K, 77, D] whose positions 1..n hold the
    input prompts, with ``deep`` prompts in text blocks 1..len(deep); exact, each length bucket cut
    after its own last EOT."""
    eot = backbone.eot_positions(token_ids)
    overhead = prompt_encoder.default_overhead_tokens(prompts.device)
    buckets = [b.to(prompts.device) for b in prompt_encoder.plan_buckets(eot + 1, 1, overhead)]
    with prompted(clip, text=deep):
        parts = [backbone.encode_text_embeddings(clip, prompts[b], token_ids[b]) for b in buckets]
    # parts are in bucket order: row j of the concatenation is class order[j]
    return torch.cat(parts)[torch.argsort(torch.cat(buckets))]


def encode_image(
    clip, images: torch.Tensor, vision_input: torch.Tensor | None, deep: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """Unnormalised image features [B, E] with vision prompts (gradients flow to them)."""
    with prompted(clip, vision_input=vision_input, vision=deep):
        return clip.encode_image(images.to(backbone.model_dtype(clip)))


# ---------------------------------------------------------------------------------------------------
# The prompt text around a learnable span (MaPLe, PromptSRC: maple.py:84-131, promptsrc.py:88-133)
# ---------------------------------------------------------------------------------------------------


def context_init(clip, n_ctx: int, ctx_init: str) -> tuple[torch.Tensor, str]:
    """(initial context [n_ctx, D] in the model dtype, prompt prefix text).

    As MaPLe and PromptSRC do it: with init words and n_ctx <= 4, the context starts as the token
    embeddings of the first n_ctx words' tokens and the prompt text keeps *all* the words, so with
    n_ctx = 2 and "a photo of a" the prompt is "a photo of a {name}." with "a photo" learnable and
    "of a" fixed words. Otherwise N(0, 0.02^2) and "X X ... X" placeholders (one token each).
    """
    dtype = backbone.model_dtype(clip)
    device = clip.token_embedding.weight.device
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be at least 1, got {n_ctx}.")
    if ctx_init and n_ctx <= 4:
        init = ctx_init.replace("_", " ")
        ids = backbone.tokenize(init).to(device)
        words = int(backbone.eot_positions(ids)[0]) - 1
        if n_ctx > words:  # the authors' code would take the EOT and padding as context
            raise ValueError(f"n_ctx = {n_ctx} but ctx_init {init!r} has only {words} tokens.")
        return backbone.token_embeddings(clip, ids)[0, 1 : 1 + n_ctx].clone(), init
    ctx = torch.empty(n_ctx, backbone.text_width(clip), dtype=dtype, device=device)
    nn.init.normal_(ctx, std=0.02)
    return ctx, " ".join(["X"] * n_ctx)


def register_prompt_tokens(module: nn.Module, clip, classnames: Sequence[str], prefix_text: str, n_ctx: int) -> None:
    """Buffers of the prompts "<prefix_text> <name>." as in CoOp (PROTOCOL.md 7.1): ``token_prefix``
    (SOS) and ``token_suffix`` (positions 1 + n_ctx .. 76: fixed words, name, ".", EOT, padding), saved
    in checkpoints and dropped on load; ``tokenized_prompts`` (not saved) locates the EOTs."""
    device = clip.token_embedding.weight.device
    names = [name.replace("_", " ") for name in classnames]
    ids = backbone.tokenize([f"{prefix_text} {name}." for name in names]).to(device)
    embedding = backbone.token_embeddings(clip, ids)
    module.register_buffer("token_prefix", embedding[:, :1].clone())
    module.register_buffer("token_suffix", embedding[:, 1 + n_ctx :].clone())
    module.register_buffer("tokenized_prompts", ids, persistent=False)


def assemble(module: nn.Module, ctx: torch.Tensor) -> torch.Tensor:
    """[SOS | ctx | suffix] for every class: [K, 77, D]."""
    k = module.token_prefix.shape[0]
    return torch.cat([module.token_prefix, ctx.unsqueeze(0).expand(k, -1, -1), module.token_suffix], dim=1)


def normal_prompts(count: int, n_ctx: int, width: int, device) -> nn.ParameterList:
    """``count`` deep prompts [n_ctx, width], fp32 as the authors create them, N(0, 0.02^2)."""
    prompts = nn.ParameterList()
    for _ in range(count):
        p = torch.empty(n_ctx, width, device=device)
        nn.init.normal_(p, std=0.02)
        prompts.append(nn.Parameter(p))
    return prompts


# ---------------------------------------------------------------------------------------------------
# Frozen zero-shot teachers: text features computed once per (CLIP, class set, templates, dtype)
# ---------------------------------------------------------------------------------------------------

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
    device = clip.positional_embedding.device
    ids = backbone.tokenize(list(texts), clip.context_length).to(device)
    eot = backbone.eot_positions(ids)
    buckets = prompt_encoder.plan_buckets(eot + 1, 1, prompt_encoder.default_overhead_tokens(device))
    parts, order = [], []
    for bucket in buckets:
        for rows in torch.split(bucket.to(device), chunk):
            parts.append(backbone.encode_text_embeddings(clip, backbone.token_embeddings(clip, ids[rows]), ids[rows]))
            order.append(rows)
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


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


# ---------------------------------------------------------------------------------------------------
# The authors' whole-model checkpoints (MaPLe, PromptSRC; PROTOCOL-successors.md 5)
# ---------------------------------------------------------------------------------------------------

# What their CustomCLIP holds besides the prompt learner: the image encoder (clip.visual), their
# TextEncoder (transformer, positional_embedding, ln_final, text_projection; no token_embedding) and
# logit_scale. PromptSRC's prompt learner also holds the teacher's un-prompted image encoder.
FROZEN_PREFIXES = ("image_encoder.", "text_encoder.", "prompt_learner.ZS_image_encoder.")
FROZEN_KEYS = ("logit_scale",)


def frozen_clip_state(clip, zero_shot_image_encoder: bool = False) -> dict[str, torch.Tensor]:
    """The frozen CLIP tensors under the authors' CustomCLIP names (open_clip's names are OpenAI's)."""
    out = {f"image_encoder.{k}": v for k, v in clip.visual.state_dict().items()}
    out.update({f"text_encoder.transformer.{k}": v for k, v in clip.transformer.state_dict().items()})
    out["text_encoder.positional_embedding"] = clip.positional_embedding
    out.update({f"text_encoder.ln_final.{k}": v for k, v in clip.ln_final.state_dict().items()})
    out["text_encoder.text_projection"] = clip.text_projection
    out["logit_scale"] = clip.logit_scale
    if zero_shot_image_encoder:
        out.update({f"prompt_learner.ZS_image_encoder.{k}": v for k, v in clip.visual.state_dict().items()})
    return {k: v.detach() for k, v in out.items()}


def is_frozen_key(key: str) -> bool:
    return key in FROZEN_KEYS or key.startswith(FROZEN_PREFIXES)


def split_whole_model_state(
    state: dict, learned: dict[str, str], frozen_reference: dict[str, torch.Tensor], path: str, method: str
) -> dict[str, torch.Tensor]:
    """The learner's tensors from a whole-model state dict: ``learned`` maps the authors' key -> the
    learner's own name. The frozen CLIP copies are not loaded (the run's backbone is the one used) but
    their shapes are checked against it, so a checkpoint of another backbone is refused; their
    values may differ by rounding (PromptSRC's weight averaging runs over them in fp16)."""
    out, foreign = {}, []
    for key, value in state.items():
        if key in learned:
            out[learned[key]] = value
        elif key.rsplit(".", 1)[-1] in ("token_prefix", "token_suffix"):
            continue  # built from the training class names; rebuilt from ours
        elif "VPT" in key or (key.startswith("prompt_learner.") and not is_frozen_key(key)):
            foreign.append(key)  # a learned tensor this model does not have (another depth or n_ctx)
        elif is_frozen_key(key):
            mine = frozen_reference.get(key)
            if mine is not None and tuple(mine.shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{path}: the frozen CLIP tensor {key} has shape {tuple(value.shape)}, this backbone's has "
                    f"{tuple(mine.shape)}: the checkpoint was trained on another backbone."
                )
    if foreign:
        raise CheckpointError(
            f"{path} holds learned tensors this {method} model does not have: {sorted(foreign)[:6]}. Build the "
            "method with the options the checkpoint was trained with (prompt depth, n_ctx, ...)."
        )
    return out
