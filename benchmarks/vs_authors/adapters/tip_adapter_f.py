"""The authors' code of tip_adapter_f, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.drivers import TipAdapterDriver
from benchmarks.vs_authors.entry import AuthorsCode

ENTRY = AuthorsCode(
    "tip_adapter_f",
    "gaopengcuhk/Tip-Adapter",
    "main:run_tip_adapter_F",
    {
        "shots": 1,
        "augment_epoch": 1,
        "load_cache": False,
        "search_hp": True,
        "search_scale": [7, 3],
        "search_step": [1, 1],
        "init_beta": 1,
        "init_alpha": 1.17,
        "lr": 0.001,
        "template": ["a photo of a {}."],
    },
    {"templates": ["a photo of a {}."], "init_beta": 1.0, "init_alpha": 1.17, "search_step": [1, 1]},
    driver=TipAdapterDriver,
    gradients=(("adapter.weight", "prompt_learner.adapter_weight"),),
    note=(
        "Tip-Adapter-F (its logits at the initial beta and alpha are Tip-Adapter's): a cache of K classes x 1 "
        "random image, one pass; the authors' train step is one epoch of one batch of run_tip_adapter_F "
        "(with its per-epoch test evaluation and a one-point search on the batch's features), their eval "
        "run_tip_adapter on the images' features (its zero-shot and Tip-Adapter logits, a one-point search)"
    ),
)
