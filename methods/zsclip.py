"""Zero-shot CLIP with hand-crafted prompts (PROTOCOL.md 6).

    W = normalise(text_encoder(template.format(name)))         one row per class
    logits = exp(logit_scale) * normalise(f) @ W^T              (= 100 * cosine for OpenAI's weights)

With several templates (prompt ensemble, 6.3) each template's features are normalised per class,
averaged over templates, and normalised again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated

import torch
import torch.nn.functional as F

from bounds import Satisfies
from clipcore import backbone
from methods.parts.base import CLIPMethod, Template, Templates
from methods.parts.registry import register_method

# PROTOCOL.md 6.1, keyed by the harness's dataset keys. The paper's CLIP rows use these.
DATASET_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
}
DEFAULT_TEMPLATE = "a photo of a {}."

# PROTOCOL.md 6.3: the ensemble trainer's 7 "selected" ImageNet templates (the dataset's own
# template is appended for every dataset but ImageNet). Not used by the paper's numbers.
IMAGENET_SELECTED_TEMPLATES = [
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
]


def ensemble_templates(dataset: str) -> list[str]:
    """The published ensemble for ``dataset`` (a fresh list every call, unlike the authors' quirk)."""
    templates = list(IMAGENET_SELECTED_TEMPLATES)
    if dataset != "imagenet":
        templates.append(DATASET_TEMPLATES.get(dataset, DEFAULT_TEMPLATE))
    return templates


def class_text_features(clip, classnames: Sequence[str], templates: Sequence[str]) -> torch.Tensor:
    """Normalised classifier weights [K, E], averaged over templates."""
    names = [name.replace("_", " ") for name in classnames]
    total = None
    for template in templates:
        # normalised in the model's dtype, as the published code does (fp16 for the paper)
        features = F.normalize(backbone.encode_texts(clip, [template.format(n) for n in names]), dim=-1)
        total = features if total is None else total + features
    return F.normalize(total / len(templates), dim=-1)


ENSEMBLE = Satisfies(lambda t: t == "ensemble", "'ensemble' (the published ensemble of the dataset)")


@register_method("zsclip")
class ZeroShotCLIP(CLIPMethod):
    label = "CLIP"
    paper = "Radford et al., ICML"
    year = 2021
    source = "KaiyangZhou/CoOp trainers/zsclip.py, snapshot of 2022-10-08"
    color = "#7f7f7f"
    # default_config: the only file in experiments/methods/zsclip/
    trainable = False

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        template: Template | Annotated[str, ENSEMBLE] | Templates | None = None,
        dataset: str | None = None,
    ):
        """template: a format string, a list of them (ensemble), or "ensemble" for the published
        ensemble of ``dataset``; default: the dataset's hand-crafted template (PROTOCOL.md 6.1)."""
        super().__init__(clip_model, classnames)
        if template is None:
            templates = [DATASET_TEMPLATES.get(dataset, DEFAULT_TEMPLATE)]
        elif template == "ensemble":
            templates = ensemble_templates(dataset or "")
        elif isinstance(template, str):
            templates = [template]
        else:
            templates = list(template)
        self.templates = templates
        self.register_buffer(
            "text_features", class_text_features(clip_model, self.classnames, templates), persistent=False
        )

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return backbone.cosine_logits(self.clip, image_features, self.text_features)

    def record_options(self) -> dict:
        return {"template": self.templates if len(self.templates) > 1 else self.templates[0]}
