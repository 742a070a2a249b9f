"""The authors' code of each method, one module per method: ``<method>.py`` (named as the method is in our
registry) holds one ``ENTRY = AuthorsCode(...)``. Adding a method's authors' code is one new file here:
``discover`` imports every module of this package, so nothing else lists it."""

from __future__ import annotations

import importlib
import pkgutil

from benchmarks.vs_authors.entry import AuthorsCode


def discover(package: str = __name__) -> dict[str, AuthorsCode]:
    """{method: its entry} from every module of ``package`` (this one), in the order of their names."""
    found = {}
    for info in sorted(pkgutil.iter_modules(importlib.import_module(package).__path__), key=lambda m: m.name):
        module = importlib.import_module(f"{package}.{info.name}")
        entry = getattr(module, "ENTRY", None)
        if not isinstance(entry, AuthorsCode):
            raise TypeError(
                f"{module.__file__}: ENTRY is {entry!r}; expected ENTRY = AuthorsCode(...), "
                "the one thing a module of the adapters' folder defines for the benchmark"
            )
        if entry.method != info.name:
            raise ValueError(
                f"{module.__file__}: ENTRY's method is {entry.method!r}; expected {info.name!r}, the file's name: "
                "rename the file or the method so that they agree"
            )
        found[entry.method] = entry
    return found


AUTHORS: dict[str, AuthorsCode] = discover()
