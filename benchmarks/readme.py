"""The README's generated blocks, and the one command that writes them.

    python -m benchmarks.readme                              every block, from the reports kept in reports/
    python -m benchmarks.readme bench --from REPORT          one source's blocks, from a report of your choice
    make readme                                              the same as the first line

Each ``<!-- BEGIN <name> -->`` ... ``<!-- END <name> -->`` holds what a report or a reference run says
(``SOURCES``: the speed benchmark's ``reports/bench.md``, the authors' comparison's
``reports/bench-vs-authors.md``, the demos' ``reports/demo-reference/``, the methods table from the
registry, the datasets table from their sources), so no number in it is typed by hand; the tests compare
each block with what its source makes now. Benchmarks and reference runs write their reports only: a
benchmark on your machine never edits the README, this command does, from the report you choose.
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


def blocks(source: str, report: str | None = None) -> dict[str, str]:
    """{block name: body} of one source, made from ``report`` (default: the one kept in reports/)."""
    if source not in SOURCES:
        raise ValueError(f"unknown README source {source!r}; expected one of {', '.join(SOURCES)}")
    return SOURCES[source](report)


def refresh(readme: str = "README.md", sources=tuple(SOURCES), report: str | None = None) -> list[str]:
    """Write the blocks of ``sources`` into ``readme`` (``report`` for a single source); the names written."""
    if report is not None and len(sources) != 1:
        raise ValueError("--from names one report: name the one source it is for (e.g. bench --from REPORT)")
    made = {}
    for source in sources:
        made.update(blocks(source, report))
    write_blocks(readme, made)
    return list(made)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.readme", description=__doc__.split("\n")[0])
    parser.add_argument("sources", nargs="*", metavar="SOURCE", help=f"any of {', '.join(SOURCES)} (default: all)")
    parser.add_argument("--from", dest="report", metavar="REPORT", help="the report (or reference folder) to read")
    parser.add_argument("--readme", default="README.md", help="the file to write (default: README.md)")
    args = parser.parse_args(argv)
    try:
        names = refresh(args.readme, tuple(args.sources) or tuple(SOURCES), args.report)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{args.readme}: wrote {len(names)} block(s): {', '.join(names)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
