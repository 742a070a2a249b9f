"""MMRL: multi-modal representation learning (Guo & Gu, CVPR 2025; PROTOCOL-successors-2.md "DePT (on
CoOp) and MMRL" 0, 1, 5-9; yunncheng/MMRL@27d8821, trainers/mmrl.py, clip/model_mmrl.py).

No learnable context: the text prompt is the dataset's hand-made template. A shared representation
space R (K tokens of dim ``rep_dim``, N(0, 0.02^2)) is mapped into both towers at every rep layer l
(1-indexed blocks, 6..12 of 12 published) by its own Linear per tower, all copies of one at init:

    text    block l: K tokens r2t_l(R) inserted after BOS at the first rep layer (no positional
            embedding), positions 1..K replaced at later ones; the causal mask covers the longer
            sequence, so every later text token sees them; feature at EOT + K
    vision  block l: K tokens r2v_l(R) inserted after CLS at the first rep layer, replaced later
    v_cls = ln_post(x_0) @ proj                   (CLIP's class token, frozen proj)
    v_rep = mean_k ln_post(x_k) @ proj_rep        (k = 1..K; proj_rep new, random, trained)

    logits = 100 * norm(v_cls) @ norm(t)^T,   logits_rep = 100 * norm(v_rep) @ norm(t)^T
    fusion = alpha * logits + (1 - alpha) * logits_rep                    (a fixed 100, quirk 2)
    loss   = alpha * CE(logits) + (1 - alpha) * CE(logits_rep)
           + w * (1 - mean_b cos(v_cls, v0)) + w * (1 - mean_c cos(t_c, t0_c))

with v0 the un-prompted CLIP's image features of the batch and t0 its text features of the same
template (computed once per class set). Which logits are scored (trainers/mmrl.py:419-428): task
"B2N" fusion on base classes, class-token logits otherwise; "FS" fusion always; "CD" fusion only on
ImageNet itself. Per-dataset published settings (trainers/config.py): ``reg_weight`` w and
``rep_dim`` (EuroSAT 2048) default to the dataset's values.

Trains: R, the 2 L projections and proj_rep. The image side is prompted, so ``features_cacheable`` is
False; ``encode_image`` returns [v_cls | v_rep] side by side. Precision: in fp16 / bf16 the learner is
in the model dtype and proj_rep stays fp32, cast where used (quirk 4); fp32 and amp compute in fp32.
Not reproduced: the authors' eval-time cache of the text features, never invalidated (quirk 1); here
the text side is encoded at every forward. Checkpoints: the whole CustomCLIP under the registered
name ``MultiModalRepresentationLearner`` (trainers/mmrl.py:324).
"""

from __future__ import annotations

import copy
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bounds import OneOf, Range, Satisfies
from clipcore import backbone
from methods.parts import deep_prompts, teachers, whole_model_checkpoint
from methods.parts.base import CheckpointError, CLIPMethod, Fraction, Template, Weight, load_learned_tensors
from methods.parts.registry import register_method
from methods.zsclip import DATASET_TEMPLATES, DEFAULT_TEMPLATE

TASKS = ("B2N", "FS", "CD")
SUBSAMPLES = ("base", "new", "all")
LOGIT_SCALE = 100.0  # trainers/mmrl.py:231-232, whatever CLIP's logit_scale
DEFAULT_REG_WEIGHT = 1.0  # configs/trainers/MMRL/vit_b16.yaml
DEFAULT_REP_DIM = 512
# trainers/config.py:5-41, merged after the yaml for every task (train.py:132), by the harness's dataset keys.
REG_WEIGHTS = {
    "stanford_cars": 7.0,
    "fgvc_aircraft": 6.0,
    "sun397": 6.0,
    "dtd": 6.0,
    "food101": 5.0,
    "oxford_flowers": 4.0,
    "ucf101": 3.0,
    "imagenet": 0.5,
    "caltech101": 0.5,
    "oxford_pets": 0.2,
    "eurosat": 0.01,
}
REP_DIMS = {"eurosat": 2048}
AUTHOR_FROZEN_PREFIXES = ("image_encoder.", "text_encoder.")
# rep_layers: blocks in increasing order (the last one is known with the backbone: checked when built).
INCREASING = Satisfies(lambda v: len(v) > 0 and list(v) == sorted(set(v)), "non-empty, increasing, 1-indexed blocks")


