"""The authors' code of prograd, as the side-by-side benchmark runs it (an entry of ``benchmarks.vs_authors``)."""

from benchmarks.vs_authors.entry import AuthorsCode

ENTRY = AuthorsCode(
    "prograd",
    "BeierZhu/Prompt-align",
    "trainers.prograd:ProGrad",
    {
        "DATASET": {"NAME": "ImageNet"},
        "TRAINER": {
            "COOP": {
                "N_CTX": 16,
                "CTX_INIT": True,  # the dataset's template words
                "CSC": False,
                "PREC": "fp32",
                "CLASS_TOKEN_POSITION": "end",
            }
        },
        "LOSS": {"NAME": "prograd", "T": 1.0, "LAMBDA": 1.0},
    },
    {"n_ctx": 16, "dataset": "imagenet", "prograd_lambda": 1.0, "kl_temperature": 1.0},
    folder="ProGrad.public",
    loss_key="xe_loss",
    framework={
        "prograd_backward_and_update": (
            "Dassl.ProGrad.pytorch/dassl/engine/trainer.py:TrainerBase.prograd_backward_and_update"
        )
    },
    gradients=(("ctx", "prompt_learner.ctx"),),
    # Whether the CE and KL gradients conflict (the projection applies) depends on the label: on this
    # benchmark's CLIP and batch some of the first five classes give each branch, at K = 5 and K = 100.
    update_labels=tuple(range(5)),
    note=(
        "published at RN50, 4 shots, timed here at ViT-B/16 as the study runs it; the loss compared is the CE "
        "(their xe_loss), and the update left in ctx.grad by their bundled Dassl.ProGrad's "
        "prograd_backward_and_update (taken from the checkout) against ours (ProGrad.backward), on the timed "
        "batch and on it relabelled with each of the first five classes (untimed), so that both the "
        "projected (conflicting gradients) and the plain branch are compared"
    ),
)
