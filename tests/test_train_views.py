"""The training images a method declares (``train_augmentation``, ``train_views``): Dassl's RandAugment
setting and several independent views of each image, read by the runner when it builds the train loader."""

import pytest
import torch
from PIL import Image
from torchvision.transforms import RandAugment

import methods
from harness import data
from harness.data.constants import RANDAUGMENT


@pytest.fixture
def picture():
    g = torch.Generator().manual_seed(0)
    return Image.fromarray((torch.rand(40, 60, 3, generator=g) * 255).to(torch.uint8).numpy())


def test_two_randaugment_views_are_independent_full_images(picture):
    torch.manual_seed(0)
    transform = data.with_views(data.build_transform(True, 32, augmentation="randaugment"), 2)
    views = transform(picture)
    assert views.shape == (2, 3, 32, 32)  # resized to size x size, the aspect not kept (Dassl's Resize(SIZE))
    assert not torch.equal(views[0], views[1])
    batch = torch.utils.data.default_collate([(transform(picture), 0), (transform(picture), 1)])
    assert batch[0].shape == (2, 2, 3, 32, 32)


def test_one_view_is_the_plain_transform(picture):
    assert data.with_views(data.build_transform(True, 32), 1)(picture).shape == (3, 32, 32)
    with pytest.raises(ValueError, match="'flip' is not one of"):
        data.build_transform(True, 32, augmentation="flip")


def test_randaugment_magnitude_is_dassls_fraction_of_each_range():
    # Dassl: val = m / 30 * (max - min) + min, n = 2, m = 10 (INPUT.RANDAUGMENT_N, _M); its rotation range is
    # 0..30 degrees and its shear 0..0.3, as torchvision's.
    n, m, bins = RANDAUGMENT
    assert (n, m) == (2, 10)
    space = RandAugment(num_ops=n, magnitude=m, num_magnitude_bins=bins)._augmentation_space(bins, (224, 224))
    assert float(space["Rotate"][0][m]) == pytest.approx(m / 30 * 30)
    assert float(space["ShearX"][0][m]) == pytest.approx(m / 30 * 0.3)


def test_every_method_but_coprompt_keeps_one_cropped_and_flipped_view():
    for name in methods.list_methods():
        cls = methods.method_class(name)
        expected = ("randaugment", 2) if name == "coprompt" else ("crop_flip", 1)
        assert (cls.train_augmentation, cls.train_views) == expected, name
