"""Data layer: readers, few-shot sampling and caches, base/new split, bad input (PROTOCOL.md 3–4)."""

from __future__ import annotations

import json
import logging
import multiprocessing as mp
import os
import pickle
import random
import shutil
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_fixtures import by_hand_global_random, fake_dassl_module, make_items  # noqa: E402
from fake_data import make_layout  # noqa: E402

import harness.data as hd  # noqa: E402
from harness.data import (
    DATASETS,
    ClassCoverageError,
    DatasetError,
    DatasetNotFoundError,
    Datum,  # noqa: E402
    MissingImagesError,
    SplitFileError,
    UnknownDatasetError,
    build_dataset,
    list_datasets,
    sample_few_shot,
    subsample_classes,
)
from harness.data import fewshot as fs  # noqa: E402
from harness.data.splitfile import read_split_json  # noqa: E402
from harness.data.types import derive_classnames  # noqa: E402

BENCHMARK_KEYS = [
    "imagenet",
    "caltech101",
    "oxford_pets",
    "stanford_cars",
    "oxford_flowers",
    "food101",
    "fgvc_aircraft",
    "sun397",
    "dtd",
    "eurosat",
    "ucf101",
    "imagenetv2",
    "imagenet_sketch",
    "imagenet_a",
    "imagenet_r",
]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "user-cache"))
    monkeypatch.delenv("HARNESS_SKIP_IMAGE_CHECK", raising=False)


def rel(items, root):
    return [(os.path.relpath(d.impath, root), d.label, d.classname) for d in items]


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


def test_registry():
    # the built-in datasets first, then those plugins register (the miniature world's)
    assert list_datasets()[: len(BENCHMARK_KEYS) + 1] == BENCHMARK_KEYS + ["synthetic"]
    # the miniature world's datasets, in the order its vocabulary declares them
    from miniworld.vocab import DEMO_KEYS

    assert list_datasets()[len(BENCHMARK_KEYS) + 1 :] == list(DEMO_KEYS)
    assert DEMO_KEYS[:6] == ("miniworld_shapes", "miniworld_textures", "miniworld_colors") + (
        "miniworld_dusk",
        "miniworld_stage",
        "miniworld_sea",
    )
    assert DATASETS["oxford_pets"].paper_name == "OxfordPets"
    assert DATASETS["caltech101"].folder == "caltech-101"
    assert DATASETS["imagenet_a"].folder == "imagenet-adversarial"
    assert [k for k in DATASETS if DATASETS[k].test_only] == BENCHMARK_KEYS[-4:]
    assert DATASETS["imagenet_r"].num_classes == 200
    assert hd.get_info("OxfordPets").key == "oxford_pets"
    assert hd.get_info("imagenet-sketch").key == "imagenet_sketch"


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(UnknownDatasetError) as e:
        build_dataset("oxford_petz", tmp_path)
    assert isinstance(e.value, DatasetError) and isinstance(e.value, ValueError)
    msg = str(e.value)
    assert "oxford_petz" in msg and "oxford_pets" in msg and "imagenet_r" in msg


# --------------------------------------------------------------------------------------------
# Few-shot sampling (PROTOCOL.md 4.2)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3, 17])
def test_sampling_equals_cpython_global_random(seed):
    train = make_items({3: 20, 0: 18, 7: 25, 1: 16, 2: 30}, seed=5)
    val = make_items({3: 6, 0: 5, 7: 9, 1: 4, 2: 7}, seed=6, prefix="/data/v")
    state = random.getstate()
    try:
        exp_train = by_hand_global_random(train, 16, seed=seed)
        exp_val = by_hand_global_random(val, 4)  # continues the global stream
        random.seed(12345)  # global state must not matter to our sampler
        got_train, got_val = fs.draw_few_shot(train, val, 16, seed)
        assert random.random() == random.Random(12345).random()  # global RNG untouched
    finally:
        random.setstate(state)
    assert got_train == exp_train and got_val == exp_val
    rng = random.Random(seed)
    assert sample_few_shot(train, 16, rng) == exp_train
    assert sample_few_shot(val, 4, rng) == exp_val


