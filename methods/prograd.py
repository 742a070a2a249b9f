"""ProGrad: prompt-aligned gradient (Zhu et al., ICCV 2023; PROTOCOL-successors-2.md 2).

CoOp's learner (16 shared context tokens, class token at the end) whose update never fights the
zero-shot prompt's knowledge. Per batch, with the frozen zero-shot CLIP as teacher:

    zs   = exp(logit_scale) * normalise(v0) @ t0^T        v0: fp32 CLIP image features (no gradient)
                                                           t0: normalise(fp32 CLIP(template.format(name)))
    CE   = cross_entropy(logits, y)
    KL   = mean_b sum_c -softmax(zs / T)_c * log_softmax(logits / T)_c * T^2       (soft cross-entropy)
    g_ce = dCE/dctx,  g_kl = dKL/dctx,  b = g_kl / ||g_kl||
    update = g_ce - lambda * (g_ce . b) b     if cos(g_ce, g_kl) < 0     (they conflict)
             g_ce                             otherwise

per parameter tensor (only ``ctx`` trains), lambda = 1, T = 1 (Dassl.ProGrad ``prograd_backward_and_update``,
trainer.py:311-349; prograd.py:280-293, 360-394). The KL gradient only steers: it is never added. A zero
gradient makes the cosine NaN, the test false and the CE gradient passes unchanged (no epsilon), as there.
The update is not one loss's gradient, so this method offers ``backward`` (``methods.parts.base``); its
``training_loss`` is the CE term.

Initialisation (prograd.py:78-95): the dataset's ProGrad template without " {}." gives the init words s;
n_words = len(s.split(" ")) (words, not tokens) <= n_ctx; the context is zeros with its *last* n_words rows
the embeddings of the *first* n_words tokens of s, and the prompt is "X ... X s name." with the suffix
starting after n_ctx tokens. When s has punctuation its tokens outnumber its words, so its last tokens stay
fixed words after the context (Oxford Pets: "a type of pet , a photo of" learnable, "a" fixed).

Precision: the teacher is a separate fp32 CLIP in every mode (prograd.py:225); here its text features are
computed once in fp32 and its image tower is an fp32 copy of the frozen tower, made at the first training
step and shared by every model on the same CLIP (in fp32 mode the student's own image features are the
teacher's). The projection is computed in the gradients' dtype, as in the published fp16 run. The published
amp branch is broken (PROTOCOL-successors-2.md 2, quirks); here amp runs the same update under autocast.
"""

from __future__ import annotations

import copy
import weakref
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bounds import OutOfBounds, Range
from clipcore import backbone
from methods.coop import CoOp, PromptLearner
from methods.parts import prompt_text, teachers
from methods.parts.base import CLIPMethod, ContextLength, Fraction, Template
from methods.parts.registry import register_method
from methods.zsclip import DEFAULT_TEMPLATE

