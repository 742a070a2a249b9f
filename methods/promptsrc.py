"""PromptSRC: self-regulating prompts (Khattak et al., ICCV 2023; PROTOCOL-successors.md 4).

Independent vision and language prompts (no coupling), deep in both towers:

    text    P_0 = ctx [n_t, D_t] from "a photo of a";   P_1..P_{Dt-1} [n_t, D_t] ~ N(0, 0.02^2)
    vision  V_0 [n_v, D_v] ~ N(0, 0.02^2), appended before ln_pre;   V_1..V_{Dv-1} [n_v, D_v]

A frozen zero-shot teacher regulates them (promptsrc.py:112-128, 189-209, 290-313):

    T0  = mean over the 60 templates of CLIP's *un-normalised* text features (computed once, fp32)
    v0  = the un-prompted image encoder's features of the batch (no gradient)
    zs  = exp(logit_scale) * norm(v0) @ norm(T0)^T
    loss = CE(logits, y)
         + (  KL(log_softmax(logits) || log_softmax(zs)) summed / (B * K)          (log_target, T = 1)
            + 25 * mean |norm(t) - norm(T0)|        over all K classes and dimensions
            + 10 * mean |norm(f) - norm(v0)| )

Gaussian prompt aggregation (GPA, promptsrc.py:263-270, 320-335): with w_e = N(e; mean, std) for
e = 1..E normalised to sum 1, after epoch e's last step and learning-rate update the weighted state
w_e * state_e is added to the running sum (``previous + weighted``, in each tensor's dtype); after the
last epoch the model is replaced by the sum, which is what the last checkpoint holds. The sum is kept
in ``training_state`` so a resumed run ends exactly as an uninterrupted one.

Documented deviation: the authors sum the *whole* state dict, frozen CLIP included. The frozen
tensors are the same every epoch and the weights sum to 1, so their sum is themselves up to rounding
(in fp16, ~1e-3 relative); here only the learned tensors are averaged and the frozen backbone stays
exact (a loader of the authors' files ignores those copies anyway, PROTOCOL-successors.md 5).

Precision (promptsrc.py:114-128, 202-205; clip/model.py:238, 249, 407): the text teacher is computed by a
separate fp32 CLIP; the teacher image encoder is the fp16 model; ``ctx`` is in the model dtype while
the VPT prompts are fp32 parameters cast to half where they enter. fp16 / bf16 mode follow that;
fp32 mode computes everything, teachers included, in fp32.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bounds import Range
from clipcore import backbone
from methods.parts import deep_prompts, prompt_text, teachers, whole_model_checkpoint
from methods.parts.base import CheckpointError, CLIPMethod, ContextLength, Templates, Weight, load_learned_tensors
from methods.parts.registry import register_method

# PromptSRC's teacher templates (trainers/imagenet_templates.py, IMAGENET_TEMPLATES), in order.
PROMPTSRC_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
)


def gpa_weights(epochs: int, mean: float, std: float) -> list[float]:
    """w_e = N(e; mean, std) for e = 1..epochs, normalised to sum 1 (float64, as numpy computes them)."""
    e = np.arange(1, epochs + 1, dtype=np.float64)
    gauss = (1 / (std * np.sqrt(2 * np.pi))) * np.exp(-0.5 * ((e - mean) / std) ** 2)
    return [float(w) for w in gauss / gauss.sum()]


class VLPromptLearner(nn.Module):
    """The learned tensors. ``ctx`` and the token buffers are named as in the authors' VLPromptLearner;
    the VPT tensors, which the authors keep inside their modified CLIP, live here (``AUTHOR_NAMES``
    maps them to the authors' checkpoint keys)."""

    def __init__(self, clip, classnames, n_ctx_text, n_ctx_vision, ctx_init, depth_text, depth_vision):
        super().__init__()
        device = clip.token_embedding.weight.device
        text_width, vision_width = backbone.text_width(clip), deep_prompts.vision_width(clip)
        ctx, prefix_text = prompt_text.context_init(clip, n_ctx_text, ctx_init)
        self.ctx = nn.Parameter(ctx)
        prompt_text.register_prompt_tokens(self, clip, classnames, prefix_text, n_ctx_text, "n_ctx_text")
        # fp32 like the authors' VPT parameters (never converted to half: clip/model.py:216-221, 376-379)
        self.deep_text = deep_prompts.normal_prompts(depth_text - 1, n_ctx_text, text_width, device)
        if depth_vision > 0:
            self.vision_ctx = deep_prompts.normal_prompts(1, n_ctx_vision, vision_width, device)[0]
        else:
            self.vision_ctx = None
        self.deep_vision = deep_prompts.normal_prompts(max(0, depth_vision - 1), n_ctx_vision, vision_width, device)
        self.n_ctx_text, self.n_ctx_vision = n_ctx_text, n_ctx_vision
        self.depth_text, self.depth_vision = depth_text, depth_vision

    def author_names(self) -> dict[str, str]:
        """The authors' checkpoint key -> this module's name, for every tensor of the learner."""
        names = {f"prompt_learner.{k}": k for k in ("ctx", "token_prefix", "token_suffix")}
        if self.vision_ctx is not None:
            names["image_encoder.VPT"] = "vision_ctx"
        for i in range(len(self.deep_vision)):
            names[f"image_encoder.transformer.resblocks.{i + 1}.VPT_shallow"] = f"deep_vision.{i}"
        for i in range(len(self.deep_text)):
            names[f"text_encoder.transformer.resblocks.{i + 1}.VPT_shallow"] = f"deep_text.{i}"
        return names


@register_method("promptsrc")
class PromptSRC(CLIPMethod):
    label = "PromptSRC"
    paper = "Khattak et al., ICCV"
    year = 2023
    source = "muzairkhattak/PromptSRC@bb95c77"
    color = "#8c564b"
    default_config = "promptsrc/vit_b16_c2_ep20_batch4_4+4ctx"
    frozen_image_teacher = True  # the image consistency term encodes each batch with the frozen tower
    checkpoint_folder = "VLPromptLearner"  # the authors' registered name (PROTOCOL-successors.md 5)
    features_cacheable = False  # the image encoder is prompted

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        n_ctx_text: ContextLength = 4,
        n_ctx_vision: Annotated[int, Range(1)] = 4,
        ctx_init: str = "a photo of a",
        prompt_depth_text: Annotated[int, Range(1)] | None = None,
        prompt_depth_vision: Annotated[int, Range(0)] | None = None,
        text_loss_weight: Weight = 25.0,
        image_loss_weight: Weight = 10.0,
        templates: Templates = PROMPTSRC_TEMPLATES,
        gpa_mean: float = 15.0,
        gpa_std: Annotated[float, Range(0, low_open=True)] = 1.0,
    ):
        """n_ctx_text / n_ctx_vision: prompt tokens per tower (text from the first words of ``ctx_init``
        when n_ctx_text <= 4); prompt_depth_text / _vision: input prompts plus depth - 1 deep blocks
        (at most the tower's blocks; None: the published 9, or all of a smaller tower's; vision 0 = no
        vision prompts); text_loss_weight /
        image_loss_weight: the L1 consistency weights; templates: the teacher's text ensemble (the
        authors' 60 by default); gpa_mean / gpa_std: the Gaussian over epochs 1..E for GPA."""
        super().__init__(clip_model, classnames)
        depth_text = deep_prompts.effective_depth(
            prompt_depth_text, len(deep_prompts.text_blocks(clip_model)), "prompt_depth_text", published=9
        )
        depth_vision = deep_prompts.effective_depth(
            prompt_depth_vision, len(deep_prompts.vision_blocks(clip_model)), "prompt_depth_vision", published=9
        )
        self.prompt_learner = VLPromptLearner(
            clip_model, classnames, n_ctx_text, n_ctx_vision, ctx_init, depth_text, depth_vision
        )
        self.text_loss_weight, self.image_loss_weight = float(text_loss_weight), float(image_loss_weight)
        self.templates = tuple(templates)
        self.gpa_mean, self.gpa_std = float(gpa_mean), float(gpa_std)
        self._teacher_text: torch.Tensor | None = None
        self._gpa: dict[str, torch.Tensor] | None = None

    @classmethod
    def check_options(cls, options: dict) -> None:
        prompt_text.check_context(cls.method_name, options["n_ctx_text"], options["ctx_init"], "n_ctx_text")

    @property
    def teacher_text(self) -> torch.Tensor:
        """The frozen teacher's text features [K, E], normalised: the mean over the templates of CLIP's
        un-normalised features, computed by an fp32 CLIP as in the authors' fp16 run (promptsrc.py:114).
        Computed at the first training step (evaluation never needs it), once per class set, and shared
        by every model built for the same CLIP, classes and templates."""
        if self._teacher_text is None:
            teacher = teachers.teacher_text_features(
                self.clip, self.classnames, self.templates, dtype=torch.float32, combine="mean"
            )
            self._teacher_text = F.normalize(teacher, dim=-1)
        return self._teacher_text

    # -- the forward ------------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        pl = self.prompt_learner
        return deep_prompts.encode_image(self.clip, images, pl.vision_ctx, list(pl.deep_vision))

    def text_features(self) -> torch.Tensor:
        pl = self.prompt_learner
        prompts = prompt_text.assemble(pl, pl.ctx)
        return deep_prompts.encode_text(self.clip, prompts, pl.tokenized_prompts, list(pl.deep_text))

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return backbone.cosine_logits(self.clip, image_features, self.text_features())

    # -- the objective ----------------------------------------------------------------------------

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, *, details: dict | None = None) -> torch.Tensor:
        """PROTOCOL-successors.md 4, in the authors' order of operations (promptsrc.py:189-209, 290-313)."""
        clip = self.clip
        scale = clip.logit_scale.exp()
        image = F.normalize(self.encode_image(images), dim=-1)
        text = F.normalize(self.text_features(), dim=-1)
        logits = scale * image @ text.t().to(image.dtype)
        ce = F.cross_entropy(logits, labels)
        teacher_text = self.teacher_text  # normalised, fp32
        with torch.no_grad():  # the frozen zero-shot model: un-prompted image encoder
            zs_image = F.normalize(backbone.encode_image(clip, images), dim=-1)
            zs_logits = scale * zs_image @ teacher_text.to(zs_image.dtype).t()  # authors: .half()
        text_term = F.l1_loss(text, teacher_text, reduction="mean") * self.text_loss_weight
        image_term = F.l1_loss(image, zs_image, reduction="mean") * self.image_loss_weight
        # temperature 1 (the authors' "/ 1" and "* (1 * 1)"), summed, then divided by B x K (not a batch mean)
        kl = F.kl_div(
            F.log_softmax(logits / 1, dim=1), F.log_softmax(zs_logits / 1, dim=1), reduction="sum", log_target=True
        )
        kl_term = kl * (1 * 1) / logits.numel()
        scl = kl_term + text_term + image_term
        loss = ce + scl
        if details is not None:
            details.update(
                logits=logits.detach(),
                ce=ce.detach(),
                kl=kl_term.detach(),
                text_l1=text_term.detach(),
                image_l1=image_term.detach(),
            )
        return loss

    # -- Gaussian prompt aggregation --------------------------------------------------------------

    def _learned(self) -> dict[str, nn.Parameter]:
        return {n: p for n, p in self.prompt_learner.named_parameters() if p.requires_grad}

    @torch.no_grad()
    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        weight = gpa_weights(epochs, self.gpa_mean, self.gpa_std)[epoch - 1]
        weighted = {name: p.detach().clone() * weight for name, p in self._learned().items()}
        if self._gpa is None:
            self._gpa = weighted
        else:  # the authors' state_dict_add: previous + weighted, key by key
            self._gpa = {name: self._gpa[name] + weighted[name] for name in weighted}
        if epoch == epochs:  # the model is replaced by the aggregate; the last checkpoint holds it
            for name, p in self._learned().items():
                p.copy_(self._gpa[name])

    def training_state(self) -> dict:
        if self._gpa is None:
            return {}
        return {"gpa_sum": {k: v.detach().cpu() for k, v in self._gpa.items()}}

    def load_training_state(self, state: dict) -> None:
        if not state:
            self._gpa = None
            return
        unknown = set(state) - {"gpa_sum"}
        if unknown:
            raise CheckpointError(f"promptsrc training state has unknown entries {sorted(unknown)}.")
        learned = self._learned()
        if set(state["gpa_sum"]) != set(learned):
            raise CheckpointError(
                f"The GPA sum in the checkpoint covers {sorted(state['gpa_sum'])}, this model learns {sorted(learned)}."
            )
        self._gpa = {k: v.to(device=learned[k].device, dtype=learned[k].dtype) for k, v in state["gpa_sum"].items()}

    def record_options(self) -> dict:
        pl = self.prompt_learner
        return {
            "n_ctx_text": pl.n_ctx_text,
            "n_ctx_vision": pl.n_ctx_vision,
            "prompt_depth_text": pl.depth_text,
            "prompt_depth_vision": pl.depth_vision,
        }

    # -- the authors' whole-model checkpoint -------------------------------------------------------

    def checkpoint_state_dict(self, full: bool = True) -> dict:
        own = self.prompt_learner.state_dict()
        learner = {author: own[mine] for author, mine in self.prompt_learner.author_names().items()}
        frozen = whole_model_checkpoint.frozen_clip_state(self.clip, zero_shot_image_encoder=True) if full else {}
        return {k: v.detach().cpu() for k, v in {**learner, **frozen}.items()}

    def load_checkpoint_state_dict(self, state: dict, path: str = "<state dict>") -> None:
        mine = whole_model_checkpoint.split_whole_model_state(
            state,
            self.prompt_learner.author_names(),
            whole_model_checkpoint.frozen_clip_state(self.clip, zero_shot_image_encoder=True),
            path,
            self.method_name,
        )
        load_learned_tensors(self.prompt_learner, mine, path, self.method_name)
