"""Which commit of the authors' repository was timed, which one docs/ was read at, and what differs between
the two (only documentation, or code)."""

from __future__ import annotations

import contextlib
import re
import subprocess

DOCS = (
    "docs/PROTOCOL.md",
    "docs/PROTOCOL-successors.md",
    "docs/PROTOCOL-successors-2.md",
    "docs/PROTOCOL-successors-3-fewshot.md",
    "docs/PROTOCOL-successors-3.md",
)


def documented_commit(repository: str, docs: tuple[str, ...] = DOCS) -> str | None:
    """The commit docs/ was read at, written there as ``owner/name @ <sha>``; None when docs/ names none."""
    pattern = re.compile(re.escape(repository) + r" @ `?([0-9a-f]{7,40})")
    for path in docs:
        with contextlib.suppress(OSError), open(path, encoding="utf-8") as f:
            match = pattern.search(f.read())
            if match:
                return match.group(1)
    return None


def checkout_commit(directory: str) -> str | None:
    """HEAD of the git checkout ``directory`` (or of the repository it lies in); None when it is not one."""
    try:
        out = subprocess.run(
            ["git", "-C", directory, "rev-parse", "HEAD"], capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


DOCUMENTATION = (".md", ".rst", ".txt", ".bib", ".png", ".jpg", ".jpeg", ".gif", ".pdf")


def changed_files(directory: str, old: str, new: str) -> list[str] | None:
    """The files that differ between two commits of the checkout ``directory``; None when git cannot
    tell (a commit the checkout does not hold)."""
    try:
        out = subprocess.run(
            ["git", "-C", directory, "diff", "--name-only", old, new],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.split()


def commit_warning(repository: str, held: str | None, documented: str | None, checkout: str | None = None) -> str:
    """'' when the checkout holds the commit docs/ was read at; else what differs (with ``checkout``:
    whether only documentation files do, so that the reader knows the code timed is the code read)."""
    if held is None:
        return f"the checkout of {repository} is not a git checkout: its commit is unknown"
    if documented is None:
        return f"docs/ names no commit for {repository}: the figures are for {held[:7]}"
    if held.startswith(documented):
        return ""
    warning = f"the checkout holds {held[:7]}, docs/ was read at {documented[:7]}"
    changed = changed_files(checkout, documented, held) if checkout else None
    if changed is None:
        return warning
    if all(name.lower().endswith(DOCUMENTATION) for name in changed):
        return f"{warning} (they differ only in documentation: {', '.join(changed) or 'nothing'}; the code is the same)"
    code = [name for name in changed if not name.lower().endswith(DOCUMENTATION)]
    return f"{warning} (code differs: {', '.join(code[:5])}{' ...' if len(code) > 5 else ''})"
