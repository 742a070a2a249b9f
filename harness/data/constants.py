"""Torch-free constants."""

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# The training RandomResizedCrop's scale range: Dassl's default (INPUT.RRCROP_SCALE), PROTOCOL.md 5.
CROP_SCALE = (0.08, 1.0)
# The training augmentations a method may declare (methods.parts.base ``train_augmentation``).
AUGMENTATIONS = ("crop_flip", "randaugment")
# RandAugment as Dassl's defaults set it (INPUT.RANDAUGMENT_N 2, INPUT.RANDAUGMENT_M 10 on its 0..30 scale):
# (ops per image, magnitude, magnitude bins) for torchvision's RandAugment, whose bins 0..30 give m / 30.
RANDAUGMENT = (2, 10, 31)
