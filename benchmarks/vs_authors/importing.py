"""Importing the authors' code: Dassl stubbed, their own ``clip`` package, CUDA and fp16 calls kept fp32 on
the CPU, and a framework method taken from the checkout's own file."""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import sys
import types

import torch
import torch.nn as nn

from benchmarks.vs_authors.dassl_stub import StubNotProvided, stub_modules

# the authors' packages (each checkout has its own clip/trainers; DePT's also clip_maple/ and utils/; Tip-Adapter's
# main.py, utils.py and datasets/)
TOP_LEVEL = ("dassl", "clip", "trainers", "clip_maple", "utils", "main", "datasets", "lora", "loralib", "run_utils")


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def authors_import_path(root: str, unused_imports: tuple = ()):
    """Import from ``root`` with Dassl stubbed, and each of ``unused_imports`` that is not installed as an
    empty module; afterwards sys.modules and sys.path are as before (the imported modules stay alive
    through the objects that refer to them)."""
    stubbed = {name: types.ModuleType(name) for name in unused_imports if not _importable(name)}
    if not _importable("pkg_resources"):  # setuptools absent: OpenAI's clip.py imports only its packaging
        import packaging.version

        stubbed["pkg_resources"] = types.ModuleType("pkg_resources")
        stubbed["pkg_resources"].packaging = packaging
    top_level = TOP_LEVEL + tuple(stubbed)

    def ours(name):
        return name.split(".")[0] in top_level

    saved = {name: module for name, module in sys.modules.items() if ours(name)}
    for name in saved:
        del sys.modules[name]
    sys.modules.update(stub_modules())
    sys.modules.update(stubbed)
    sys.path.insert(0, root)
    try:
        yield
    finally:
        sys.path.remove(root)
        for name in [n for n in sys.modules if ours(n)]:
            del sys.modules[name]
        sys.modules.update(saved)


@contextlib.contextmanager
def fp32_on_cpu():
    """Run the authors' code in fp32 on the CPU. Without a GPU, their ``.cuda()`` calls (KgCoOp's and
    PromptSRC's frozen teachers) keep things where they are. Their ``.half()`` calls (CLIP's
    ``convert_weights``; MaPLe's ``proj``, PromptSRC's teacher logits, both converted whatever the
    precision, so their published code runs in fp16 only) keep fp32, as their fp32 setting intends
    and as our fp32 mode does; the weights are rounded through fp16 first (``round_through_fp16``)."""
    patched = [(torch.Tensor, "half"), (nn.Module, "half")]
    if not torch.cuda.is_available():
        patched += [(torch.Tensor, "cuda"), (nn.Module, "cuda")]
    saved = [(owner, name, getattr(owner, name)) for owner, name in patched]
    for owner, name in patched:
        setattr(owner, name, lambda self, *args, **kwargs: self)
    try:
        yield
    finally:
        for owner, name, original in saved:
            setattr(owner, name, original)


def round_through_fp16(clip) -> None:
    """Make every weight exactly representable in fp16: the authors' ``build_model`` stores CLIP in
    fp16 and their fp32 setting calls ``.float()`` on it, so this is what both sides then hold."""
    with torch.no_grad():
        for p in clip.parameters():
            p.copy_(p.half().float())


def framework_method(checkout: str, spec: str):
    """The function ``Class.method`` of the framework file ``path`` in the checkout (``spec`` =
    "path:Class.method"), compiled from that file's source alone (the framework's other imports are not
    needed): the authors' code of a trainer method the stubbed ``TrainerX`` lacks."""
    path, _, qualname = spec.partition(":")
    class_name, _, method_name = qualname.partition(".")
    filename = os.path.join(checkout, path)
    with open(filename, encoding="utf-8") as f:
        tree = ast.parse(f.read(), filename)
    found = [
        item
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == class_name
        for item in node.body
        if isinstance(item, ast.FunctionDef) and item.name == method_name
    ]
    if not found:
        raise StubNotProvided(f"{filename} has no {class_name}.{method_name}: not a checkout of the repository?")
    namespace = {"torch": torch, "nn": nn}
    exec(compile(ast.Module(body=found[:1], type_ignores=[]), filename, "exec"), namespace)
    return namespace[method_name]
