"""prompt-harness: zero-shot CLIP, CoOp and CoCoOp, trained and evaluated as published.

Public API (kept stable; see README.md):
    harness.load_clip(spec, device="cpu", precision="fp32")      the frozen CLIP backbone
    harness.data.build_dataset(name, root, num_shots, seed, subsample)
    methods.build_method(name, clip_model, classnames, **options)
"""
from harness.backbone import load_clip

__version__ = "0.1.0"
__all__ = ["load_clip", "__version__"]
