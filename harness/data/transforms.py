"""Image transforms (PROTOCOL.md 5)."""

from __future__ import annotations

from collections.abc import Callable

from .constants import AUGMENTATIONS, CLIP_MEAN, CLIP_STD, CROP_SCALE, RANDAUGMENT


def build_transform(
    train: bool,
    size: int = 224,
    crop_scale: tuple[float, float] = CROP_SCALE,
    augmentation: str = "crop_flip",
):
    """Train, ``augmentation`` "crop_flip": RandomResizedCrop(size, scale ``crop_scale`` (0.08, 1), bicubic) +
    horizontal flip (Dassl's ``["random_resized_crop", "random_flip", "normalize"]``); "randaugment": resize to
    size x size (bicubic) + RandAugment (Dassl's ``["randaugment", "normalize"]``, CoPrompt's; ``crop_scale``
    unused). Test: resize the short side to ``size`` (bicubic) + center crop. All end with ToTensor + CLIP
    normalisation."""
    from torchvision import transforms as T
    from torchvision.transforms import InterpolationMode

    if augmentation not in AUGMENTATIONS:
        raise ValueError(f"Training augmentation {augmentation!r} is not one of {sorted(AUGMENTATIONS)}.")
    bicubic = InterpolationMode.BICUBIC
    norm = [T.ToTensor(), T.Normalize(mean=CLIP_MEAN, std=CLIP_STD)]
    if train and augmentation == "randaugment":
        # Dassl resizes to INPUT.SIZE (a pair: no aspect kept) when no crop is listed, then its own RandAugment
        # (n 2, m 10 of 30). torchvision's at the same n and fraction m / 30 of each op's range stands in for
        # it: a documented deviation (PROTOCOL-successors-3.md CoPrompt 1: other ops and ranges).
        n, m, bins = RANDAUGMENT
        return T.Compose(
            [
                T.Resize((size, size), interpolation=bicubic),
                T.RandAugment(num_ops=n, magnitude=m, num_magnitude_bins=bins, interpolation=InterpolationMode.NEAREST),
                *norm,
            ]
        )
    if train:
        return T.Compose(
            [
                T.RandomResizedCrop(size, scale=tuple(crop_scale), interpolation=bicubic),
                T.RandomHorizontalFlip(p=0.5),
                *norm,
            ]
        )
    return T.Compose([T.Resize(size, interpolation=bicubic), T.CenterCrop(size), *norm])


class Views:
    """``views`` independent draws of ``transform`` of one image, stacked [views, C, H, W] (Dassl's
    ``DATALOADER.K_TRANSFORMS``); a batch of them is [B, views, C, H, W]."""

    def __init__(self, transform: Callable, views: int):
        if views < 2:
            raise ValueError(f"Views is for two or more views of an image, got {views}.")
        self.transform, self.views = transform, views

    def __call__(self, img):
        import torch

        return torch.stack([self.transform(img) for _ in range(self.views)])


def with_views(transform: Callable, views: int):
    """The training transform of a method declaring ``train_views``: ``transform`` itself for one view (a
    [C, H, W] tensor), ``Views`` for several ([views, C, H, W])."""
    return transform if views == 1 else Views(transform, views)
