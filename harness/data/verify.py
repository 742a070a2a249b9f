"""What ``check`` verifies in one dataset folder (``check_dataset``): shared by ``python -m harness.data check``
and by ``prepare``, which ends with it."""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor

from .build import check_class_coverage
from .errors import ClassCoverageError, DatasetError
from .progress import Progress
from .readers import read_dataset, split_json_candidates
from .registry import DatasetInfo, get_info
from .sources import file_md5, sources_for
from .types import derive_classnames

logger = logging.getLogger("harness.data.check")

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


def examples(paths: list[str]) -> list[str]:
    """The report's lines under a problem: the first ``MAX_SHOWN`` of ``paths``, then how many more."""
    more = [f"… and {len(paths) - MAX_SHOWN} more"] if len(paths) > MAX_SHOWN else []
    return [f"           {line}" for line in paths[:MAX_SHOWN] + more]


def layout(info: DatasetInfo) -> str:
    """The expected on-disk layout of a dataset, for messages."""
    if info.key in LAYOUT:
        return LAYOUT[info.key]
    images = "/".join(p for p in (info.folder, info.image_dir) if p)
    split = f", {info.folder}/{info.split_file}" if info.split_file else ""
    return f"{images}/<class>/*.jpg{split}"


def undecodable(paths: list[str], desc: str) -> list[tuple[str, str]]:
    """``(path, error)`` of each image that does not decode to its end (threads: PIL decodes without the GIL)."""
    from .errors import ImageDecodeError
    from .images import verify_image

    def one(path):
        try:
            verify_image(path)
        except ImageDecodeError as e:
            return path, str(e)
        return None

    progress = Progress(len(paths), desc, logger, unit="images")
    bad = []
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for result in pool.map(one, paths, chunksize=64):
            progress.update()
            if result:
                bad.append(result)
    progress.close()
    return bad


def split_file_digest_problem(info: DatasetInfo, path: str) -> str | None:
    """A message when ``path`` is not the published split file the sources table knows the MD5 of."""
    ds = sources_for(info.key)
    src = next((f for f in ds.files if f.name == info.split_file), None) if ds else None
    if src is None or not src.md5:
        return None
    found = file_md5(path)
    if found == src.md5:
        return None
    return (
        f"split file {path} has MD5 {found}, expected {src.md5} (the published file): its split differs from "
        f"the authors', so results are not comparable; re-download it from {src.url}"
    )


def check_dataset(
    key: str, root: str, explicit: bool = True, cache_dir: str | None = None, decode: bool = True
) -> tuple[str, list[str]]:
    """Returns ``(status, lines)``; status is "ok", "warn", "broken" or "absent". ``decode``: decode every
    image (a truncated file is found here, not by the run that reads it); without it, only their presence."""
    info: DatasetInfo = get_info(key)
    root = os.path.abspath(os.path.expanduser(root))
    ddir = os.path.join(root, info.folder)
    lines = [f"== {info.key} ({info.paper_name}) — {ddir}"]
    problems, warns = 0, 0

    def out(tag, msg):
        lines.append(f"  [{tag}] {msg}")

    prepare = f"python -m harness.data prepare --root {root} --dataset {info.key}"
    if not os.path.isdir(ddir):
        if not explicit:
            what = "not generated yet" if info.generate else "not installed"
            return "absent", [f"== {info.key} ({info.paper_name}) — {what} ({ddir} not found; `{prepare}` makes it)"]
        out("MISSING", f"dataset folder not found: {ddir}")
        if info.generate:
            out("fix", f"it is generated, not downloaded: `{prepare}` ({info.download})")
        else:
            out("fix", f"`{prepare}` fetches it; its files: {info.download}")
            out("fix", f"expected layout: {layout(info)}")
        lines.append("  => " + ("BROKEN" if explicit else "not installed"))
        return ("broken" if explicit else "absent"), lines
    out("ok", "folder found")

    if info.split_file:
        found = [p for p in split_json_candidates(info, ddir, cache_dir) if os.path.isfile(p)]
        digest_problem = split_file_digest_problem(info, found[0]) if found else None
        if digest_problem:
            problems += 1
            out("PROBLEM", digest_problem)
        elif found:
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
        lines.extend(examples(missing))
        out("fix", f"re-download/extract the images ({info.download}); expected layout: {layout(info)}")
    else:
        out("ok", f"images: {len(paths)} listed, {len(paths)} found")
    if decode and not missing:
        bad = undecodable(paths, f"{info.key}: decoding images")
        if bad:
            problems += 1
            out("PROBLEM", f"images: {len(bad)} of {len(paths)} do not decode (truncated or corrupt), e.g.:")
            lines.extend(examples([p for p, _ in bad]))
            out("fix", f"re-download the dataset: `{prepare} --force`, or remove these images from the split")
        else:
            out("ok", f"images: all {len(paths)} decode")

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
