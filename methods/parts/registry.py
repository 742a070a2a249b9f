"""Name -> method class, what each method says about itself, and the one factory every caller uses.

Methods are found, not listed: every module of the ``methods`` package is imported once (``discover``),
and each registers its classes with ``@register_method``; plugins add theirs through the entry points
(``clipcore.plugins``). A method's description (label, paper, year, source, colour, default config) is
class attributes in its own file (``methods.parts.base.CLIPMethod`` documents them); ``method_info`` reads
them for the report, the README, the bench and ``python -m harness methods``.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import pkgutil
import typing
from dataclasses import dataclass

from bounds import check, shorten
from clipcore.plugins import load_plugins

# The package whose modules are the methods, one a file; its sub-packages (``methods.parts``) are not methods.
PACKAGE = "methods"
METHODS: dict[str, type] = {}
_discovered = False
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
        # A colour is a method's identity in every figure: two methods of one colour cannot be told apart.
        color = vars(cls).get("color")
        drawn = drawn_colour(name, cls, color)
        clash = next(
            (o for o, c in METHODS.items() if drawn and drawn_colour(o, c, vars(c).get("color")) == drawn), None
        )
        if clash is not None:
            spelt = "" if color == drawn else f" ({color!r})"
            raise ValueError(
                f"Method {name!r} ({cls.__module__}) has the colour {drawn}{spelt}, which method {clash!r} already "
                "has: give it another color (or none: the report then picks one no method uses)."
            )
        cls.method_name = name
        METHODS[name] = cls
        return cls

    return wrap


def drawn_colour(name: str, cls: type, color) -> str | None:
    """The colour a figure draws for a method's ``color`` ("#rrggbb"; None: none of its own), whatever its
    spelling ("#ABCDEF", "tab:blue", "#rrggbbaa" opaque); one no figure can draw is refused here, at import."""
    if not color:
        return None
    from matplotlib.colors import to_hex

    try:
        return to_hex(color)
    except ValueError:
        raise ValueError(
            f"Method {name!r} ({cls.__module__}) has the colour {color!r}, which is not a colour: give it as "
            "'#rrggbb' (or none: the report then picks one no method uses)."
        ) from None


def discover() -> None:
    """Import every module of the ``methods`` package once (alphabetically), so that each registers its
    methods: a new method is a new file, with no import list to keep. Sub-packages are skipped: the
    contract, this registry and the shared helpers live in ``methods.parts``, which the methods import.
    Registration order (the report's tie-break within a year) is this import order, except that a
    module imported by another registers first (CoOp before CoCoOp, whose module imports CoOp's)."""
    global _discovered
    if _discovered:
        return
    _discovered = True
    package = importlib.import_module(PACKAGE)
    for module in sorted(m.name for m in pkgutil.iter_modules(package.__path__) if not m.ispkg):
        if not module.startswith("_"):
            importlib.import_module(f"{PACKAGE}.{module}")


def list_methods() -> list[str]:
    discover()
    load_plugins()
    return sorted(METHODS)


def method_class(name: str) -> type:
    discover()
    if name not in METHODS:
        load_plugins()
    if name not in METHODS:
        raise UnknownMethodError(f"Unknown method {name!r}. Registered methods: {', '.join(list_methods())}.")
    return METHODS[name]


@dataclass(frozen=True)
class MethodInfo:
    """What a method says about itself (``methods.parts.base.CLIPMethod``'s "About the method" attributes)."""

    name: str
    label: str  # display name in tables and figures
    paper: str  # authors and venue, e.g. "Zhou et al., IJCV"
    year: int | None
    source: str  # the published code the implementation follows (repository@commit, or a URL)
    color: str | None  # "#rrggbb", or None: the report picks a distinct one
    default_config: str | None  # config name under experiments/methods/, or None: the only one there
    order: int  # registration order (ties of year keep it)

    @property
    def citation(self) -> str:
        """ "Zhou et al., IJCV 2022" """
        return " ".join(str(x) for x in (self.paper, self.year) if x)


def method_info(name: str) -> MethodInfo:
    """The method's own description. Each attribute is read from the registered class itself, never
    inherited: a CoOp subclass that says nothing about itself is not labelled or coloured as CoOp."""
    cls = method_class(name)
    own = vars(cls)
    return MethodInfo(
        name=name,
        label=own.get("label") or name,
        paper=own.get("paper") or "",
        year=own.get("year") or None,
        source=own.get("source") or "",
        color=drawn_colour(name, cls, own.get("color")),  # "#rrggbb" however spelt: the figures' free ones differ
        default_config=own.get("default_config") or None,
        order=list(METHODS).index(name),
    )


def method_options(name: str) -> dict:
    """The keyword options a method accepts, with their defaults (``subsample`` is not one: it is
    ``build_method``'s own argument)."""
    return {k: v for k, v in _constructor_parameters(name).items() if k not in BUILD_ARGUMENTS}


# An option named ``dataset``, whatever the method, picks the dataset's template or head. Its type is
# declared here; that it names a registered dataset is checked by the harness, which holds the dataset
# registry (``harness.config.validate``: methods import nothing of the harness).
DATASET_OPTION = str | None


def option_types(name: str) -> dict:
    """Each option's type with its declared range (``bounds``), as annotated on the constructor
    (``typing.Any`` where a plugin's constructor says nothing); ``dataset``: ``DATASET_OPTION``."""
    hints = {**_annotations(method_class(name)), "dataset": DATASET_OPTION}
    return {k: hints.get(k, typing.Any) for k in method_options(name)}


@functools.cache
def _annotations(cls: type) -> dict:
    hints = {}
    for init in reversed(_constructors(cls)):  # the subclass's own annotation wins
        try:
            hints.update(typing.get_type_hints(init, include_extras=True))
        except (NameError, TypeError):  # a plugin's annotation that does not resolve: its options go unchecked
            pass
    return hints


def _constructors(cls: type) -> list:
    """The constructors whose keyword options are the method's: its own and, while one ends in ``**options``
    (which it passes on to ``super().__init__``), its parent's, so that a variant of a method lists only
    the options it adds and cannot drift from the types and ranges of those it shares."""
    chain = []
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        chain.append(init)
        if not any(p.kind is p.VAR_KEYWORD for p in inspect.signature(init).parameters.values()):
            break
    return chain


def check_options(name: str, options: dict) -> None:
    """Raise ``bounds.OutOfBounds`` (one line) unless every option has its declared type and range and the
    options, defaults filled in, agree with each other (the method's ``check_options``). Unknown options
    are the caller's to refuse (``build_method``, ``harness.config.validate``)."""
    defaults, types = method_options(name), option_types(name)
    for key, value in options.items():
        if key in types:
            check(f"Option {key!r} of method {name!r}", value, types[key], f" (default {shorten(defaults[key])})")
    method_class(name).check_options({**defaults, **options})


def _constructor_parameters(name: str) -> dict:
    parameters = {}
    for init in _constructors(method_class(name)):
        for p in list(inspect.signature(init).parameters.values())[3:]:  # self, clip_model, classnames
            if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD):
                parameters.setdefault(p.name, p.default)
    return parameters


def build_method(name: str, clip_model, classnames, subsample: str = "all", **options):
    """Build method ``name`` on a frozen CLIP for ``classnames`` (label order).

    ``subsample`` says which classes these are, as the authors' ``DATASET.SUBSAMPLE_CLASSES``: "base"
    (training and the base test of base-to-new), "new" (the new-class test, a model built on the new
    names that loads the base-trained checkpoint) or "all" (Dassl's default). It is passed to methods
    whose constructor takes it (a method that switches its head or logits on it); the others ignore it.
    Unknown options, and options outside their declared types and ranges (``check_options``), are an
    error before any work is done.
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
    check_options(name, options)
    if not classnames:
        raise ValueError(f"Method {name!r} needs at least one class name.")
    if "subsample" in _constructor_parameters(name):
        options["subsample"] = subsample
    return cls(clip_model, list(classnames), **options)
