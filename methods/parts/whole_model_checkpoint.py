"""The authors' whole-model checkpoints (MaPLe, PromptSRC; PROTOCOL-successors.md 5): their files hold the
frozen CLIP beside the learned tensors, under their CustomCLIP names. ``frozen_clip_state`` gives the frozen
part under those names; ``split_whole_model_state`` takes the learned tensors out of such a file and checks
the frozen ones' shapes against the run's backbone."""

from __future__ import annotations

import torch

from methods.parts.base import CheckpointError

# What their CustomCLIP holds besides the prompt learner: the image encoder (clip.visual), their
# TextEncoder (transformer, positional_embedding, ln_final, text_projection; no token_embedding) and
# logit_scale. PromptSRC's prompt learner also holds the teacher's un-prompted image encoder.
FROZEN_PREFIXES = ("image_encoder.", "text_encoder.", "prompt_learner.ZS_image_encoder.")
FROZEN_KEYS = ("logit_scale",)


def frozen_clip_state(clip, zero_shot_image_encoder: bool = False) -> dict[str, torch.Tensor]:
    """The frozen CLIP tensors under the authors' CustomCLIP names (open_clip's names are OpenAI's)."""
    out = {f"image_encoder.{k}": v for k, v in clip.visual.state_dict().items()}
    out.update({f"text_encoder.transformer.{k}": v for k, v in clip.transformer.state_dict().items()})
    out["text_encoder.positional_embedding"] = clip.positional_embedding
    out.update({f"text_encoder.ln_final.{k}": v for k, v in clip.ln_final.state_dict().items()})
    out["text_encoder.text_projection"] = clip.text_projection
    out["logit_scale"] = clip.logit_scale
    if zero_shot_image_encoder:
        out.update({f"prompt_learner.ZS_image_encoder.{k}": v for k, v in clip.visual.state_dict().items()})
    return {k: v.detach() for k, v in out.items()}


def is_frozen_key(key: str) -> bool:
    return key in FROZEN_KEYS or key.startswith(FROZEN_PREFIXES)


def split_whole_model_state(
    state: dict, learned: dict[str, str], frozen_reference: dict[str, torch.Tensor], path: str, method: str
) -> dict[str, torch.Tensor]:
    """The learner's tensors from a whole-model state dict: ``learned`` maps the authors' key -> the
    learner's own name. The frozen CLIP copies are not loaded (the run's backbone is the one used) but
    their shapes are checked against it, so a checkpoint of another backbone is refused; their
    values may differ by rounding (PromptSRC's weight averaging runs over them in fp16)."""
    out, foreign = {}, []
    for key, value in state.items():
        if key in learned:
            out[learned[key]] = value
        elif key.rsplit(".", 1)[-1] in ("token_prefix", "token_suffix"):
            continue  # built from the training class names; rebuilt from ours
        elif "VPT" in key or (key.startswith("prompt_learner.") and not is_frozen_key(key)):
            foreign.append(key)  # a learned tensor this model does not have (another depth or n_ctx)
        elif is_frozen_key(key):
            mine = frozen_reference.get(key)
            if mine is not None and tuple(mine.shape) != tuple(value.shape):
                raise CheckpointError(
                    f"{path}: the frozen CLIP tensor {key} has shape {tuple(value.shape)}, this backbone's has "
                    f"{tuple(mine.shape)}: the checkpoint was trained on another backbone."
                )
    if foreign:
        raise CheckpointError(
            f"{path} holds learned tensors this {method} model does not have: {sorted(foreign)[:6]}. Build the "
            "method with the options the checkpoint was trained with (prompt depth, n_ctx, ...)."
        )
    return out