def test_sampling_group_order_counts_and_small_classes(caplog):
    items = make_items({5: 10, 2: 3, 9: 8}, seed=1)
    first_seen = list(dict.fromkeys(d.label for d in items))
    with caplog.at_level(logging.WARNING, logger="harness.data"):
        out = sample_few_shot(items, 4, random.Random(0))
    counts = {lab: sum(d.label == lab for d in out) for lab in (5, 2, 9)}
    assert counts == {5: 4, 2: 3, 9: 4}
    assert list(dict.fromkeys(d.label for d in out)) == first_seen
    assert len(set(out)) == len(out)  # no repetition
    assert "class_2" in caplog.text and "only 3 images" in caplog.text
    assert sample_few_shot(items, 0, random.Random(0)) == items
    assert sample_few_shot(items, -1, random.Random(0)) == items


def test_build_counts_stable_and_seed_dependent(tmp_path):
    make_layout(tmp_path, "oxford_pets", num_classes=5, images_per_class=40)
    a = build_dataset("oxford_pets", tmp_path, num_shots=8, seed=1)
    full = build_dataset("oxford_pets", tmp_path, num_shots=0)
    assert a.fewshot_source == "drawn" and full.fewshot_source is None
    for lab in range(5):
        assert sum(d.label == lab for d in a.train) == 8
        assert sum(d.label == lab for d in a.val) == 4  # min(8, 4)
    assert len(full.train) == 5 * 20 and len(full.val) == 5 * 8 and a.test == full.test
    # draw equals the authors' procedure on the split lists
    state = random.getstate()
    try:
        exp_train = by_hand_global_random(full.train, 8, seed=1)
        exp_val = by_hand_global_random(full.val, 4)
    finally:
        random.setstate(state)
    assert a.train == exp_train and a.val == exp_val
    # stable for a seed (fresh copy of the data, no cache), different across seeds
    shutil.copytree(
        tmp_path / "oxford_pets", tmp_path / "other" / "oxford_pets", ignore=shutil.ignore_patterns("split_fewshot")
    )
    a2 = build_dataset("oxford_pets", tmp_path / "other", num_shots=8, seed=1)
    assert a2.fewshot_source == "drawn"
    assert rel(a2.train, tmp_path / "other") == rel(a.train, tmp_path)
    b = build_dataset("oxford_pets", tmp_path, num_shots=8, seed=2)
    assert set(b.train) != set(a.train)
    k2 = build_dataset("oxford_pets", tmp_path, num_shots=2, seed=1)
    assert len(k2.train) == 10 and len(k2.val) == 10


