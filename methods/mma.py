"""MMA: the multi-modal adapter (Yang et al., CVPR 2024; PROTOCOL-successors-3.md MMA).

Bottleneck adapters in the upper blocks of both towers, whose middle layer is shared by the towers
(the "shared projection"). For block i (1-based) of a tower, start <= i <= end (published 5..12 of 12):

    a_i(x)   = up_i( shared_i( down_i( ln_1(x) ) ) )        down: Linear(W, d) -> ReLU, shared: Linear(d, d)
                                                             -> ReLU, up: Linear(d, W); d = 32; W the tower's width
    block_i'(x) = block_i(x) + s * a_i(x)                     s = 0.001, x the block's input

(clip/model.py:188-206), with two gradient-scale layers around the adapter branch (clip/gsl.py; identity
forward): the gradient entering the branch from the block's output is divided by s and the one leaving it
into x is multiplied by s. So the adapter's own parameters get the gradient of ``block_i + a_i`` (not s a_i),
and the residual stream gets the true gradient of ``block_i + s a_i``. Text and vision block i have their own
down_i / up_i and the same shared_i, which is what couples the towers. Block 0 (``start = 0``): the text
tower's token embeddings (before the positional embedding) and the vision tower's ``ln_pre`` output get
``x + s * a_0(x)`` with no layer norm and no gradient scaling (mmadapter.py:139-147, clip/model.py:271-281).

    t_c      = text tower on the fixed prompt "a photo of a <name_c>." with the text adapters
    f        = image tower with the visual adapters
    logits   = exp(logit_scale) * normalise(f) @ normalise(t)^T;   loss = CE(logits, y)

(mmadapter.py:184-207, 265-279). Trains every adapter (text, visual, shared); CLIP is frozen. Adapter
weights Kaiming-normal (fan_out, relu), biases 0 (mmadapter.py:113-137), created text, visual, shared in
that order, so the same seed draws the same adapters as the authors' code.

The adapters are forward hooks on open_clip's own blocks (and ``ln_pre``), present only inside
``adapters_in``: no CLIP copy. The image side depends on the adapters: ``features_cacheable`` is False.
Checkpoints are the authors' registered ``adapter_learner`` state dict (its fixed token embeddings of the
training prompts included, which their loader and ours drop).
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from typing import Annotated

import torch
from torch import nn

from bounds import OutOfBounds, Range
from clipcore import backbone
from methods.parts import deep_prompts, prompt_encoder
from methods.parts.base import CLIPMethod, Template, load_learned_tensors
from methods.parts.registry import register_method

PUBLISHED_BLOCKS = (5, 12)  # configs/trainers/MultiModalAdapter/vit_b16_ep5.yaml: ADAPTER_START, ADAPTER_END
# The authors' loader drops these from a checkpoint (mmadapter.py:321-325): built from the training class names.
FIXED_TEXT = ("token_embedding", "tokenized_prompts")


class GradientScale(torch.autograd.Function):
    """Identity forward; the gradient multiplied by ``scale`` on the way back (clip/gsl.py)."""

    @staticmethod
    def forward(ctx, x, scale: float):
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def build_adapters(d_model: int, n_layers: int, start: int, end: int, mid: int, dtype, device) -> nn.ModuleList:
    """Entries 0..n_layers, None outside start..end (mmadapter.py:113-137): a bottleneck ``down`` / ``up``, or,
    where the width is the middle width (the shared adapters), one Linear + ReLU."""
    adapters: list[nn.Module | None] = [None] * (n_layers + 1)
    for i in range(start, end + 1):
        if mid == d_model:
            adapters[i] = nn.Sequential(nn.Linear(d_model, mid), nn.ReLU())
        else:
            adapters[i] = nn.Sequential(
                OrderedDict(down=nn.Sequential(nn.Linear(d_model, mid), nn.ReLU()), up=nn.Linear(mid, d_model))
            )
    adapters = nn.ModuleList(adapters)
    for m in adapters.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            nn.init.constant_(m.bias, 0)
    return adapters.to(device=device, dtype=dtype)


class AdapterLearner(nn.Module):
    """Names as the authors' ``AdapterLearner`` (mmadapter.py:49-147): ``token_embedding`` and
    ``tokenized_prompts`` (the fixed prompts), ``text_adapter``, ``visual_adapter``, ``shared_adapter``."""

    def __init__(self, clip, classnames, template: str, start: int, end: int, dim: int, scale: float):
        super().__init__()
        dtype, device = backbone.model_dtype(clip), clip.token_embedding.weight.device
        ids = backbone.tokenize([template.format(name.replace("_", " ")) for name in classnames]).to(device)
        self.register_buffer("token_embedding", backbone.token_embeddings(clip, ids))
        self.register_buffer("tokenized_prompts", ids)
        text_layers, vision_layers = len(deep_prompts.text_blocks(clip)), len(deep_prompts.vision_blocks(clip))
        text_width, vision_width = backbone.text_width(clip), deep_prompts.vision_width(clip)
        self.text_adapter = build_adapters(text_width, text_layers, start, end, dim, dtype, device)
        self.visual_adapter = build_adapters(vision_width, vision_layers, start, end, dim, dtype, device)
        self.shared_adapter = build_adapters(dim, vision_layers, start, end, dim, dtype, device)
        self.start, self.end, self.dim, self.scale = start, end, dim, scale

    def branch(self, tower: nn.ModuleList, i: int, x: torch.Tensor) -> torch.Tensor:
        """up_i(shared_i(down_i(x))), unscaled."""
        return tower[i].up(self.shared_adapter[i](tower[i].down(x)))

    def text_input(self) -> torch.Tensor:
        """The prompts' token embeddings, with the block-0 adapter where ``start`` is 0 (mmadapter.py:139-147)."""
        x = self.token_embedding
        return x + self.scale * self.branch(self.text_adapter, 0, x) if self.start == 0 else x


