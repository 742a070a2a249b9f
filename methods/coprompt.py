"""CoPrompt: consistency-guided prompt learning (Roy & Etemad, ICLR 2024; PROTOCOL-successors-3.md CoPrompt).

MaPLe's coupled prompts (``methods.maple``; the authors' prompt learner is MaPLe's, diffed line by line: only
``proj`` follows the model dtype instead of always half) plus two feature adapters after the encoders and a
consistency objective with the frozen CLIP (trainers/coprompt.py:267-366):

    A(x)    = ReLU(W_2 ReLU(W_1 x))                         W_1: Linear(E, E/4), W_2: Linear(E/4, E), no biases
    f       = normalise(0.1 A_img(f_p) + 0.9 f_p)             f_p: the prompted image features of view 1
    t       = normalise(0.2 A_txt(t_p) + 0.8 t_p)             t_p: the prompted text features, every class
    logits  = exp(logit_scale) f t^T
    loss    = CE(logits, y) + W [(1 - mean_k cos(t_k, d_jk)) + (1 - mean_b cos(f_b, f0_b))]

d_j [K, E]: the frozen CLIP's normalised features of description j of every class, j drawn per step with
Python's ``random.randint(0, n - 1)`` as the authors draw it (the runner's checkpoints keep Python's random
state, so a resumed run draws the same j); f0: the frozen CLIP's image features of the second augmented view
(``train_views`` 2, ``train_augmentation`` "randaugment": DATALOADER.K_TRANSFORMS 2 and INPUT.TRANSFORMS of
configs/trainers/coprompt.yaml). E is the embedding width (the authors' 512 is ViT-B/16's). Trains the prompt
learner and both adapters. The descriptions are ``methods/parts/data/coprompt/<dataset>_prompt.json`` (the authors'
``gpt_file/``, their MIT licence beside them) or the file given as ``descriptions``.

Checkpoints hold the whole model as the authors' trainer writes it (registered ``MultiModalPromptLearner``):
the learner, ``adapter_image.fc.*``, ``adapter_text.fc.*``, the frozen CLIP under CustomCLIP's names and its
second frozen copy ``model_distill.*``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bounds import OneOf, OutOfBounds, Range
from clipcore import backbone
from methods.parts import prompt_text, whole_model_checkpoint
from methods.parts.base import CLIPMethod, ContextLength, Weight, load_learned_tensors
from methods.parts.coupled_prompts import MultiModalPromptLearner
from methods.parts.registry import register_method

log = logging.getLogger(__name__)

DESCRIPTIONS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "parts", "data", "coprompt")
# The authors' dataset_name_mapping (trainers/coprompt.py:19-35), keyed by the harness's dataset keys; the
# demo's colour datasets share the project's generated descriptions.
DESCRIPTION_FILES = {
    "caltech101": "caltech",
    "dtd": "dtd",
    "eurosat": "eurosat",
    "fgvc_aircraft": "fgvc",
    "food101": "food101",
    "imagenet": "imagenet",
    "imagenet_a": "imagenet_a",
    "imagenet_r": "imagenet_r",
    "imagenet_sketch": "imagenet_sketch",
    "imagenetv2": "imagenetv2",
    "oxford_flowers": "oxford_flowers",
    "oxford_pets": "oxford_pets",
    "stanford_cars": "stanford_cars",
    "sun397": "sun397",
    "ucf101": "ucf101",
    **{f"miniworld_{k}": "miniworld_colors" for k in ("colors", "dusk", "stage", "sea", "lamp")},
    **{f"miniworld_{k}_fs": "miniworld_colors" for k in ("dusk", "stage", "sea")},
}
IMAGE_ADAPTER_RATIO, TEXT_ADAPTER_RATIO = 0.1, 0.2  # image_adapter_m, text_adapter_m (coprompt.py:281-282)
# Used only when the method is built without a dataset and without descriptions (outside a run).
FALLBACK_TEMPLATE = "a photo of a {}."


class DescriptionsError(OutOfBounds):
    """Missing or malformed class descriptions (names the file and the fix): a bad value of the descriptions
    option (or of the dataset that picks them), so the one checker of options refuses the run before it starts."""


class Adapter(nn.Module):
    """The authors' ``Adapter(c_in, 4)`` (coprompt.py:267-279): ``fc`` = Linear -> ReLU -> Linear -> ReLU."""

    def __init__(self, c_in: int, reduction: int = 4):
        super().__init__()
        self.fc = nn.Sequential(
            nn.Linear(c_in, c_in // reduction, bias=False),
            nn.ReLU(inplace=True),
            nn.Linear(c_in // reduction, c_in, bias=False),
            nn.ReLU(inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def description_file(dataset: str | None) -> str | None:
    name = DESCRIPTION_FILES.get(dataset or "")
    return os.path.join(DESCRIPTIONS_DIR, f"{name}_prompt.json") if name else None


# The commit the shipped files were copied from, and the git blob of the ImageNet files (one file under five
# names) that the stored copy of the repository lacked: what `git hash-object` prints for a good download.
AUTHORS_COMMIT = "a2a6c12e3622cfe4b3a127f4ba0c4f3eb841418c"
IMAGENET_BLOB = "86ab87f6934a4be4d628eae53c30b15dbb683f34"


def git_blob(path: str) -> str:
    """What ``git hash-object`` prints for a file: the sha1 of its git blob."""
    with open(path, "rb") as f:
        content = f.read()
    return hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()


def check_authors_imagenet_file(path: str) -> None:
    """The ImageNet descriptions read by default are the one such file a user saves (the others ship with the
    code), and the run's fingerprint names the dataset, not the file: only the authors' exact file is read,
    so that another one's numbers cannot pass for theirs (nor a finished job's, once the file is replaced)."""
    blob = git_blob(path)
    if blob != IMAGENET_BLOB:
        raise DescriptionsError(
            f"{path} hashes to {blob}, not the authors' {IMAGENET_BLOB} (`git hash-object`): download https://"
            f"raw.githubusercontent.com/ShuvenduRoy/CoPrompt/{AUTHORS_COMMIT}/gpt_file/{os.path.basename(path)} "
            "again, or give a file of your own as options.descriptions=<path> (its content is then stamped)."
        )


def read_descriptions(path: str, classnames: list[str]) -> list[list[str]]:
    """Each class's descriptions, in class order (keys: the class name with "_" -> " ", coprompt.py:384)."""
    if not os.path.isfile(path):
        name = os.path.basename(path)
        where = (
            f"the authors' file is https://raw.githubusercontent.com/ShuvenduRoy/CoPrompt/{AUTHORS_COMMIT}/gpt_file/"
            f"{name} (`git hash-object` of a good copy: {IMAGENET_BLOB}): save it as {path}"
            if name.startswith("imagenet")
            else f"the authors' files are gpt_file/<dataset>_prompt.json of https://github.com/ShuvenduRoy/CoPrompt "
            f"at {AUTHORS_COMMIT[:7]}: save the file as {path}"
        )
        raise DescriptionsError(
            f"CoPrompt's class descriptions {path} do not exist: {where}, or give options.descriptions=<path of a "
            "JSON file mapping each class name to a list of sentences>."
        )
    with open(path) as f:
        table = json.load(f)
    names = [c.replace("_", " ") for c in classnames]
    missing = [n for n in names if n not in table]
    if missing:
        raise DescriptionsError(
            f"{path} has no descriptions for {len(missing)} of the {len(names)} classes ({missing[:5]}): give a "
            "descriptions file whose keys are the class names (with '_' as spaces)."
        )
    counts = {len(table[n]) for n in names}
    if len(counts) != 1 or 0 in counts:
        raise DescriptionsError(
            f"{path}: the classes have {sorted(counts)} descriptions each; CoPrompt stacks them, so every class "
            "needs the same number (at least one)."
        )
    return [list(table[n]) for n in names]


@register_method("coprompt")
class CoPrompt(CLIPMethod):
    label = "CoPrompt"
    paper = "Roy & Etemad, ICLR"
    year = 2024
    source = "ShuvenduRoy/CoPrompt@a2a6c12"
    color = "#637939"  # a colour no other method uses
    default_config = "coprompt/vit_b16"
    checkpoint_folder = "MultiModalPromptLearner"  # the authors' registered name (coprompt.py:467-471)
    features_cacheable = False  # the image encoder is prompted
    frozen_image_teacher = True  # the image consistency term encodes the second view with the frozen tower
    train_augmentation = "randaugment"  # configs/trainers/coprompt.yaml: INPUT.TRANSFORMS
    train_views = 2  # DATALOADER.K_TRANSFORMS: the prompted model sees view 1, the frozen CLIP view 2

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        n_ctx: ContextLength = 2,
        ctx_init: str = "a photo of a",
        prompt_depth: Annotated[int, Range(1)] | None = None,
        weight: Weight = 1.0,
        distill: Annotated[str, OneOf(("cosine", "mse"))] = "cosine",
        descriptions: str | None = None,
        dataset: str | None = None,
    ):
        """n_ctx, ctx_init, prompt_depth: MaPLe's (None: the published 9, or all of a smaller CLIP's blocks);
        weight: W, the consistency terms' weight (TRAINER.W; per dataset in the authors' constants.py);
        distill: "cosine" (published) or "mse" (TRAINER.DISTILL); descriptions: a JSON file of each class's
        descriptions (None: the dataset's, methods/parts/data/coprompt/); dataset: the harness's dataset key."""
        super().__init__(clip_model, classnames)
        # The authors' order (CustomCLIP.__init__): the prompt learner, then the image and the text adapter.
        self.prompt_learner = MultiModalPromptLearner(clip_model, classnames, n_ctx, ctx_init, prompt_depth)
        width, device, dtype = backbone.embed_dim(clip_model), clip_model.token_embedding.weight.device, self.dtype
        self.adapter_image = Adapter(width, 4).to(device=device, dtype=dtype)
        self.adapter_text = Adapter(width, 4).to(device=device, dtype=dtype)
        self.weight, self.distill = float(weight), distill
        path = descriptions or description_file(dataset)
        if path is None:
            if dataset is not None:
                raise DescriptionsError(
                    f"CoPrompt has no class descriptions for dataset {dataset!r}: give options.descriptions=<path "
                    "of a JSON file mapping each class name to a list of sentences>."
                )
            log.warning(
                "CoPrompt built without a dataset or descriptions: %r is each class's only description.",
                FALLBACK_TEMPLATE,
            )
            self.descriptions = [[FALLBACK_TEMPLATE.format(c.replace("_", " "))] for c in self.classnames]
        else:
            if not descriptions and os.path.basename(path).startswith("imagenet") and os.path.isfile(path):
                check_authors_imagenet_file(path)
            self.descriptions = read_descriptions(path, self.classnames)
        self.descriptions_source = path
        self._description_features: torch.Tensor | None = None

    @classmethod
    def check_options(cls, options: dict) -> None:
        prompt_text.check_context(cls.method_name, options["n_ctx"], options["ctx_init"], "n_ctx")

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for m in self._learned().values() for p in m.parameters() if p.requires_grad]

    def _learned(self) -> nn.ModuleDict:
        """What trains, under the authors' CustomCLIP names (coprompt.py:447-455)."""
        return nn.ModuleDict(
            {
                "prompt_learner": self.prompt_learner,
                "adapter_image": self.adapter_image,
                "adapter_text": self.adapter_text,
            }
        )

    # -- the forward --------------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return self.prompt_learner.encode_image(self.clip, images)

    def prompted_text_features(self) -> torch.Tensor:
        return self.prompt_learner.encode_text(self.clip)

    def adapted(self, image_features: torch.Tensor, text_features: torch.Tensor):
        """(f, t): the adapters' mixtures, normalised (coprompt.py:321-332)."""
        f = IMAGE_ADAPTER_RATIO * self.adapter_image(image_features) + (1 - IMAGE_ADAPTER_RATIO) * image_features
        t = TEXT_ADAPTER_RATIO * self.adapter_text(text_features) + (1 - TEXT_ADAPTER_RATIO) * text_features
        return F.normalize(f, dim=-1), F.normalize(t, dim=-1)

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        f, t = self.adapted(image_features, self.prompted_text_features())
        return backbone.cosine_logits(self.clip, f, t)

    # -- the objective --------------------------------------------------------------------------------

    def description_features(self) -> torch.Tensor:
        """[n, K, E]: the frozen CLIP's normalised features of each class's descriptions (coprompt.py:375-401),
        computed once, in the model's dtype."""
        if self._description_features is None:
            n = len(self.descriptions[0])
            texts = [d for per_class in self.descriptions for d in per_class]
            with torch.no_grad(), torch.autocast(self.clip.positional_embedding.device.type, enabled=False):
                features = backbone.encode_texts(self.clip, texts)
            features = F.normalize(features.reshape(len(self.descriptions), n, -1), dim=-1)
            self._description_features = features.transpose(0, 1).contiguous()
        return self._description_features

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, *, details: dict | None = None) -> torch.Tensor:
        """``images`` [B, 2, C, H, W] (the runner's two views: the prompted model sees the first, the frozen CLIP
        the second, coprompt.py:508-515), or [B, C, H, W] (a caller without views: both see the same images)."""
        student, teacher = (images[:, 0], images[:, 1]) if images.dim() == 5 else (images, images)
        f, t = self.adapted(self.encode_image(student), self.prompted_text_features())
        logits = backbone.cosine_logits(self.clip, f, t)
        ce = F.cross_entropy(logits, labels)
        bank = self.description_features()
        d = F.normalize(bank[random.randint(0, bank.shape[0] - 1)], dim=-1)
        f0 = F.normalize(backbone.encode_image(self.clip, teacher), dim=-1)
        if self.distill == "cosine":
            text = 1.0 - F.cosine_similarity(t, d.to(t.dtype), dim=1, eps=1e-7).mean()
            image = 1.0 - F.cosine_similarity(f, f0.to(f.dtype), dim=1, eps=1e-7).mean()
        else:
            text, image = F.mse_loss(t, d.to(t.dtype)), F.mse_loss(f, f0.to(f.dtype))
        text, image = self.weight * text, self.weight * image
        if details is not None:
            details.update(
                logits=logits.detach(), ce=ce.detach(), text_consistency=text.detach(), image_consistency=image.detach()
            )
        return ce + text + image

    def record_options(self) -> dict:
        return {
            "n_ctx": self.prompt_learner.n_ctx,
            "prompt_depth": self.prompt_learner.depth,
            "weight": self.weight,
            "distill": self.distill,
            "descriptions": os.path.basename(self.descriptions_source) if self.descriptions_source else None,
        }

    # -- the authors' whole-model checkpoint -------------------------------------------------------

    def checkpoint_state_dict(self, full: bool = True) -> dict:
        learned = self._learned().state_dict()
        frozen = whole_model_checkpoint.frozen_clip_state(self.clip) if full else {}
        teacher = {f"model_distill.{k}": v for k, v in self.clip.state_dict().items()} if full else {}
        return {k: v.detach().cpu() for k, v in {**learned, **frozen, **teacher}.items()}

    def load_checkpoint_state_dict(self, state: dict, path: str = "<state dict>") -> None:
        module = self._learned()
        learned = {k: k for k in module.state_dict()}
        mine = whole_model_checkpoint.split_whole_model_state(
            state, learned, whole_model_checkpoint.frozen_clip_state(self.clip), path, self.method_name
        )
        load_learned_tensors(module, mine, path, self.method_name)
