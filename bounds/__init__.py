"""Allowed values of a setting, declared with its type beside its default, and the one check of a value.

    lr: Annotated[float, Range(0, low_open=True)] = 0.002                      a run key (harness.config)
    alpha: Annotated[float, Range(0, 1)] = 0.7                                  a method option

``check(label, value, annotation)`` checks a value against such an annotation: its type (int, float,
str, bool, None, list[...], unions, ``Annotated``) and every declaration in it. Every float must be
finite, declared or not: a NaN or infinite setting never trains anything meaningful. The error is one
line naming the setting, the value and what is allowed.

A package of its own, importing nothing of the project and nothing heavy, so that the harness and the
methods both read the same declarations.
"""

from __future__ import annotations

import math
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OneOf", "OutOfBounds", "Range", "Satisfies", "check", "describe_type", "shorten"]


class OutOfBounds(ValueError):
    """A setting's value has the wrong type or lies outside what its declaration allows."""


def _number(x: float) -> str:
    return str(int(x)) if float(x).is_integer() and abs(x) < 1e15 else repr(x)


@dataclass(frozen=True)
class Range:
    """low <= value <= high; ``low_open`` / ``high_open`` exclude the end; None: unbounded on that side."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def allows(self, value) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return False
        return True

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            left, right = "(" if self.low_open else "[", ")" if self.high_open else "]"
            return f"in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.high is not None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return "any value"


@dataclass(frozen=True)
class OneOf:
    """One of ``choices``."""

    choices: tuple

    def allows(self, value) -> bool:
        return value in self.choices

    def describe(self) -> str:
        return "one of " + " | ".join(str(c) for c in self.choices)


@dataclass(frozen=True)
class Satisfies:
    """Whatever ``predicate`` accepts, described in words (``what``: "a format string with '{}'")."""

    predicate: Callable[[typing.Any], bool]
    what: str

    def allows(self, value) -> bool:
        return bool(self.predicate(value))

    def describe(self) -> str:
        return self.what


def describe_type(annotation) -> str:
    """``float``, ``int >= 1 or None``, ``list of str``, ...: the type and declarations in words."""
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *declared = typing.get_args(annotation)
        words = [d.describe() for d in declared if hasattr(d, "describe")]
        return " ".join([_type_word(base), *words])
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe_type(a) for a in typing.get_args(annotation))
    return _type_word(annotation)


def _type_word(annotation) -> str:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return describe_type(annotation)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_word(a) for a in typing.get_args(annotation))
    if origin in (list, tuple):
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        return f"a list, each item {describe_type(args[0])}" if args else "a list"
    if annotation is type(None):
        return "None (null)"
    if annotation is float:
        return "a finite number"
    if annotation is int:
        return "an integer"
    if annotation is bool:
        return "true or false"
    if annotation is str:
        return "a string"
    if annotation is dict:
        return "a mapping"
    return getattr(annotation, "__name__", str(annotation))


def _conforms(value, annotation) -> bool:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        base, *declared = typing.get_args(annotation)
        return _conforms(value, base) and all(d.allows(value) for d in declared if hasattr(d, "allows"))
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in typing.get_args(annotation))
    if origin in (list, tuple):  # YAML gives lists: a tuple-typed setting takes one, and the other way round
        args = [a for a in typing.get_args(annotation) if a is not Ellipsis]
        if not isinstance(value, (list, tuple)):
            return False
        return all(_conforms(v, args[0]) for v in value) if args else True
    if annotation is typing.Any:
        return True
    if annotation is type(None):
        return value is None
    if annotation is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if annotation is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if annotation in (list, tuple):
        return isinstance(value, (list, tuple))
    return isinstance(value, annotation)


def shorten(value, limit: int = 60) -> str:
    """``repr(value)``, cut to about ``limit`` characters for a one-line message."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + " ..."


def check(label: str, value, annotation, hint: str = "") -> None:
    """Raise ``OutOfBounds`` (one line: ``label``, the value, what is allowed, ``hint``) unless ``value``
    has ``annotation``'s type and meets its declarations."""
    if not _conforms(value, annotation):
        shown = shorten(value) + ("" if isinstance(value, (int, float)) else f" ({type(value).__name__})")
        raise OutOfBounds(f"{label} must be {describe_type(annotation)}, got {shown}{hint}.")
