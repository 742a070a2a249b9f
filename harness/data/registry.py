"""Registry of the benchmark's datasets (PROTOCOL.md 3.1)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace

from clipcore.plugins import load_plugins

from .errors import UnknownDatasetError
from .sources import SOURCES, where_from


@dataclass(frozen=True)
class DatasetInfo:
    key: str  # config name, e.g. "oxford_pets"
    paper_name: str  # DATASET.NAME, e.g. "OxfordPets" (also the template-table key)
    folder: str  # folder under the data root
    image_dir: str  # folder (relative to ``folder``) that split paths are relative to
    split_file: str | None  # split JSON file name inside ``folder`` (None: no JSON)
    num_classes: int | None  # expected number of classes (None: any, for generated datasets)
    sizes: tuple[int | None, int | None, int | None]  # expected train / val / test sizes
    test_only: bool = False
    source: str = "json"  # json | fgvc_txt | imagenet | imagenetv2 | wnid_folders
    download: str = ""  # where to get the data (human readable; the benchmark's: harness.data.sources.where_from)
    label: str = ""  # its name in tables and figures, as the papers print it (default: the key)
    # For generated datasets: writes the dataset folder under a data root (generate(root) -> folder).
    generate: Callable[[str], str] | None = field(default=None, compare=False, repr=False)


def _json(key, paper, folder, image_dir, ncls, sizes, label=None):
    split = f"split_zhou_{paper}.json"
    return DatasetInfo(key, paper, folder, image_dir, split, ncls, sizes, label=label or paper)


# Where each dataset comes from is harness.data.sources' table; ``download`` is its one-line summary.
_ENTRIES = [
    DatasetInfo(
        "imagenet",
        "ImageNet",
        "imagenet",
        "images",
        None,
        1000,
        (1281167, 50000, 50000),
        source="imagenet",
        label="ImageNet",
    ),
    _json("caltech101", "Caltech101", "caltech-101", "101_ObjectCategories", 100, (4128, 1649, 2465)),
    _json("oxford_pets", "OxfordPets", "oxford_pets", "images", 37, (2944, 736, 3669)),
    _json("stanford_cars", "StanfordCars", "stanford_cars", "", 196, (6509, 1635, 8041)),
    _json("oxford_flowers", "OxfordFlowers", "oxford_flowers", "jpg", 102, (4093, 1633, 2463), label="Flowers102"),
    _json("food101", "Food101", "food-101", "images", 101, (50500, 20200, 30300)),
    DatasetInfo(
        "fgvc_aircraft",
        "FGVCAircraft",
        "fgvc_aircraft",
        "images",
        None,
        100,
        (3334, 3333, 3333),
        source="fgvc_txt",
        label="FGVCAircraft",
    ),
    _json("sun397", "SUN397", "sun397", "SUN397", 397, (15880, 3970, 19850)),
    _json("dtd", "DescribableTextures", "dtd", "images", 47, (2820, 1128, 1692), label="DTD"),
    _json("eurosat", "EuroSAT", "eurosat", "2750", 10, (13500, 5400, 8100)),
    _json("ucf101", "UCF101", "ucf101", "UCF-101-midframes", 101, (7639, 1898, 3783)),
    DatasetInfo(
        "imagenetv2",
        "ImageNetV2",
        "imagenetv2",
        "imagenetv2-matched-frequency-format-val",
        None,
        1000,
        (None, None, 10000),
        test_only=True,
        source="imagenetv2",
        label="ImageNetV2",
    ),
    DatasetInfo(
        "imagenet_sketch",
        "ImageNetSketch",
        "imagenet-sketch",
        "images",
        None,
        1000,
        (None, None, 50889),
        test_only=True,
        source="wnid_folders",
        label="ImageNet-Sketch",
    ),
    DatasetInfo(
        "imagenet_a",
        "ImageNetA",
        "imagenet-adversarial",
        "imagenet-a",
        None,
        200,
        (None, None, 7500),
        test_only=True,
        source="wnid_folders",
        label="ImageNet-A",
    ),
    DatasetInfo(
        "imagenet_r",
        "ImageNetR",
        "imagenet-rendition",
        "imagenet-r",
        None,
        200,
        (None, None, 30000),
        test_only=True,
        source="wnid_folders",
        label="ImageNet-R",
    ),
    # A small dataset in the authors' split-file layout, any number of classes: what the tests
    # generate (tests/fake_data.py), and a layout anyone can fill with their own images.
    DatasetInfo(
        "synthetic",
        "Synthetic",
        "synthetic",
        "images",
        "split_zhou_Synthetic.json",
        None,
        (None, None, None),
        download="your own images: synthetic/images/<class>/*.jpg and synthetic/split_zhou_Synthetic.json "
        'holding {"train", "val", "test"} lists of [path relative to images/, label, class name]',
    ),
]
_ENTRIES = [replace(e, download=where_from(e.key)) if e.key in SOURCES else e for e in _ENTRIES]

DATASETS: dict[str, DatasetInfo] = {e.key: e for e in _ENTRIES}

# Accepted spellings besides the keys: DATASET.NAME and the names used in COOP.md (PROTOCOL.md 18.10).
_ALIASES = {e.paper_name.lower(): e.key for e in _ENTRIES}
_ALIASES.update(
    {
        "imagenet-sketch": "imagenet_sketch",
        "imagenet-a": "imagenet_a",
        "imagenet-r": "imagenet_r",
        "describabletextures": "dtd",
        "oxfordflowers": "oxford_flowers",
        "flowers102": "oxford_flowers",
    }
)


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add a dataset (a plugin's generated dataset, a user's own) to the registry."""
    if info.key in DATASETS:
        raise ValueError(f"Dataset {info.key!r} is registered twice.")
    DATASETS[info.key] = info
    _ALIASES.setdefault(info.paper_name.lower(), info.key)
    return info


def list_datasets(include_synthetic: bool = True) -> list[str]:
    """Dataset keys in registry order (the 15 benchmark datasets, ``synthetic``, then plugins')."""
    load_plugins()
    return [k for k in DATASETS if include_synthetic or k != "synthetic"]


def get_info(name: str) -> DatasetInfo:
    """Registry entry for a key (also accepts ``DATASET.NAME`` spellings such as "OxfordPets")."""
    if isinstance(name, DatasetInfo):
        return name
    key = str(name).strip()
    if key not in DATASETS:
        load_plugins()
    if key in DATASETS:
        return DATASETS[key]
    alias = _ALIASES.get(key.lower()) or _ALIASES.get(key.lower().replace("_", ""))
    if alias:
        return DATASETS[alias]
    raise UnknownDatasetError(f"unknown dataset {name!r}; valid keys are: {', '.join(list_datasets())}")
