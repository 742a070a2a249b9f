"""MaPLe: multi-modal prompt learning (Khattak et al., CVPR 2023; PROTOCOL-successors.md 3).

Coupled prompts in both towers, depth D (9 in the published base-to-new config):

    text    P_0 = ctx [n, D_t] (first n tokens of "a photo of a"; the other words stay fixed words)
            P_i = compound_prompts_text[i-1]              [n, D_t]   text blocks 1..D-1
    vision  V_0 = proj(ctx)                                [n, D_v]   appended before ln_pre
            V_i = compound_prompt_projections[i-1](P_i)    [n, D_v]   vision blocks 1..D-1

so every vision prompt is a (learned) linear function of a text prompt: gradients of the image side
reach the text prompts (the coupling). The projections are deep copies of one Linear, so all start
equal. Objective: cross-entropy of exp(logit_scale) * cos(f(x; V), t(P)) (maple.py:189-202).
Everything in the prompt learner trains (maple.py:231-238).

Precision (maple.py:103-117, clip/model.py:306, 323, 457): ``ctx`` comes in the model dtype and
``proj`` is converted to half in the published fp16 run, while ``compound_prompts_text`` and the
projections stay fp32; every prompt is cast to half where it enters a block. In fp16 / bf16 mode the
same layout (half = the model's low precision); in fp32 mode all fp32.

The image side depends on the learned prompts: ``features_cacheable`` is False (the shared feature
cache is neither read nor written). The text side does not depend on the image, so a test set's
classes are encoded once. Checkpoints hold the whole model as the authors' trainer writes it
(registered name ``MultiModalPromptLearner``; PROTOCOL-successors.md 5).
"""

from __future__ import annotations

from typing import Annotated

import torch

from bounds import Range
from clipcore import backbone
from methods.parts import prompt_text, whole_model_checkpoint
from methods.parts.base import CLIPMethod, ContextLength, load_learned_tensors
from methods.parts.coupled_prompts import MultiModalPromptLearner
from methods.parts.registry import register_method


@register_method("maple")
class MaPLe(CLIPMethod):
    label = "MaPLe"
    paper = "Khattak et al., CVPR"
    year = 2023
    source = "muzairkhattak/multimodal-prompt-learning@69bce21"
    color = "#9467bd"
    default_config = "maple/vit_b16_c2_ep5_batch4_2ctx"
    checkpoint_folder = "MultiModalPromptLearner"  # the authors' registered name (PROTOCOL-successors.md 5)
    features_cacheable = False  # the image encoder is prompted

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        n_ctx: ContextLength = 2,
        ctx_init: str = "a photo of a",
        prompt_depth: Annotated[int, Range(1)] | None = None,
    ):
        """n_ctx: learnable tokens per prompt (the first n_ctx words of ``ctx_init`` when n_ctx <= 4,
        else random); prompt_depth: D, the input prompts plus D - 1 deep blocks in each tower (at most
        the number of blocks of the deeper tower; None: the published 9, or all of a smaller CLIP's; a
        tower with fewer blocks uses the prompts it has blocks for, as the authors' per-tower counters do)."""
        super().__init__(clip_model, classnames)
        self.prompt_learner = MultiModalPromptLearner(clip_model, classnames, n_ctx, ctx_init, prompt_depth)

    @classmethod
    def check_options(cls, options: dict) -> None:
        prompt_text.check_context(cls.method_name, options["n_ctx"], options["ctx_init"], "n_ctx")

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.prompt_learner.encode_image(self.clip, images)

    def text_features(self) -> torch.Tensor:
        return self.prompt_learner.encode_text(self.clip)

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return backbone.cosine_logits(self.clip, image_features, self.text_features())

    def record_options(self) -> dict:
        return {"n_ctx": self.prompt_learner.n_ctx, "prompt_depth": self.prompt_learner.depth}

    # -- the authors' whole-model checkpoint -------------------------------------------------------

    def checkpoint_state_dict(self, full: bool = True) -> dict:
        learner = {f"prompt_learner.{k}": v for k, v in self.prompt_learner.state_dict().items()}
        frozen = whole_model_checkpoint.frozen_clip_state(self.clip) if full else {}
        return {k: v.detach().cpu() for k, v in {**learner, **frozen}.items()}

    def load_checkpoint_state_dict(self, state: dict, path: str = "<state dict>") -> None:
        if not any(k.startswith("prompt_learner.") for k in state):  # a bare prompt-learner state dict
            state = {f"prompt_learner.{k}": v for k, v in state.items()}
        learned = {f"prompt_learner.{k}": k for k in self.prompt_learner.state_dict()}
        mine = whole_model_checkpoint.split_whole_model_state(
            state, learned, whole_model_checkpoint.frozen_clip_state(self.clip), path, self.method_name
        )
        load_learned_tensors(self.prompt_learner, mine, path, self.method_name)
