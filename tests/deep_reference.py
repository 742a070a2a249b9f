"""Deep-prompted CLIP forwards written out by hand from PROTOCOL-successors.md 3 ("Placement"), for the
tests to compare the methods against: a plain loop over open_clip's blocks over all 77 text positions,
with the prompt positions replaced explicitly (no hooks, no truncation, no buckets).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def text_features(clip, prompts: torch.Tensor, token_ids: torch.Tensor, deep=(), n_ctx: int | None = None):
    """[K, E]: x = prompts + pos; block i (1 <= i <= len(deep)) first sets x[:, 1:1+n] = deep[i-1]."""
    n = n_ctx if n_ctx is not None else (deep[0].shape[0] if deep else 0)
    x = prompts + clip.positional_embedding.to(prompts.dtype)
    mask = clip.attn_mask
    for i, block in enumerate(clip.transformer.resblocks):
        if 1 <= i <= len(deep):
            p = deep[i - 1].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, :1], p, x[:, 1 + n :]], dim=1)
        x = block(x, attn_mask=mask)
    x = clip.ln_final(x)
    x = x[torch.arange(x.shape[0]), token_ids.argmax(dim=-1)]
    return x @ clip.text_projection


def image_features(clip, images: torch.Tensor, first=None, deep=()):
    """[B, E]: patches + CLS + pos, then the prompt tokens appended (no positional embedding), ln_pre over
    all, block i (1 <= i <= len(deep)) first sets the last n tokens to deep[i-1], CLS token out."""
    visual = clip.visual
    x = visual.conv1(images.to(visual.conv1.weight.dtype))
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)
    x = torch.cat([cls, x], dim=1) + visual.positional_embedding.to(x.dtype)
    if first is not None:
        x = torch.cat([x, first.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)], dim=1)
    x = visual.ln_pre(x)
    for i, block in enumerate(visual.transformer.resblocks):
        if 1 <= i <= len(deep):
            p = deep[i - 1].to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
            x = torch.cat([x[:, : x.shape[1] - p.shape[1]], p], dim=1)
        x = block(x)
    x = visual.ln_post(x[:, 0])
    return x @ visual.proj


def cosine_logits(clip, image, text):
    image, text = F.normalize(image, dim=-1), F.normalize(text, dim=-1)
    return clip.logit_scale.exp() * image @ text.t().to(image.dtype)


def prompt_embeddings(clip, classnames, prefix_text: str, ctx: torch.Tensor):
    """Token embeddings of "<prefix_text> <name>." with positions 1..n replaced by ctx: [K, 77, D], ids."""
    from clipcore import backbone

    ids = backbone.tokenize([f"{prefix_text} {name.replace('_', ' ')}." for name in classnames])
    emb = clip.token_embedding(ids).to(ctx.dtype)
    n = ctx.shape[0]
    return torch.cat([emb[:, :1], ctx.unsqueeze(0).expand(len(classnames), -1, -1), emb[:, 1 + n :]], dim=1), ids


def perturb(model, scale=0.05, seed=1):
    """Move every learned tensor away from its initialisation (deterministically)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(scale * torch.randn(p.shape, generator=g).to(p))
