"""prompt-harness: prompt learning for CLIP (the methods of ``methods``, one file each) trained and evaluated
as published: one runner for a job, sweeps of the papers' studies on submitit launchers, and a report stage.

Public API (kept stable; see README.md):
    harness.load_clip(spec, device="cpu", precision="fp32")      the frozen CLIP backbone
    harness.data.build_dataset(name, root, num_shots, seed, subsample)
    harness.config.build_spec(values) / harness.runner.run(spec)  one job
    methods.build_method(name, clip_model, classnames, **options)
"""

__version__ = "0.1.0"
__all__ = ["load_clip", "__version__"]


def __getattr__(name):
    # Lazy, so that light commands (python -m harness.data check) do not import torch and open_clip.
    if name == "load_clip":
        from clipcore.backbone import load_clip

        return load_clip
    raise AttributeError(f"module 'harness' has no attribute {name!r}")