# --------------------------------------------------------------------------------------------
# Base / new (PROTOCOL.md 4.3)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [7, 8, 1])
def test_subsample_classes_halves(n):
    train = make_items({lab * 3: 4 for lab in range(n)}, seed=2)  # sparse, unsorted labels
    test = make_items({lab * 3: 2 for lab in range(n)}, seed=3, prefix="/t")
    labels = sorted({d.label for d in train})
    m = -(-n // 2)
    b_train, b_test = subsample_classes(train, test, subsample="base")
    n_train, n_test = subsample_classes(train, test, subsample="new")
    assert sorted({d.label for d in b_train}) == list(range(m))
    assert sorted({d.label for d in n_train}) == list(range(n - m))
    names = lambda xs: {d.classname for d in xs}  # noqa: E731
    assert names(b_train) | names(n_train) == names(train)
    assert not names(b_train) & names(n_train)
    assert names(b_train) == {f"class_{lab}" for lab in labels[:m]}
    # order kept, relabelled consistently across lists
    assert [d.impath for d in b_train] == [d.impath for d in train if d.label in labels[:m]]
    assert all(d.label == labels[:m].index(int(d.classname.split("_")[1])) for d in b_test)
    assert len(b_test) + len(n_test) == len(test)
    assert subsample_classes(train, test, subsample="all") == (train, test)
    with pytest.raises(ValueError):
        subsample_classes(train, subsample="half")


def test_build_base_new(tmp_path):
    make_layout(tmp_path, "caltech101", num_classes=7, images_per_class=10)
    base = build_dataset("caltech101", tmp_path, num_shots=2, seed=1, subsample="base")
    new = build_dataset("caltech101", tmp_path, num_shots=2, seed=1, subsample="new")
    assert base.classnames == ["face", "leopard", "motorbike", "accordion"]
    assert new.classnames == ["airplane", "anchor", "ant"]
    assert base.num_classes == 4 and new.num_classes == 3
    assert new.fewshot_source == "cache"  # base and new share one (K, seed) draw
    for s in (base, new):
        for split in (s.train, s.val, s.test):
            assert {d.label for d in split} == set(range(s.num_classes))


# --------------------------------------------------------------------------------------------
# Per-dataset readers (PROTOCOL.md 3.4 / 3.5)
# --------------------------------------------------------------------------------------------

EXPECTED_NAMES = {
    "caltech101": ["face", "leopard", "motorbike", "accordion", "airplane", "anchor"],
    "oxford_pets": ["abyssinian", "american_bulldog", "american_pit_bull_terrier", "basset_hound", "beagle", "bengal"],
    "stanford_cars": [
        "2000 AM General Hummer SUV",
        "2012 Acura RL Sedan",
        "2012 Acura TL Sedan",
        "2008 Acura TL Type-S",
        "2012 Acura TSX Sedan",
        "2012 Aston Martin V8 Vantage Convertible",
    ],
    "oxford_flowers": [
        "pink primrose",
        "hard-leaved pocket orchid",
        "canterbury bells",
        "sweet pea",
        "english marigold",
        "tiger lily",
    ],
    "food101": ["apple_pie", "baby_back_ribs", "baklava", "beef_carpaccio", "beef_tartare", "beet_salad"],
    "fgvc_aircraft": ["707-320", "Falcon 2000", "A300B4", "F/A-18", "DC-3", "737-200"],
    "sun397": ["abbey", "outdoor apartment_building", "shop bakery", "bedroom", "campus", "kitchen"],
    "dtd": ["banded", "blotchy", "braided", "bubbly", "bumpy", "chequered"],
    "eurosat": [
        "Annual Crop Land",
        "Forest",
        "Herbaceous Vegetation Land",
        "Highway or Road",
        "Industrial Buildings",
        "Pasture Land",
        "Permanent Crop Land",
        "Residential Buildings",
        "River",
        "Sea or Lake",
    ],
    "ucf101": ["Apply_Eye_Makeup", "Apply_Lipstick", "Archery", "Baby_Crawling", "Balance_Beam", "Yo_Yo"],
    "imagenet": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"],
    "imagenetv2": [
        "tench",
        "goldfish",
        "great white shark",
        "tiger shark",
        "hammerhead shark",
        "electric ray",
        "stingray",
        "rooster",
        "hen",
        "ostrich",
        "brambling",
        "goldfinch",
    ],
    "imagenet_sketch": ["tench", "goldfish", "great white shark", "tiger shark", "hammerhead shark", "electric ray"],
    "imagenet_a": ["goldfish", "tiger shark", "electric ray", "rooster", "ostrich", "goldfinch"],
    "imagenet_r": ["goldfish", "tiger shark", "electric ray", "rooster", "ostrich", "goldfinch"],
    "synthetic": ["red_circle", "green_square", "blue_triangle", "yellow_cross", "purple_ring", "orange_diamond"],
}


@pytest.mark.parametrize("key", list(EXPECTED_NAMES))
def test_reader_class_names(tmp_path, key):
    ddir = make_layout(tmp_path, key)
    s = build_dataset(key, tmp_path, num_shots=0)
    info = DATASETS[key]
    assert s.name == key and s.dataset_dir == ddir
    assert s.classnames == EXPECTED_NAMES[key]
    assert s.num_classes == len(EXPECTED_NAMES[key])
    for split in (s.train, s.test):
        assert split and all(os.path.isabs(d.impath) and os.path.exists(d.impath) for d in split)
        assert all(isinstance(d, Datum) and d.domain == 0 for d in split)
        assert all(s.classnames[d.label] == d.classname for d in split)
    if info.test_only:
        assert s.train == s.test and s.val == []
        # published behaviour: few-shot and subsampling ignored for the variants
        again = build_dataset(key, tmp_path, num_shots=16, seed=1, subsample="base")
        assert again.train == s.train and again.classnames == s.classnames
        assert not os.path.exists(os.path.join(ddir, "split_fewshot"))


def test_split_json_order_preserved(tmp_path):
    ddir = make_layout(tmp_path, "food101", num_classes=3)
    path = os.path.join(ddir, "split_zhou_Food101.json")
    obj = json.load(open(path))
    random.Random(0).shuffle(obj["train"])
    json.dump(obj, open(path, "w"))
    s = build_dataset("food101", tmp_path, num_shots=0)
    assert [os.path.relpath(d.impath, os.path.join(ddir, "images")) for d in s.train] == [it[0] for it in obj["train"]]


def test_caltech_labels_and_ignored_folders(tmp_path):
    make_layout(tmp_path, "caltech101", num_classes=5)
    s = build_dataset("caltech101", tmp_path, num_shots=0)
    assert s.classnames[:3] == ["face", "leopard", "motorbike"]
    assert not any("BACKGROUND_Google" in d.impath or "Faces_easy" in d.impath for d in s.train + s.val + s.test)


def test_name_rules():
    from harness.data.readers import cars_classname, pets_classname, sun397_classname, ucf_classname

    assert ucf_classname("ApplyEyeMakeup") == "Apply_Eye_Makeup"
    assert ucf_classname("YoYo") == "Yo_Yo"
    assert sun397_classname("b/bakery/shop") == "shop bakery"
    assert sun397_classname("a/abbey") == "abbey"
    assert sun397_classname("a/apartment_building/outdoor") == "outdoor apartment_building"
    assert cars_classname("AM General Hummer SUV 2000") == "2000 AM General Hummer SUV"
    assert pets_classname("american_bulldog_12") == "american_bulldog"
    assert pets_classname("Abyssinian_1") == "abyssinian"


def test_imagenet_scan(tmp_path):
    ddir = make_layout(tmp_path, "imagenet", num_classes=4, images_per_class=12)
    s = build_dataset("imagenet", tmp_path, num_shots=0)
    assert s.val == s.test and len(s.test) == 4 * 4
    assert all(not os.path.basename(d.impath).startswith(".") for d in s.train)
    cls0 = [os.path.basename(d.impath) for d in s.train if d.label == 0]
    assert cls0 == sorted(cls0) and len(cls0) == 12  # sorted (documented deviation)
    f = build_dataset("imagenet", tmp_path, num_shots=4, seed=1, subsample="base")
    assert len(f.train) == 2 * 4 and f.val == f.test and len(f.test) == 2 * 4
    cache = json.load(open(f.fewshot_cache))
    assert set(cache) >= {"train"} and "val" not in cache  # ImageNet samples only train
    # validation images not arranged into wnid folders -> clear error
    val = os.path.join(ddir, "images", "val")
    shutil.rmtree(val)
    os.makedirs(val)
    open(os.path.join(val, "ILSVRC2012_val_00000001.JPEG"), "w").close()
    with pytest.raises(DatasetError, match="wnid"):
        build_dataset("imagenet", tmp_path, num_shots=0)


def test_imagenet_classnames_parsing(tmp_path):
    from harness.data.readers import read_classnames

    p = tmp_path / "classnames.txt"
    p.write_text("n01440764 tench\nn02085620 Chihuahua\nn04008634 projectile, missile\nn03773504 missile\n\n")
    cn = read_classnames(str(p))
    assert list(cn) == ["n01440764", "n02085620", "n04008634", "n03773504"]
    assert cn["n04008634"] == "projectile, missile" and cn["n03773504"] == "missile"


def test_imagenetv2_numeric_folder_order(tmp_path):
    make_layout(tmp_path, "imagenetv2", num_classes=12)
    s = build_dataset("imagenetv2", tmp_path)
    labels = [d.label for d in s.test]
    assert labels == sorted(labels) and set(labels) == set(range(12))
    assert [os.path.basename(os.path.dirname(d.impath)) for d in s.test] == [str(x) for x in labels]


def test_imagenet_a_is_subset_way(tmp_path):
    ddir = make_layout(tmp_path, "imagenet_a", num_classes=5)
    s = build_dataset("imagenet_a", tmp_path)
    n_lines = len(open(os.path.join(ddir, "classnames.txt")).read().split("\n")) - 1
    assert n_lines == 10 and s.num_classes == 5  # only the folders present, labels 0..4
    assert sorted({d.label for d in s.test}) == list(range(5))


def test_fgvc_labels_follow_variants_file_order(tmp_path):
    make_layout(tmp_path, "fgvc_aircraft", num_classes=4)
    s = build_dataset("fgvc_aircraft", tmp_path, num_shots=2, seed=1)
    assert s.classnames == ["707-320", "Falcon 2000", "A300B4", "F/A-18"]
    assert len(s.train) == 8 and len(s.val) == 8


@pytest.mark.parametrize("missing", [3, 1])
def test_class_without_training_images_is_named(tmp_path, missing):
    """A class with test images but no training images (the last one or one in the middle) would give a
    prompt for fewer classes than are scored: an error naming the class and the split file."""
    ddir = make_layout(tmp_path, "dtd", num_classes=4)
    path = os.path.join(ddir, "split_zhou_DescribableTextures.json")
    obj = json.load(open(path))
    name = next(it[2] for it in obj["train"] if it[1] == missing)
    obj["train"] = [it for it in obj["train"] if it[1] != missing]
    json.dump(obj, open(path, "w"))
    with pytest.raises(
        ClassCoverageError, match=rf"{path}: 1 class\(es\) have no training images: '{name}' \(label {missing}\)"
    ):
        build_dataset("dtd", tmp_path, num_shots=0)
    # Class names still come from the training items, label order (PROTOCOL.md 3.3):
    names, count, _ = derive_classnames([d for d in read_split_json(path, os.path.join(ddir, "images"))[0]])
    assert count == (4 if missing != 3 else 3) and name not in names


def test_test_split_with_a_class_training_lacks_is_refused(tmp_path):
    ddir = make_layout(tmp_path, "dtd", num_classes=3)
    path = os.path.join(ddir, "split_zhou_DescribableTextures.json")
    obj = json.load(open(path))
    obj["test"].append([obj["test"][0][0], 3, "extra_class"])
    json.dump(obj, open(path, "w"))
    with pytest.raises(ClassCoverageError, match="no training images: 'extra_class'"):
        build_dataset("dtd", tmp_path, num_shots=0)


# --------------------------------------------------------------------------------------------
# Split generation fallbacks (PROTOCOL.md 3.4)
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["caltech101", "eurosat", "dtd", "food101", "oxford_pets", "sun397", "ucf101", "oxford_flowers", "stanford_cars"],
)
def test_fallback_generates_split_json(tmp_path, key, caplog):
    ddir = make_layout(tmp_path, key, split_json=False)
    info = DATASETS[key]
    reference = make_layout(tmp_path / "ref", key)  # same fixture with the JSON
    ref = build_dataset(key, tmp_path / "ref", num_shots=0)
    with caplog.at_level(logging.WARNING, logger="harness.data"):
        s = build_dataset(key, tmp_path, num_shots=0, seed=3)
    assert "NOT the authors' split" in caplog.text
    path = os.path.join(ddir, info.split_file)
    assert os.path.isfile(path)
    assert list(json.load(open(path))) == ["train", "val", "test"]
    assert s.classnames == ref.classnames
    n = lambda sp, r: sorted(rel(sp, r))  # noqa: E731
    assert n(s.train + s.val + s.test, tmp_path) == n(ref.train + ref.val + ref.test, tmp_path / "ref")
    if key in ("oxford_pets", "sun397", "ucf101", "stanford_cars"):  # official test lists
        assert n(s.test, tmp_path) == n(ref.test, tmp_path / "ref")
    # deterministic for a seed; the JSON is reused afterwards
    again = make_layout(tmp_path / "again", key, split_json=False)
    s2 = build_dataset(key, tmp_path / "again", num_shots=0, seed=3)
    assert rel(s2.train, tmp_path / "again") == rel(s.train, tmp_path)
    mtime = os.path.getmtime(path)
    build_dataset(key, tmp_path, num_shots=0, seed=4)
    assert os.path.getmtime(path) == mtime
    del reference, again