def _block_hook(learner: AdapterLearner, tower: nn.ModuleList, i: int):
    """block_i(x) + s * a_i(x), the adapter branch between the two gradient-scale layers (clip/model.py:194-206).
    Token-wise, so the layout (batch or sequence first) does not matter."""
    s = learner.scale

    def hook(block, args, output):
        y = block.ln_1(GradientScale.apply(args[0], s))
        y = GradientScale.apply(learner.branch(tower, i, y) * s, 1.0 / s)
        return output + y

    return hook


def _ln_pre_hook(learner: AdapterLearner):
    """ln_pre(x) + s * a_0(ln_pre(x)) (clip/model.py:271-281)."""

    def hook(module, args, output):
        return output + learner.scale * learner.branch(learner.visual_adapter, 0, output)

    return hook


@contextmanager
def adapters_in(clip, learner: AdapterLearner, text: bool = False, vision: bool = False):
    """Within the block, ``clip``'s text and/or vision forwards carry the learner's adapters."""
    handles = []
    try:
        towers = [(deep_prompts.text_blocks(clip), learner.text_adapter)] if text else []
        if vision:
            towers.append((deep_prompts.vision_blocks(clip), learner.visual_adapter))
            if learner.start == 0:
                handles.append(clip.visual.ln_pre.register_forward_hook(_ln_pre_hook(learner)))
        for blocks, adapters in towers:
            for i in range(max(learner.start, 1), learner.end + 1):
                handles.append(blocks[i - 1].register_forward_hook(_block_hook(learner, adapters, i)))
        yield
    finally:
        for handle in handles:
            handle.remove()