# prograd.py:201-217 CUSTOM_TEMPLATES, keyed by the harness's dataset keys: the teacher's prompt and the
# context's init words. They differ from CoOp's and KgCoOp's.
PROGRAD_TEMPLATES = {
    "oxford_pets": "a type of pet, a photo of a {}.",
    "oxford_flowers": "a type of flower, a photo of a {}.",
    "fgvc_aircraft": "a type of aircraft, a photo of a {}.",
    "dtd": "a texture of {}.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a type of food, a photo of {}.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}


def prograd_terms(
    logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor, temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(CE, KL) of ``ProGradLoss`` (prograd.py:280-293): the KL is the soft cross-entropy to the teacher's
    tempered distribution, summed over classes, averaged over the batch, times T^2."""
    ce = F.cross_entropy(logits, labels)
    t = temperature
    teacher = F.softmax(teacher_logits / t, dim=-1)
    kl = (-teacher * F.log_softmax(logits / t, dim=-1) * t * t).sum(1).mean()
    return ce, kl


def project_conflicting(g_ce: torch.Tensor, g_kl: torch.Tensor, lam: float) -> torch.Tensor:
    """The published per-tensor update (trainer.py:330-346): where the CE gradient points against the KL
    gradient, remove ``lam`` times its component along the KL gradient; else keep it. In the gradients'
    dtype; a NaN cosine (a zero gradient) counts as no conflict."""
    b = g_kl / torch.linalg.norm(g_kl)
    a = g_ce / torch.linalg.norm(g_ce)
    conflict = torch.dot(a.flatten(), b.flatten()) < 0
    projected = g_ce - lam * torch.dot(g_ce.flatten(), b.flatten()) * b
    return torch.where(conflict, projected, g_ce)


class TemplatePromptLearner(PromptLearner):
    """CoOp's learner initialised as ProGrad does (prograd.py:78-95): zeros, the last n_words rows the
    first n_words token embeddings of ``words``; prompt "X ... X <words> <name>."."""

    def __init__(self, clip, classnames, n_ctx: int, words: str):
        nn.Module.__init__(self)
        dtype, width = backbone.model_dtype(clip), backbone.text_width(clip)
        device = clip.token_embedding.weight.device
        n_words = len(words.split(" "))
        if n_words > n_ctx:
            raise ValueError(
                f"ProGrad's init words {words!r} are {n_words} words but n_ctx is {n_ctx}: give n_ctx >= {n_words} "
                "(the authors assert it), or ctx_init='' for a random context."
            )
        embedding = backbone.token_embeddings(clip, backbone.tokenize(words).to(device))
        ctx = torch.zeros(n_ctx, width, dtype=dtype, device=device)
        ctx[n_ctx - n_words :] = embedding[0, 1 : 1 + n_words].to(dtype)
        self.ctx = nn.Parameter(ctx)
        self.n_ctx, self.csc, self.position = n_ctx, False, "end"
        prefix_text = " ".join(["X"] * (n_ctx - n_words) + [words])
        prompt_text.register_prompt_tokens(self, clip, classnames, prefix_text, n_ctx)
        self.name_lens = [len(backbone.tokenizer().encode(name.replace("_", " "))) for name in classnames]


_FP32_IMAGE_TOWERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def fp32_image_tower(clip) -> nn.Module:
    """An fp32 copy of ``clip``'s frozen image tower (the teacher's, prograd.py:225), made once per CLIP."""
    if clip not in _FP32_IMAGE_TOWERS:
        _FP32_IMAGE_TOWERS[clip] = copy.deepcopy(clip.visual).float().eval().requires_grad_(False)
    return _FP32_IMAGE_TOWERS[clip]


@register_method("prograd")
class ProGrad(CoOp):
    label = "ProGrad"
    paper = "Zhu et al., ICCV"
    year = 2023
    source = "BeierZhu/Prompt-align@1b76203"
    color = "#2ca02c"
    # The study's ViT-B/16, 16-shot run of the authors' RN50 settings (the project's choice).
    default_config = "prograd/vit_b16_ep100"
    writes_val_result = False  # Dassl.ProGrad's save_model (trainer.py:119-143)
    ctx_init_sets_n_ctx = False  # the init words fill the last rows of a context of n_ctx tokens

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        n_ctx: ContextLength = 16,
        ctx_init: str | None = None,
        template: Template | None = None,
        prograd_lambda: Fraction = 1.0,
        kl_temperature: Annotated[float, Range(0, low_open=True)] = 1.0,
        dataset: str | None = None,
    ):
        """n_ctx: context length; ctx_init: None = the template's words (the authors' CTX_INIT True), "" =
        random N(0, 0.02^2), other words = those words; template: the zero-shot teacher's prompt (default: the
        dataset's ProGrad template); prograd_lambda: lambda of the projection (LOSS.LAMBDA); kl_temperature:
        T (LOSS.T)."""
        self.template, words = self.init_words(template, ctx_init, dataset)
        if words:  # no random draw, as the authors' init
            CLIPMethod.__init__(self, clip_model, classnames)
            self.prompt_learner = TemplatePromptLearner(clip_model, classnames, n_ctx, words.replace("_", " "))
            self.truncate = True
        else:
            super().__init__(clip_model, classnames, n_ctx=n_ctx, ctx_init="")
        self.ctx_init = words
        self.prograd_lambda = float(prograd_lambda)
        self.kl_temperature = float(kl_temperature)

    # -- options -------------------------------------------------------------------------------------

    @staticmethod
    def init_words(template: str | None, ctx_init: str | None, dataset: str | None) -> tuple[str, str]:
        """(the teacher's template, the words the context starts from: "" for a random context)."""
        template = template if template is not None else PROGRAD_TEMPLATES.get(dataset, DEFAULT_TEMPLATE)
        words = template.replace(" {}.", "").replace("_", " ") if ctx_init is None else ctx_init
        if "{}" in words:
            raise OutOfBounds(
                f"The context starts from the template's words without its final ' {{}}.' (prograd.py:80-82), but "
                f"template {template!r} does not end that way: give the init words with ctx_init."
            )
        return template, words

    @classmethod
    def check_options(cls, options: dict) -> None:
        _, words = cls.init_words(options["template"], options["ctx_init"], options.get("dataset"))
        n_words = len(words.replace("_", " ").split(" ")) if words else 0
        if n_words > options["n_ctx"]:
            raise OutOfBounds(
                f"Options of method 'prograd': the init words {words!r} are {n_words} words but n_ctx is "
                f"{options['n_ctx']}: give n_ctx >= {n_words} (the authors assert it), or options.ctx_init='' "
                "for a random context."
            )

    # -- the teacher ---------------------------------------------------------------------------------

    @property
    def teacher_text(self) -> torch.Tensor:
        """Normalised fp32 text features of the template [K, E], computed once per CLIP and class set."""
        return teachers.teacher_text_features(
            self.clip, self.classnames, [self.template], dtype=torch.float32, combine="normalise"
        )

    @torch.no_grad()
    def teacher_logits(self, images: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
        """Zero-shot logits of the fp32 CLIP (prograd.py:240-249, 376-377), in fp32 also inside an amp step."""
        with torch.autocast(images.device.type, enabled=False):
            if image_features.dtype == torch.float32:  # fp32 mode: the student's tower is the teacher's
                v0 = image_features.detach()
            elif self.dtype == torch.float32:  # amp: the same fp32 tower, outside autocast
                v0 = self.clip.visual(images.float())
            else:
                v0 = fp32_image_tower(self.clip)(images.float())
            v0 = F.normalize(v0.float(), dim=-1)
            return self.clip.logit_scale.float().exp() * v0 @ self.teacher_text.t()

    # -- training ------------------------------------------------------------------------------------

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, *, details: dict | None = None) -> torch.Tensor:
        """The CE term (what the published trainer logs as ``xe_loss``); the update is ``backward``'s."""
        logits = self(images)
        ce = F.cross_entropy(logits, labels)
        if details is not None:
            details.update(logits=logits.detach(), ce=ce.detach())
        return ce

    def backward(self, images, labels, details: dict | None = None, *, loss_scale: float = 1.0) -> torch.Tensor:
        """Leave ProGrad's update (times ``loss_scale``) in ``ctx.grad``; return the CE term. ``details``
        gets the logits and ``ce`` as ``training_loss``, and ``kl`` (not a term of the returned loss: it
        only steers the projection, logged as the authors' ``kl_loss``)."""
        image_features = self.encode_image(images)
        logits = self.logits_from_features(image_features)
        ce, kl = prograd_terms(logits, self.teacher_logits(images, image_features), labels, self.kl_temperature)
        params = self.trainable_parameters()
        kl_grads = torch.autograd.grad(kl * loss_scale, params, retain_graph=True, allow_unused=True)
        ce_grads = torch.autograd.grad(ce * loss_scale, params, allow_unused=True)
        for p, g_ce, g_kl in zip(params, ce_grads, kl_grads):
            if g_ce is None:
                continue
            update = g_ce if g_kl is None else project_conflicting(g_ce, g_kl, self.prograd_lambda)
            p.grad = update if p.grad is None else p.grad + update
        if details is not None:
            details.update(logits=logits.detach(), ce=ce.detach(), kl=kl.detach())
        return ce.detach()

    def record_options(self) -> dict:
        return {
            "n_ctx": self.prompt_learner.n_ctx,
            "ctx_init": self.ctx_init,
            "template": self.template,
            "prograd_lambda": self.prograd_lambda,
            "kl_temperature": self.kl_temperature,
        }
