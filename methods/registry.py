"""Name -> method class, and the one factory every caller uses."""

from __future__ import annotations

import inspect

from harness.plugins import load_plugins

METHODS: dict[str, type] = {}
# Which classes a model is built for, as the authors' Dassl ``DATASET.SUBSAMPLE_CLASSES``.
SUBSAMPLES = ("all", "base", "new")
# Arguments of ``build_method`` that a constructor may take but that are not options the user sets.
BUILD_ARGUMENTS = ("subsample",)


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
    """The keyword options a method accepts, with their defaults (``subsample`` is not one: it is
    ``build_method``'s own argument)."""
    return {k: v for k, v in _constructor_parameters(name).items() if k not in BUILD_ARGUMENTS}


def _constructor_parameters(name: str) -> dict:
    sig = inspect.signature(method_class(name).__init__)
    return {
        p.name: p.default
        for p in list(sig.parameters.values())[3:]  # self, clip_model, classnames
        if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)
    }


def build_method(name: str, clip_model, classnames, subsample: str = "all", **options):
    """Build method ``name`` on a frozen CLIP for ``classnames`` (label order).

    ``subsample`` says which classes these are, as the authors' ``DATASET.SUBSAMPLE_CLASSES``: "base"
    (training and the base test of base-to-new), "new" (the new-class test, a model built on the new
    names that loads the base-trained checkpoint) or "all" (Dassl's default). It is passed to methods
    whose constructor takes it (a method that switches its head or logits on it); the others ignore it.
    Unknown options are an error that lists the accepted ones, before any work is done.
    """
    cls = method_class(name)
    if subsample not in SUBSAMPLES:
        raise ValueError(f"subsample must be one of {SUBSAMPLES}, got {subsample!r}.")
    accepted = method_options(name)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(
            f"Method {name!r} got unknown option(s) {unknown}. Accepted options: "
            + ", ".join(f"{k}={v!r}" for k, v in accepted.items())
        )
    if not classnames:
        raise ValueError(f"Method {name!r} needs at least one class name.")
    if "subsample" in _constructor_parameters(name):
        options["subsample"] = subsample
    return cls(clip_model, list(classnames), **options)
