"""The README's generated blocks: each ``<!-- BEGIN <name> -->`` ... ``<!-- END <name> -->`` holds what one
command made from a report or a reference run (``python -m benchmarks.demo readme``, ``benchmarks.fewshot_demo
readme``, ``benchmarks.vs_authors readme``, ``benchmarks.bench readme``, ``benchmarks.methods_table``), so no
number in it is typed by hand; the tests compare each block with what its command writes now."""

from __future__ import annotations


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
