"""What the miniature world adds to the harness: its pre-trained backbone and its demo datasets.

Loaded through the ``prompt_harness.plugins`` entry point (see ``clipcore.plugins``).
"""

from clipcore.backbone import register_backbone
from harness.data import DatasetInfo, register_dataset
from miniworld import datasets, pretrain
from miniworld.vocab import DEMO_DATASETS

register_backbone(
    "tiny-pretrained",
    build=pretrain.load_pretrained_tiny_for,
    prepare=pretrain.prepare_pretrained,
    description="the miniature world's tiny CLIP (pre-trained here on first use, then cached)",
    file=pretrain.cache_path,
    published=pretrain.published_sha256,
)
for ds in DEMO_DATASETS:
    register_dataset(
        DatasetInfo(
            ds.key,
            ds.paper_name,
            ds.folder,
            "images",
            ds.split_file,
            len(ds.classes),
            tuple(n * len(ds.classes) for n in ds.per_class),
            download="generated: python -m miniworld dataset --root DATA_ROOT",
            generate=datasets.generator(ds.key),
        )
    )
