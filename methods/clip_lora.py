"""CLIP-LoRA (Zanella and Ben Ayed, CVPR-W 2024; docs/PROTOCOL-successors-3-fewshot.md "CLIP-LoRA";
MaxZanella/CLIP-LoRA@358f0d7, lora.py and loralib/).

Low-rank adapters on the query, key and value projections of every attention block of both towers
(``PlainMultiheadAttentionLoRA``, loralib/layers.py:340-530). For a projection W (a third of the block's
``in_proj_weight``, bias b) with adapter A [r, D], B [D, r]:

    W' x = W x + b + (alpha / sqrt(r)) * dropout(x) (B A)^T       dropout on the adapter's input only,
                                                                   one draw per projection (layers.py:198-208)
    A ~ kaiming_uniform(a = sqrt(5)),  B = 0                       the model starts as CLIP (layers.py:63-68)

then the attention of torch's scaled_dot_product_attention over the heads and the block's out projection.
The logits are ``100 * norm(f_img) @ norm(f_text)^T`` (a literal 100, main.py:22), the text of each class in
the dataset's first template, encoded again at every step (lora.py:90-113); the loss is their cross-entropy.
Only A and B learn (``mark_only_lora_as_trainable``).

CLIP is not copied: while the method encodes, each adapted ``nn.MultiheadAttention`` of the shared model
runs the adapted computation in place of its own forward (``adapted``); outside the ``with`` block the
model is the frozen CLIP other methods see. Training counts optimiser steps, not epochs: ``n_iters x
shots`` steps under a cosine to 1e-6 stepped per batch, the last epoch cut at the budget (lora.py:73-127),
which the method gives the runner through ``step_schedule``.
"""

from __future__ import annotations

import math
import os
from contextlib import contextmanager
from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bounds import OneOf, OutOfBounds, Range, Satisfies
from clipcore import backbone
from methods.parts.base import CheckpointError, CLIPMethod, Template
from methods.parts.registry import register_method

LOGIT_SCALE = 100.0  # main.py:22: a fixed 100, whatever CLIP's logit_scale
# datasets/*.py: every dataset's ``template`` is ['a photo of a {}.'] (the dataset-specific lines, and
# ImageNet's seven templates, sit in string literals, i.e. commented out).
TEMPLATE = "a photo of a {}."
ETA_MIN = 1e-6  # lora.py:76
ENCODERS = ("text", "vision", "both")
PROJECTIONS = ("q", "k", "v", "o")
# loralib/utils.py:10-44 (ViT-B/16's vision indices equal the text ones but for 'top', text 'top1').
# "all" is every block of the tower, whatever its depth (the tests' and the demo's two-block CLIP).
POSITIONS = {
    "top": [11],
    "top1": [11],
    "top2": [10, 11],
    "top3": [9, 10, 11],
    "bottom": [0, 1, 2, 3],
    "mid": [4, 5, 6, 7],
    "up": [8, 9, 10, 11],
    "half-up": [6, 7, 8, 9, 10, 11],
    "half-bottom": [0, 1, 2, 3, 4, 5],
    "all": None,
}
PROJECTION_NAMES = {"q": "q_proj", "k": "k_proj", "v": "v_proj", "o": "proj"}  # the authors' module names
# save_lora's file: run_utils.py:40's default --filename, and their dataset_list's keys (datasets/__init__.py:14-26)
# where the harness's differ.
AUTHORS_FILENAME = "lora_weights"
AUTHORS_DATASETS = {"fgvc_aircraft": "fgvc"}

Projections = Annotated[
    list[Annotated[str, OneOf(PROJECTIONS)]],
    Satisfies(lambda v: len(v) > 0 and len(set(v)) == len(v), "one or more of q, k, v, o, each once"),
]


class LoRA(nn.Module):
    """One projection's adapter: ``w_lora_A`` [r, in], ``w_lora_B`` [out, r] (the authors' names), fp32."""

    def __init__(self, width: int, r: int, device):
        super().__init__()
        self.w_lora_A = nn.Parameter(torch.zeros(r, width, device=device))
        self.w_lora_B = nn.Parameter(torch.zeros(width, r, device=device))
        nn.init.kaiming_uniform_(self.w_lora_A, a=math.sqrt(5))

    def delta(self, x: torch.Tensor, scaling: float, p: float, training: bool) -> torch.Tensor:
        """scaling * dropout(x) (B A)^T, as (x A^T) B^T: r-wide, not a D x D product."""
        if training and p > 0:
            x = F.dropout(x, p, training=True)
        return (x @ self.w_lora_A.to(x.dtype).T) @ self.w_lora_B.to(x.dtype).T * scaling


