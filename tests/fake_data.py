"""Test data: a small learnable dataset (``synthetic``) and fake on-disk layouts of the 15 benchmark
datasets.

Everything here is deterministic for a given ``seed`` (per-image generators are seeded from the
seed, class index and image index).
"""

from __future__ import annotations

import json
import os
import random
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from harness.data.splitfile import write_split_json
from harness.data.types import Datum

COLOURS: list[tuple[str, tuple[int, int, int]]] = [
    ("red", (220, 30, 30)),
    ("green", (30, 170, 50)),
    ("blue", (30, 60, 220)),
    ("yellow", (235, 215, 30)),
    ("purple", (140, 40, 170)),
    ("orange", (245, 140, 20)),
    ("cyan", (30, 200, 210)),
    ("pink", (245, 120, 180)),
    ("brown", (120, 75, 30)),
    ("black", (20, 20, 20)),
]
SHAPES = ["circle", "square", "triangle", "cross", "ring", "diamond"]


def tiny_run(data_root: str, out, **values) -> dict:
    """The run keys of a small CoOp job on the synthetic dataset and the tiny CLIP (base classes, scored on
    base and new), into ``<out>/run``; ``values`` override them. Tests build their specs from it."""
    return {
        "method": "coop",
        "dataset": "synthetic",
        "data_root": data_root,
        "backbone": "tiny",
        "precision": "fp32",
        "shots": 4,
        "seed": 1,
        "subsample": "base",
        "evaluate": [{"dataset": "synthetic", "subsample": "base"}, {"dataset": "synthetic", "subsample": "new"}],
        "epochs": 2,
        "batch_size": 4,
        "lr": 0.01,
        "num_workers": 0,
        "tracking": "none",
        "experiment": "test",
        "output_dir": os.path.join(str(out), "run"),
        **values,
    }


def synthetic_classes(num_classes: int) -> list[tuple[str, tuple[int, int, int], str]]:
    """(class name, RGB colour, shape) for each class; the first 10 differ in colour *and* shape."""
    nc, ns = len(COLOURS), len(SHAPES)
    if not 1 <= num_classes <= nc * ns:
        raise ValueError(f"num_classes must be in 1..{nc * ns}, got {num_classes}")
    out = []
    for i in range(num_classes):
        q, r = divmod(i, nc)
        cname, rgb = COLOURS[r]
        shape = SHAPES[(q * (nc + 1) + r) % ns]  # gcd(nc + 1, ns) = 1: all pairs distinct
        out.append((f"{cname}_{shape}", rgb, shape))
    return out


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, cx: float, cy: float, r: float, fill):
    box = [cx - r, cy - r, cx + r, cy + r]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    elif shape == "cross":
        w = r / 3
        draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
        draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
    elif shape == "ring":
        draw.ellipse(box, outline=fill, width=max(2, int(r / 2.5)))
    elif shape == "diamond":
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # pragma: no cover
        raise ValueError(shape)


