"""The method contract: what every prompt-learning method tells the runner, and the authors' checkpoints.

The runner knows no method by name. It builds one with ``methods.build_method`` and asks it:

=============================  =================================================================
``trainable``                  does it learn anything? (zero-shot CLIP: no, the runner only tests)
``training_loss(x, y)``        the published objective for a batch, a scalar (default: cross-entropy)
``backward(x, y, details)``    optional, for an update that is not one loss's gradient (ProGrad): see below
``parameter_groups()``         what the optimiser updates, in groups (``lr_scale`` x the run's lr, or ``lr``)
``on_epoch_end(epoch, E)``     called after each epoch's last step and learning-rate update
``step_schedule(opt, K, S, E)`` optional: a schedule stepped per batch and a budget of steps (see below)
``training_state()``           what that hook keeps between epochs (saved with the resume state)
``features_cacheable``         is ``encode_image`` the frozen, un-prompted image tower?
``feature_key()``              what besides backbone, precision, transform and images changes them
``text_depends_on_image``      must the test set be scored batch by batch (per-image prompts)?
``record_options()``           the options as built (e.g. n_ctx after ``ctx_init``), for the records
``dataset=`` option            a method whose constructor takes ``dataset`` is given the dataset key
``fits_features``              is it fitted on frozen features (``fit``) instead of trained by gradient?
``fit(train_f, train_y,``      fit on the image features of the full train and val splits (numpy or
``val_f, val_y, seed, shots)``  tensors, split order); the method draws its own ``shots`` per class
``draws_own_shots``            False: ``fit`` gets the few-shot draw every prompt method trains on
                               instead of the full train split, and ``augmented`` (see below)
``transfers_to_other_classes`` may what it learned be evaluated on other classes (new, other datasets)?
``subsample=`` argument        one whose constructor takes ``subsample`` is told which classes these are
``train_augmentation``,        the training transform ("crop_flip" or "randaugment") and the views per
``train_views``                image (> 1: ``training_loss`` gets [B, views, C, H, W]), read by the runner
=============================  =================================================================

A method that ``fits_features`` (linear-probe CLIP) is trainable (it has a seed, shots and a
checkpoint) but has no optimiser: the runner extracts the train and val features once through the
shared feature cache, calls ``fit``, saves the checkpoint, and scores the test set as for any method.

A ``fits_features`` method that does not draw its own shots (Tip-Adapter's cache) gets the features of the
(shots, seed) few-shot draw as ``train_f``, those of the full val split, and ``augmented=``: a function of an
integer seed returning the draw's features through the training transform (random crop and flip), one pass
in the draw's order, the same crops for the same seed whatever ran before.

``subsample`` ("base" | "new" | "all", ``methods.build_method``'s argument, default "all") is the authors'
``DATASET.SUBSAMPLE_CLASSES``: a method whose published computation switches on it (DePT's head, MMRL's
logits) takes it in its constructor; the others never see it.

``parameter_groups()``: each group trains at the run's lr times its ``lr_scale`` (so ``--set lr=...`` scales
every group, as the authors' configs do), or at its absolute ``lr``, or at the run's lr; during the constant
warm-up epoch every group trains at ``warmup_lr``, as Dassl's warm-up scheduler sets them all, then each
follows its own cosine from its own rate (``harness.runner.build_scheduler``).

``backward(images, labels, details=None, *, loss_scale=1.0) -> loss``: a method whose published update is
not the gradient of one scalar (ProGrad projects one gradient against another) defines it. It runs the
forward pass, leaves in every trainable tensor's ``.grad`` exactly the update the authors' trainer hands its
optimiser, multiplied by ``loss_scale``, fills ``details`` as ``training_loss`` does, and returns the loss
to log; it steps nothing. The runner calls it instead of ``training_loss(...).backward()`` when a method
has it, inside the autocast of an amp run, with ``loss_scale`` the gradient scaler's factor (1 without a
scaler): the method multiplies each loss by it before its own backward, so small half-precision gradients
do not underflow, and the scaler divides the update by it again before the step. The update must be
homogeneous of degree one in the scaled losses (ProGrad's projection is: scaling both gradients by s scales
the result by s), and the scaler's factors are powers of two, so the unscaled update is the published one.

The forward is split at the image tower: ``encode_image`` (for most methods the frozen tower, so the
runner computes a test set's features once and shares them between methods and seeds) and
``logits_from_features`` (the method's own part); ``forward(images)`` chains them. A method that
prompts the image encoder (MaPLe, PromptSRC) sets ``features_cacheable = False``: the runner then
never reads or writes the shared feature cache for it.

``step_schedule(optimizer, shots, steps_per_epoch, epochs) -> (scheduler, steps)``: a method whose authors
count optimiser steps, not epochs (CLIP-LoRA: 500 x shots), returns its learning-rate scheduler, which the
runner steps after every optimiser step instead of the per-epoch one, and the number of steps after which
training stops, mid-epoch; it refuses, in one line naming the right value, ``epochs`` other than the epochs
those steps take. Without it the runner's per-epoch schedule applies.

What a method says about itself, as class attributes of the registered class (its own, never
inherited: ``methods.method_info`` reads them for the report, the README's methods table, the bench
and ``python -m harness methods``):

=============================  =================================================================
``label``                      its name in tables and figures ("CoOp"; default: the registered name)
``paper``, ``year``            authors and venue, and the year ("Zhou et al., IJCV", 2022); the
                               report orders methods by year (ties: registration order)
``source``                     the published code followed: ``owner/repo@commit`` (a URL, or a dated
                               snapshot where no commit is known)
``color``                      ``"#rrggbb"`` in every figure (default: a distinct one of the report's)
``default_config``             the config under ``experiments/methods/`` a study uses when its YAML
                               does not list the method (``"coop/vit_b16_ctxv1"``; default: the only
                               file in ``experiments/methods/<name>/``)
=============================  =================================================================

Its options are its constructor's keyword arguments, each annotated with its type and allowed values
(``bounds``: ``Annotated[float, Range(0, 1)]``, or the shared ``ContextLength``, ``Weight``, ``Fraction``,
``Template`` below); the classmethod ``check_options(options)`` refuses options that contradict each
other (n_ctx and the ``ctx_init`` that sets it). The registry checks both before a model is built, and
every run before anything is written.

Two facts about its options and objective, read by the report and the bench (inherited, as behaviour):
``ctx_init_sets_n_ctx`` (the init words fix the context length, one token per word, PROTOCOL.md
7.1) and ``frozen_image_teacher`` (the objective also runs the frozen, un-prompted image tower on
every training batch).

Learnable state lives in ``self.prompt_learner``, whose state-dict keys are those of the authors'
checkpoints (``ctx``, ``token_prefix``, ``token_suffix``, ``meta_net.linear1.weight``, ...;
PROTOCOL.md 15). A method whose authors saved the whole model overrides ``checkpoint_state_dict`` and
``load_checkpoint_state_dict``. One whose authors' own code saves a file of another layout (CLIP-LoRA's
``save_lora``) returns it from ``authors_files``, written beside the final checkpoint so that their loader reads
it, and recognises it in ``is_authors_file``, so that ``load_from`` evaluates a file their code wrote.
"""

