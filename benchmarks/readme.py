"""The generated blocks of the README and the documentation pages, and the one command that writes them.

    python -m benchmarks.readme                              every block, from the reports kept in reports/
    python -m benchmarks.readme bench --from REPORT          one source's blocks, from a report of your choice
    make readme                                              the same as the first line

Each ``<!-- BEGIN <name> -->`` ... ``<!-- END <name> -->`` holds what a report or a reference run says
(``SOURCES``: the speed benchmark's ``reports/bench.md``, the authors' comparison's
``reports/bench-vs-authors.md``, the demos' ``reports/demo-reference/``, the methods table from the
registry, the datasets table from their sources), so no number in it is typed by hand; the tests compare
each block with what its source makes now. A block lives in one document, README.md or a page of docs/
(``locate``), and is written there. Benchmarks and reference runs write their reports only: a benchmark on
your machine never edits the documentation, this command does, from the report you choose.
"""

from __future__ import annotations

import argparse
import os
import sys


def _report(path: str, source: str) -> str:
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such report for the README's {source} blocks; make it first, or pass --from")
    return path


def _bench(report: str | None) -> dict[str, str]:
    from benchmarks import bench

    return {bench.README_BLOCK: bench.readme_block(_report(report or bench.REPORT, "bench"))}


def _vs_authors(report: str | None) -> dict[str, str]:
    from benchmarks import vs_authors

    return {vs_authors.README_BLOCK: vs_authors.readme_block(_report(report or vs_authors.REPORT, "vs-authors"))}


def _demo(reference_dir: str | None) -> dict[str, str]:
    from benchmarks import demo

    blocks = demo.readme_blocks(_report(reference_dir or demo.REFERENCE_DIR, "demo"))
    return {f"demo:{name}": body for name, body in blocks.items()}


def _fewshot(reference_dir: str | None) -> dict[str, str]:
    from benchmarks import fewshot_demo

    blocks = fewshot_demo.readme_blocks(_report(reference_dir or fewshot_demo.REFERENCE_DIR, "fewshot"))
    return {f"demo:{name}": body for name, body in blocks.items()}


def _methods(_report_given) -> dict[str, str]:
    from benchmarks import methods_table

    return {methods_table.BLOCK: methods_table.markdown()}  # from the registry, reports/paper and the demo's reference


def _data(_report_given) -> dict[str, str]:
    from harness.data.sources import markdown_table

    return {"data:sources": markdown_table()}  # from the datasets' source table (harness.data.sources)


#: {source: what makes its blocks from a report or reference folder (None: the one kept in reports/)}
SOURCES = {
    "bench": _bench,
    "vs-authors": _vs_authors,
    "demo": _demo,
    "fewshot": _fewshot,
    "methods": _methods,
    "data": _data,
}


def markers(name: str) -> tuple[str, str]:
    return f"<!-- BEGIN {name} -->\n", f"<!-- END {name} -->"


def read_block(path: str, name: str) -> str:
    """The text between block ``name``'s markers in ``path``."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    begin, end = markers(name)
    if begin not in text or end not in text:
        raise ValueError(f"{path} has no {begin.strip()} ... {end} block: put the two markers where it goes.")
    return text.split(begin, 1)[1].split(end, 1)[0]


def write_blocks(path: str, blocks: dict[str, str]) -> None:
    """Replace the body of each block ``name`` of ``path`` with ``blocks[name]``; the rest stays as it is."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    for name, body in blocks.items():
        begin, end = markers(name)
        if begin not in text or end not in text:
            raise ValueError(f"{path} has no {begin.strip()} ... {end} block: put the two markers where it goes.")
        head, rest = text.split(begin, 1)
        text = head + begin + body + end + rest.split(end, 1)[1]
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def documents(root: str = ".") -> list[str]:
    """The files that may hold generated blocks: the README and the documentation pages under docs/."""
    import glob

    return [os.path.join(root, "README.md"), *sorted(glob.glob(os.path.join(root, "docs", "*.md")))]


def locate(name: str, root: str = ".") -> str:
    """The one document that holds block ``name`` (a block lives in one place)."""
    begin, end = markers(name)
    holding = []
    for path in documents(root):
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if begin in text and end in text:
            holding.append(path)
    if len(holding) != 1:
        where = ", ".join(holding) if holding else "none of " + ", ".join(documents(root))
        raise ValueError(f"block {name!r} must be in exactly one document, found in {where}: put its two markers once.")
    return holding[0]


def read_document_block(name: str, root: str = ".") -> str:
    """Block ``name``, wherever it lives (README.md or a page of docs/)."""
    return read_block(locate(name, root), name)


def blocks(source: str, report: str | None = None) -> dict[str, str]:
    """{block name: body} of one source, made from ``report`` (default: the one kept in reports/)."""
    if source not in SOURCES:
        raise ValueError(f"unknown README source {source!r}; expected one of {', '.join(SOURCES)}")
    return SOURCES[source](report)


def refresh(root: str = ".", sources=tuple(SOURCES), report: str | None = None) -> list[str]:
    """Write the blocks of ``sources`` into the documents of ``root`` that hold them (``report`` for a single
    source); the names written."""
    if report is not None and len(sources) != 1:
        raise ValueError("--from names one report: name the one source it is for (e.g. bench --from REPORT)")
    made = {}
    for source in sources:
        made.update(blocks(source, report))
    by_document: dict[str, dict[str, str]] = {}
    for name, body in made.items():
        by_document.setdefault(locate(name, root), {})[name] = body
    for path, written in by_document.items():
        write_blocks(path, written)
    return list(made)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="*", metavar="SOURCE", help=f"any of {', '.join(SOURCES)} (default: all)")
    parser.add_argument("--from", dest="report", metavar="REPORT", help="the report (or reference folder) to read")
    parser.add_argument(
        "--root", default=".", help="the tree whose README.md and docs/*.md hold the blocks (default: .)"
    )
    args = parser.parse_args(argv)
    try:
        names = refresh(args.root, tuple(args.sources) or tuple(SOURCES), args.report)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.root}: wrote {len(names)} block(s): {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