def test_three_way_split_proportions(tmp_path):
    make_layout(tmp_path, "dtd", num_classes=3, images_per_class=11, split_json=False)
    s = build_dataset("dtd", tmp_path, num_shots=0, seed=1)
    for lab in range(3):
        got = [sum(d.label == lab for d in x) for x in (s.train, s.val, s.test)]
        assert got == [round(5.5), round(2.2), 11 - round(5.5) - round(2.2)]


def test_missing_split_without_fallback_sources(tmp_path):
    make_layout(tmp_path, "oxford_pets", split_json=False, raw_files=False)
    with pytest.raises(SplitFileError) as e:
        build_dataset("oxford_pets", tmp_path)
    msg = str(e.value)
    assert "split_zhou_OxfordPets.json" in msg and "drive.google.com" in msg
    assert "annotations" in msg
    ddir = make_layout(tmp_path, "synthetic", num_classes=3)
    os.remove(os.path.join(ddir, "split_zhou_Synthetic.json"))
    with pytest.raises(SplitFileError, match="split_zhou_Synthetic.json"):
        build_dataset("synthetic", tmp_path)


# --------------------------------------------------------------------------------------------
# Caches (PROTOCOL.md 3.6)
# --------------------------------------------------------------------------------------------


def test_cache_round_trip_and_reuse(tmp_path, monkeypatch):
    ddir = make_layout(tmp_path, "eurosat", num_classes=4, images_per_class=20)
    a = build_dataset("eurosat", tmp_path, num_shots=4, seed=1)
    assert a.fewshot_cache == os.path.join(ddir, "split_fewshot", "shot_4-seed_1.json")
    obj = json.load(open(a.fewshot_cache))
    assert obj["num_shots"] == 4 and obj["seed"] == 1 and obj["dataset"] == "eurosat"
    assert all(not os.path.isabs(p) and p.startswith("2750/") for p, _, _ in obj["train"])
    mtime = os.stat(a.fewshot_cache).st_mtime_ns

    def boom(*a, **k):
        raise AssertionError("the RNG must not be used when a cache exists")

    monkeypatch.setattr(fs, "draw_few_shot", boom)
    b = build_dataset("eurosat", tmp_path, num_shots=4, seed=1, subsample="new")
    assert b.fewshot_source == "cache" and os.stat(a.fewshot_cache).st_mtime_ns == mtime
    c = build_dataset("eurosat", tmp_path, num_shots=4, seed=1)
    assert c.train == a.train and c.val == a.val
    # portable: moving the data root keeps the cache valid
    shutil.move(str(tmp_path / "eurosat"), str(tmp_path / "moved" / "eurosat"))
    d = build_dataset("eurosat", tmp_path / "moved", num_shots=4, seed=1)
    assert d.fewshot_source == "cache"
    assert rel(d.train, tmp_path / "moved") == rel(a.train, tmp_path)


