"""What one method's authors' code is (``AuthorsCode``), and the pieces several entries name: how to read
the logits of a model that returns more, clearing an eval cache, the FLOP floors of the prompt methods."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.bench.floors import cocoop_floor_flops, image_encoder_flops


def _first(output):
    """The logits of a model that returns (logits, extra terms), as KgCoOp's ``CustomCLIP`` does."""
    return output[0] if isinstance(output, tuple) else output


def clear_eval_text_cache(model) -> None:
    """MMRL's and MMA's eval forwards cache the text features at their first call and keep them
    (PROTOCOL-successors-2.md "DePT (on CoOp) and MMRL" 9, quirk 1; PROTOCOL-successors-3.md MMA 5, quirk 1):
    cleared, each timed evaluation encodes the text once, as ours does."""
    model.text_features_for_inference = None


@dataclass(frozen=True)
class AuthorsCode:
    """How to run one method in its authors' repository. ``cfg`` holds the config keys the trainer
    reads beyond the shared ones (``base_cfg``); ``options`` our method's options that correspond."""

    method: str  # our registry name
    repository: str  # GitHub owner/name; docs/ names the commit read as "owner/name @ <sha>"
    trainer: str  # "module:Class" inside the checkout folder
    cfg: dict
    options: dict
    folder: str = ""  # the folder of the checkout that holds trainers/ and clip/
    logits: Callable = _first  # eval logits from the authors' model output
    train_unavailable: str = ""  # why the authors' training step cannot run here (then only eval is timed)
    floor: Callable | None = None  # (clip, classnames, batch, eval_images) -> FLOPs no exact method avoids
    module_globals: dict = field(default_factory=dict)  # set in the trainer's module before it builds
    note: str = ""  # what differs from the published run, for the report
    eval_loops_over_images: bool = False  # the authors' eval encodes the prompts once per image (CoCoOp)
    loss_key: str = "loss"  # the entry of their forward_backward's summary that is our training loss
    # trainer method -> "path/in/checkout.py:Class.method": taken from the checkout's own framework file
    framework: dict = field(default_factory=dict)
    # (their parameter's name in the registered module, ours in our model): the update left in .grad must agree
    gradients: tuple = ()
    unused_imports: tuple = ()  # modules their trainers import but never call, stubbed empty where missing
    before_eval: Callable | None = None  # (their model) -> None, called before each of their evaluations
    update_labels: tuple = ()  # the update also compared on the train batch relabelled with each of these classes
    # a repository without a Dassl trainer (Tip-Adapter's plain scripts): (entry, checkout, clip, classnames) -> what
    # drives its functions, with ``AuthorsModel``'s interface (logits, step, update, checkpoint_state)
    driver: Callable | None = None
    # (folder, classnames) -> our options: writes the files the authors' code opens from its working folder (it is
    # run from that folder) and returns the options that give ours the same files (CoPrompt's descriptions)
    working_files: Callable | None = None
    views: int = 1  # > 1: the train step gets that many views of the batch (their list, our [B, views, C, H, W])


def cocoop_floor(clip, classnames, batch, eval_images) -> dict[str, dict[str, float]]:
    """FLOPs no exact method avoids, per case and part: the text side (``bench``'s floor, per image)
    and the frozen image encoder's forward, which both sides run on the same images."""
    return {
        "train": {
            "text": cocoop_floor_flops(clip, classnames, batch, training=True),
            "image encoder": image_encoder_flops(clip, batch),
        },
        "eval": {
            "text": cocoop_floor_flops(clip, classnames, eval_images),
            "image encoder": image_encoder_flops(clip, eval_images),
        },
    }


def coop_floor(clip, classnames, batch, eval_images) -> dict[str, dict[str, float]]:
    """As ``cocoop_floor`` with one context for all images: the text side is encoded once."""
    floor = cocoop_floor(clip, classnames, 1, 1)
    floor["train"]["image encoder"] = image_encoder_flops(clip, batch)
    floor["eval"]["image encoder"] = image_encoder_flops(clip, eval_images)
    return floor