@register_method("mma")
class MMA(CLIPMethod):
    label = "MMA"
    paper = "Yang et al., CVPR"
    year = 2024
    source = "ZjjConan/Multi-Modal-Adapter@547ee34"
    color = "#393b79"  # dark indigo: CoOp+DePT has the cyan
    default_config = "mma/vit_b16_ep5"
    checkpoint_folder = "adapter_learner"  # the authors' registered name (mmadapter.py:254)
    features_cacheable = False  # the image encoder carries adapters

    def __init__(
        self,
        clip_model,
        classnames,
        *,
        template: Template = "a photo of a {}.",
        adapter_start: Annotated[int, Range(0)] | None = None,
        adapter_end: Annotated[int, Range(1)] | None = None,
        adapter_dim: Annotated[int, Range(1)] = 32,
        adapter_scale: Annotated[float, Range(0, low_open=True)] = 0.001,
    ):
        """template: the fixed text prompt (the authors' TEXT_CTX_INIT + " {}."); adapter_start, adapter_end:
        the first and last 1-based block with adapters in both towers (0: also the token embeddings and
        ln_pre); None: the published 5 and 12, or 1 and the last block of a CLIP with fewer than 12;
        adapter_dim: the bottleneck width d; adapter_scale: s."""
        super().__init__(clip_model, classnames)
        layers = min(len(deep_prompts.text_blocks(clip_model)), len(deep_prompts.vision_blocks(clip_model)))
        published = layers >= PUBLISHED_BLOCKS[1]
        start = adapter_start if adapter_start is not None else (PUBLISHED_BLOCKS[0] if published else 1)
        end = adapter_end if adapter_end is not None else (PUBLISHED_BLOCKS[1] if published else layers)
        if not start <= end <= layers:
            raise deep_prompts.DeepPromptError(
                f"MMA adapters in blocks {start}..{end}: need adapter_start <= adapter_end <= {layers}, the blocks "
                f"of this CLIP's shallower tower. Give adapter_end <= {layers}, or null for both (the published "
                f"{PUBLISHED_BLOCKS[0]}..{PUBLISHED_BLOCKS[1]}, or every block of a smaller CLIP)."
            )
        widths = {backbone.text_width(clip_model), deep_prompts.vision_width(clip_model)}
        if adapter_dim in widths:  # their adapter would be one Linear without down/up, which their forward needs
            raise OutOfBounds(
                f"adapter_dim {adapter_dim} equals a tower's width ({sorted(widths)}): the authors' code builds no "
                "bottleneck there and fails. Give another adapter_dim (published: 32)."
            )
        self.template = template
        self.prompt_learner = AdapterLearner(
            clip_model, classnames, template, start, end, adapter_dim, float(adapter_scale)
        )

    @classmethod
    def check_options(cls, options: dict) -> None:
        start, end = options.get("adapter_start"), options.get("adapter_end")
        if start is not None and end is not None and start > end:
            raise OutOfBounds(
                f"Options of method 'mma': adapter_start {start} is after adapter_end {end}. Give adapter_start <= "
                "adapter_end (published: 5 and 12)."
            )

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        with adapters_in(self.clip, self.prompt_learner, vision=True):
            return self.clip.encode_image(images.to(self.dtype))

    def text_features(self) -> torch.Tensor:
        pl = self.prompt_learner
        prompts, ids = pl.text_input(), pl.tokenized_prompts
        with adapters_in(self.clip, pl, text=True):
            # Exact per length bucket: the adapters act token by token and the text tower is causal.
            return prompt_encoder.encode_in_length_buckets(
                ids, lambda rows: backbone.encode_text_embeddings(self.clip, prompts[rows], ids[rows])
            )

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        return backbone.cosine_logits(self.clip, image_features, self.text_features())

    def record_options(self) -> dict:
        pl = self.prompt_learner
        return {
            "template": self.template,
            "adapter_start": pl.start,
            "adapter_end": pl.end,
            "adapter_dim": pl.dim,
            "adapter_scale": pl.scale,
        }

    # -- the authors' checkpoint of adapter_learner ------------------------------------------------

    def checkpoint_state_dict(self, full: bool = True) -> dict:
        state = self.prompt_learner.state_dict()
        return {k: v.detach().cpu() for k, v in state.items() if full or k not in FIXED_TEXT}

    def load_checkpoint_state_dict(self, state: dict, path: str = "<state dict>") -> None:
        learned = {k: v for k, v in state.items() if k not in FIXED_TEXT}
        load_learned_tensors(self.prompt_learner, learned, path, self.method_name)
