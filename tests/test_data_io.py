"""Data layer: transforms, loaders, image decoding errors, synthetic data, `check` CLI (PROTOCOL.md 5)."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from fake_data import make_layout, make_synthetic_dataset  # noqa: E402
from PIL import Image  # noqa: E402

import harness.data as hd  # noqa: E402
from harness.data import (
    CLIP_MEAN,
    CLIP_STD,
    Datum,
    ImageDataset,
    build_dataset,  # noqa: E402
    build_loader,
    build_transform,
)
from harness.data.check import main as check_main  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "user-cache"))


def _solid(path, size, rgb):
    Image.new("RGB", size, rgb).save(path)
    return str(path)


# --------------------------------------------------------------------------------------------
# Transforms
# --------------------------------------------------------------------------------------------


def test_constants():
    assert CLIP_MEAN == (0.48145466, 0.4578275, 0.40821073)
    assert CLIP_STD == (0.26862954, 0.26130258, 0.27577711)


def test_test_transform_shape_and_normalisation():
    t = build_transform(train=False)
    img = Image.new("RGB", (500, 300), (255, 128, 0))
    x = t(img)
    assert x.shape == (3, 224, 224) and x.dtype == torch.float32
    for c, v in enumerate((255, 128, 0)):
        expected = (v / 255 - CLIP_MEAN[c]) / CLIP_STD[c]
        assert torch.allclose(x[c], torch.full_like(x[c], expected), atol=1e-5)
    names = [type(s).__name__ for s in t.transforms]
    assert names == ["Resize", "CenterCrop", "ToTensor", "Normalize"]
    assert t.transforms[0].size == 224  # short side, aspect kept
    assert t.transforms[0].interpolation.value == "bicubic"


def test_test_transform_keeps_aspect():
    t = build_transform(train=False)
    # left half black, right half white, 2:1 aspect: after short-side resize + centre crop the
    # crop covers the middle half, so both colours remain
    img = Image.new("RGB", (400, 200), (0, 0, 0))
    img.paste((255, 255, 255), (200, 0, 400, 200))
    x = t(img)
    assert x[0, 112, 10] < 0 < x[0, 112, 214]


def test_train_transform():
    torch.manual_seed(0)
    t = build_transform(train=True)
    names = [type(s).__name__ for s in t.transforms]
    assert names == ["RandomResizedCrop", "RandomHorizontalFlip", "ToTensor", "Normalize"]
    rrc = t.transforms[0]
    assert rrc.scale == (0.08, 1.0) and rrc.interpolation.value == "bicubic"
    assert t.transforms[1].p == 0.5
    for size in ((64, 40), (300, 500)):
        assert t(Image.new("RGB", size, (10, 20, 30))).shape == (3, 224, 224)
    assert build_transform(train=True, size=32)(Image.new("RGB", (50, 50))).shape == (3, 32, 32)


# --------------------------------------------------------------------------------------------
# Dataset / loaders
# --------------------------------------------------------------------------------------------


def _items(tmp_path, n):
    return [
        Datum(_solid(tmp_path / f"{i}.png", (20 + i, 30), (i * 20 % 255, 0, 0)), i % 3, f"c{i % 3}") for i in range(n)
    ]


def test_image_dataset(tmp_path):
    items = _items(tmp_path, 3)
    ds = ImageDataset(items, build_transform(train=False, size=32))
    x, y = ds[1]
    assert len(ds) == 3 and x.shape == (3, 32, 32) and y == 1
    gray = tmp_path / "gray.png"
    Image.new("L", (10, 10), 7).save(gray)
    x, _ = ImageDataset([Datum(str(gray), 0, "g")], build_transform(False, 16))[0]
    assert x.shape == (3, 16, 16)  # converted to RGB


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_unreadable_image_error(tmp_path, damage):
    p = tmp_path / "bad.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(p, quality=95)
    if damage == "truncate":
        data = p.read_bytes()
        p.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        p.write_bytes(b"not an image at all")
    else:
        p.unlink()
    ds = ImageDataset([Datum(str(p), 0, "x")], build_transform(False, 16))
    with pytest.raises(hd.ImageDecodeError) as e:
        ds[0]
    msg = str(e.value)
    assert str(p) in msg and "re-download" in msg
    assert isinstance(e.value, hd.DatasetError)


def test_train_loader_drop_last_rule(tmp_path):
    t = build_transform(False, 8)
    items = _items(tmp_path, 10)
    dl = build_loader(items, t, batch_size=4, train=True, num_workers=0, generator=torch.Generator().manual_seed(0))
    assert dl.drop_last and len(dl) == 2 == len(list(dl))
    small = build_loader(items[:3], t, batch_size=4, train=True, num_workers=0)
    batches = list(small)
    assert not small.drop_last and len(batches) == 1 and batches[0][0].shape[0] == 3
    exact = build_loader(items[:4], t, batch_size=4, train=True, num_workers=0)
    assert exact.drop_last and len(list(exact)) == 1
    # a fresh permutation every epoch, reproducible with a generator
    g = torch.Generator().manual_seed(1)
    dl = build_loader(items, t, batch_size=10, train=True, num_workers=0, generator=g)
    e1, e2 = (next(iter(dl))[0][:, 0, 0, 0] for _ in range(2))
    assert not torch.equal(e1, e2)


def test_test_loader_sequential_no_drop(tmp_path):
    items = _items(tmp_path, 10)
    dl = build_loader(items, build_transform(False, 8), batch_size=4, train=False, num_workers=0)
    labels = torch.cat([y for _, y in dl]).tolist()
    assert labels == [d.label for d in items] and len(dl) == 3 and not dl.drop_last
    assert dl.pin_memory == torch.cuda.is_available()


def test_loader_default_workers(tmp_path):
    dl = build_loader(_items(tmp_path, 2), None, batch_size=1, train=False)
    assert dl.num_workers == min(8, os.cpu_count())


def test_loader_with_workers(tmp_path):
    items = _items(tmp_path, 6)
    dl = build_loader(items, build_transform(False, 8), batch_size=3, train=False, num_workers=2)
    assert torch.cat([y for _, y in dl]).tolist() == [d.label for d in items]


# --------------------------------------------------------------------------------------------
# Synthetic data
# --------------------------------------------------------------------------------------------


def _digest(folder):
    h = hashlib.sha256()
    for dirpath, dirnames, files in sorted(os.walk(folder)):
        dirnames.sort()
        for f in sorted(files):
            h.update(os.path.relpath(os.path.join(dirpath, f), folder).encode())
            h.update(open(os.path.join(dirpath, f), "rb").read())
    return h.hexdigest()


def test_synthetic_dataset(tmp_path):
    d1 = make_synthetic_dataset(
        tmp_path / "a", num_classes=10, train_per_class=4, val_per_class=2, test_per_class=3, image_size=48, seed=0
    )
    d2 = make_synthetic_dataset(
        tmp_path / "b", num_classes=10, train_per_class=4, val_per_class=2, test_per_class=3, image_size=48, seed=0
    )
    assert d1 == str(tmp_path / "a" / "synthetic")
    assert _digest(d1) == _digest(d2)  # deterministic
    split = json.load(open(os.path.join(d1, "split_zhou_Synthetic.json")))
    assert list(split) == ["train", "val", "test"]
    assert split["train"][0] == ["red_circle/0.jpg", 0, "red_circle"]
    assert [len(split[k]) for k in split] == [40, 20, 30]
    s = build_dataset("synthetic", tmp_path / "a", num_shots=2, seed=1)
    assert len(s.classnames) == 10 == len(set(s.classnames)) and len(s.train) == 20
    colours = {c.split("_")[0] for c in s.classnames}
    shapes = {c.split("_")[1] for c in s.classnames}
    assert len(colours) == 10 and len(shapes) == 6
    # classes are visually distinct: per-class mean colours differ clearly
    t = build_transform(False, 48)
    means = []
    for lab in range(10):
        xs = [t(Image.open(d.impath).convert("RGB")) for d in s.test if d.label == lab]
        means.append(torch.stack(xs).mean(dim=(0, 2, 3)))
    dist = torch.cdist(torch.stack(means), torch.stack(means))
    assert dist[~torch.eye(10, dtype=torch.bool)].min() > 0.05
    other = make_synthetic_dataset(
        tmp_path / "c", num_classes=2, train_per_class=1, val_per_class=1, test_per_class=1, image_size=48, seed=1
    )
    assert (
        open(os.path.join(other, "images", "red_circle", "0.jpg"), "rb").read()
        != open(os.path.join(d1, "images", "red_circle", "0.jpg"), "rb").read()
    )
    with pytest.raises(ValueError):
        make_synthetic_dataset(tmp_path / "d", num_classes=61)


# --------------------------------------------------------------------------------------------
# check CLI
# --------------------------------------------------------------------------------------------


def test_check_good_folder(tmp_path, capsys):
    make_layout(tmp_path, "dtd")
    make_layout(tmp_path, "imagenet_r")
    rc = check_main(["check", "--root", str(tmp_path), "--dataset", "dtd", "--dataset", "imagenet_r"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "== dtd (DescribableTextures)" in out and "images: 60 listed, 60 found" in out
    assert "classes: 6 (expected 47)" in out and "summary: 2 dataset(s) found, 0 broken" in out
    assert check_main(["check", "--root", str(tmp_path), "--dataset", "dtd", "--strict"]) == 1
    # checking everything: absent datasets are listed but do not fail the check
    assert check_main(["check", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "== food101 (Food101) — not installed" in out


def test_check_broken_folder(tmp_path, capsys):
    ddir = make_layout(tmp_path, "caltech101")
    os.remove(os.path.join(ddir, "101_ObjectCategories", "anchor", "image_0003.jpg"))
    pets = make_layout(tmp_path, "oxford_pets")
    os.remove(os.path.join(pets, "split_zhou_OxfordPets.json"))
    rc = check_main(
        ["check", "--root", str(tmp_path), "--dataset", "caltech101", "--dataset", "oxford_pets", "--dataset", "sun397"]
    )
    out = capsys.readouterr().out
    assert rc == 1
    assert "1 missing" in out and "anchor/image_0003.jpg" in out
    assert "split_zhou_OxfordPets.json" in out and "1501r8Ber4nNKvmlFVQZ8SeUHTcdTTEqs" in out
    assert "dataset folder not found: " + str(tmp_path / "sun397") in out
    assert "sun397/SUN397/<letter>/<category>" in out
    assert "3 broken" in out
    assert check_main(["check", "--root", str(tmp_path), "--dataset", "nope"]) == 2


def test_check_names_the_first_missing_images_and_counts_the_rest(tmp_path, capsys):
    ddir = make_layout(tmp_path, "dtd")
    gone = sorted(
        os.path.join(folder, name) for folder, _, names in os.walk(os.path.join(ddir, "images")) for name in names
    )[:7]
    for path in gone:
        os.remove(path)
    assert check_main(["check", "--root", str(tmp_path), "--dataset", "dtd"]) == 1
    out = capsys.readouterr().out
    named = [path for path in gone if path in out]
    assert "7 missing" in out and len(named) == 5 and "… and 2 more" in out


def test_check_cli_entry_point(tmp_path):
    make_layout(tmp_path, "eurosat")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run(
        [sys.executable, "-m", "harness.data", "check", "--root", str(tmp_path), "--dataset", "eurosat"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "== eurosat (EuroSAT)" in r.stdout and "=> OK" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "harness.data", "check", "--root", str(tmp_path), "--dataset", "ucf101"],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
    )
    assert r.returncode == 1 and "BROKEN" in r.stdout
