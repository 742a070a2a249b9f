"""The report folder's ``index.md`` link to the W&B dashboard, and where the dashboard's files live.

The report stage writes ``index.md``; ``make dashboard`` (``harness.dashboard``) builds the dashboard
from the report's tables and records it in ``<report dir>/wandb/dashboard.json``. Both use this
module, so the report never depends on the dashboard.
"""

from __future__ import annotations

import hashlib
import json
import os

SPEC_DIR = "wandb"  # under the report folder
WORKSPACE_FILE = "workspace.json"
REPORT_FILE = "report.json"
NOTE_FILE = "PUBLISH.md"
MANIFEST_FILE = "dashboard.json"


def tables_digest(report_dir: str) -> str:
    """One hash of the report folder's table CSVs (what the dashboard's numbers must equal)."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(report_dir)) if os.path.isdir(report_dir) else []:
        if name.endswith(".csv"):
            h.update(name.encode() + b"\0")
            with open(os.path.join(report_dir, name), "rb") as f:
                h.update(f.read())
    return h.hexdigest()


def spec_dir(report_dir: str) -> str:
    return os.path.join(report_dir, SPEC_DIR)


def publish_command(folder: str) -> str:
    return f"python -m harness.dashboard --publish {folder}"


def read_manifest(report_dir: str) -> dict | None:
    path = os.path.join(spec_dir(report_dir), MANIFEST_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def index_section(report_dir: str) -> list[str]:
    """The "## Dashboard" lines of ``index.md`` (empty when no dashboard was built)."""
    manifest = read_manifest(report_dir)
    if not manifest:
        return []
    lines = ["## Dashboard", ""]
    if manifest.get("tables_sha256") != tables_digest(report_dir):
        lines += ["The dashboard below was built from an earlier report: run `make dashboard` again.", ""]
    urls = manifest.get("urls") or {}
    if urls.get("report"):
        lines.append(f"* W&B Report: [{manifest.get('title', 'report')}]({urls['report']})")
        for experiment, url in (urls.get("views") or {}).items():
            lines.append(f"* workspace view {experiment}: {url}")
    else:
        rel = SPEC_DIR
        lines += [
            f"* not published yet (built offline, {manifest.get('built', '')}): W&B specifications "
            f"[{WORKSPACE_FILE}]({rel}/{WORKSPACE_FILE}) ({len(manifest.get('views', []))} workspace views) and "
            f"[{REPORT_FILE}]({rel}/{REPORT_FILE});",
            f"  publish them with `{publish_command(spec_dir(report_dir))}` after `wandb sync` of the runs "
            f"([{NOTE_FILE}]({rel}/{NOTE_FILE})).",
        ]
    lines.append("")
    return lines
