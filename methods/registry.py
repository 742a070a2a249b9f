"""Name -> method class, and the one factory every caller uses."""

from __future__ import annotations

import inspect

from harness.plugins import load_plugins

METHODS: dict[str, type] = {}


class UnknownMethodError(ValueError):
    pass


def register_method(name: str):
    def wrap(cls):
        if name in METHODS:
            raise ValueError(f"Method {name!r} is registered twice ({METHODS[name].__module__} and {cls.__module__}).")
        cls.method_name = name
        METHODS[name] = cls
        return cls

    return wrap


def list_methods() -> list[str]:
    load_plugins()
    return sorted(METHODS)


def method_class(name: str) -> type:
    if name not in METHODS:
        load_plugins()
    if name not in METHODS:
        raise UnknownMethodError(f"Unknown method {name!r}. Registered methods: {', '.join(list_methods())}.")
    return METHODS[name]


def method_options(name: str) -> dict:
    """The keyword options a method accepts, with their defaults."""
    sig = inspect.signature(method_class(name).__init__)
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[3:]  # self, clip_model, classnames
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def build_method(name: str, clip_model, classnames, **options):
    """Build method ``name`` on a frozen CLIP for ``classnames`` (label order).

    Unknown options are an error that lists the accepted ones, before any work is done.
    """
    cls = method_class(name)
    accepted = method_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"Method {name!r} got unknown option(s) {unknown}. Accepted options: "
            + ", ".join(f"{k}={v!r}" for k, v in accepted.items())
        )
    if not classnames:
        raise ValueError(f"Method {name!r} needs at least one class name.")
    return cls(clip_model, list(classnames), **options)
