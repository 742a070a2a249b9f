"""Per-dataset readers (PROTOCOL.md 3.3–3.5).

Each reader returns the full ``(train, val, test)`` lists of :class:`Datum` for one dataset
folder, before few-shot sampling and base/new subsampling.

* Datasets with an authors' split JSON read it, preserving order.  When it is missing the
  split is generated from the raw files as 3.4 describes (three-way folder split, 80/20 routine,
  Flowers' 50/20/30, StanfordCars/Flowers ``.mat`` files — the latter need SciPy), using a private
  ``random.Random(seed)``, and written atomically under a file lock to the dataset folder (or to the
  writable cache folder when the dataset folder is read-only).  A generated split is **not** the
  authors' split: a warning says so and where to get the real file.
* FGVCAircraft reads the official variant text files.
* The ImageNet family scans folders.  Documented deviation (PROTOCOL.md 18.8): within a class folder
  the files are **sorted** by name instead of the raw directory order, so ImageNet few-shot draws
  are the same on every file system (they cannot reproduce the authors' ImageNet draws, which
  depended on their file system).  ``imagenet/preprocessed.pkl`` is neither read nor written.
* Hidden entries (names starting with a dot) are skipped in every listing.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections import OrderedDict
from collections.abc import Callable

from .cache import dir_writable, fallback_dir, lock_for
from .errors import DatasetError, DatasetNotFoundError, SplitFileError
from .registry import DatasetInfo
from .sources import CLASSNAMES
from .splitfile import listdir_nohidden, read_split_json, split_three_way, split_trainval, write_split_json
from .types import Datum

logger = logging.getLogger(__name__)

Splits = tuple[list[Datum], list[Datum], list[Datum]]

CALTECH_IGNORED = ("BACKGROUND_Google", "Faces_easy")
CALTECH_RENAME = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}
EUROSAT_RENAME = {
    "AnnualCrop": "Annual Crop Land",
    "Forest": "Forest",
    "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road",
    "Industrial": "Industrial Buildings",
    "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land",
    "Residential": "Residential Buildings",
    "River": "River",
    "SeaLake": "Sea or Lake",
}


# ---------------------------------------------------------------------------------------------
# Name rules
# ---------------------------------------------------------------------------------------------


def ucf_classname(action: str) -> str:
    """UCF101 CamelCase action -> words joined by underscores (``ApplyEyeMakeup`` ->
    ``Apply_Eye_Makeup``, ``YoYo`` -> ``Yo_Yo``): split before every capital letter."""
    return "_".join(re.findall(r"[A-Z][^A-Z]*", action))


def sun397_classname(key: str) -> str:
    """SUN397 class key (``b/bakery/shop``) -> display name (``shop bakery``)."""
    parts = key.strip("/").split("/")[1:]
    return " ".join(reversed(parts))


def cars_classname(meta_name: str) -> str:
    """StanfordCars meta name with the year moved to the front."""
    words = meta_name.strip().split(" ")
    return " ".join([words[-1]] + words[:-1])


def pets_classname(stem: str) -> str:
    """OxfordPets image stem (``american_bulldog_12``) -> ``american_bulldog``."""
    return "_".join(stem.split("_")[:-1]).lower()


# ---------------------------------------------------------------------------------------------
# JSON datasets (+ fallbacks that generate the JSON)
# ---------------------------------------------------------------------------------------------


def _need(path: str, what: str, info: DatasetInfo, split_path: str) -> str:
    if not os.path.exists(path):
        raise SplitFileError(
            f"{info.paper_name}: split file {split_path} not found, and {what} {path} needed to "
            f"generate one is missing too. The authors' split file is required for comparable "
            f"results: get it from {info.download} and put it at {split_path}"
        )
    return path


def _read_lines(path: str) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [ln.rstrip("\n").rstrip("\r") for ln in f]


def _gen_caltech(info, ddir, image_dir, rng, sp):
    _need(image_dir, "image folder", info, sp)
    return split_three_way(image_dir, rng, ignored=CALTECH_IGNORED, new_cnames=CALTECH_RENAME)


def _gen_folders(info, ddir, image_dir, rng, sp):
    _need(image_dir, "image folder", info, sp)
    return split_three_way(image_dir, rng)


def _gen_eurosat(info, ddir, image_dir, rng, sp):
    _need(image_dir, "image folder", info, sp)
    return split_three_way(image_dir, rng, new_cnames=EUROSAT_RENAME)


def _gen_pets(info, ddir, image_dir, rng, sp):
    def read(fname):
        items = []
        for ln in _read_lines(_need(os.path.join(ddir, "annotations", fname), "annotation file", info, sp)):
            if not ln.strip() or ln.startswith("#"):
                continue
            stem, cid = ln.strip().split(" ")[:2]
            items.append(Datum(os.path.join(image_dir, stem + ".jpg"), int(cid) - 1, pets_classname(stem)))
        return items

    train, val = split_trainval(read("trainval.txt"), rng)
    return train, val, read("test.txt")


def _gen_sun397(info, ddir, image_dir, rng, sp):
    keys = [
        ln.strip()[1:]
        for ln in _read_lines(_need(os.path.join(ddir, "ClassName.txt"), "class list", info, sp))
        if ln.strip()
    ]
    key2lab = {k: i for i, k in enumerate(keys)}

    def read(fname):
        items = []
        for ln in _read_lines(_need(os.path.join(ddir, fname), "partition file", info, sp)):
            rel = ln.strip()[1:]
            if not rel:
                continue
            key = os.path.dirname(rel)
            items.append(Datum(os.path.join(image_dir, rel), key2lab[key], sun397_classname(key)))
        return items

    train, val = split_trainval(read("Training_01.txt"), rng)
    return train, val, read("Testing_01.txt")


def _gen_ucf101(info, ddir, image_dir, rng, sp):
    tdir = os.path.join(ddir, "ucfTrainTestlist")
    cname2lab = {}
    for ln in _read_lines(_need(os.path.join(tdir, "classInd.txt"), "class index", info, sp)):
        if ln.strip():
            lab, action = ln.strip().split(" ")
            cname2lab[action] = int(lab) - 1

    def read(fname):
        items = []
        for ln in _read_lines(_need(os.path.join(tdir, fname), "list file", info, sp)):
            if not ln.strip():
                continue
            action, fname_ = ln.strip().split(" ")[0].split("/")
            name = ucf_classname(action)
            items.append(Datum(os.path.join(image_dir, name, fname_.replace(".avi", ".jpg")), cname2lab[action], name))
        return items

    train, val = split_trainval(read("trainlist01.txt"), rng)
    return train, val, read("testlist01.txt")


def _loadmat(path):
    try:
        from scipy.io import loadmat
    except ImportError as e:  # pragma: no cover - scipy is normally installed
        raise SplitFileError(f"reading {path} needs SciPy (pip install scipy), or use the authors' split JSON") from e
    return loadmat(path)


def _gen_flowers(info, ddir, image_dir, rng, sp):
    labels = _loadmat(_need(os.path.join(ddir, "imagelabels.mat"), "label file", info, sp))
    labels = [int(x) for x in labels["labels"].ravel()]
    with open(_need(os.path.join(ddir, "cat_to_name.json"), "class-name file", info, sp)) as f:
        lab2cname = json.load(f)
    groups: dict[int, list[str]] = OrderedDict()
    for i, lab in enumerate(labels):
        groups.setdefault(lab, []).append(os.path.join(image_dir, f"image_{i + 1:05d}.jpg"))
    train, val, test = [], [], []
    for lab, ims in groups.items():
        rng.shuffle(ims)
        n = len(ims)
        n_train, n_val = round(n * 0.5), round(n * 0.2)
        if not (n_train > 0 and n_val > 0 and n - n_train - n_val > 0):
            raise SplitFileError(f"Flowers class {lab} has only {n} images; use the split JSON")
        items = [Datum(p, lab - 1, lab2cname[str(lab)]) for p in ims]
        train += items[:n_train]
        val += items[n_train : n_train + n_val]
        test += items[n_train + n_val :]
    return train, val, test


def _mat_str(x) -> str:
    while hasattr(x, "shape") and getattr(x, "size", 0) == 1 and getattr(x, "ndim", 0) > 0:
        x = x.ravel()[0]
    return str(x)


def _gen_cars(info, ddir, image_dir, rng, sp):
    meta = _loadmat(_need(os.path.join(ddir, "devkit", "cars_meta.mat"), "meta file", info, sp))
    names = [cars_classname(_mat_str(n)) for n in meta["class_names"].ravel()]

    def read(matpath, folder):
        annos = _loadmat(_need(matpath, "annotation file", info, sp))["annotations"].ravel()
        items = []
        for a in annos:
            fname = _mat_str(a["fname"])
            lab = int(_mat_str(a["class"])) - 1
            items.append(Datum(os.path.join(ddir, folder, fname), lab, names[lab]))
        return items

    train, val = split_trainval(read(os.path.join(ddir, "devkit", "cars_train_annos.mat"), "cars_train"), rng)
    test = read(os.path.join(ddir, "cars_test_annos_withlabels.mat"), "cars_test")
    return train, val, test


GENERATORS: dict[str, Callable] = {
    "caltech101": _gen_caltech,
    "food101": _gen_folders,
    "dtd": _gen_folders,
    "eurosat": _gen_eurosat,
    "oxford_pets": _gen_pets,
    "sun397": _gen_sun397,
    "ucf101": _gen_ucf101,
    "oxford_flowers": _gen_flowers,
    "stanford_cars": _gen_cars,
}


def split_json_candidates(info: DatasetInfo, ddir: str, cache_dir: str | None) -> list[str]:
    """Where a split JSON is looked for: the dataset folder, then the writable cache folder."""
    return [os.path.join(ddir, info.split_file), os.path.join(fallback_dir(info.key, cache_dir), info.split_file)]


def read_json_dataset(
    info: DatasetInfo, ddir: str, seed: int = 1, cache_dir: str | None = None, generate: bool = True
) -> Splits:
    image_dir = os.path.join(ddir, info.image_dir) if info.image_dir else ddir
    primary, alt = split_json_candidates(info, ddir, cache_dir)
    fix = f"get the authors' file from {info.download} and put it at {primary}"
    for p in (primary, alt):
        if os.path.isfile(p):
            return read_split_json(p, image_dir, fix)
    gen = GENERATORS.get(info.key)
    if gen is None or not generate:
        raise SplitFileError(f"{info.paper_name}: split file {primary} not found; the split JSON is required: {fix}")
    target = primary if dir_writable(ddir) else alt
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with lock_for(target):
        if os.path.isfile(target):  # another process generated it while we waited
            return read_split_json(target, image_dir, fix)
        rng = random.Random(seed)
        train, val, test = gen(info, ddir, image_dir, rng, primary)
        write_split_json(target, train, val, test, image_dir)
    logger.warning(
        "%s: split file %s was missing; GENERATED a new random split (seed %s) and wrote it to %s. "
        "This is NOT the authors' split, so results are not comparable with the paper; %s.",
        info.paper_name,
        primary,
        seed,
        target,
        fix,
    )
    return read_split_json(target, image_dir, fix)


# ---------------------------------------------------------------------------------------------
# FGVCAircraft
# ---------------------------------------------------------------------------------------------


def read_fgvc(info: DatasetInfo, ddir: str, **_) -> Splits:
    image_dir = os.path.join(ddir, info.image_dir)
    vpath = os.path.join(ddir, "variants.txt")
    hint = (
        f"expected the data/ folder of fgvc-aircraft-2013b renamed to {ddir} "
        f"(images/<id>.jpg, variants.txt, images_variant_{{train,val,test}}.txt)"
    )
    if not os.path.isfile(vpath):
        raise SplitFileError(f"FGVCAircraft: {vpath} not found; {hint}")
    classnames = [ln.strip() for ln in _read_lines(vpath) if ln.strip()]
    cname2lab = {c: i for i, c in enumerate(classnames)}
    out = []
    for split in ("train", "val", "test"):
        path = os.path.join(ddir, f"images_variant_{split}.txt")
        if not os.path.isfile(path):
            raise SplitFileError(f"FGVCAircraft: {path} not found; {hint}")
        items = []
        for i, ln in enumerate(_read_lines(path)):
            parts = ln.strip().split(" ")
            if not parts[0]:
                continue
            cname = " ".join(parts[1:])
            if cname not in cname2lab:
                raise SplitFileError(f"FGVCAircraft: {path} line {i + 1}: variant {cname!r} is not in {vpath}; {hint}")
            items.append(Datum(os.path.join(image_dir, parts[0] + ".jpg"), cname2lab[cname], cname))
        out.append(items)
    return out[0], out[1], out[2]


# ---------------------------------------------------------------------------------------------
# ImageNet family
# ---------------------------------------------------------------------------------------------


def read_classnames(path: str) -> OrderedDict[str, str]:
    """Parse ``classnames.txt``: ``<wnid> <name with spaces>`` per line, in file order."""
    if not os.path.isfile(path):
        raise DatasetNotFoundError(
            f"class-name file {path} not found; it holds 1,000 lines '<wnid> <class name>' "
            f"(CLIP's ImageNet names): get it from {CLASSNAMES.url} and put a copy at {path}"
        )
    out: OrderedDict[str, str] = OrderedDict()
    for i, ln in enumerate(_read_lines(path)):
        ln = ln.strip()
        if not ln:
            continue
        parts = ln.split(" ")
        if len(parts) < 2:
            raise DatasetError(f"{path} line {i + 1}: {ln!r} is not '<wnid> <class name>'")
        out[parts[0]] = " ".join(parts[1:])
    return out


def _scan_wnid_folders(folder: str, classnames: dict[str, str], cn_path: str, ignore=("README.txt",)) -> list[Datum]:
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"image folder {folder} not found; expected {folder}/<wnid>/*")
    loose = [n for n in listdir_nohidden(folder) if n not in ignore and not os.path.isdir(os.path.join(folder, n))]
    wnids = listdir_nohidden(folder, dirs_only=True)
    if not wnids:
        raise DatasetError(
            f"{folder} has no class sub-folders (found {len(loose)} loose files); the images must "
            f"be arranged into one folder per wnid: {folder}/<wnid>/<image>"
        )
    items = []
    for label, wnid in enumerate(wnids):
        if wnid not in classnames:
            raise DatasetError(
                f"folder {os.path.join(folder, wnid)} is not a wnid listed in {cn_path}; remove it or fix {cn_path}"
            )
        cdir = os.path.join(folder, wnid)
        name = classnames[wnid]
        items += [Datum(os.path.join(cdir, f), label, name) for f in listdir_nohidden(cdir)]
    return items


def read_imagenet(info: DatasetInfo, ddir: str, **_) -> Splits:
    cn_path = os.path.join(ddir, "classnames.txt")
    classnames = read_classnames(cn_path)
    img = os.path.join(ddir, info.image_dir)
    train = _scan_wnid_folders(os.path.join(img, "train"), classnames, cn_path)
    test = _scan_wnid_folders(os.path.join(img, "val"), classnames, cn_path)
    return train, test, test  # no validation split: the test set doubles as val


def read_imagenetv2(info: DatasetInfo, ddir: str, **_) -> Splits:
    cn_path = os.path.join(ddir, "classnames.txt")
    names = list(read_classnames(cn_path).values())
    folder = os.path.join(ddir, info.image_dir)
    if not os.path.isdir(folder):
        raise DatasetNotFoundError(f"image folder {folder} not found; expected {folder}/0 … /999/")
    items = []
    for label, name in enumerate(names):  # numeric order 0, 1, 2, … (not string order)
        cdir = os.path.join(folder, str(label))
        if not os.path.isdir(cdir):
            raise DatasetNotFoundError(
                f"ImageNetV2: class folder {cdir} not found; expected one folder per class index "
                f"0 … {len(names) - 1} under {folder} (matched-frequency release)"
            )
        items += [Datum(os.path.join(cdir, f), label, name) for f in listdir_nohidden(cdir)]
    return items, [], items


def read_wnid_variant(info: DatasetInfo, ddir: str, **_) -> Splits:
    cn_path = os.path.join(ddir, "classnames.txt")
    classnames = read_classnames(cn_path)
    items = _scan_wnid_folders(os.path.join(ddir, info.image_dir), classnames, cn_path)
    return items, [], items


READERS: dict[str, Callable[..., Splits]] = {
    "json": read_json_dataset,
    "fgvc_txt": read_fgvc,
    "imagenet": read_imagenet,
    "imagenetv2": read_imagenetv2,
    "wnid_folders": read_wnid_variant,
}


def read_dataset(
    info: DatasetInfo, ddir: str, seed: int = 1, cache_dir: str | None = None, generate: bool = True
) -> Splits:
    """Full train/val/test lists of a dataset folder (no sampling, no subsampling)."""
    if not os.path.isdir(ddir):
        raise DatasetNotFoundError(
            f"{info.paper_name}: dataset folder {ddir} not found; expected the layout of "
            f"PROTOCOL.md 3.2 under the data root ({info.folder}/). Get it from: {info.download}"
        )
    return READERS[info.source](info, ddir, seed=seed, cache_dir=cache_dir, generate=generate)
