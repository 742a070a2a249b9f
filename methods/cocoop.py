"""CoCoOp: Conditional Context Optimization (paper section 3.2; PROTOCOL.md 8).

A lightweight Meta-Net h_theta turns each image into one token pi = h_theta(x) that shifts every
context vector, so each image gets its own prompts:

    f^   = f / |f|                                   the Meta-Net sees the L2-normalised feature
    pi   = linear2(relu(linear1(f^)))                vis_dim -> vis_dim // 16 -> ctx_dim
    v_m(x) = v_m + pi                                the same pi for all M context vectors
    t_i(x) = text_encoder([SOS, v_1(x) .. v_M(x), CLASS_i, ., EOT])
    logits[b, i] = exp(logit_scale) * <f^_b, t_i(x_b) / |t_i(x_b)|>

The published code encodes the K prompts of each image in a Python loop over images, with all 77
positions (``batched=False`` keeps that path as the reference baseline). The default path
(``methods.parts.prompt_encoder``) encodes the B x K prompts of a batch together and exactly: every
sequence cut after its EOT (classes grouped into length buckets), the image's SOS + context computed
once and its keys/values reused by all K class suffixes (causal attention), in chunks sized from a
memory budget, checkpointed when a training step would exceed it. Same numbers, any batch size.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bounds import Range
from clipcore import backbone
from methods.coop import PromptLearner
from methods.parts import prompt_encoder
from methods.parts.base import CLIPMethod, ContextLength
from methods.parts.registry import register_method


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
    label = "CoCoOp"
    paper = "Zhou et al., CVPR"
    year = 2022
    source = "KaiyangZhou/CoOp, snapshot of 2022-10-08"
    color = "#d62728"
    default_config = "cocoop/vit_b16_c4_ep10_batch1_ctxv1"
    ctx_init_sets_n_ctx = True
    text_depends_on_image = True  # every image has its own prompts

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        n_ctx: ContextLength = 4,
        ctx_init: str = "a photo of a",
        batched: bool = True,
        chunk_size: Annotated[int, Range(1)] | None = None,
        memory_budget_mb: Annotated[float, Range(0, low_open=True)] | None = None,
        prefix_cache: bool = True,
    ):
        """n_ctx / ctx_init: as CoOp (end position, shared context only); batched: encode all
        images' prompts together (False: the published per-image loop over all 77 positions);
        chunk_size: most prompt sequences per text-encoder call (None: as the memory budget allows);
        memory_budget_mb: text-encoder memory per forward(+backward), which sizes the chunks and
        turns on recomputation (checkpointing) of chunks in training when exceeded (None: 2048 on
        CPUs, half the free memory on CUDA); prefix_cache: encode each image's SOS + context once
        and reuse its keys/values for all classes (False: plain truncated sequences)."""
        super().__init__(clip_model, classnames)
        pl = PromptLearner(clip_model, classnames, n_ctx, ctx_init, csc=False, position="end")
        # Built after ctx, as the published code does, so a seed draws the same initial weights.
        pl.meta_net = meta_net(backbone.embed_dim(clip_model), backbone.text_width(clip_model)).to(
            device=pl.ctx.device, dtype=backbone.model_dtype(clip_model)
        )
        self.prompt_learner = pl
        self.batched = batched
        self.chunk_size = chunk_size
        self.memory_budget_mb = memory_budget_mb
        self.prefix_cache = prefix_cache
        self.last_plan: prompt_encoder.EncodePlan | None = None  # what the last batched forward did

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
        budget = None if self.memory_budget_mb is None else int(self.memory_budget_mb * prompt_encoder.MB)
        features, self.last_plan = prompt_encoder.encode_instance_prompts(
            self.clip,
            ctx,
            pl.token_prefix,
            pl.token_suffix,
            pl.tokenized_prompts,
            use_prefix_cache=self.prefix_cache,
            chunk_size=self.chunk_size,
            memory_budget=budget,
        )
        return features

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

    def record_options(self) -> dict:
        return {"n_ctx": self.prompt_learner.n_ctx}
