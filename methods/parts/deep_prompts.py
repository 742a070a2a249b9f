"""Deep prompts inside open_clip's own transformers (PROTOCOL-successors.md 3, "Placement"; MaPLe and
PromptSRC alike).

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
buckets (``prompt_encoder.encode_in_length_buckets``), each cut after its own longest EOT. CoCoOp's
prefix key/value cache is *not* used: deep prompts replace the context positions inside the blocks,
which that cache assumes fixed.

What else MaPLe and PromptSRC share has its own module: the prompt text around the learnable span
(``prompt_text``), the frozen zero-shot teachers (``teachers``, KgCoOp's too) and the authors'
whole-model checkpoint layout (``whole_model_checkpoint``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextlib import contextmanager

import torch
from torch import nn

from bounds import OutOfBounds
from clipcore import backbone
from methods.parts import prompt_encoder

log = logging.getLogger(__name__)


class DeepPromptError(OutOfBounds):
    """A backbone or option that deep prompts cannot be put into (known once the backbone is loaded)."""


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


def effective_depth(depth: int | None, layers: int, what: str, published: int) -> int:
    """``depth`` checked against the tower's ``layers``: a deeper one is an error (its prompts would have
    no block to enter, and the run's options would name a depth it did not use). None: the ``published``
    depth, or every block of a tower with fewer (the tests' and the demo's CLIP)."""
    if depth is None:
        return min(published, layers)
    if depth < 0:
        raise DeepPromptError(f"{what} must be at least 0, got {depth}.")
    if depth > layers:
        raise DeepPromptError(
            f"{what} {depth} is more than the {layers} blocks of this CLIP: give {what} <= {layers}, or null "
            f"(the published {published}, or every block of a smaller CLIP)."
        )
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
    with prompted(clip, text=deep):
        return prompt_encoder.encode_in_length_buckets(
            token_ids, lambda rows: backbone.encode_text_embeddings(clip, prompts[rows], token_ids[rows])
        )


def encode_image(
    clip, images: torch.Tensor, vision_input: torch.Tensor | None, deep: Sequence[torch.Tensor] = ()
) -> torch.Tensor:
    """Unnormalised image features [B, E] with vision prompts (gradients flow to them)."""
    with prompted(clip, vision_input=vision_input, vision=deep):
        return clip.encode_image(images.to(backbone.model_dtype(clip)))


def normal_prompts(count: int, n_ctx: int, width: int, device) -> nn.ParameterList:
    """``count`` deep prompts [n_ctx, width], fp32 as the authors create them, N(0, 0.02^2)."""
    prompts = nn.ParameterList()
    for _ in range(count):
        p = torch.empty(n_ctx, width, device=device)
        nn.init.normal_(p, std=0.02)
        prompts.append(nn.Parameter(p))
    return prompts
