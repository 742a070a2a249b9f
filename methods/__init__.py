"""Prompt-learning methods for CLIP, one file each, built by name.

    import methods
    model = methods.build_method("cocoop", clip_model, classnames, ctx_init="a photo of a")
    logits = model(images)            # [N, K], in train and eval mode alike

A new method is one new file here: subclass ``methods.CLIPMethod`` (its contract and the
attributes that describe a method: ``methods/parts/base.py``), decorate it with
``@register_method("name")``; the registry imports every module of this package, so nothing else
lists it. Its configs go under ``experiments/methods/<name>/``. What the methods are built from (the
contract, the registry, shared pieces) is the sub-package ``methods.parts``, which discovery skips.
"""

from methods.parts.base import CLIPMethod
from methods.parts.registry import (
    METHODS,
    MethodInfo,
    build_method,
    discover,
    list_methods,
    method_class,
    method_info,
    method_options,
    register_method,
)

discover()  # registers the built-in methods: every module of this package

__all__ = [
    "METHODS",
    "CLIPMethod",
    "MethodInfo",
    "build_method",
    "list_methods",
    "method_class",
    "method_info",
    "method_options",
    "register_method",
]