def render_image(rgb, shape: str, size: int, rng: random.Random) -> Image.Image:
    """A coloured shape on a noisy light background, with position/size/colour jitter."""
    bg = tuple(rng.randint(170, 250) for _ in range(3))
    img = Image.new("RGB", (size, size), bg)
    # background noise: a few faint random blobs
    draw = ImageDraw.Draw(img)
    for _ in range(6):
        x, y, s = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(size / 16, size / 6)
        c = tuple(max(0, min(255, v + rng.randint(-40, 40))) for v in bg)
        draw.ellipse([x - s, y - s, x + s, y + s], fill=c)
    r = rng.uniform(0.2, 0.34) * size
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    fill = tuple(max(0, min(255, v + rng.randint(-25, 25))) for v in rgb)
    _draw_shape(draw, shape, cx, cy, r, fill)
    img = img.filter(ImageFilter.GaussianBlur(radius=rng.uniform(0.0, 0.8)))
    # per-pixel Gaussian noise (NumPy generator seeded from ``rng``: deterministic)
    nrng = np.random.default_rng(rng.getrandbits(64))
    arr = np.asarray(img, dtype=np.float32) + nrng.normal(0.0, rng.uniform(6, 14), (size, size, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "RGB")


def make_synthetic_dataset(
    root: str,
    num_classes: int = 10,
    train_per_class: int = 24,
    val_per_class: int = 6,
    test_per_class: int = 12,
    image_size: int = 64,
    seed: int = 0,
) -> str:
    """Write ``<root>/synthetic/images/<class>/<n>.jpg`` and ``split_zhou_Synthetic.json``.

    Class names look like real ones (``red_circle``, ``green_square``…); train/val/test items of a
    class are images ``0…`` in that order.  Returns the dataset folder.
    """
    ddir = os.path.join(os.path.abspath(os.path.expanduser(root)), "synthetic")
    image_dir = os.path.join(ddir, "images")
    train, val, test = [], [], []
    per = train_per_class + val_per_class + test_per_class
    for label, (cname, rgb, shape) in enumerate(synthetic_classes(num_classes)):
        cdir = os.path.join(image_dir, cname)
        os.makedirs(cdir, exist_ok=True)
        for n in range(per):
            img = render_image(rgb, shape, image_size, random.Random(f"{seed}-{label}-{n}"))
            path = os.path.join(cdir, f"{n}.jpg")
            img.save(path, quality=90)
            d = Datum(path, label, cname)
            (train if n < train_per_class else val if n < train_per_class + val_per_class else test).append(d)
    write_split_json(os.path.join(ddir, "split_zhou_Synthetic.json"), train, val, test, image_dir)
    return ddir


# ---------------------------------------------------------------------------------------------
# Fake on-disk layouts of the benchmark datasets (tests)
# ---------------------------------------------------------------------------------------------

IMAGENET_WNIDS = [
    ("n01440764", "tench"),
    ("n01443537", "goldfish"),
    ("n01484850", "great white shark"),
    ("n01491361", "tiger shark"),
    ("n01494475", "hammerhead shark"),
    ("n01496331", "electric ray"),
    ("n01498041", "stingray"),
    ("n01514668", "rooster"),
    ("n01514859", "hen"),
    ("n01518878", "ostrich"),
    ("n01530575", "brambling"),
    ("n01531178", "goldfinch"),
]
CALTECH_FOLDERS = [
    "Faces",
    "Leopards",
    "Motorbikes",
    "accordion",
    "airplanes",
    "anchor",
    "ant",
    "barrel",
    "bass",
    "beaver",
]
PETS_BREEDS = [
    "Abyssinian",
    "american_bulldog",
    "american_pit_bull_terrier",
    "basset_hound",
    "beagle",
    "Bengal",
    "Birman",
    "Bombay",
    "boxer",
    "British_Shorthair",
]
CARS_META = [
    "AM General Hummer SUV 2000",
    "Acura RL Sedan 2012",
    "Acura TL Sedan 2012",
    "Acura TL Type-S 2008",
    "Acura TSX Sedan 2012",
    "Aston Martin V8 Vantage Convertible 2012",
]
FLOWERS = [
    "pink primrose",
    "hard-leaved pocket orchid",
    "canterbury bells",
    "sweet pea",
    "english marigold",
    "tiger lily",
]
FOOD = ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad"]
AIRCRAFT = [
    "707-320",
    "Falcon 2000",
    "A300B4",
    "F/A-18",
    "DC-3",
    "737-200",
    "Cessna 172",
    "BAE 146-200",
]  # deliberately not sorted: labels follow file order
SUN_KEYS = ["a/abbey", "a/apartment_building/outdoor", "b/bakery/shop", "b/bedroom", "c/campus", "k/kitchen"]
DTD = ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered"]
EUROSAT = [
    "AnnualCrop",
    "Forest",
    "HerbaceousVegetation",
    "Highway",
    "Industrial",
    "Pasture",
    "PermanentCrop",
    "Residential",
    "River",
    "SeaLake",
]
UCF = ["ApplyEyeMakeup", "ApplyLipstick", "Archery", "BabyCrawling", "BalanceBeam", "YoYo"]

DEFAULT_LAYOUT_CLASSES = {"imagenetv2": 12, "eurosat": 10}


def _names(pool: Sequence[str], n: int, fmt: str) -> list[str]:
    return list(pool[:n]) + [fmt.format(i) for i in range(len(pool), n)]


def _wnids(n: int) -> list[tuple[str, str]]:
    extra = [(f"n0{1600000 + 37 * i:07d}", f"synthetic class {i}") for i in range(len(IMAGENET_WNIDS), n)]
    return sorted((IMAGENET_WNIDS + extra)[:n])


def _tiny(path: str, size: int, rng: random.Random) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (size, size), tuple(rng.randint(0, 255) for _ in range(3))).save(path, "JPEG")