def uses_fusion(task: str, subsample: str, dataset: str | None) -> bool:
    """The authors' test-time choice (trainers/mmrl.py:419-428)."""
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS} (the authors' TASK), got {task!r}.")
    if subsample not in SUBSAMPLES:
        raise ValueError(f"subsample must be one of {SUBSAMPLES}, got {subsample!r}.")
    if task == "B2N":
        return subsample == "base"
    if task == "FS":
        return True
    return dataset == "imagenet"  # the authors' DATASET.NAME == "ImageNet": not its variants


def default_rep_layers(depth: int) -> list[int]:
    """The published REP_LAYERS [6..12] of ViT-B/16's 12 blocks; on a CLIP of ``depth`` blocks (the
    shallower tower's) the same proportion, blocks depth // 2 .. depth (the project's choice)."""
    return list(range(max(1, depth // 2), depth + 1))


def causal_mask(length: int, device) -> torch.Tensor:
    """CLIP's text mask for ``length`` positions: -inf above the diagonal (model_mmrl.py:241-245)."""
    return torch.full((length, length), float("-inf"), device=device).triu_(1)


class MultiModalRepresentationLearner(nn.Module):
    """Names as in the authors' ``representation_learner`` (trainers/mmrl.py:135-192), plus ``proj_rep``
    (their ``image_encoder.proj_rep``) and the template's token embeddings (their ``prompt_embeddings``)."""

    def __init__(self, clip, classnames, template: str, n_rep_tokens: int, rep_dim: int, rep_layers: list[int]):
        super().__init__()
        dtype = backbone.model_dtype(clip)
        device = clip.token_embedding.weight.device
        text_width, vision_width = backbone.text_width(clip), deep_prompts.vision_width(clip)
        embed = backbone.embed_dim(clip)
        # proj_rep comes with the authors' CLIP build (model_mmrl.py:338), before the learner; fp32 always.
        self.proj_rep = nn.Parameter(vision_width**-0.5 * torch.randn(vision_width, embed, device=device))
        tokens = torch.empty(n_rep_tokens, rep_dim, device=device)
        nn.init.normal_(tokens, std=0.02)
        single_r2v = nn.Linear(rep_dim, vision_width, device=device)
        single_r2t = nn.Linear(rep_dim, text_width, device=device)
        # The authors' CustomCLIP casts the learner to CLIP's dtype (trainers/mmrl.py:197), not proj_rep.
        self.compound_rep_tokens = nn.Parameter(tokens.to(dtype))
        self.compound_rep_tokens_r2vproj = nn.ModuleList([copy.deepcopy(single_r2v) for _ in rep_layers]).to(dtype)
        self.compound_rep_tokens_r2tproj = nn.ModuleList([copy.deepcopy(single_r2t) for _ in rep_layers]).to(dtype)
        names = [name.replace("_", " ") for name in classnames]
        ids = backbone.tokenize([template.format(name) for name in names]).to(device)
        self.register_buffer("prompt_embeddings", backbone.token_embeddings(clip, ids))
        self.register_buffer("tokenized_prompts", ids, persistent=False)
        self.n_rep_tokens, self.rep_dim, self.rep_layers = n_rep_tokens, rep_dim, list(rep_layers)

    def forward(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """([r2t_l(R)], [r2v_l(R)]) over the rep layers, in the learner's dtype."""
        r = self.compound_rep_tokens
        return [p(r) for p in self.compound_rep_tokens_r2tproj], [p(r) for p in self.compound_rep_tokens_r2vproj]

    def author_names(self) -> dict[str, str]:
        """The authors' checkpoint key -> this module's name."""
        own = [k for k in self.state_dict() if k not in ("proj_rep", "prompt_embeddings")]
        names = {f"representation_learner.{k}": k for k in own}
        names["image_encoder.proj_rep"] = "proj_rep"
        names["prompt_embeddings"] = "prompt_embeddings"
        return names


def _rep_tokens_hook(tokens: torch.Tensor, insert: bool, batch_first: bool):
    """A pre-hook putting ``tokens`` [K, W] after the first position: inserted or replacing 1..K."""
    k = tokens.shape[0]

    def hook(module, args, kwargs):
        x = args[0] if batch_first else args[0].transpose(0, 1)
        r = tokens.to(x.dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
        x = torch.cat([x[:, :1], r, x[:, 1:] if insert else x[:, 1 + k :]], dim=1)
        return (x if batch_first else x.transpose(0, 1), *args[1:]), kwargs

    return hook


@register_method("mmrl")
class MMRL(CLIPMethod):
    label = "MMRL"
    paper = "Guo & Gu, CVPR"
    year = 2025
    source = "yunncheng/MMRL@27d8821"
    color = "#bcbd22"
    default_config = "mmrl/vit_b16"
    frozen_image_teacher = True  # the image regulariser encodes each batch with the frozen tower
    checkpoint_folder = "MultiModalRepresentationLearner"  # the authors' registered name (trainers/mmrl.py:324)
    features_cacheable = False  # the image encoder carries the representation tokens

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        n_rep_tokens: Annotated[int, Range(1)] = 5,
        rep_dim: Annotated[int, Range(1)] | None = None,
        rep_layers: Annotated[list[Annotated[int, Range(1)]], INCREASING] | None = None,
        alpha: Fraction = 0.7,
        reg_weight: Weight | None = None,
        config_reg_weight: Weight = DEFAULT_REG_WEIGHT,
        template: Template | None = None,
        task: Annotated[str, OneOf(TASKS)] = "B2N",
        subsample: str = "all",
        dataset: str | None = None,
    ):
        """n_rep_tokens: K; rep_dim: the representation space's width (None: the dataset's published
        value, 512, EuroSAT 2048); rep_layers: 1-indexed blocks receiving the tokens in both towers
        (None: the published 6..12 of 12 blocks, on a CLIP of L blocks L // 2 .. L); alpha: the
        class-token branch's weight; reg_weight: w (None: the dataset's published value, else
        ``config_reg_weight``, the config file's REG_WEIGHT: 1.0 in vit_b16.yaml, 0.5 in vit_b16_few_shot.yaml);
        template: the text prompt (default: the dataset's); task: B2N | FS | CD, with ``subsample``
        and ``dataset`` deciding which logits are scored."""
        super().__init__(clip_model, classnames)
        self.fusion = uses_fusion(task, subsample, dataset)
        self.task, self.subsample, self.dataset = task, subsample, dataset
        depth = min(len(deep_prompts.text_blocks(clip_model)), len(deep_prompts.vision_blocks(clip_model)))
        if rep_layers is None:
            rep_layers = default_rep_layers(depth)
        layers = sorted(set(int(layer) for layer in rep_layers))
        if not layers or layers[0] < 1 or layers[-1] > depth or list(rep_layers) != layers:
            raise deep_prompts.DeepPromptError(
                f"rep_layers must be increasing 1-indexed blocks in 1..{depth} of this CLIP, got {list(rep_layers)}."
            )
        self.template = template if template is not None else DATASET_TEMPLATES.get(dataset, DEFAULT_TEMPLATE)
        rep_dim = rep_dim if rep_dim is not None else REP_DIMS.get(dataset, DEFAULT_REP_DIM)
        # trainers/config.py's per-dataset value is merged after the config file (train.py:132), so the
        # file's REG_WEIGHT holds only on datasets it does not list.
        if reg_weight is None:
            reg_weight = REG_WEIGHTS.get(dataset, config_reg_weight)
        self.reg_weight = float(reg_weight)
        self.alpha = float(alpha)
        self.prompt_learner = MultiModalRepresentationLearner(
            clip_model, classnames, self.template, n_rep_tokens, rep_dim, layers
        )
        self._teacher_text: torch.Tensor | None = None

    @property
    def teacher_text(self) -> torch.Tensor:
        """The un-prompted CLIP's normalised text features of the template [K, E], once per class set."""
        if self._teacher_text is None:
            # Outside any autocast: the authors compute it at build time, in the model's dtype (fp32 in amp).
            device = self.clip.positional_embedding.device.type
            with torch.autocast(device_type=device, enabled=False):
                self._teacher_text = teachers.teacher_text_features(
                    self.clip, self.classnames, [self.template], combine="normalise"
                )
        return self._teacher_text

    # -- the towers -------------------------------------------------------------------------------

    def text_features(self, text_tokens: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Unnormalised text features [C, E]: open_clip's own blocks run one by one, the representation
        tokens entering at the rep layers; cut after the last EOT (exact: the tower stays causal)."""
        pl, clip = self.prompt_learner, self.clip
        if text_tokens is None:
            text_tokens, _ = pl()
        dtype = self.dtype
        eot = backbone.eot_positions(pl.tokenized_prompts)
        length = int(eot.max()) + 1
        x = pl.prompt_embeddings[:, :length].to(dtype) + clip.positional_embedding[:length].to(dtype)
        batch_first = deep_prompts._batch_first(clip.transformer)
        k = pl.n_rep_tokens
        for i, block in enumerate(deep_prompts.text_blocks(clip)):
            layer = i + 1
            if layer in pl.rep_layers:
                r = text_tokens[pl.rep_layers.index(layer)].to(dtype).unsqueeze(0).expand(x.shape[0], -1, -1)
                rest = x[:, 1:] if layer == pl.rep_layers[0] else x[:, 1 + k :]
                x = torch.cat([x[:, :1], r, rest], dim=1)
            mask = causal_mask(x.shape[1], x.device)
            x = block(x if batch_first else x.transpose(0, 1), attn_mask=mask)
            x = x if batch_first else x.transpose(0, 1)
        x = clip.ln_final(x).to(dtype)
        return x[torch.arange(x.shape[0], device=x.device), eot + k] @ clip.text_projection

    def encode_image(self, images: torch.Tensor, vision_tokens: list[torch.Tensor] | None = None) -> torch.Tensor:
        """[v_cls | v_rep], [B, 2E], both unnormalised."""
        pl, clip = self.prompt_learner, self.clip
        if vision_tokens is None:
            _, vision_tokens = pl()
        visual = clip.visual
        batch_first = deep_prompts._batch_first(visual.transformer)
        blocks = deep_prompts.vision_blocks(clip)
        captured = {}
        handles = []
        try:
            for tokens, layer in zip(vision_tokens, pl.rep_layers):
                hook = _rep_tokens_hook(tokens, layer == pl.rep_layers[0], batch_first)
                handles.append(blocks[layer - 1].register_forward_pre_hook(hook, with_kwargs=True))

            def keep(module, args, output):
                captured["x"] = output if batch_first else output.transpose(0, 1)

            handles.append(visual.transformer.register_forward_hook(keep))
            v_cls = clip.encode_image(images.to(self.dtype))
        finally:
            for handle in handles:
                handle.remove()
        x_rep = visual.ln_post(captured["x"][:, 1 : 1 + pl.n_rep_tokens]).mean(dim=1)
        v_rep = x_rep @ pl.proj_rep.to(x_rep.dtype)
        return torch.cat([v_cls, v_rep.to(v_cls.dtype)], dim=-1)

    def branch_logits(self, features: torch.Tensor, text: torch.Tensor):
        """(logits, logits_rep, fusion) of image features [B, 2E] and text features [C, E]."""
        v_cls, v_rep = features.chunk(2, dim=-1)
        t = F.normalize(text, dim=-1)
        logits = LOGIT_SCALE * F.normalize(v_cls, dim=-1) @ t.t().to(v_cls.dtype)
        logits_rep = LOGIT_SCALE * F.normalize(v_rep, dim=-1) @ t.t().to(v_rep.dtype)
        return logits, logits_rep, self.alpha * logits + (1 - self.alpha) * logits_rep

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        logits, _, fusion = self.branch_logits(image_features, self.text_features())
        return fusion if self.fusion else logits

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        text_tokens, vision_tokens = self.prompt_learner()
        features = self.encode_image(images, vision_tokens)
        logits, _, fusion = self.branch_logits(features, self.text_features(text_tokens))
        return fusion if self.fusion else logits

    # -- the objective ----------------------------------------------------------------------------

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, *, details: dict | None = None) -> torch.Tensor:
        """trainers/mmrl.py:238-255, 340-365."""
        with torch.no_grad():  # the un-prompted CLIP's image features of the batch
            v0 = F.normalize(backbone.encode_image(self.clip, images), dim=-1)
        text_tokens, vision_tokens = self.prompt_learner()
        features = self.encode_image(images, vision_tokens)
        text = self.text_features(text_tokens)
        logits, logits_rep, fusion = self.branch_logits(features, text)
        v_cls = F.normalize(features.chunk(2, dim=-1)[0], dim=-1)
        t = F.normalize(text, dim=-1)
        ce = self.alpha * F.cross_entropy(logits, labels)
        ce_rep = (1 - self.alpha) * F.cross_entropy(logits_rep, labels)
        reg_image = self.reg_weight * (1 - torch.mean(F.cosine_similarity(v_cls, v0.to(v_cls.dtype), dim=1)))
        reg_text = self.reg_weight * (1 - torch.mean(F.cosine_similarity(t, self.teacher_text.to(t.dtype), dim=1)))
        if details is not None:
            details.update(
                logits=fusion.detach(),
                ce=ce.detach(),
                ce_rep=ce_rep.detach(),
                reg_image=reg_image.detach(),
                reg_text=reg_text.detach(),
            )
        return ce + ce_rep + reg_image + reg_text

    def record_options(self) -> dict:
        pl = self.prompt_learner
        return {
            "n_rep_tokens": pl.n_rep_tokens,
            "rep_dim": pl.rep_dim,
            "rep_layers": list(pl.rep_layers),
            "alpha": self.alpha,
            "reg_weight": self.reg_weight,
            "template": self.template,
            "task": self.task,
            "scored": "fusion" if self.fusion else "class_token",
        }

    # -- the authors' whole-model checkpoint -------------------------------------------------------

    def frozen_state(self) -> dict[str, torch.Tensor]:
        """The frozen CLIP under the authors' CustomCLIP names (no logit_scale: their CustomCLIP has none)."""
        state = whole_model_checkpoint.frozen_clip_state(self.clip)
        return {k: v for k, v in state.items() if k.startswith(AUTHOR_FROZEN_PREFIXES)}

    def checkpoint_state_dict(self, full: bool = True) -> dict:
        own = self.prompt_learner.state_dict()
        learner = {author: own[mine] for author, mine in self.prompt_learner.author_names().items()}
        frozen = self.frozen_state() if full else {}
        return {k: v.detach().cpu() for k, v in {**learner, **frozen}.items()}

    def load_checkpoint_state_dict(self, state: dict, path: str = "<state dict>") -> None:
        """The authors' loader drops every ``prompt_embeddings`` key (trainers/mmrl.py:479), strict=False."""
        state = {k: v for k, v in state.items() if "prompt_embeddings" not in k}
        names = self.prompt_learner.author_names()
        if not any(k in names for k in state):  # a bare learner state dict (our own names)
            state = {author: state[mine] for author, mine in names.items() if mine in state}
        mine = whole_model_checkpoint.split_whole_model_state(state, names, self.frozen_state(), path, self.method_name)
        foreign = sorted(k for k in state if k.startswith("representation_learner.") and k not in names)
        if foreign:
            raise CheckpointError(
                f"{path} holds learned tensors this mmrl model does not have: {foreign[:6]}. Build the method with "
                "the options the checkpoint was trained with (rep_layers, ...)."
            )
        load_learned_tensors(self.prompt_learner, mine, path, self.method_name)