from __future__ import annotations

from typing import Annotated

import torch
import torch.nn.functional as F
from torch import nn

from bounds import OutOfBounds, Range, Satisfies
from clipcore import backbone
from clipcore.atomic import atomic_torch_save
from clipcore.checkpoint_file import load_checkpoint_file

# Option types shared by the methods' constructors (``bounds``: the registry checks every option against
# its annotation before a model is built). A context fits CLIP's 77 positions with its SOS and EOT.
ContextLength = Annotated[int, Range(1, 75)]
Weight = Annotated[float, Range(0)]  # a loss term's weight: 0 turns the term off
Fraction = Annotated[float, Range(0, 1)]  # a convex combination's weight
Template = Annotated[str, Satisfies(lambda t: "{}" in t, "with '{}' where the class name goes")]
Templates = Annotated[list[Template], Satisfies(len, "(at least one)")]


class CheckpointError(ValueError):
    """A prompt checkpoint that cannot be loaded into this method (names the file and the fix)."""


class CLIPMethod(nn.Module):
    method_name = "?"
    # About the method (see the module docstring; read from the registered class's own attributes).
    label = ""
    paper = ""
    year: int | None = None
    source = ""
    color = ""
    default_config = ""
    # Behaviour the report and the bench need to know (inherited).
    ctx_init_sets_n_ctx = False
    frozen_image_teacher = False
    # The folder of a run where the authors' trainer writes this method's checkpoints (their registered
    # name), so that their tools find ours.
    checkpoint_folder = "prompt_learner"
    # Whether the authors' framework writes a ``val_result`` entry (KaiyangZhou's Dassl does, the
    # Dassl.ProGrad copy that ProGrad and TCP build on does not).
    writes_val_result = True
    trainable = True
    features_cacheable = True
    # False: the class text features do not depend on the image, so a whole test set's features can
    # go through ``logits_from_features`` in one call (one text-encoder pass). CoCoOp sets True.
    text_depends_on_image = False
    # True: learned by ``fit`` on frozen image features, not by gradient steps (no optimiser, no epochs).
    fits_features = False
    # For a fits_features method: True, it draws its shots from the full train split (linear probe); False,
    # it is fitted on the harness's few-shot draw and also given its augmented features.
    draws_own_shots = True
    # False: what is learned is tied to the training classes (a classifier row per class, no prompt), so
    # evaluating other classes (base-to-new's new half, another dataset) is refused before any work.
    transfers_to_other_classes = True
    # The training images as the method's published config makes them: the augmentation
    # (``harness.data.build_transform``'s "crop_flip" or "randaugment") and how many independent views of each
    # image (Dassl's K_TRANSFORMS): with more than one, ``training_loss`` gets images [B, views, C, H, W].
    train_augmentation = "crop_flip"
    train_views = 1

    def __init__(self, clip_model, classnames: list[str]):
        super().__init__()
        self.clip = clip_model
        self.classnames = list(classnames)
        self.prompt_learner = nn.Module()

    @property
    def num_classes(self) -> int:
        return len(self.classnames)

    # -- options ----------------------------------------------------------------------------------

    @classmethod
    def context_words(cls, ctx_init: str | None) -> str:
        """The words a ``ctx_init`` option starts the context from ("" : a random context)."""
        return (ctx_init or "").replace("_", " ")

    @classmethod
    def check_options(cls, options: dict) -> None:
        """Raise ``bounds.OutOfBounds`` (one line, with the fix) where options contradict each other.
        ``options`` holds every option, defaults filled in, each already of its declared type and range.
        Here: where the init words fix the context length (``ctx_init_sets_n_ctx``), n_ctx must be it."""
        words = cls.context_words(options.get("ctx_init"))
        given = (options.get("ctx_init") or "").replace("_", " ")
        if words and given and words != given:  # a record must not name words the run did not use
            raise OutOfBounds(
                f"Options of method {cls.method_name!r}: ctx_init {options['ctx_init']!r} would not be used: its "
                f"authors' code starts the context from {words!r} whatever words are given. Set "
                f"options.ctx_init={words!r} (or '' for a random context)."
            )
        if not (cls.ctx_init_sets_n_ctx and words and "n_ctx" in options):
            return
        length = len(words.split(" "))
        if options["n_ctx"] != length:
            init, n = options["ctx_init"], options["n_ctx"]
            start = "whose" if words == init.replace("_", " ") else f"which starts the context from {words!r}:"
            n_words = " ".join(["X"] * n)
            other_words = cls.context_words(n_words) == n_words  # not KgCoOp, TCP: their words are fixed
            raise OutOfBounds(
                f"Options of method {cls.method_name!r}: n_ctx {n} contradicts ctx_init {init!r}, {start} "
                f"{length} words set the context length to {length}. Set both: options.ctx_init='' for {n} "
                f"randomly initialised tokens{f', a ctx_init of {n} words' if other_words else ''}, or n_ctx={length}."
            )

    @property
    def dtype(self) -> torch.dtype:
        return backbone.model_dtype(self.clip)

    def train(self, mode: bool = True):
        # PROTOCOL.md 8.3: only the prompt learner switches mode; the CLIP towers stay in eval.
        super().train(mode)
        self.clip.eval()
        return self

    # -- the forward ------------------------------------------------------------------------------

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        return backbone.encode_image(self.clip, images)

    def logits_from_features(self, image_features: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.logits_from_features(self.encode_image(images))

    # -- training ---------------------------------------------------------------------------------

    def training_loss(self, images: torch.Tensor, labels: torch.Tensor, *, details: dict | None = None) -> torch.Tensor:
        """The published training objective for one batch, a scalar tensor.

        ``details``, when given, receives ``"logits"`` (for the training accuracy) and each weighted
        term of the objective by name (for the logs); the loss is the sum of the terms.
        """
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        if details is not None:
            details.update(logits=logits.detach(), ce=loss.detach())
        return loss

    def trainable_parameters(self) -> list[nn.Parameter]:
        """What the optimiser updates: the prompt learner's parameters, nothing of CLIP."""
        return [p for p in self.prompt_learner.parameters() if p.requires_grad]

    def parameter_groups(self) -> list[dict]:
        """Optimiser parameter groups: a group's ``"lr_scale"`` multiplies the run's lr, an ``"lr"`` replaces
        it (else the run's); other keys pass to the optimiser."""
        return [{"params": self.trainable_parameters()}]

    def num_trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.trainable_parameters())

    def on_epoch_end(self, epoch: int, epochs: int) -> None:
        """After epoch ``epoch`` (1-based) of ``epochs``: its last step and learning-rate update are done,
        its checkpoint is written next (so what this changes is what the checkpoint holds)."""

    def training_state(self) -> dict:
        """State that ``on_epoch_end`` keeps across epochs (tensors or plain data), for exact resume."""
        return {}

    def load_training_state(self, state: dict) -> None:
        if state:
            raise CheckpointError(
                f"{self.method_name} keeps no training state, but the checkpoint holds {sorted(state)}."
            )

    def fit(self, train_features, train_labels, val_features, val_labels, seed: int, shots: int) -> None:
        """For ``fits_features`` methods: learn from features of the full train and val splits (their
        own few-shot draw of ``shots`` per class with ``seed``), or of the few-shot draw and the full val
        split with ``augmented=`` (``draws_own_shots = False``)."""
        raise NotImplementedError(f"{self.method_name} is trained by gradient, not fitted on features.")

    # -- evaluation and records -------------------------------------------------------------------

    def feature_key(self) -> dict:
        """What, beyond the backbone, precision, test transform and images, determines
        ``encode_image``'s output: part of the feature-cache key. Only for ``features_cacheable``."""
        return {"image_tower": "frozen"}

    def record_options(self) -> dict:
        """The method's options as built (resolved defaults), stored with every result."""
        return {}

    # -- checkpoints in the authors' format -------------------------------------------------------

    def checkpoint_state_dict(self, full: bool = True) -> dict:
        """The ``state_dict`` entry of the authors' checkpoint file (their keys and layout). ``full=False``
        may leave out what the authors save but nothing learns (frozen CLIP copies): for resume states."""
        return {k: v.detach().cpu() for k, v in self.prompt_learner.state_dict().items()}

    def save_prompt_checkpoint(
        self, path: str, epoch: int, optimizer=None, scheduler=None, *, full: bool = True, **extra
    ) -> None:
        """Write ``{"state_dict", "epoch", "optimizer", "scheduler", "val_result", ...}`` atomically (no
        ``val_result`` where the authors' framework writes none).

        The file is what the authors' framework writes as ``<checkpoint_folder>/model.pth.tar-<epoch>``,
        so their tools load ours; ``extra`` keys (RNG states, ...) are ignored by theirs.
        """
        state = {
            "state_dict": self.checkpoint_state_dict(full),
            "epoch": int(epoch),
            "optimizer": optimizer,
            "scheduler": scheduler,
            **({"val_result": None} if self.writes_val_result else {}),
            **extra,
        }
        atomic_torch_save(state, path)

    def load_prompt_checkpoint(self, path: str) -> dict:
        """Load the learned tensors from an authors'-format checkpoint file; return the whole file."""
        checkpoint = load_checkpoint_file(path)
        if isinstance(checkpoint, dict) and "state_dict" in checkpoint:
            state = checkpoint["state_dict"]
        else:
            state = checkpoint
        if not isinstance(state, dict):
            raise CheckpointError(f"{path} holds no state dict: it is not a prompt checkpoint.")
        self.load_checkpoint_state_dict({k.removeprefix("module."): v for k, v in state.items()}, path)
        return checkpoint

    def authors_files(self, spec: dict) -> dict[str, object]:
        """Files the authors' own code writes when training ends, where their layout is not Dassl's checkpoint:
        {path under the checkpoint folder, as their loader looks for it: contents for ``torch.save``}.
        ``spec`` is the job's training identity (``RunSpec.training_identity``). ``harness.checkpoint`` writes
        them beside every method's final checkpoint; most methods have none."""
        return {}

    @classmethod
    def is_authors_file(cls, contents) -> bool:
        """Whether a loaded file is one of ``authors_files``' layout: ``load_from`` then takes it as a finished
        training (their code writes it once, after the last step, with no epoch in it) and
        ``load_checkpoint_state_dict`` is given its whole contents to read."""
        return False

    def load_checkpoint_state_dict(self, state: dict, path: str = "<state dict>") -> None:
        """PROTOCOL.md 15.3: ``token_prefix`` / ``token_suffix`` are dropped (they were built from the
        training class names and are rebuilt from ours), the rest is copied in with dtype conversion.
        Shapes must agree: a class-specific context cannot move to another class set."""
        load_learned_tensors(self.prompt_learner, state, path, self.method_name)


