"""What the report wrote in a folder, so that its next run there removes only its own stale files.

A report folder is shared with files the report does not own (``reports/paper/``, ``bench*.md``,
``demo-reference/``, the dashboard's ``wandb/`` specifications): the report never lists or globs the
folder. It keeps ``.report-manifest.json``, the relative paths of the files it wrote; the next report
into the same folder deletes those it did not write again (a table that has no records any more, an
old figure), so a paper's ``\\input{table4_....tex}`` never picks up numbers of an earlier run.
"""

from __future__ import annotations

import json
import logging
import os

from clipcore.atomic import atomic_write_text

log = logging.getLogger(__name__)

MANIFEST_FILE = ".report-manifest.json"


def read_manifest(out_dir: str) -> list[str]:
    """The relative paths the last report wrote in ``out_dir`` (none without a manifest)."""
    path = os.path.join(out_dir, MANIFEST_FILE)
    if not os.path.isfile(path):
        return []
    try:
        with open(path) as f:
            files = json.load(f).get("files", [])
    except (OSError, ValueError, AttributeError) as exc:
        log.warning("%s cannot be read (%s); no earlier report file is removed", path, exc)
        return []
    return [f for f in files if isinstance(f, str)]


def replace_manifest(out_dir: str, written: list[str]) -> list[str]:
    """Record ``written`` (paths) as the report's files in ``out_dir``; delete the files of the previous
    manifest not among them. Returns the relative paths removed."""
    root = os.path.abspath(out_dir)
    now = sorted({os.path.relpath(os.path.abspath(p), root) for p in written})
    removed = []
    for rel in read_manifest(out_dir):
        path = os.path.normpath(os.path.join(root, rel))
        # Only files inside the folder that this report did not write again.
        if rel in now or os.path.commonpath([root, path]) != root or not os.path.isfile(path):
            continue
        os.unlink(path)
        removed.append(rel)
    if removed:
        log.info("removed %d file(s) of an earlier report in %s: %s", len(removed), out_dir, ", ".join(removed))
    atomic_write_text(os.path.join(out_dir, MANIFEST_FILE), json.dumps({"files": now}, indent=1) + "\n")
    return removed
