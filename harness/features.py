"""On-disk cache of frozen image features for evaluation.

Every method sees a test image only through CLIP's frozen image encoder, and the test transform is
deterministic, so the features of a test list depend only on (backbone, precision, transform, the
images). They are computed once and reused by every method, seed and job that evaluates the same
images: on ImageNet that is 50,000 forward passes saved per evaluation after the first.

The images are keyed by path and content: each file's size and modification time (ns), and its
bytes' hash where the modification time cannot be trusted (zero, or in the future, as some copies
and archives leave it), so an image re-extracted or resized in place is computed again.

Entries are written atomically under a file lock: concurrent jobs wait for the first one instead
of computing the same features twice.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time

import torch
from filelock import FileLock
from tqdm import tqdm

from clipcore.atomic import atomic_torch_save

log = logging.getLogger(__name__)


def image_stamp(path: str) -> str:
    """What the cache key knows of an image file's content (see the module's docstring)."""
    try:
        st = os.stat(path)
    except OSError:
        return "absent"
    if st.st_mtime_ns <= 0 or st.st_mtime > time.time() + 60:
        with open(path, "rb") as f:
            return "sha1:" + hashlib.sha1(f.read()).hexdigest()
    return f"{st.st_size}:{st.st_mtime_ns}"


def cache_namespace(backbone: str, precision: str, dataset: str, image_size: int, feature_key: dict) -> dict:
    """What, besides the list of images, a test set's features depend on: the backbone (and, for a
    backbone file, its size and modification time, so a retrained file is not mistaken for the old
    one), the CLIP's precision, the dataset, the test transform and the method's ``feature_key()``."""
    namespace = {
        "backbone": backbone,
        "precision": precision,
        "dataset": dataset,
        "transform": f"test-bicubic-{image_size}",
        **feature_key,
    }
    if os.path.isfile(os.path.expanduser(backbone)):
        stat = os.stat(os.path.expanduser(backbone))
        namespace["backbone_file"] = [stat.st_size, int(stat.st_mtime)]
    return namespace


class FeatureCache:
    def __init__(self, folder: str):
        self.folder = folder
        self.hits = 0
        self.misses = 0

    def key(self, namespace: dict, impaths: list[str]) -> str:
        digest = hashlib.sha1()
        digest.update(json.dumps(namespace, sort_keys=True).encode())
        for path in impaths:
            digest.update(path.encode() + b"\0" + image_stamp(path).encode() + b"\0")
        return digest.hexdigest()[:20]

    def get_or_compute(self, namespace: dict, impaths: list[str], compute) -> torch.Tensor:
        """Features [N, E] of ``impaths`` (in order): from the cache, or ``compute()`` then stored."""
        os.makedirs(self.folder, exist_ok=True)
        name = f"{namespace.get('dataset', 'features')}-{self.key(namespace, impaths)}"
        path = os.path.join(self.folder, name + ".pt")
        with FileLock(path + ".lock"):
            if os.path.exists(path):
                entry = torch.load(path, map_location="cpu", weights_only=True)
                if entry["impaths_sha1"] == self.key({}, impaths) and entry["features"].shape[0] == len(impaths):
                    self.hits += 1
                    log.info("Image features from cache %s (%d images)", path, len(impaths))
                    return entry["features"]
                log.warning("Feature cache %s does not match its key; recomputing", path)
            self.misses += 1
            features = compute().cpu()
            atomic_torch_save(
                {"features": features, "impaths_sha1": self.key({}, impaths), "namespace": namespace}, path
            )
            return features


@torch.no_grad()
def compute_features(method, loader, device, desc: str = "features") -> torch.Tensor:
    out = []
    with tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=2, disable=None) as batches:  # errors close it
        for images, _ in batches:
            out.append(method.encode_image(images.to(device, non_blocking=True)).cpu())
    return torch.cat(out)
