"""KgCoOp: knowledge-guided context optimisation (Yao et al., CVPR 2023; PROTOCOL-successors.md 2).

CoOp's learner (end position, one shared context), plus a pull towards the frozen hand-made prompt:

    t_c  = normalise(text_encoder([SOS, ctx, name_c, ., EOT]))       the learned prompt, class c
    t0_c = normalise(CLIP("<dataset template>".format(name_c)))      computed once, frozen
    loss = CE(exp(logit_scale) * normalise(f) @ t^T, y) + W * (1 - mean_c cos(t_c, t0_c))

with the mean over *all* classes of the training class set (not only those in the batch), cosine with
eps 1e-7 and W = 8.0 (kgcoop.py:238-241, 309-310; scripts/run.sh). The context always starts from
the words "a photo of a" when an init is given at all (kgcoop.py:96: any truthy CTX_INIT is
replaced). The teacher's template is the dataset's KgCoOp template (kgcoop.py:37): CoOp's, except
DTD's "a photo of a {}, a type of texture.".

Only ``ctx`` trains. The prompt learner also holds ``bias_vectors`` [1, 512] and ``meta_net.linear1``
(512 -> 512): frozen and unused, but in the authors' checkpoints, so ours carry them too.

Precision: the published run computes the teacher with a separate fp16 CLIP even when PREC is fp32
(kgcoop.py:132-133); here the teacher computes in the run's model dtype (fp16 in fp16 mode, fp32 in
fp32 mode). The published amp branch drops the KgCoOp term (it returns a tuple, kgcoop.py:300-303);
here amp runs the full objective under autocast. The image side is CLIP's frozen tower, so test
features come from the shared cache; the text side is CoOp's exact fast encoder.
"""

from __future__ import annotations

import logging
from collections import OrderedDict

import torch
from torch import nn

from methods.coop import CoOp
from methods.parts import teachers
from methods.parts.base import ContextLength, Template, Weight
from methods.parts.registry import register_method
from methods.zsclip import DATASET_TEMPLATES, DEFAULT_TEMPLATE

log = logging.getLogger(__name__)

# kgcoop.py:37 CUSTOM_TEMPLATES, keyed by the harness's dataset keys: CoOp's except DTD.
KGCOOP_TEMPLATES = {**DATASET_TEMPLATES, "dtd": "a photo of a {}, a type of texture."}
INIT_WORDS = "a photo of a"  # kgcoop.py:96
UNUSED_WIDTH = 512  # bias_vectors and meta_net are hard-coded 512 wide (kgcoop.py:123, 149)


@register_method("kgcoop")
class KgCoOp(CoOp):
    label = "KgCoOp"
    paper = "Yao et al., CVPR"
    year = 2023
    source = "htyao89/KgCoOp@c43ccc3"
    color = "#ff7f0e"
    writes_val_result = False  # Dassl.ProGrad, the framework of its repository (PROTOCOL-successors.md 5)

    # default_config: the only file in experiments/methods/kgcoop/

    @classmethod
    def context_words(cls, ctx_init: str | None) -> str:
        return INIT_WORDS if ctx_init else ""  # kgcoop.py:96, whatever the words

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        n_ctx: ContextLength = 4,
        ctx_init: str = INIT_WORDS,
        template: Template | None = None,
        kg_weight: Weight = 8.0,
        dataset: str | None = None,
    ):
        """n_ctx: context length for a random init (``ctx_init`` = ""); any non-empty ``ctx_init`` means
        "a photo of a" (4 tokens), as the authors' code does; template: the teacher's hand-made prompt
        (default: the dataset's KgCoOp template); kg_weight: W."""
        if ctx_init and ctx_init.replace("_", " ") != INIT_WORDS:
            log.warning("KgCoOp initialises the context from %r whatever ctx_init says (got %r)", INIT_WORDS, ctx_init)
        init = INIT_WORDS if ctx_init else ""
        super().__init__(clip_model, classnames, n_ctx=n_ctx, ctx_init=init)
        pl = self.prompt_learner
        dtype, device = pl.ctx.dtype, pl.ctx.device
        # In the authors' order: bias_vectors after ctx, then meta_net (kgcoop.py:119-157).
        bias = torch.empty(1, UNUSED_WIDTH, dtype=dtype, device=device)
        nn.init.normal_(bias, std=0.02)
        pl.bias_vectors = nn.Parameter(bias, requires_grad=False)
        self.template = template if template is not None else KGCOOP_TEMPLATES.get(dataset, DEFAULT_TEMPLATE)
        self._teacher_text: torch.Tensor | None = None
        pl.meta_net = nn.Sequential(
            OrderedDict(linear1=nn.Linear(UNUSED_WIDTH, UNUSED_WIDTH), relu=nn.ReLU(inplace=True))
        )
        pl.meta_net.to(device=device, dtype=dtype).requires_grad_(False)
        self.kg_weight = float(kg_weight)

    @property
    def teacher_text(self) -> torch.Tensor:
        """The hand-made prompt's normalised text features [K, E] in the model's dtype, computed at the first
        training step (evaluation never needs them), once per class set and shared."""
        if self._teacher_text is None:
            self._teacher_text = teachers.teacher_text_features(
                self.clip, self.classnames, [self.template], combine="normalise"
            )
        return self._teacher_text

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, *, details: dict | None = None) -> torch.Tensor:
        return teachers.knowledge_guided_loss(self, images, labels, details)

    def record_options(self) -> dict:
        return {"n_ctx": self.prompt_learner.n_ctx, "template": self.template, "kg_weight": self.kg_weight}
