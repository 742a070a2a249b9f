"""MaPLe's coupled prompts (PROTOCOL-successors.md 3), the learner MaPLe and CoPrompt share.

Text prompts P_0 = ctx and P_1..P_{D-1}; vision prompts V_0 = proj(ctx) and V_i = projection_i(P_i), so every
vision prompt is a learned linear function of a text prompt (``methods/maple.py`` has the equations and the
precision rules). It lives here, beside the other parts, because two methods are built from it: a method
module importing another method's module would register that method first and reorder the report's columns.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from clipcore import backbone
from methods.parts import deep_prompts, prompt_text


class MultiModalPromptLearner(nn.Module):
    """Parameter and buffer names as in the authors' ``MultiModalPromptLearner`` (maple.py:69-170)."""

    def __init__(self, clip, classnames, n_ctx: int, ctx_init: str, prompt_depth: int | None):
        """prompt_depth: the option of both methods (None: the published 9, or all of a smaller CLIP's
        blocks; one depth for both towers, at most the deeper tower's block count)."""
        super().__init__()
        layers = max(len(deep_prompts.text_blocks(clip)), len(deep_prompts.vision_blocks(clip)))
        depth = deep_prompts.effective_depth(prompt_depth, layers, "prompt_depth", published=9)
        dtype = backbone.model_dtype(clip)
        device = clip.token_embedding.weight.device
        text_width, vision_width = backbone.text_width(clip), deep_prompts.vision_width(clip)
        ctx, prefix_text = prompt_text.context_init(clip, n_ctx, ctx_init)
        # Created in the authors' order (ctx, proj, deep text prompts, one projection then its copies),
        # so the random draws happen in the same sequence.
        self.proj = nn.Linear(text_width, vision_width).to(device=device, dtype=dtype)  # authors: .half()
        self.ctx = nn.Parameter(ctx)
        self.compound_prompts_text = deep_prompts.normal_prompts(depth - 1, n_ctx, text_width, device)
        single = nn.Linear(text_width, vision_width).to(device)
        self.compound_prompt_projections = nn.ModuleList([copy.deepcopy(single) for _ in range(depth - 1)])
        prompt_text.register_prompt_tokens(self, clip, classnames, prefix_text, n_ctx)
        self.n_ctx, self.depth = n_ctx, depth

    def text_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(prompt embeddings [K, 77, D_t], deep text prompts P_1..P_{D-1})."""
        return prompt_text.assemble(self, self.ctx), list(self.compound_prompts_text)

    def vision_prompts(self) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(V_0 = proj(ctx), V_i = projection_i(P_i)): the coupling of maple.py:159-176."""
        deep = [layer(p) for layer, p in zip(self.compound_prompt_projections, self.compound_prompts_text)]
        return self.proj(self.ctx), deep

    def encode_image(self, clip, images: torch.Tensor) -> torch.Tensor:
        """Image features through the prompted vision tower (a tower with fewer blocks than the depth uses
        the first deep prompts)."""
        first, deep = self.vision_prompts()
        return deep_prompts.encode_image(clip, images, first, deep[: len(deep_prompts.vision_blocks(clip)) - 1])

    def encode_text(self, clip) -> torch.Tensor:
        """The classes' text features through the prompted text tower."""
        prompts, deep = self.text_prompts()
        deep = deep[: len(deep_prompts.text_blocks(clip)) - 1]
        return deep_prompts.encode_text(clip, prompts, self.tokenized_prompts, deep)
