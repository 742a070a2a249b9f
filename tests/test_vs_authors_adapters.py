"""The authors' adapters are one file each (benchmarks/vs_authors/adapters/), found by discovery; the two
benchmark packages still run as ``python -m``."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import methods
from benchmarks import vs_authors
from benchmarks.vs_authors import adapters

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_every_adapter_file_is_one_entry_of_a_registered_method():
    folder = os.path.dirname(adapters.__file__)
    files = sorted(name[:-3] for name in os.listdir(folder) if name.endswith(".py") and name != "__init__.py")
    assert sorted(vs_authors.AUTHORS) == files
    for method, entry in vs_authors.AUTHORS.items():
        assert entry.method == method and method in methods.list_methods()


def write_package(root, name: str, modules: dict[str, str]) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text("")
    for module, text in modules.items():
        (root / name / f"{module}.py").write_text(textwrap.dedent(text))


ENTRY = """
from benchmarks.vs_authors.entry import AuthorsCode

ENTRY = AuthorsCode("{method}", "someone/repo", "trainers.x:X", {{}}, {{}})
"""


def test_a_new_file_is_a_new_adapter_and_a_misnamed_one_is_refused(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    write_package(tmp_path, "one_more", {"coop": ENTRY.format(method="coop"), "zsclip": ENTRY.format(method="zsclip")})
    assert {m: e.repository for m, e in adapters.discover("one_more").items()} == {
        "coop": "someone/repo",
        "zsclip": "someone/repo",
    }
    write_package(tmp_path, "misnamed", {"cocoop": ENTRY.format(method="coop")})
    with pytest.raises(ValueError, match=r"misnamed/cocoop.py: ENTRY's method is 'coop'; expected 'cocoop'"):
        adapters.discover("misnamed")
    write_package(tmp_path, "no_entry", {"coop": "ENTRY = None\n"})
    with pytest.raises(TypeError, match=r"no_entry/coop.py: ENTRY is None; expected ENTRY = AuthorsCode"):
        adapters.discover("no_entry")


@pytest.mark.parametrize(
    "package, summary",
    [
        ("benchmarks.vs_authors", "Benchmark: every method against its authors' own code, side by side."),
        ("benchmarks.bench", "Benchmark: CoCoOp's published per-image path against the fast exact path."),
    ],
)
def test_the_packages_run_as_commands(package, summary):
    done = subprocess.run([sys.executable, "-m", package, "--help"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    assert f"usage: python -m {package}" in done.stdout and summary in " ".join(done.stdout.split())
