"""TCP: textual-based class-aware prompt tuning (Yao et al., CVPR 2024; PROTOCOL-successors-2.md 3).

A CoOp context plus class-aware tokens made from the frozen hand-made prompt's text features, injected
deep in the text tower, and KgCoOp's pull towards that prompt:

    t0_c   = normalise(CLIP("<teacher template>".format(name_c)))          frozen, computed once
    T_c    = meta_net(t0_c).reshape(n, D)         Linear(E, E/4) -> QuickGELU -> Linear(E/4, n * D)
    x_0    = [SOS, ctx, rest of "<prompt template>"] + positional embedding     ctx at positions 1..n_ctx
    block L input, positions 1..n:  x := w * T_c + (1 - w) * x            L = 8 (0-based), w = 1.0, n = 4
    t_c    = text tower output at EOT
    logits = exp(logit_scale) * normalise(f) @ normalise(t)^T
    loss   = CE(logits, y) + 8.0 * (1 - mean_c cos(normalise(t_c), t0_c))        over all training classes

(trainers/tcp.py:156-208, 240-257; trainers/clip_text/model.py:262-287). The class-aware tokens of the
classes evaluated come from their own names' teacher features, so new classes get their own tokens.
Trains: ``ctx`` and the meta-net (``prompt_learner.meta_net.linear{1,2}.{weight,bias}``); published
optimiser Adam with eps 1e-3 (run keys ``optimizer: adam``, ``adam_eps: 1e-3``), 50 epochs, batch 32.

The injection is a forward pre-hook on open_clip's own text block L (no CLIP copy), present only inside
``class_tokens_injected``. ``TRAINER.COOP.W`` of the authors' script has no effect there; the loss weight,
the layer and its weight are literals in their code and options here.

Precision: the published run computes the teacher with a second fp16 CLIP and halves the meta-net in every
mode (tcp.py:156-175); here both are in the model's dtype (fp16 in fp16 mode, fp32 in fp32 mode), as
KgCoOp's teacher. The published amp branch is broken (a training forward without labels); here amp runs the
objective under autocast. The image side is CLIP's frozen tower, so test features come from the shared cache.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from contextlib import contextmanager
from typing import Annotated

import torch
from torch import nn

from bounds import OutOfBounds, Range
from clipcore import backbone
from methods.parts import deep_prompts, prompt_text, teachers
from methods.parts.base import CLIPMethod, ContextLength, Fraction, Template, Weight
from methods.parts.registry import register_method

log = logging.getLogger(__name__)

PUBLISHED_INJECTION_LAYER = 8  # of ViT-B/16's 12 text blocks

# tcp.py:60-76 CUSTOM_TEMPLATES (the learnable sentence: positions 1..n_ctx become the context) and
# tcp.py:42-58 CUSTOM_TEMPLATES_ori (the teacher), keyed by the harness's dataset keys.
PROMPT_TEMPLATES = {
    "oxford_pets": "X X X X {}, a type of pet.",
    "oxford_flowers": "X X X X {}, a type of flower.",
    "fgvc_aircraft": "X X X X {}, a type of aircraft.",
    "dtd": "X X X X {} texture.",
    "eurosat": "X X X X {}.",
    "stanford_cars": "X X X X {}, a type of car",  # no final period, as published
    "food101": "X X X X {}, a type of food.",
    "sun397": "X X X X {}.",
    "caltech101": "X X X X {}.",
    "ucf101": "a photo of a person doing {}.",  # "a photo of a" becomes the context, "person doing" stays
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}
TEACHER_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of an aircraft {}.",
    "dtd": "a photo of a {}, a type of texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of a {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}
# For datasets the authors did not name (the project's choice): the form most of theirs take.
DEFAULT_PROMPT_TEMPLATE = "X X X X {}."
DEFAULT_TEACHER_TEMPLATE = "a photo of a {}."
INIT_WORDS = "a photo of a"  # tcp.py:125-137: any truthy CTX_INIT


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class TCPPromptLearner(nn.Module):
    """Names as in the authors' ``PromptLearner`` (tcp.py:112-208): ``ctx``, ``meta_net.linear1/2``,
    ``token_prefix``, ``token_suffix`` (the teacher features are a plain attribute there, not saved)."""

    def __init__(self, clip, classnames, n_ctx: int, ctx_init: str, prompt_template: str, n_class_tokens: int):
        super().__init__()
        dtype, width = backbone.model_dtype(clip), backbone.text_width(clip)
        device = clip.token_embedding.weight.device
        # Created in the authors' order (ctx, then the meta-net), so the random draws come in the same sequence.
        if ctx_init:
            n_ctx = len(ctx_init.split(" "))
            ids = backbone.tokenize(ctx_init).to(device)
            ctx = backbone.token_embeddings(clip, ids)[0, 1 : 1 + n_ctx].clone()
        else:
            if n_ctx < 1:
                raise ValueError(f"n_ctx must be at least 1, got {n_ctx}.")
            ctx = torch.empty(n_ctx, width, dtype=dtype, device=device)
            nn.init.normal_(ctx, std=0.02)
        self.ctx = nn.Parameter(ctx.to(dtype))
        embed = backbone.embed_dim(clip)
        self.meta_net = nn.Sequential(
            OrderedDict(
                linear1=nn.Linear(embed, embed // 4),
                relu=QuickGELU(),
                linear2=nn.Linear(embed // 4, n_class_tokens * width),
            )
        ).to(device=device, dtype=dtype)
        names = [name.replace("_", " ") for name in classnames]
        token_ids = backbone.tokenize([prompt_template.format(name) for name in names]).to(device)
        eot = backbone.eot_positions(token_ids)
        if int(eot.min()) <= n_ctx:  # known only with the class names
            raise OutOfBounds(
                f"prompt_template {prompt_template!r} has fewer than n_ctx = {n_ctx} tokens before its end: the "
                "context replaces its first n_ctx tokens. Give a template with n_ctx leading words "
                "(e.g. 'X X X X {}.')."
            )
        embedding = backbone.token_embeddings(clip, token_ids)
        self.register_buffer("token_prefix", embedding[:, :1].clone())  # SOS
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :].clone())
        self.register_buffer("tokenized_prompts", token_ids, persistent=False)
        self.n_ctx, self.n_class_tokens, self.width = n_ctx, n_class_tokens, width

    def class_tokens(self, teacher_text: torch.Tensor) -> torch.Tensor:
        """The class-aware tokens [K, n, D] from the normalised teacher features [K, E] (tcp.py:194-195)."""
        tokens = self.meta_net(teacher_text.to(self.meta_net.linear1.weight.dtype))
        return tokens.reshape(tokens.shape[0], self.n_class_tokens, self.width)

    def prompts(self) -> torch.Tensor:
        return prompt_text.assemble(self, self.ctx)


@contextmanager
def class_tokens_injected(clip, layer: int, tokens: torch.Tensor, weight: float):
    """Within the block, text block ``layer``'s input (positional embedding already added) gets, at
    positions 1..n of row c, ``weight * tokens[c] + (1 - weight) * x`` (clip_text/model.py:268-278).
    The rows of every text forward inside must be the K classes of ``tokens``, in order."""
    blocks = deep_prompts.text_blocks(clip)
    if not 0 <= layer < len(blocks):
        raise deep_prompts.DeepPromptError(
            f"injection_layer {layer} is not a text block of this CLIP (0..{len(blocks) - 1})."
        )
    batch_first = getattr(clip.transformer, "batch_first", True)
    n = tokens.shape[1]

    def hook(module, args):
        x = args[0] if batch_first else args[0].transpose(0, 1)
        mixed = weight * tokens.to(x.dtype) + (1 - weight) * x[:, 1 : 1 + n]
        x = torch.cat([x[:, :1], mixed, x[:, 1 + n :]], dim=1)
        return (x if batch_first else x.transpose(0, 1), *args[1:])

    handle = blocks[layer].register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@register_method("tcp")
class TCP(CLIPMethod):
    label = "TCP"
    paper = "Yao et al., CVPR"
    year = 2024
    source = "htyao89/Textual-based_Class-aware_prompt_tuning@bd97bec"
    color = "#e377c2"
    default_config = "tcp/vit_b16_ep100_ctxv1"
    writes_val_result = False  # the Dassl.ProGrad framework of the authors' train.py (no val_result)
    ctx_init_sets_n_ctx = True  # init words: "a photo of a", 4 tokens

    @classmethod
    def context_words(cls, ctx_init: str | None) -> str:
        return INIT_WORDS if ctx_init else ""  # whatever the words, as the authors' code

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        n_ctx: ContextLength = 4,
        ctx_init: str | None = None,
        template: Template | None = None,
        prompt_template: Template | None = None,
        kg_weight: Weight = 8.0,
        injection_layer: Annotated[int, Range(0)] | None = None,
        injection_weight: Fraction = 1.0,
        n_class_tokens: Annotated[int, Range(1)] = 4,
        dataset: str | None = None,
    ):
        """n_ctx: context length (random N(0, 0.02^2) init); ctx_init: None or "" = random, any words = "a
        photo of a" (4 tokens), as the authors' code does; template: the teacher's prompt (default: the
        dataset's TCP teacher template); prompt_template: the learnable sentence, its first n_ctx tokens
        replaced by the context (default: the dataset's); kg_weight: the 8.0 of the loss; injection_layer:
        0-based text block at whose input the class-aware tokens replace positions 1..n (None: the published
        8, or the last block of a tower with fewer); injection_weight:
        their weight w (1.0: full replacement); n_class_tokens: n."""
        super().__init__(clip_model, classnames)
        if ctx_init and ctx_init.replace("_", " ") != INIT_WORDS:
            log.warning("TCP initialises the context from %r whatever ctx_init says (got %r)", INIT_WORDS, ctx_init)
        init = INIT_WORDS if ctx_init else ""
        self.template = template if template is not None else TEACHER_TEMPLATES.get(dataset, DEFAULT_TEACHER_TEMPLATE)
        self.prompt_template = (
            prompt_template if prompt_template is not None else PROMPT_TEMPLATES.get(dataset, DEFAULT_PROMPT_TEMPLATE)
        )
        self.prompt_learner = TCPPromptLearner(
            clip_model, classnames, n_ctx, init, self.prompt_template, n_class_tokens
        )
        layers = len(deep_prompts.text_blocks(clip_model))
        if injection_layer is None:  # a smaller tower (the tests', the demo's) gets the tokens at its last block
            injection_layer = min(PUBLISHED_INJECTION_LAYER, layers - 1)
        if injection_layer >= layers:  # the authors' counter would never reach it: the meta-net would learn nothing
            raise deep_prompts.DeepPromptError(
                f"injection_layer {injection_layer} is not a text block of this CLIP (0..{layers - 1}): give "
                f"injection_layer <= {layers - 1}, or null (the published {PUBLISHED_INJECTION_LAYER}, or the "
                "last block of a smaller CLIP)."
            )
        self.kg_weight = float(kg_weight)
        self.injection_layer, self.injection_weight = int(injection_layer), float(injection_weight)

    @property
    def teacher_text(self) -> torch.Tensor:
        """The teacher template's normalised text features [K, E] in the model's dtype, once per class set."""
        return teachers.teacher_text_features(self.clip, self.classnames, [self.template], combine="normalise")

    def text_features(self) -> torch.Tensor:
        pl = self.prompt_learner
        tokens = pl.class_tokens(self.teacher_text)
        with class_tokens_injected(self.clip, self.injection_layer, tokens, self.injection_weight):
            # All K classes in one pass (the hook's tokens are per row), cut after the last EOT (exact: causal).
            return backbone.encode_text_embeddings(self.clip, pl.prompts(), pl.tokenized_prompts)

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        # tcp.py:253 detaches the image features and the logit scale: both frozen here anyway.
        return backbone.cosine_logits(self.clip, image_features, self.text_features())

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, *, details: dict | None = None) -> torch.Tensor:
        return teachers.knowledge_guided_loss(self, images, labels, details)

    def record_options(self) -> dict:
        return {
            "n_ctx": self.prompt_learner.n_ctx,
            "template": self.template,
            "prompt_template": self.prompt_template,
            "kg_weight": self.kg_weight,
            "injection_layer": self.injection_layer,
            "injection_weight": self.injection_weight,
            "n_class_tokens": self.prompt_learner.n_class_tokens,
        }
