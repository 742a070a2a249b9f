"""CoCoOp: Conditional Context Optimization (paper section 3.2; PROTOCOL.md 8).

A lightweight Meta-Net h_theta turns each image into one token pi = h_theta(x) that shifts every
context vector, so each image gets its own prompts:

    f^   = f / |f|                                   the Meta-Net sees the L2-normalised feature
    pi   = linear2(relu(linear1(f^)))                vis_dim -> vis_dim // 16 -> ctx_dim
    v_m(x) = v_m + pi                                the same pi for all M context vectors
    t_i(x) = text_encoder([SOS, v_1(x) .. v_M(x), CLASS_i, ., EOT])
    logits[b, i] = exp(logit_scale) * <f^_b, t_i(x_b) / |t_i(x_b)|>

The published code encodes the K prompts of each image in a Python loop over images, with all 77
positions (``batched=False`` keeps that path as the reference). The default path encodes the
B x K prompts of a batch together, cut at the last EOT, in chunks of at most ``chunk_size``
sequences: same numbers, any batch size.
"""
from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

from harness import backbone
from methods.base import CLIPMethod
from methods.coop import PromptLearner
from methods.registry import register_method


def meta_net(vis_dim: int, ctx_dim: int) -> nn.Sequential:
    # Linear-ReLU-Linear bottleneck, hidden = vis_dim // 16; names as in the authors' checkpoints.
    hidden = max(1, vis_dim // 16)
    return nn.Sequential(
        OrderedDict(
            linear1=nn.Linear(vis_dim, hidden),
            relu=nn.ReLU(inplace=True),
            linear2=nn.Linear(hidden, ctx_dim),
        )
    )


@register_method("cocoop")
class CoCoOp(CLIPMethod):
    def __init__(
        self,
        clip_model,
        classnames,
        *,
        n_ctx: int = 4,
        ctx_init: str = "a photo of a",
        batched: bool = True,
        chunk_size: int | None = None,
    ):
        """n_ctx / ctx_init: as CoOp (end position, shared context only); batched: encode all
        images' prompts together (False: the published per-image loop over all 77 positions);
        chunk_size: most prompt sequences per text-encoder call (None: all at once)."""
        super().__init__(clip_model, classnames)
        pl = PromptLearner(clip_model, classnames, n_ctx, ctx_init, csc=False, position="end")
        # Built after ctx, as the published code does, so a seed draws the same initial weights.
        pl.meta_net = meta_net(backbone.embed_dim(clip_model), backbone.text_width(clip_model)).to(
            device=pl.ctx.device, dtype=backbone.model_dtype(clip_model)
        )
        self.prompt_learner = pl
        self.batched = batched
        if chunk_size is not None and chunk_size < 1:
            raise ValueError("chunk_size must be a positive number of sequences or None.")
        self.chunk_size = chunk_size

    def instance_context(self, image_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(f^ [B, E], ctx(x) [B, M, D]): normalised features and per-image context v + pi(x)."""
        pl = self.prompt_learner
        normed = F.normalize(image_features, dim=-1)
        bias = pl.meta_net(normed.to(pl.ctx.dtype))  # [B, D]
        return normed, pl.ctx.unsqueeze(0) + bias.unsqueeze(1)

    def text_features(self, ctx: torch.Tensor) -> torch.Tensor:
        """Unnormalised text features [B, K, E] of every image's K prompts."""
        if not self.batched:
            return self._text_features_per_image(ctx)
        pl = self.prompt_learner
        batch, n_ctx, width = ctx.shape
        k = pl.num_classes
        length = pl.prompt_length()
        prefix = pl.token_prefix.unsqueeze(0).expand(batch, -1, -1, -1)
        suffix = pl.token_suffix[:, : length - 1 - n_ctx].unsqueeze(0).expand(batch, -1, -1, -1)
        context = ctx.unsqueeze(1).expand(-1, k, -1, -1)
        prompts = torch.cat([prefix, context, suffix], dim=2).reshape(batch * k, length, width)
        token_ids = pl.tokenized_prompts.repeat(batch, 1)
        chunk = self.chunk_size or prompts.shape[0]
        features = [
            backbone.encode_text_embeddings(self.clip, prompts[i : i + chunk], token_ids[i : i + chunk])
            for i in range(0, prompts.shape[0], chunk)
        ]
        return torch.cat(features).reshape(batch, k, -1)

    def _text_features_per_image(self, ctx: torch.Tensor) -> torch.Tensor:
        # The published computation: one text-encoder pass per image, all 77 positions.
        pl = self.prompt_learner
        return torch.stack(
            [
                backbone.encode_text_embeddings(self.clip, pl.assemble(ctx_b), pl.tokenized_prompts, truncate=False)
                for ctx_b in ctx
            ]
        )

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        normed, ctx = self.instance_context(image_features)
        text = F.normalize(self.text_features(ctx), dim=-1)
        return self.clip.logit_scale.exp() * torch.einsum("be,bke->bk", normed, text.to(normed.dtype))
