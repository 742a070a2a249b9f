"""Where each benchmark dataset comes from: every archive and file, its size and checksum, and where it
goes under the dataset folder. ``python -m harness.data prepare`` (``harness.data.prepare``) reads this
table; ``check`` and the readers' messages describe it (:func:`where_from`); the Data table of docs/data.md is
:func:`markdown_table`.

Facts: the URLs and MD5s of the archives torchvision downloads are torchvision's (``torchvision.datasets``:
DTD, Food101, EuroSAT, OxfordIIITPet, Flowers102, SUN397, Caltech101, ImageNet's ``ARCHIVE_META``, and
StanfordCars' before its site went away); the split files are CoOp's (``split_zhou_*.json``, CoOp's
DATASETS.md, PROTOCOL.md 3.2), on Google Drive; ImageNet-A/R's MD5s are the ones the robustness libraries
publish. ``md5=None``: no checksum is published (the archive is then checked by decoding its images).
Sizes are for progress and the README only (approximate where the publisher lists none); the MD5 is what
verifies a file.

A mirror (or the tests' local server) replaces URLs and checksums without touching this file: the JSON
file named by ``$HARNESS_DATA_SOURCES`` (or ``prepare --sources FILE``) maps a dataset key to
``{file name: {"url": ..., "md5": ..., "size": ...}}``; what it names replaces the table's fields.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass

ENV_SOURCES = "HARNESS_DATA_SOURCES"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


def _drive(file_id: str) -> str:
    return f"https://drive.google.com/uc?id={file_id}"


@dataclass(frozen=True)
class Source:
    """One published file of a dataset."""

    name: str  # the file's published name: what `prepare --from DIR` looks for in DIR
    url: str | None  # None: behind a login or licence page, fetched by hand (DatasetSources.manual says how)
    md5: str | None  # published checksum; None: none is published
    size: int | None = None  # bytes (progress, README); None: not known
    # Where it goes, relative to the dataset folder: the folder an archive is extracted into, the folder a
    # plain file is copied into; None: read while preparing (ImageNet's devkit), not kept.
    into: str | None = ""
    # For an archive: the path inside it that holds what the dataset needs ("" the whole archive). A folder:
    # its contents go into ``into``; an archive inside the archive (Caltech's zip): extracted into ``into``.
    take: str = ""
    # An archive of archives (ImageNet's training set: one tar per class): each inner archive is extracted
    # into a folder of its own name, then removed.
    inner_archives: bool = False

    @property
    def is_archive(self) -> bool:
        return self.name.endswith(ARCHIVE_SUFFIXES)


@dataclass(frozen=True)
class DatasetSources:
    files: tuple[Source, ...]
    page: str  # the dataset's home page
    licence: str  # the terms its site states (read them before use)
    manual: str = ""  # why and how the files without a URL are fetched by hand
    arrange: str | None = None  # a step after extraction (harness.data.prepare.ARRANGERS)

    @property
    def size(self) -> int:
        return sum(f.size or 0 for f in self.files)

    @property
    def needs_manual_download(self) -> bool:
        return any(f.url is None for f in self.files)


# CLIP's ImageNet class names, as CoOp distributes them (the ImageNet variants need a copy too)
CLASSNAMES = Source("classnames.txt", _drive("1-61f_ol79pViBFDG_IDlUQSwoLcn2XXF"), None, 21_000)
_VGG = "https://www.robots.ox.ac.uk/~vgg/data/"


def _split(paper: str, file_id: str) -> Source:
    return Source(f"split_zhou_{paper}.json", _drive(file_id), None)


SOURCES: dict[str, DatasetSources] = {
    "imagenet": DatasetSources(
        (
            Source(
                "ILSVRC2012_img_train.tar",
                None,
                "1d675b47d978889d74fa0da5fadfb00e",
                147_897_477_120,
                into="images/train",
                inner_archives=True,
            ),
            Source(
                "ILSVRC2012_img_val.tar", None, "29b22e2961454d5413ddabcf34fc5622", 6_744_924_160, into="images/val"
            ),
            Source("ILSVRC2012_devkit_t12.tar.gz", None, "fa75699e90414af021442c21a62c3abf", 2_568_145, into=None),
            CLASSNAMES,
        ),
        page="https://image-net.org/challenges/LSVRC/2012/2012-downloads.php",
        licence="ImageNet terms of access (non-commercial research)",
        manual="log in at https://image-net.org (accept the terms of access), open "
        "https://image-net.org/challenges/LSVRC/2012/2012-downloads.php and fetch the training images "
        "(Task 1 & 2), the validation images (all tasks) and the development kit (Task 1 & 2)",
        arrange="imagenet_val",
    ),
    "caltech101": DatasetSources(
        (
            Source(
                "caltech-101.zip",
                "https://data.caltech.edu/records/mzrjq-6wc02/files/caltech-101.zip",
                "3138e1922a9193bfa496528edbbc45d0",
                137_414_764,
                take="caltech-101/101_ObjectCategories.tar.gz",
            ),
            _split("Caltech101", "1hyarUivQE36mY6jSomru6Fjd-JzwcCzN"),
        ),
        page="https://data.caltech.edu/records/mzrjq-6wc02",
        licence="CC BY 4.0",
    ),
    "oxford_pets": DatasetSources(
        (
            Source("images.tar.gz", _VGG + "pets/data/images.tar.gz", "5c4f3ee8e5d25df40f4fd59a7f44e54c", 791_918_971),
            Source(
                "annotations.tar.gz",
                _VGG + "pets/data/annotations.tar.gz",
                "95a8c909bbe2e81eed6a22bccdf3f68f",
                19_173_078,
            ),
            _split("OxfordPets", "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs"),
        ),
        page=_VGG + "pets/",
        licence="CC BY-SA 4.0",
    ),
    "stanford_cars": DatasetSources(
        (
            Source("cars_train.tgz", None, "065e5b463ae28d29e77c1b4b166cfe61", 979_269_282),
            Source("cars_test.tgz", None, "4ce7ebf6a94d07f1952d94dd34c4d501", 977_350_468),
            Source("car_devkit.tgz", None, "c3b158d763b6e2245038c8ad08e45376", 330_960),
            Source("cars_test_annos_withlabels.mat", None, "b0a2b23655a3edd16d84508592a98d10", 185_758),
            _split("StanfordCars", "1ObCFbaAgVu0I-k_Au-gIUcefirdAuizT"),
        ),
        page="https://ai.stanford.edu/~jkrause/cars/car_dataset.html",
        licence="ImageNet-style terms (non-commercial research)",
        manual="the original site (ai.stanford.edu/~jkrause/car196/) no longer serves the files (torchvision "
        "dropped its download for that reason); copy the four original files from a mirror you trust "
        "(their MD5s are checked)",
    ),
    "oxford_flowers": DatasetSources(
        (
            Source(
                "102flowers.tgz", _VGG + "flowers/102/102flowers.tgz", "52808999861908f626f3c1f4e79d11fa", 344_862_509
            ),
            Source("imagelabels.mat", _VGG + "flowers/102/imagelabels.mat", "e0620be6f572b9609742df49c70aed4d", 502),
            Source("cat_to_name.json", _drive("1AkcxCXeK_RCGCEC_GvmWxjcjaNhu-at0"), None),
            _split("OxfordFlowers", "1Pp0sRXzZFZq15zVOzKjKBu4A9i01nozT"),
        ),
        page=_VGG + "flowers/102/",
        licence="none stated on the site",
    ),
    "food101": DatasetSources(
        (
            Source(
                "food-101.tar.gz",
                "http://data.vision.ee.ethz.ch/cvl/food-101.tar.gz",
                "85eeb15f3717b99a5da872d97d918f87",
                4_996_278_331,
                take="food-101",
            ),
            _split("Food101", "1QK0tGi096I0Ba6kggatX1ee6dJFIcEJl"),
        ),
        page="https://data.vision.ee.ethz.ch/cvl/datasets_extra/food-101/",
        licence="images under Foodspotting's terms (research use)",
    ),
    "fgvc_aircraft": DatasetSources(
        (
            Source(
                "fgvc-aircraft-2013b.tar.gz",
                _VGG + "fgvc-aircraft/archives/fgvc-aircraft-2013b.tar.gz",
                None,
                2_753_340_328,
                take="fgvc-aircraft-2013b/data",
            ),
        ),
        page=_VGG + "fgvc-aircraft/",
        licence="non-commercial research only",
    ),
    "sun397": DatasetSources(
        (
            Source(
                "SUN397.tar.gz",
                "http://vision.princeton.edu/projects/2010/SUN/SUN397.tar.gz",
                "8ca2778205c41d23104230ba66911c7a",
                39_800_000_000,
            ),
            _split("SUN397", "1y2RD81BYuiyvebdN-JymPfyWYcd8_MUq"),
        ),
        page="https://vision.princeton.edu/projects/2010/SUN/",
        licence="none stated on the site",
    ),
    "dtd": DatasetSources(
        (
            Source(
                "dtd-r1.0.1.tar.gz",
                _VGG + "dtd/download/dtd-r1.0.1.tar.gz",
                "fff73e5086ae6bdbea199a49dfb8a4c1",
                625_239_812,
                take="dtd",
            ),
            _split("DescribableTextures", "1u3_QfB467jqHgNXC00UIzbLZRQCg2S7x"),
        ),
        page=_VGG + "dtd/",
        licence="research use",
    ),
    "eurosat": DatasetSources(
        (
            # torchvision's mirror of the original EuroSAT.zip (RGB), which holds 2750/<Class>/
            Source(
                "EuroSAT.zip",
                "https://huggingface.co/datasets/torchgeo/eurosat/resolve/"
                "c877bcd43f099cd0196738f714544e355477f3fd/EuroSAT.zip",
                "c8fa014336c82ac7804f0398fcb19387",
                94_280_567,
            ),
            _split("EuroSAT", "1Ip7yaCWFi0eaOFUGga0lUdVi_DDQth1o"),
        ),
        page="https://github.com/phelber/EuroSAT",
        licence="MIT",
    ),
    "ucf101": DatasetSources(
        (
            Source("UCF-101-midframes.zip", _drive("10Jqome3vtUA2keJkNanAiFpgbyC9Hc2O"), None, 1_900_000_000),
            _split("UCF101", "1I0S0q91hJfsV9Gf4xDIjgDq4AqBNJb1y"),
        ),
        page="https://www.crcv.ucf.edu/data/UCF101.php (middle frames: CoOp's authors)",
        licence="none stated on the site",
    ),
    "imagenetv2": DatasetSources(
        (
            Source(
                "imagenetv2-matched-frequency.tar.gz",
                "https://huggingface.co/datasets/vaishaal/ImageNetV2/resolve/main/imagenetv2-matched-frequency.tar.gz",
                None,
                1_261_000_000,
            ),
            CLASSNAMES,
        ),
        page="https://github.com/modestyachts/ImageNetV2",
        licence="MIT",
    ),
    "imagenet_sketch": DatasetSources(
        (
            Source(
                "ImageNet-Sketch.zip",
                _drive("1Mj0i5HBthqH1p_yeXzsg22gZduvgoNeA"),
                None,
                8_900_000_000,
                into="images",
                take="sketch",
            ),
            CLASSNAMES,
        ),
        page="https://github.com/HaohanWang/ImageNet-Sketch",
        licence="MIT",
    ),
    "imagenet_a": DatasetSources(
        (
            Source(
                "imagenet-a.tar",
                "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar",
                "c3e55429088dc681f30d81f4726b6595",
                690_000_000,
            ),
            CLASSNAMES,
        ),
        page="https://github.com/hendrycks/natural-adv-examples",
        licence="MIT",
    ),
    "imagenet_r": DatasetSources(
        (
            Source(
                "imagenet-r.tar",
                "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar",
                "a61312130a589d0ca1a8fca1f2bd3337",
                2_160_000_000,
            ),
            CLASSNAMES,
        ),
        page="https://github.com/hendrycks/imagenet-r",
        licence="MIT",
    ),
}


def _overrides(path: str | None) -> dict:
    path = path if path is not None else os.environ.get(ENV_SOURCES, "")
    if not path:
        return {}
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(
            f"cannot read the sources file {path} ({e}); expected JSON {{dataset: {{file: {{url, md5}}}}}}"
        ) from e
    if not isinstance(obj, dict) or not all(isinstance(v, dict) for v in obj.values()):
        raise ValueError(
            f"sources file {path}: expected a JSON object {{dataset key: {{file name: {{url, md5, size}}}}}}"
        )
    return obj


def sources_for(key: str, overrides: str | None = None) -> DatasetSources | None:
    """The sources of dataset ``key`` (None: not in the table), with the overrides file's fields applied
    (``overrides``: a path; default ``$HARNESS_DATA_SOURCES``)."""
    ds = SOURCES.get(key)
    if ds is None:
        return None
    changes = _overrides(overrides).get(key, {})
    names = {f.name for f in ds.files}
    for name, fields in changes.items():
        bad = set(fields) - {"url", "md5", "size"} if isinstance(fields, dict) else {type(fields).__name__}
        if name not in names or bad:
            raise ValueError(
                f"sources override for {key}: {name!r} {sorted(bad) or ''} is not a file of the table "
                f"({', '.join(sorted(names))}) with fields url, md5, size"
            )
        md5 = fields.get("md5")
        if md5 is not None and not (isinstance(md5, str) and re.fullmatch(r"[0-9a-fA-F]{32}", md5)):
            # else a good download would be compared with it, found different, and deleted
            raise ValueError(
                f"sources override for {key}: {name!r} has md5 {md5!r}, expected 32 hexadecimal digits "
                "(the file's MD5, as `md5sum` prints it) or null when none is published"
            )
        if md5 is not None:
            changes[name] = {**fields, "md5": md5.lower()}
    files = tuple(dataclasses.replace(f, **changes[f.name]) if f.name in changes else f for f in ds.files)
    return dataclasses.replace(ds, files=files)


def file_md5(path: str, chunk: int = 1 << 20) -> str:
    """MD5 of a file (what the table's checksums are; hashlib, so that `check` needs no torch)."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def human_size(n: int | None) -> str:
    if not n:
        return "?"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}" if n < 10 * scale else f"{n / scale:.0f} {unit}"
    return f"{n} B"