def test_authors_pickle_is_read(tmp_path, monkeypatch):
    make_layout(tmp_path, "oxford_pets", num_classes=3, images_per_class=20)
    full = build_dataset("oxford_pets", tmp_path, num_shots=0)
    # the authors' cache holds absolute paths from their machine
    fake = lambda d: d.impath.replace(str(tmp_path), "/home/someone/DATA")  # noqa: E731
    train = full.train[::5]
    val = full.val[::4]
    with fake_dassl_module() as DasslDatum:
        obj = {
            "train": [DasslDatum(fake(d), d.label, 0, d.classname) for d in train],
            "val": [DasslDatum(fake(d), d.label, 0, d.classname) for d in val],
        }
        blob = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        blob0 = pickle.dumps(obj, protocol=0)
    assert "dassl" not in sys.modules  # reading must not need it
    fsdir = tmp_path / "oxford_pets" / "split_fewshot"
    fsdir.mkdir()
    (fsdir / "shot_16-seed_1.pkl").write_bytes(blob)
    (fsdir / "shot_16-seed_2.pkl").write_bytes(blob0)
    monkeypatch.setattr(fs, "draw_few_shot", lambda *a, **k: pytest.fail("must not draw"))
    for seed in (1, 2):
        s = build_dataset("oxford_pets", tmp_path, num_shots=16, seed=seed)
        assert s.fewshot_source == "authors-pkl"
        assert s.train == train and s.val == val  # paths remapped onto this data root
    # a pickle naming any other class is refused
    (fsdir / "shot_1-seed_1.pkl").write_bytes(pickle.dumps({"train": [os.system]}))
    with pytest.raises(hd.FewShotCacheError, match="shot_1-seed_1.pkl"):
        build_dataset("oxford_pets", tmp_path, num_shots=1, seed=1)