def _three(items: list[Datum]) -> tuple[list[Datum], list[Datum], list[Datum]]:
    n = len(items)
    n_train, n_val = max(1, n // 2), max(1, n // 5)
    return items[:n_train], items[n_train : n_train + n_val], items[n_train + n_val :]


def _write_classnames(path: str, pairs: Sequence[tuple[str, str]]) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.writelines(f"{w} {n}\n" for w, n in pairs)


def _savemat(path: str, obj: dict) -> bool:
    try:
        from scipy.io import savemat
    except ImportError:  # pragma: no cover
        return False
    os.makedirs(os.path.dirname(path), exist_ok=True)
    savemat(path, obj)
    return True


def _mat_annos(rows: list[tuple[str, int]]):
    arr = np.zeros((1, len(rows)), dtype=[("fname", "O"), ("class", "O")])
    for i, (fname, cls) in enumerate(rows):
        arr[0, i] = (fname, np.array([[cls]], dtype=np.uint8))
    return arr


def make_layout(
    root: str,
    key: str,
    num_classes: int | None = None,
    images_per_class: int = 10,
    image_size: int = 16,
    seed: int = 0,
    split_json: bool = True,
    raw_files: bool = True,
) -> str:
    """Write a tiny fake copy of dataset ``key`` in its exact on-disk layout (PROTOCOL.md 3.2).

    ``split_json`` writes the authors'-style split JSON (JSON datasets); ``raw_files`` writes the
    files the split-generation fallbacks read (annotations, partition lists, ``.mat`` files…).
    Each class gets ``images_per_class`` images split 50/20/30 (train/val/test) in file order.
    Returns the dataset folder.
    """
    from harness.data.registry import get_info

    info = get_info(key)
    key = info.key
    root = os.path.abspath(os.path.expanduser(root))
    n = num_classes or DEFAULT_LAYOUT_CLASSES.get(key, 6)
    per = images_per_class
    rng = random.Random(f"layout-{key}-{seed}")
    if key == "synthetic":
        return make_synthetic_dataset(
            root,
            num_classes=n,
            train_per_class=per // 2,
            val_per_class=max(1, per // 5),
            test_per_class=per - per // 2 - max(1, per // 5),
            image_size=image_size,
            seed=seed,
        )
    ddir = os.path.join(root, info.folder)
    image_dir = os.path.join(ddir, info.image_dir) if info.image_dir else ddir
    os.makedirs(image_dir, exist_ok=True)
    splits = ([], [], [])

    def add(per_class: list[list[Datum]]):
        for items in per_class:
            for s, part in zip(splits, _three(items)):
                s.extend(part)

    def write_json():
        if split_json and info.split_file:
            write_split_json(os.path.join(ddir, info.split_file), *splits, image_dir)

    if key in ("caltech101", "food101", "dtd", "eurosat"):
        from harness.data.readers import CALTECH_RENAME, EUROSAT_RENAME

        pool = {"caltech101": CALTECH_FOLDERS, "food101": FOOD, "dtd": DTD, "eurosat": EUROSAT}[key]
        folders = sorted(_names(pool, n, "class_{:03d}"))
        rename = {"caltech101": CALTECH_RENAME, "eurosat": EUROSAT_RENAME}.get(key, {})
        if key == "caltech101":  # ignored folders exist on disk
            for ign in ("BACKGROUND_Google", "Faces_easy"):
                for i in range(3):
                    _tiny(os.path.join(image_dir, ign, f"image_{i + 1:04d}.jpg"), image_size, rng)
        if key == "dtd":
            os.makedirs(os.path.join(ddir, "imdb"), exist_ok=True)
            os.makedirs(os.path.join(ddir, "labels"), exist_ok=True)
        if key == "food101":
            os.makedirs(os.path.join(ddir, "meta"), exist_ok=True)
            with open(os.path.join(ddir, "meta", "classes.txt"), "w") as f:
                f.writelines(c + "\n" for c in folders)
        per_class = []
        for lab, folder in enumerate(folders):
            items = []
            for i in range(per):
                fname = (
                    f"image_{i + 1:04d}.jpg"
                    if key == "caltech101"
                    else f"{folder}_{i + 1}.jpg"
                    if key == "eurosat"
                    else f"{folder}_{i + 1:04d}.jpg"
                )
                p = os.path.join(image_dir, folder, fname)
                _tiny(p, image_size, rng)
                items.append(Datum(p, lab, rename.get(folder, folder)))
            per_class.append(items)
        add(per_class)
        write_json()
    elif key == "oxford_pets":
        breeds = _names(PETS_BREEDS, n, "breed_{:03d}")
        per_class = []
        for lab, breed in enumerate(breeds):
            items = []
            for i in range(per):
                stem = f"{breed}_{i + 1}"
                p = os.path.join(image_dir, stem + ".jpg")
                _tiny(p, image_size, rng)
                items.append(Datum(p, lab, breed.lower()))
            per_class.append(items)
        add(per_class)
        write_json()
        if raw_files:
            os.makedirs(os.path.join(ddir, "annotations"), exist_ok=True)
            for fname, items in (("trainval.txt", splits[0] + splits[1]), ("test.txt", splits[2])):
                with open(os.path.join(ddir, "annotations", fname), "w") as f:
                    for d in items:
                        stem = os.path.splitext(os.path.basename(d.impath))[0]
                        species = 1 if stem[0].isupper() else 2
                        f.write(f"{stem} {d.label + 1} {species} {d.label + 1}\n")
    elif key == "stanford_cars":
        meta = _names(CARS_META, n, "Maker Model{:03d} Sedan 2010")
        from harness.data.readers import cars_classname

        per_class = []
        counters = {"cars_train": 0, "cars_test": 0}
        rows = {"cars_train": [], "cars_test": []}
        for lab, m in enumerate(meta):
            items = []
            for i in range(per):
                folder = "cars_test" if i >= per // 2 + max(1, per // 5) else "cars_train"
                counters[folder] += 1
                fname = f"{counters[folder]:05d}.jpg"
                p = os.path.join(ddir, folder, fname)
                _tiny(p, image_size, rng)
                rows[folder].append((fname, lab + 1))
                items.append(Datum(p, lab, cars_classname(m)))
            per_class.append(items)
        add(per_class)
        write_json()
        if raw_files:
            names = np.empty((1, len(meta)), dtype=object)
            names[0, :] = meta
            _savemat(os.path.join(ddir, "devkit", "cars_meta.mat"), {"class_names": names})
            _savemat(
                os.path.join(ddir, "devkit", "cars_train_annos.mat"), {"annotations": _mat_annos(rows["cars_train"])}
            )
            _savemat(
                os.path.join(ddir, "cars_test_annos_withlabels.mat"), {"annotations": _mat_annos(rows["cars_test"])}
            )
    elif key == "oxford_flowers":
        names = _names(FLOWERS, n, "flower {:03d}")
        per_class, labels = [[] for _ in names], []
        for i in range(n * per):  # classes interleaved in file order, like the real file
            lab = i % n
            p = os.path.join(image_dir, f"image_{i + 1:05d}.jpg")
            _tiny(p, image_size, rng)
            labels.append(lab + 1)
            per_class[lab].append(Datum(p, lab, names[lab]))
        add(per_class)
        write_json()
        with open(os.path.join(ddir, "cat_to_name.json"), "w") as f:
            json.dump({str(i + 1): c for i, c in enumerate(names)}, f, indent=4)
        if raw_files:
            _savemat(os.path.join(ddir, "imagelabels.mat"), {"labels": np.array([labels], dtype=np.uint8)})
    elif key == "fgvc_aircraft":
        variants = _names(AIRCRAFT, n, "Variant {:03d}")
        per_class, k = [], 1000000
        for lab, v in enumerate(variants):
            items = []
            for _ in range(per):
                k += 7
                p = os.path.join(image_dir, f"{k:07d}.jpg")
                _tiny(p, image_size, rng)
                items.append(Datum(p, lab, v))
            per_class.append(items)
        add(per_class)
        with open(os.path.join(ddir, "variants.txt"), "w") as f:
            f.writelines(v + "\n" for v in variants)
        for split, items in zip(("train", "val", "test"), splits):
            with open(os.path.join(ddir, f"images_variant_{split}.txt"), "w") as f:
                for d in items:
                    f.write(f"{os.path.splitext(os.path.basename(d.impath))[0]} {d.classname}\n")
    elif key == "sun397":
        from harness.data.readers import sun397_classname

        keys = _names(SUN_KEYS, n, "z/zone_{:03d}")
        per_class = []
        for lab, ck in enumerate(keys):
            items = []
            for _ in range(per):
                p = os.path.join(image_dir, *ck.split("/"), f"sun_{rng.getrandbits(40):010x}.jpg")
                _tiny(p, image_size, rng)
                items.append(Datum(p, lab, sun397_classname(ck)))
            per_class.append(items)
        add(per_class)
        write_json()
        if raw_files:
            with open(os.path.join(ddir, "ClassName.txt"), "w") as f:
                f.writelines(f"/{ck}\n" for ck in keys)
            for fname, items in (("Training_01.txt", splits[0] + splits[1]), ("Testing_01.txt", splits[2])):
                with open(os.path.join(ddir, fname), "w") as f:
                    f.writelines("/" + os.path.relpath(d.impath, image_dir).replace(os.sep, "/") + "\n" for d in items)
    elif key == "ucf101":
        from harness.data.readers import ucf_classname

        actions = _names(UCF, n, "SyntheticAction{:03d}")
        actions = sorted(actions[:-1]) + [actions[-1]] if "YoYo" in actions else sorted(actions)
        per_class = []
        for lab, a in enumerate(actions):
            items = []
            for i in range(per):
                p = os.path.join(image_dir, ucf_classname(a), f"v_{a}_g{i + 1:02d}_c01.jpg")
                _tiny(p, image_size, rng)
                items.append(Datum(p, lab, ucf_classname(a)))
            per_class.append(items)
        add(per_class)
        write_json()
        if raw_files:
            tdir = os.path.join(ddir, "ucfTrainTestlist")
            os.makedirs(tdir, exist_ok=True)
            with open(os.path.join(tdir, "classInd.txt"), "w") as f:
                f.writelines(f"{i + 1} {a}\n" for i, a in enumerate(actions))
            for fname, items, with_label in (
                ("trainlist01.txt", splits[0] + splits[1], True),
                ("testlist01.txt", splits[2], False),
            ):
                with open(os.path.join(tdir, fname), "w") as f:
                    for d in items:
                        a = actions[d.label]
                        vid = os.path.basename(d.impath).replace(".jpg", ".avi")
                        f.write(f"{a}/{vid}" + (f" {d.label + 1}" if with_label else "") + "\n")
    elif key == "imagenet":
        pairs = _wnids(n)
        _write_classnames(os.path.join(ddir, "classnames.txt"), pairs)
        k = 0
        for wnid, _ in pairs:
            for i in range(per):
                _tiny(os.path.join(image_dir, "train", wnid, f"{wnid}_{i + 1}.JPEG"), image_size, rng)
            for _ in range(max(2, per // 3)):
                k += 1
                _tiny(os.path.join(image_dir, "val", wnid, f"ILSVRC2012_val_{k:08d}.JPEG"), image_size, rng)
        # non-directory and hidden entries that every scan must skip
        with open(os.path.join(image_dir, "train", "LOC_synset_mapping.txt"), "w") as f:
            f.write("ignored\n")
        open(os.path.join(image_dir, "train", pairs[0][0], ".DS_Store"), "w").close()
    elif key == "imagenetv2":
        pairs = _wnids(n)
        _write_classnames(os.path.join(ddir, "classnames.txt"), pairs)
        for lab in range(n):
            for _ in range(max(2, per // 3)):
                _tiny(os.path.join(image_dir, str(lab), f"{rng.getrandbits(64):016x}.jpeg"), image_size, rng)
    else:  # imagenet_sketch, imagenet_a, imagenet_r
        subset = key in ("imagenet_a", "imagenet_r")
        pairs = _wnids(2 * n if subset else n)  # A/R: classnames.txt lists more classes than folders
        _write_classnames(os.path.join(ddir, "classnames.txt"), pairs)
        used = pairs[1::2] if subset else pairs
        for wnid, _ in used:
            for i in range(max(2, per // 3)):
                _tiny(os.path.join(image_dir, wnid, f"{key}_{i + 1}.jpg"), image_size, rng)
        if subset:
            with open(os.path.join(image_dir, "README.txt"), "w") as f:
                f.write("ignored\n")
    return ddir
