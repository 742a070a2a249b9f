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