def _worker(args):
    root, seed = args
    s = build_dataset("food101", root, num_shots=4, seed=seed)
    return [(d.impath, d.label) for d in s.train + s.val], s.fewshot_source


def test_concurrent_builds_draw_once(tmp_path):
    make_layout(tmp_path, "food101", num_classes=6, images_per_class=20)
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    with ctx.Pool(4) as pool:
        results = pool.map(_worker, [(str(tmp_path), 7)] * 4)
    draws = {tuple(r[0]) for r in results}
    sources = sorted(r[1] for r in results)
    assert len(draws) == 1
    assert sources.count("drawn") == 1 and sources.count("cache") == 3
    files = os.listdir(tmp_path / "food-101" / "split_fewshot")
    assert [f for f in files if not f.endswith(".lock")] == ["shot_4-seed_7.json"]


def test_read_only_dataset_folder_uses_cache_dir(tmp_path, monkeypatch, caplog):
    make_layout(tmp_path, "dtd", num_classes=3)
    ddir = str(tmp_path / "dtd")
    real = fs.dir_writable
    monkeypatch.setattr(fs, "dir_writable", lambda p: False if str(p).startswith(ddir) else real(p))
    os.chmod(ddir, 0o555)  # effective for non-root users; root relies on the patch above
    try:
        with caplog.at_level(logging.WARNING, logger="harness.data"):
            s = build_dataset("dtd", tmp_path, num_shots=2, seed=1, cache_dir=tmp_path / "cc")
        expected = tmp_path / "cc" / "dtd" / "shot_2-seed_1.json"
        assert s.fewshot_cache == str(expected) and expected.is_file()
        assert "not writable" in caplog.text and str(tmp_path / "cc" / "dtd") in caplog.text
        assert not os.path.exists(os.path.join(ddir, "split_fewshot"))
        again = build_dataset("dtd", tmp_path, num_shots=2, seed=1, cache_dir=tmp_path / "cc")
        assert again.fewshot_source == "cache" and again.train == s.train
        # without cache_dir: $HARNESS_CACHE_DIR/<key>/
        e = build_dataset("dtd", tmp_path, num_shots=1, seed=1)
        assert e.fewshot_cache == str(tmp_path / "user-cache" / "dtd" / "shot_1-seed_1.json")
    finally:
        os.chmod(ddir, 0o755)


