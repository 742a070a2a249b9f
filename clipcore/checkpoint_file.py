"""Reading a method's checkpoint file, ours or the authors'.

The file is what the authors' Dassl trainer writes, ``<run>/<folder>/model.pth.tar-<epoch>`` (the
folder: ``methods.CLIPMethod.checkpoint_folder``; PROTOCOL.md 15). The methods write it
(``save_prompt_checkpoint``) and read it to load published prompts; the harness reads it to resume
and to evaluate. Both read it here.
"""

from __future__ import annotations

import io
import os
import pickle

import torch


class _Missing:
    """Stands in for classes of frameworks that are not installed (e.g. Dassl's warm-up scheduler)."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        self.__dict__["_state"] = state


class _TolerantUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            return type(name, (_Missing,), {"__module__": module})


class _tolerant_pickle:  # a pickle-module stand-in for torch.load
    Unpickler = _TolerantUnpickler
    load = staticmethod(lambda f, **kw: _TolerantUnpickler(f, **kw).load())
    __name__ = "pickle"


def load_checkpoint_file(path: str):
    """torch.load a (trusted) checkpoint, also one whose pickled scheduler comes from another framework."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except (ModuleNotFoundError, AttributeError):
        with open(path, "rb") as f:
            data = io.BytesIO(f.read())
        return torch.load(data, map_location="cpu", weights_only=False, pickle_module=_tolerant_pickle)