def block_indices(position: str, layers: int, tower: str) -> list[int]:
    """The blocks of a ``layers``-block tower that get adapters, or a one-line error."""
    wanted = POSITIONS[position]
    if wanted is None:
        return list(range(layers))
    if max(wanted) >= layers:
        raise OutOfBounds(
            f"Option position {position!r} of method 'clip_lora' names blocks {wanted} of the {tower} tower, which "
            f"has {layers}: give position 'all' (every block) for this CLIP."
        )
    return list(wanted)


def attention(mha: nn.MultiheadAttention, adapters: nn.ModuleDict, scaling: float, p: float, training: bool):
    """``PlainMultiheadAttentionLoRA.forward_module`` (layers.py:422-509) for ``mha``'s weights and
    ``adapters`` (by the authors' module names), as a replacement for ``mha.forward``."""
    width, heads = mha.embed_dim, mha.num_heads
    weight, bias = mha.in_proj_weight, mha.in_proj_bias

    def project(x, which, rows):
        out = F.linear(x, weight[rows], None if bias is None else bias[rows])
        if which in adapters:
            out = out + adapters[which].delta(x, scaling, p, training)
        return out

    def forward(query, key, value, key_padding_mask=None, need_weights=True, attn_mask=None, **_):
        if key_padding_mask is not None:
            raise NotImplementedError("CLIP-LoRA's attention takes no key_padding_mask (CLIP passes none).")
        if mha.batch_first:  # the authors' layout [L, N, D], so that each dropout draw has their shape
            query, key, value = (t.transpose(0, 1) for t in (query, key, value))
        length, batch, _ = query.shape
        q = project(query, "q_proj", slice(0, width))
        k = project(key, "k_proj", slice(width, 2 * width))
        v = project(value, "v_proj", slice(2 * width, 3 * width))
        if attn_mask is not None:
            attn_mask = attn_mask.to(q.dtype) if attn_mask.is_floating_point() else attn_mask
            attn_mask = attn_mask.unsqueeze(0).unsqueeze(0) if attn_mask.dim() == 2 else attn_mask

        def heads_first(t):  # [L, N, D] -> [N, H, L, D/H]
            return t.view(t.shape[0], batch, heads, width // heads).permute(1, 2, 0, 3)

        out = F.scaled_dot_product_attention(heads_first(q), heads_first(k), heads_first(v), attn_mask)
        heads_out = out.permute(2, 0, 1, 3).reshape(length * batch, width)
        out = F.linear(heads_out, mha.out_proj.weight, mha.out_proj.bias)
        if "proj" in adapters:
            out = out + adapters["proj"].delta(heads_out, scaling, p, training)
        out = out.view(length, batch, width)
        return (out.transpose(0, 1) if mha.batch_first else out), None

    return forward


@register_method("clip_lora")
class CLIPLoRA(CLIPMethod):
    """Low-rank adapters on the attention projections of both towers, trained by AdamW for ``n_iters x shots``
    steps. ``prompt_learner`` holds them under the authors' model's keys
    (``transformer.resblocks.<i>.attn.q_proj.w_lora_A``, ``visual.transformer.resblocks.<i>...``)."""

    label = "CLIP-LoRA"
    paper = "Zanella and Ben Ayed, CVPR-W"
    year = 2024
    source = "MaxZanella/CLIP-LoRA@358f0d7"
    color = "#7b4173"
    default_config = "clip_lora/vit_b16"
    checkpoint_folder = "clip_lora"
    features_cacheable = False
    transfers_to_other_classes = True
    writes_val_result = False

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        encoder: Annotated[str, OneOf(ENCODERS)] = "both",
        position: Annotated[str, OneOf(tuple(POSITIONS))] = "all",
        params: Projections = ["q", "k", "v"],  # noqa: B006 (copied)
        r: Annotated[int, Range(1, 1024)] = 2,
        alpha: Annotated[float, Range(0, low_open=True)] = 1.0,
        dropout_rate: Annotated[float, Range(0, 1, high_open=True)] = 0.25,
        n_iters: Annotated[int, Range(1)] = 500,
        template: Template = TEMPLATE,
    ):
        """encoder: the towers adapted; position: their blocks (the authors' names, "all" every block); params:
        the projections adapted (q, k, v; o the out projection); r: the rank; alpha: the scale, alpha/sqrt(r);
        dropout_rate: dropout on each adapter's input in training; n_iters: optimiser steps per shot (the run
        takes n_iters x shots steps); template: the class prompt."""
        super().__init__(clip_model, classnames)
        self.encoder, self.position, self.params = encoder, position, list(params)
        self.r, self.alpha, self.dropout_rate = int(r), float(alpha), float(dropout_rate)
        self.scaling = self.alpha / math.sqrt(self.r)  # layers.py:42, not alpha / r
        self.n_iters = int(n_iters)
        self.template = template
        device = clip_model.positional_embedding.device
        towers = []
        if encoder in ("text", "both"):
            towers.append(("transformer", clip_model.transformer.resblocks, "text"))
        if encoder in ("vision", "both"):
            if not hasattr(getattr(clip_model.visual, "transformer", None), "resblocks"):
                raise OutOfBounds(
                    f"Option encoder {encoder!r} of method 'clip_lora' adapts the image tower's attention, and this "
                    f"backbone's image encoder is a {type(clip_model.visual).__name__}: use a ViT backbone."
                )
            towers.append(("visual.transformer", clip_model.visual.transformer.resblocks, "vision"))
        # prompt_learner.<tower path>.resblocks.<i>.attn.<q_proj|k_proj|v_proj|proj>: the authors' keys.
        self.adapted: list[tuple[nn.MultiheadAttention, nn.ModuleDict]] = []
        for path, blocks, tower in towers:
            holder = self.prompt_learner
            for part in path.split("."):
                if not hasattr(holder, part):
                    holder.add_module(part, nn.Module())
                holder = getattr(holder, part)
            holder.resblocks = nn.ModuleDict()
            for i in block_indices(position, len(blocks), tower):
                mha = blocks[i].attn
                adapters = nn.ModuleDict({PROJECTION_NAMES[p]: LoRA(mha.embed_dim, self.r, device) for p in params})
                block = nn.Module()
                block.attn = adapters
                holder.resblocks[str(i)] = block
                self.adapted.append((mha, adapters))
        self.token_ids = backbone.tokenize([template.format(c.replace("_", " ")) for c in self.classnames]).to(device)
        self._eval_text: torch.Tensor | None = None

    # -- the adapted towers ------------------------------------------------------------------------

    @contextmanager
    def adapted_clip(self):
        """Within the block, every adapted attention of the shared CLIP runs with its adapters."""
        try:
            for mha, adapters in self.adapted:
                mha.forward = attention(mha, adapters, self.scaling, self.dropout_rate, self.training)
            yield self.clip
        finally:
            for mha, _ in self.adapted:
                mha.__dict__.pop("forward", None)

    def text_features(self) -> torch.Tensor:
        """Unnormalised class text features through the adapted text tower (the training graph kept)."""
        if self._eval_text is not None and not self.training and not torch.is_grad_enabled():
            return self._eval_text
        with self.adapted_clip() as clip:
            ids = self.token_ids
            features = backbone.encode_text_embeddings(clip, backbone.token_embeddings(clip, ids), ids)
        if not self.training and not torch.is_grad_enabled():
            self._eval_text = features
        return features

    def train(self, mode: bool = True):
        self._eval_text = None  # the adapters may change
        return super().train(mode)

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with self.adapted_clip() as clip:
            return clip.encode_image(images.to(self.dtype))

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        text = F.normalize(self.text_features(), dim=-1)
        image = F.normalize(image_features, dim=-1)
        return LOGIT_SCALE * image @ text.t().to(image.dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The text first, as lora.py:94-104 encodes it: dropout draws in the authors' order.
        text = F.normalize(self.text_features(), dim=-1)
        image = F.normalize(self.encode_image(images), dim=-1)
        return LOGIT_SCALE * image @ text.t().to(image.dtype)

    # -- training ------------------------------------------------------------------------------

    def step_schedule(self, optimizer, shots: int, steps_per_epoch: int, epochs: int):
        """(CosineAnnealingLR over ``n_iters x shots`` steps to 1e-6, that many steps): lora.py:73-76, 85-127.
        The run's ``epochs`` must be the epochs those steps take: a one-line error names them."""
        total = self.n_iters * shots
        needed = training_epochs(self.n_iters, shots, steps_per_epoch)
        if epochs != needed:
            raise OutOfBounds(
                f"Run key epochs {epochs} of method 'clip_lora': its n_iters {self.n_iters} x {shots} shots = {total} "
                f"steps of {steps_per_epoch} per epoch take {needed} epochs (the last cut at the budget): set "
                f"epochs={needed}."
            )
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, total, eta_min=ETA_MIN), total

    # -- the authors' save_lora file --------------------------------------------------------------

    def authors_files(self, spec: dict) -> dict[str, object]:
        """``save_lora``'s file (loralib/utils.py:137-184) where their ``load_lora`` looks for it under a
        ``--save_path`` of the checkpoint folder: ``<backbone>/<dataset>/<K>shots/seed<seed>/lora_weights.pt``.
        Its ``layer_<i>`` are their ``list_lora_layers``: the text tower's adapted blocks, then the image
        tower's (``apply_lora``), the order of ``self.adapted``."""
        weights = {}
        for i, (_, adapters) in enumerate(self.adapted):
            weights[f"layer_{i}"] = {
                name: {m: getattr(adapters[name], m).detach().cpu().clone() for m in ("w_lora_A", "w_lora_B")}
                for name in (PROJECTION_NAMES[p] for p in PROJECTIONS if p in self.params)  # their q, k, v, o order
            }
        seed = 1 if spec.get("seed") is None else spec["seed"]  # an unseeded job's draw is seed 1's
        folder = f"{authors_backbone(spec['backbone'])}/{AUTHORS_DATASETS.get(spec['dataset'], spec['dataset'])}"
        return {
            f"{folder}/{spec['shots']}shots/seed{seed}/{AUTHORS_FILENAME}.pt": {
                "weights": weights,
                "metadata": self.authors_metadata(),
            }
        }

    def authors_metadata(self) -> dict:
        """``save_lora``'s metadata: the values their argparse gives (run_utils.py:32-37; alpha an int there)."""
        alpha = int(self.alpha) if self.alpha.is_integer() else self.alpha
        return {
            "r": self.r,
            "alpha": alpha,
            "encoder": self.encoder,
            "params": list(self.params),
            "position": self.position,
        }

    @classmethod
    def is_authors_file(cls, contents) -> bool:
        return isinstance(contents, dict) and set(contents) == {"weights", "metadata"}

    def state_from_authors_file(self, contents: dict, path: str) -> dict:
        """The adapters of a ``save_lora`` file under ``prompt_learner``'s keys, after ``load_lora``'s checks
        (utils.py:199-213: each metadata value must be this model's option), each refused in one line."""
        metadata, weights = contents["metadata"], contents["weights"]
        if not (isinstance(metadata, dict) and isinstance(weights, dict)):
            raise CheckpointError(
                f"{path} holds 'weights' and 'metadata' that are not save_lora's dicts: it is not a CLIP-LoRA file."
            )
        for key, value in self.authors_metadata().items():
            saved = metadata.get(key)
            if saved != value:
                raise CheckpointError(
                    f"{path}: its metadata {key} is {saved!r}, this clip_lora model's option {key} is {value!r} (the "
                    f"authors' load_lora refuses it too): evaluate it with --set options.{key}={saved!r}."
                )
        if len(weights) != len(self.adapted) or any(f"layer_{i}" not in weights for i in range(len(self.adapted))):
            raise CheckpointError(
                f"{path} holds {len(weights)} adapted attention layers, this model adapts "
                f"{len(self.adapted)} (layer_0 to layer_{len(self.adapted) - 1}): it was trained on a backbone of "
                "another depth; evaluate it with that backbone."
            )
        prefixes = {id(m): name for name, m in self.prompt_learner.named_modules()}
        state = {}
        for i, (_, adapters) in enumerate(self.adapted):
            layer = weights[f"layer_{i}"]
            if set(layer) != set(adapters):
                raise CheckpointError(
                    f"{path}: layer_{i} holds adapters {sorted(layer)}, this model's are {sorted(adapters)} (params "
                    f"{self.params}): the file is not what save_lora writes for its metadata."
                )
            for name, matrices in layer.items():
                for m in ("w_lora_A", "w_lora_B"):
                    state[f"{prefixes[id(adapters)]}.{name}.{m}"] = matrices[m]
        return state

    def load_checkpoint_state_dict(self, state: dict, path: str = "<state dict>") -> None:
        """Our checkpoint's state dict (the authors' model keys), or a whole ``save_lora`` file."""
        self._eval_text = None
        if self.is_authors_file(state):
            state = self.state_from_authors_file(state, path)
        super().load_checkpoint_state_dict(state, path)

    def record_options(self) -> dict:
        return {
            "encoder": self.encoder,
            "position": self.position,
            "params": list(self.params),
            "r": self.r,
            "alpha": self.alpha,
            "dropout_rate": self.dropout_rate,
            "n_iters": self.n_iters,
            "template": self.template,
        }


def authors_backbone(backbone: str) -> str:
    """save_lora's folder for a backbone (utils.py:175-176): "ViT-B/16" -> "vitb16"; a weights file by its
    name ("ViT-B-16.pt" -> "vitb16")."""
    if backbone.endswith((".pt", ".pth", ".bin", ".safetensors")):
        backbone = os.path.splitext(os.path.basename(backbone))[0]
    return backbone.replace("/", "").replace("-", "").lower()


def training_epochs(n_iters: int, shots: int, steps_per_epoch: int) -> int:
    """The epochs ``n_iters x shots`` optimiser steps take at ``steps_per_epoch`` (the last one cut)."""
    return math.ceil(n_iters * shots / max(1, steps_per_epoch))