def test_default_fallback_dir(monkeypatch, tmp_path):
    from harness.data.cache import fallback_dir

    monkeypatch.delenv("HARNESS_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert fallback_dir("sun397") == str(tmp_path / ".cache" / "prompt-harness" / "split_fewshot" / "sun397")


# --------------------------------------------------------------------------------------------
# Bad input
# --------------------------------------------------------------------------------------------


def test_missing_dataset_folder(tmp_path):
    with pytest.raises(DatasetNotFoundError) as e:
        build_dataset("sun397", tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "sun397") in msg and "SUN397" in msg and "PROTOCOL.md 3.2" in msg


@pytest.mark.parametrize(
    "content,needle",
    [
        ("[1, 2, 3]", "wrong structure"),
        ('{"train": [], "val": []}', "wrong structure"),
        ('{"train": {}, "val": [], "test": []}', "not a list"),
        ('{"train": [["a.jpg", "x", "c"]], "val": [], "test": []}', "item 0"),
        ('{"train": [["a.jpg", 1]], "val": [], "test": []}', "item 0"),
        ('{"train": [["a.jpg", -1, "c"]], "val": [], "test": []}', "item 0"),
        ("{not json", "cannot read"),
    ],
)
def test_bad_split_file(tmp_path, content, needle):
    ddir = make_layout(tmp_path, "ucf101", num_classes=2)
    path = os.path.join(ddir, "split_zhou_UCF101.json")
    with open(path, "w") as f:
        f.write(content)
    with pytest.raises(SplitFileError) as e:
        build_dataset("ucf101", tmp_path, num_shots=0)
    msg = str(e.value)
    assert needle in msg and path in msg and "[path relative to" in msg


def test_missing_images(tmp_path):
    ddir = make_layout(tmp_path, "oxford_flowers", num_classes=3)
    gone = sorted(os.listdir(os.path.join(ddir, "jpg")))[:7]
    for g in gone:
        os.remove(os.path.join(ddir, "jpg", g))
    with pytest.raises(MissingImagesError) as e:
        build_dataset("oxford_flowers", tmp_path)
    msg = str(e.value)
    assert "7 image(s)" in msg and "and 2 more" in msg and "split_zhou_OxfordFlowers.json" in msg
    assert sum(g in msg for g in gone) == 5 and "harness.data check" in msg


def test_missing_classnames_txt(tmp_path):
    ddir = make_layout(tmp_path, "imagenet_sketch", num_classes=3)
    os.remove(os.path.join(ddir, "classnames.txt"))
    with pytest.raises(DatasetNotFoundError, match="classnames.txt"):
        build_dataset("imagenet_sketch", tmp_path)


def test_bad_subsample_value(tmp_path):
    with pytest.raises(ValueError, match="subsample"):
        build_dataset("dtd", tmp_path, subsample="half")


def test_generated_split_goes_to_cache_dir_when_read_only(tmp_path, monkeypatch):
    from harness.data import readers

    ddir = make_layout(tmp_path, "eurosat", num_classes=3, split_json=False)
    monkeypatch.setattr(readers, "dir_writable", lambda p: False)
    monkeypatch.setattr(fs, "dir_writable", lambda p: False)
    s = build_dataset("eurosat", tmp_path, num_shots=1, seed=1, cache_dir=tmp_path / "cc")
    assert not os.path.exists(os.path.join(ddir, "split_zhou_EuroSAT.json"))
    assert (tmp_path / "cc" / "eurosat" / "split_zhou_EuroSAT.json").is_file()
    assert s.fewshot_cache == str(tmp_path / "cc" / "eurosat" / "shot_1-seed_1.json")
    again = build_dataset("eurosat", tmp_path, num_shots=1, seed=1, cache_dir=tmp_path / "cc")
    assert again.train == s.train and again.fewshot_source == "cache"
