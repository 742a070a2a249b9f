"""Prompt-learning methods for CLIP, one file each, built by name.

    import methods
    model = methods.build_method("cocoop", clip_model, classnames, ctx_init="a photo of a")
    logits = model(images)            # [N, K], in train and eval mode alike

A new method is one new file: subclass ``methods.base.CLIPMethod``, decorate it with
``@register_method("name")`` and import the module below.
"""

from methods import cocoop, coop, coop_dept, kgcoop, maple, mmrl, promptsrc, zsclip  # noqa: F401  (registers them)
from methods.base import CLIPMethod
from methods.registry import METHODS, build_method, list_methods, method_class, method_options, register_method

__all__ = [
    "METHODS",
    "CLIPMethod",
    "build_method",
    "list_methods",
    "method_class",
    "method_options",
    "register_method",
]