def load_learned_tensors(module: nn.Module, state: dict, path: str, method: str) -> None:
    """Copy ``state`` into ``module`` (not strict: frozen buffers may be absent), after checking that
    every learnable parameter is there with the right shape."""
    state = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] not in ("token_prefix", "token_suffix")}
    own = module.state_dict()
    for key, value in state.items():
        if key in own and own[key].shape != value.shape:
            raise CheckpointError(
                f"{path}: {key} has shape {tuple(value.shape)} but this {method} model expects "
                f"{tuple(own[key].shape)}. Build the method with the options the checkpoint was trained with "
                "(n_ctx, csc, depth, ...); a class-specific context only loads for the same classes."
            )
    learnable = {k for k, _ in module.named_parameters()}
    foreign = sorted(set(state) - set(own))
    if foreign:
        raise CheckpointError(
            f"{path} holds {foreign[:6]}{' ...' if len(foreign) > 6 else ''}, which this {method} model does not "
            "have: it is a checkpoint of another method (or of other options). Evaluate it with the method "
            "and options that trained it."
        )
    missing = sorted(learnable - set(state))
    if missing:
        found = ", ".join(sorted(state)[:6]) + (", ..." if len(state) > 6 else "")
        raise CheckpointError(
            f"{path} lacks {missing}: it is not a {method} prompt checkpoint (it holds {found or 'nothing'}). "
            "Evaluate it with the method that trained it."
        )
    module.load_state_dict(state, strict=False)
