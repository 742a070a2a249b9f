import os

import pytest
import torch

# Tests run on the CPU, deterministic and quiet; W&B never goes online from a test.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

CLASSNAMES = ["golden_retriever", "cat", "sea lake", "Apply_Eye_Makeup", "2000 AM General Hummer SUV"]


@pytest.fixture(scope="session")
def tiny_clip():
    from harness import load_clip

    return load_clip("tiny")


@pytest.fixture
def classnames():
    return list(CLASSNAMES)


@pytest.fixture
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(3, 3, 224, 224, generator=generator)


@pytest.fixture(scope="module")
def deep_clip():
    """A tiny CLIP with 4 blocks per tower, for the deep-prompt methods (MaPLe, PromptSRC)."""
    from clipcore import backbone

    return backbone.freeze(backbone.build_random_clip("tiny", text_layers=4, vision_layers=4, image_size=64))


@pytest.fixture
def small_images():
    return torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """A synthetic dataset of 5 classes (8 train, 4 val, 6 test pictures each, 32 px) for a module's jobs through
    the runner; a test module with other needs defines its own ``data_root``, which wins over this one."""
    from fake_data import make_synthetic_dataset

    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        str(root), num_classes=5, train_per_class=8, val_per_class=4, test_per_class=6, image_size=32
    )
    return str(root)
