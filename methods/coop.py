"""CoOp: Context Optimization (PROTOCOL.md 7; Zhou et al., IJCV 2022).

The class-i prompt is [SOS] v_1 ... v_M [CLASS_i] . [EOT] with learnable context vectors v (shared
by all classes, or one set per class with ``csc``); the class tokens stay the frozen word
embeddings:

    t_i = text_encoder([prefix_i | v | suffix_i])               prefix = SOS, suffix = name . EOT pad
    logits = exp(logit_scale) * normalise(f) @ normalise(t)^T

Only v gets gradients. ``PromptLearner`` is shared with CoCoOp, whose context is v + pi(x).
"""

from __future__ import annotations

import logging
from typing import Annotated

import torch
from torch import nn

from bounds import OneOf
from clipcore import backbone
from methods.parts import prompt_encoder, prompt_text
from methods.parts.base import CLIPMethod, ContextLength
from methods.parts.registry import register_method

log = logging.getLogger(__name__)

POSITIONS = ("end", "middle", "front")


class PromptLearner(nn.Module):
    """Learnable context plus the frozen token embeddings around it (PROTOCOL.md 7.1).

    State-dict keys as in the authors' checkpoints: ``ctx`` (parameter), ``token_prefix`` and
    ``token_suffix`` (buffers, saved but dropped on load since they depend on the class names).
    """

    def __init__(self, clip, classnames, n_ctx: int = 4, ctx_init: str = "", csc: bool = False, position: str = "end"):
        super().__init__()
        if position not in POSITIONS:
            raise ValueError(f"class_token_position must be one of {POSITIONS}, got {position!r}.")
        dtype = backbone.model_dtype(clip)
        width = backbone.text_width(clip)
        names = [name.replace("_", " ") for name in classnames]

        if ctx_init:
            init = ctx_init.replace("_", " ")
            words = len(init.split(" "))
            if n_ctx != words:
                log.info("ctx_init %r has %d words: n_ctx set to %d (was %d)", init, words, words, n_ctx)
            n_ctx = words
            # The context starts as the init words' own embeddings, at positions 1..n_ctx after SOS.
            ctx = backbone.token_embeddings(clip, backbone.tokenize(init).to(clip.token_embedding.weight.device))[
                0, 1 : 1 + n_ctx
            ]
            prefix_text = init
            csc = False  # word initialisation always gives a shared context (PROTOCOL.md 7.1)
        else:
            if n_ctx < 1:
                raise ValueError("n_ctx must be at least 1 when ctx_init is empty.")
            shape = (len(names), n_ctx, width) if csc else (n_ctx, width)
            ctx = torch.empty(shape, dtype=dtype, device=clip.token_embedding.weight.device)
            nn.init.normal_(ctx, std=0.02)
            prefix_text = " ".join(["X"] * n_ctx)
        self.ctx = nn.Parameter(ctx.clone().to(dtype))
        self.n_ctx, self.csc, self.position = n_ctx, csc, position

        device = clip.token_embedding.weight.device
        token_ids = prompt_text.prompt_token_ids(prefix_text, names, n_ctx).to(device)
        embedding = backbone.token_embeddings(clip, token_ids)
        self.register_buffer("token_prefix", embedding[:, :1].clone())  # SOS
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :].clone())  # name . EOT padding
        self.register_buffer("tokenized_prompts", token_ids, persistent=False)
        self.name_lens = [len(backbone.tokenizer().encode(name)) for name in names]

    @property
    def num_classes(self) -> int:
        return self.token_prefix.shape[0]

    def prompt_length(self) -> int:
        """Positions up to the last EOT: all the (causal) text encoder needs to see."""
        return int(backbone.eot_positions(self.tokenized_prompts).max().item()) + 1

    def assemble(self, ctx: torch.Tensor, length: int | None = None) -> torch.Tensor:
        """Prompt embeddings [..., K, length, D] for context ``ctx``.

        ctx: [M, D] shared by all classes, or [K, M, D] class-specific. ``length`` cuts the
        sequences (they are built already cut, which saves memory as well as time).
        """
        length = length or self.tokenized_prompts.shape[1]
        prefix, suffix = self.token_prefix, self.token_suffix[:, : length - 1 - self.n_ctx]
        if ctx.dim() == 2:
            ctx = ctx.unsqueeze(0).expand(self.num_classes, -1, -1)
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        # middle / front: the class-name tokens move in front of (part of) the context. The EOT stays
        # where it was in the tokenised template, since the number of tokens does not change.
        prompts = []
        half = self.n_ctx // 2
        for i, name_len in enumerate(self.name_lens):
            name, rest = suffix[i : i + 1, :name_len], suffix[i : i + 1, name_len:]
            c = ctx[i : i + 1]
            if self.position == "middle":
                parts = [prefix[i : i + 1], c[:, :half], name, c[:, half:], rest]
            else:
                parts = [prefix[i : i + 1], name, c, rest]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)


@register_method("coop")
class CoOp(CLIPMethod):
    label = "CoOp"
    paper = "Zhou et al., IJCV"
    year = 2022
    source = "KaiyangZhou/CoOp, snapshot of 2022-10-08"
    color = "#1f77b4"
    default_config = "coop/vit_b16_ctxv1"
    ctx_init_sets_n_ctx = True

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        n_ctx: ContextLength = 4,
        ctx_init: str = "a photo of a",
        csc: bool = False,
        class_token_position: Annotated[str, OneOf(POSITIONS)] = "end",
        truncate: bool = True,
    ):
        """n_ctx: context length (overridden by the number of words in ``ctx_init``);
        ctx_init: init words, or "" for N(0, 0.02^2) random context; csc: class-specific context;
        class_token_position: end | middle | front; truncate: stop the text encoder at the last
        EOT (same result, less work; False runs all 77 positions as the published code)."""
        super().__init__(clip_model, classnames)
        self.prompt_learner = PromptLearner(clip_model, classnames, n_ctx, ctx_init, csc, class_token_position)
        self.truncate = truncate

    def text_features(self) -> torch.Tensor:
        pl = self.prompt_learner
        if self.truncate and pl.position == "end" and not pl.csc:
            # The shared-context prompt is CoCoOp's with one "image" and no Meta-Net shift: reuse its
            # exact fast encoder (per-class EOT cut, length buckets, SOS + context encoded once).
            features, _ = prompt_encoder.encode_instance_prompts(
                self.clip, pl.ctx.unsqueeze(0), pl.token_prefix, pl.token_suffix, pl.tokenized_prompts
            )
            return features[0]
        length = pl.prompt_length() if self.truncate else None
        prompts = pl.assemble(pl.ctx, length)
        return backbone.encode_text_embeddings(self.clip, prompts, pl.tokenized_prompts, truncate=self.truncate)

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return backbone.cosine_logits(self.clip, image_features, self.text_features())

    def record_options(self) -> dict:
        return {"n_ctx": self.prompt_learner.n_ctx}
