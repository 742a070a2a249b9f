"""``python -m harness.data check``: is each dataset folder complete, and what is missing?"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from .build import check_class_coverage
from .errors import ClassCoverageError, DatasetError
from .readers import read_dataset, split_json_candidates
from .registry import DATASETS, DatasetInfo, get_info, list_datasets
from .types import derive_classnames

LAYOUT = {
    "imagenet": "imagenet/images/train/<wnid>/*, imagenet/images/val/<wnid>/* (val arranged into "
    "the 1,000 wnid folders), imagenet/classnames.txt",
    "caltech101": "caltech-101/101_ObjectCategories/<category>/image_XXXX.jpg, caltech-101/split_zhou_Caltech101.json",
    "oxford_pets": "oxford_pets/images/<Breed>_<n>.jpg, oxford_pets/annotations/, "
    "oxford_pets/split_zhou_OxfordPets.json",
    "stanford_cars": "stanford_cars/cars_train/, stanford_cars/cars_test/, stanford_cars/devkit/, "
    "stanford_cars/cars_test_annos_withlabels.mat, "
    "stanford_cars/split_zhou_StanfordCars.json",
    "oxford_flowers": "oxford_flowers/jpg/image_00001.jpg…, oxford_flowers/imagelabels.mat, "
    "oxford_flowers/cat_to_name.json, oxford_flowers/split_zhou_OxfordFlowers.json",
    "food101": "food-101/images/<class>/*.jpg, food-101/split_zhou_Food101.json",
    "fgvc_aircraft": "fgvc_aircraft/images/<id>.jpg, fgvc_aircraft/variants.txt, "
    "fgvc_aircraft/images_variant_{train,val,test}.txt (the data/ folder of "
    "fgvc-aircraft-2013b, renamed)",
    "sun397": "sun397/SUN397/<letter>/<category>[/<sub>]/*.jpg, sun397/split_zhou_SUN397.json",
    "dtd": "dtd/images/<class>/*.jpg, dtd/split_zhou_DescribableTextures.json",
    "eurosat": "eurosat/2750/<Class>/*.jpg, eurosat/split_zhou_EuroSAT.json",
    "ucf101": "ucf101/UCF-101-midframes/<Action_Name>/v_<Action>_gXX_cXX.jpg, ucf101/split_zhou_UCF101.json",
    "imagenetv2": "imagenetv2/imagenetv2-matched-frequency-format-val/0 … /999/, "
    "imagenetv2/classnames.txt (copy of ImageNet's)",
    "imagenet_sketch": "imagenet-sketch/images/<wnid>/*, imagenet-sketch/classnames.txt",
    "imagenet_a": "imagenet-adversarial/imagenet-a/<wnid>/* (200 folders), imagenet-adversarial/classnames.txt",
    "imagenet_r": "imagenet-rendition/imagenet-r/<wnid>/* (200 folders), imagenet-rendition/classnames.txt",
    "synthetic": "synthetic/images/<class>/<n>.jpg, synthetic/split_zhou_Synthetic.json",
}

MAX_SHOWN = 5


def layout(info: DatasetInfo) -> str:
    """The expected on-disk layout of a dataset, for messages."""
    if info.key in LAYOUT:
        return LAYOUT[info.key]
    images = "/".join(p for p in (info.folder, info.image_dir) if p)
    split = f", {info.folder}/{info.split_file}" if info.split_file else ""
    return f"{images}/<class>/*.jpg{split}"


def check_dataset(key: str, root: str, explicit: bool = True, cache_dir: str | None = None) -> tuple[str, list[str]]:
    """Returns ``(status, lines)``; status is "ok", "warn", "broken" or "absent"."""
    info: DatasetInfo = get_info(key)
    root = os.path.abspath(os.path.expanduser(root))
    ddir = os.path.join(root, info.folder)
    lines = [f"== {info.key} ({info.paper_name}) — {ddir}"]
    problems, warns = 0, 0

    def out(tag, msg):
        lines.append(f"  [{tag}] {msg}")

    if not os.path.isdir(ddir):
        if not explicit:
            return "absent", [
                f"== {info.key} ({info.paper_name}) — not installed ({ddir} not "
                f"found; `--dataset {info.key}` says what to fetch)"
            ]
        out("MISSING", f"dataset folder not found: {ddir}")
        out("fix", f"get it from: {info.download}")
        out("fix", f"expected layout: {layout(info)}")
        lines.append("  => " + ("BROKEN" if explicit else "not installed"))
        return ("broken" if explicit else "absent"), lines
    out("ok", "folder found")

    if info.split_file:
        found = [p for p in split_json_candidates(info, ddir, cache_dir) if os.path.isfile(p)]
        if found:
            out("ok", f"split file {found[0]}")
        else:
            problems += 1
            out("MISSING", f"split file {os.path.join(ddir, info.split_file)}")
            out(
                "fix",
                f"get the authors' split file ({info.download}) and put it at "
                f"{os.path.join(ddir, info.split_file)}; without it a random split would "
                f"be generated and results are not comparable with the paper",
            )
    try:
        train, val, test = read_dataset(info, ddir, seed=1, cache_dir=cache_dir, generate=False)
    except DatasetError as e:
        if not (info.split_file and problems):  # the missing split file was already reported
            problems += 1
            out("PROBLEM", str(e))
            out("fix", f"expected layout: {layout(info)}")
        lines.append("  => BROKEN")
        return "broken", lines

    paths = list(dict.fromkeys(d.impath for d in train + val + test))
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        problems += 1
        out("MISSING", f"images: {len(paths)} listed, {len(paths) - len(missing)} found, {len(missing)} missing, e.g.:")
        for p in missing[:MAX_SHOWN]:
            lines.append(f"           {p}")
        if len(missing) > MAX_SHOWN:
            lines.append(f"           … and {len(missing) - MAX_SHOWN} more")
        out("fix", f"re-download/extract the images ({info.download}); expected layout: {layout(info)}")
    else:
        out("ok", f"images: {len(paths)} listed, {len(paths)} found")

    if not info.test_only:
        try:
            check_class_coverage(info, ddir, train, val, test)
        except ClassCoverageError as e:
            problems += 1
            out("PROBLEM", str(e))
    _, ncls, _ = derive_classnames(train)
    if info.num_classes is None or ncls == info.num_classes:
        out("ok", f"classes: {ncls}")
    else:
        warns += 1
        out("warn", f"classes: {ncls} (expected {info.num_classes})")
    exp = "/".join("?" if s is None else str(s) for s in info.sizes)
    got = "/".join(str(len(x)) for x in (train, val, test))
    if info.test_only:
        out("info", f"test images: {len(test)} (expected {info.sizes[2]})")
    else:
        tag = "info" if exp == got or "?" in exp else "warn"
        warns += tag == "warn"
        out(tag, f"train/val/test: {got} (expected {exp})")
    fs = os.path.join(ddir, "split_fewshot")
    if os.path.isdir(fs):
        caches = sorted(n for n in os.listdir(fs) if n.startswith("shot_") and not n.endswith(".lock"))
        if caches:
            out("info", f"few-shot caches: {', '.join(caches)}")
    status = "broken" if problems else ("warn" if warns else "ok")
    lines.append("  => " + {"broken": "BROKEN", "warn": f"OK ({warns} warning(s))", "ok": "OK"}[status])
    return status, lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.data", description="Data-layer utilities (PROTOCOL.md 3).")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("check", help="check dataset folders under a data root")
    p.add_argument("--root", required=True, help="data root holding the dataset folders")
    p.add_argument(
        "--dataset",
        action="append",
        default=None,
        help="dataset key (repeatable; default: every dataset, absent ones are reported but not counted as broken)",
    )
    p.add_argument("--cache-dir", default=None, help="writable cache folder (see build_dataset)")
    p.add_argument("--strict", action="store_true", help="treat warnings as failures")
    p = sub.add_parser("list", help="list the dataset keys")
    args = parser.parse_args(argv)

    if args.cmd == "list":
        for k in list_datasets():
            i = DATASETS[k]
            print(f"{k:16s} {i.paper_name:20s} {i.folder}/" + ("  (test only)" if i.test_only else ""))
        return 0

    explicit = bool(args.dataset)
    try:
        keys = [get_info(k).key for k in args.dataset] if explicit else list_datasets()
    except DatasetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not os.path.isdir(args.root):
        print(f"error: data root {args.root} is not a folder", file=sys.stderr)
        return 2
    statuses = []
    for k in keys:
        status, lines = check_dataset(k, args.root, explicit=explicit, cache_dir=args.cache_dir)
        statuses.append(status)
        print("\n".join(lines) + ("" if status == "absent" else "\n"))
    bad = [k for k, s in zip(keys, statuses) if s == "broken" or (args.strict and s == "warn")]
    present = [k for k, s in zip(keys, statuses) if s != "absent"]
    print(f"summary: {len(present)} dataset(s) found, {len(bad)} broken" + (f": {', '.join(bad)}" if bad else ""))
    if not present:
        print("no dataset found under " + os.path.abspath(args.root))
        return 1
    return 1 if bad else 0