def _shown_url(url: str) -> str:
    return url.replace("https://drive.google.com/uc?id=", "https://drive.google.com/file/d/")


def where_from(key: str) -> str:
    """One line for messages: each file and where it comes from, and the command that fetches them."""
    ds = SOURCES[key]
    parts = [f"{f.name} ({_shown_url(f.url) if f.url else 'manual download'})" for f in ds.files]
    cmd = f"python -m harness.data prepare --root DATA_ROOT --dataset {key}"
    if ds.needs_manual_download:
        return "; ".join(parts) + f"; `{cmd} --from DIR` verifies and arranges them, DIR holding them all ({ds.manual})"
    return "; ".join(parts) + f"; `{cmd}` fetches, verifies and arranges them"


TABLE_HEADER = "| dataset | size | licence (as the site states) | download |\n|---|---|---|---|\n"


def markdown_table() -> str:
    """The Data table of docs/data.md: one row per dataset of the table."""
    rows = []
    for key, ds in SOURCES.items():
        how = "**manual** (`--from DIR`)" if ds.needs_manual_download else "automatic"
        rows.append(f"| `{key}` | {human_size(ds.size)} | {ds.licence} | {how} |")
    return TABLE_HEADER + "\n".join(rows) + "\n"


__all__ = ["ENV_SOURCES", "SOURCES", "DatasetSources", "Source", "markdown_table", "sources_for", "where_from"]
