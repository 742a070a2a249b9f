"""Torch-free constants."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The training RandomResizedCrop's scale range: Dassl's default (INPUT.RRCROP_SCALE), PROTOCOL.md 5.
CROP_SCALE = (0.08, 1.0)
