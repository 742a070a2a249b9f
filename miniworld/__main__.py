"""python -m miniworld: pre-train the tiny CLIP, write the demo datasets.

    python -m miniworld pretrain [--force]     train (or find) the cached weights; prints their path and sha256
    python -m miniworld dataset --root DIR     write the demo datasets under DIR

Zero-shot accuracy of the cached model goes through the harness like any run, e.g.
``python -m harness run --method zsclip --dataset miniworld_shapes --backbone tiny-pretrained --data-root DIR``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys

from miniworld import datasets, pretrain
from miniworld.vocab import DEMO_KEYS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m miniworld", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pretrain", help="pre-train the tiny CLIP (or find it in the cache)")
    p.add_argument("--force", action="store_true", help="train again even if cached")
    # used by the cache (a pinned fresh process) and the tests: train here, write to --out
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--config", help=argparse.SUPPRESS)
    d = sub.add_parser("dataset", help="write the demo datasets under ROOT")
    d.add_argument("--root", required=True)
    d.add_argument("--datasets", nargs="*", default=list(DEMO_KEYS), choices=DEMO_KEYS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.cmd == "pretrain":
        config = pretrain.DEFAULT_PRETRAIN
        if args.config:
            config = pretrain.config_from_json(json.loads(args.config))
        if args.out:
            facts = pretrain.train_and_save(config, args.out)
            print(f"weights sha256 {facts['weights_sha256']}")
        else:
            path = pretrain.ensure_pretrained(config, force=args.force)
            print(path)
            print(f"weights sha256 {pretrain.cached_weights_sha256(config)}")  # cached or just trained alike
    elif args.cmd == "dataset":
        for key in args.datasets:
            print(datasets.write_dataset(args.root, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
