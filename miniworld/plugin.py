"""What the miniature world adds to the harness: its pre-trained backbone and its demo dataset.

Loaded through the ``prompt_harness.plugins`` entry point (see ``harness.plugins``).
"""

from harness.backbone import register_backbone
from harness.data import DatasetInfo, register_dataset
from miniworld import world

register_backbone(
    "tiny-pretrained",
    build=world.load_pretrained_tiny_for,
    prepare=world.prepare_pretrained,
    description="the miniature world's tiny CLIP (pre-trained here on first use, then cached)",
)
register_dataset(
    DatasetInfo(
        world.DATASET_KEY,
        "MiniWorld",
        world.DATASET_DIR,
        "images",
        world.SPLIT_FILE,
        len(world.DEMO_PAIRS),
        tuple(n * len(world.DEMO_PAIRS) for n in world.DEMO_PER_CLASS),
        download="generated: python -m miniworld dataset --root DATA_ROOT",
        generate=world.make_demo_dataset,
    )
)
