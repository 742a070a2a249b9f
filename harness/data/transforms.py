"""Image transforms (PROTOCOL.md 5)."""

from __future__ import annotations

from .constants import CLIP_MEAN, CLIP_STD, CROP_SCALE


def build_transform(train: bool, size: int = 224, crop_scale: tuple[float, float] = CROP_SCALE):
    """Train: RandomResizedCrop(size, scale ``crop_scale`` (0.08, 1), bicubic) + horizontal flip; test:
    resize the short side to ``size`` (bicubic) + center crop.  Both end with ToTensor + CLIP normalisation."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    bicubic = InterpolationMode.BICUBIC
    norm = [T.ToTensor(), T.Normalize(mean=CLIP_MEAN, std=CLIP_STD)]
    if train:
        return T.Compose(
            [
                T.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=bicubic),
                T.RandomHorizontalFlip(p=0.5),
                *norm,
            ]
        )
    return T.Compose([T.Resize(size, interpolation=bicubic), T.CenterCrop(size), *norm])
