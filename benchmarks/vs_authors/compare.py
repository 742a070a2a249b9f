"""One method's line: both sides built on the same CLIP, their logits, loss and update checked equal, then
timed (``compare_method``)."""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

import methods
from benchmarks.bench.cases import successor_step
from benchmarks.bench.probes import class_names
from benchmarks.cocoop_check import FP32_TOLERANCE, relative_error
from benchmarks.vs_authors.commits import DOCS, checkout_commit, commit_warning, documented_commit
from benchmarks.vs_authors.drivers import AuthorsModel
from benchmarks.vs_authors.entry import AuthorsCode
from clipcore import backbone


def build_ours(entry: AuthorsCode, clip, classnames: list[str], authors: AuthorsModel):
    model = methods.build_method(entry.method, clip, classnames, **entry.options, **getattr(authors, "options", {}))
    model.load_checkpoint_state_dict(authors.checkpoint_state(), path=f"the authors' {entry.method} model")
    for _, name in entry.gradients:  # a fitted method trains these inside its fit only: here the step reaches them
        model.get_parameter(name).requires_grad_(True)
    return model


def our_step(model, images: torch.Tensor, labels: torch.Tensor) -> float:
    """One training step of ours, as the speed benchmark times it (the method's objective and its backward)."""
    return successor_step(model, images, labels).item()


def our_update(model, entry: AuthorsCode) -> dict[str, torch.Tensor]:
    params = dict(model.named_parameters())
    return {theirs: params[ours].grad for theirs, ours in entry.gradients}


def our_logits(model, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(images)


class AuthorsMismatch(AssertionError):
    """Our method and the authors' code disagree: the line is aborted."""


def check_equal(what: str, ours, theirs, tolerance: float) -> float:
    ours, theirs = torch.as_tensor(ours), torch.as_tensor(theirs)
    error = relative_error(ours, theirs) if ours.shape == theirs.shape else float("inf")
    if not error < tolerance:
        raise AuthorsMismatch(
            f"{what}: relative error {error:.3g} >= {tolerance:g} between ours and the authors' "
            f"(shapes {tuple(ours.shape)} and {tuple(theirs.shape)})"
        )
    return error


def seeded(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` after seeding Python's random: a step that draws from it (CoPrompt's description) draws the same on
    both sides, every call."""

    def call():
        random.seed(0)
        return fn()

    return call


def timed(fn: Callable[[], object], runs: int, budget_s: float) -> tuple[float, int, object]:
    """(median seconds, timed runs, first output): a warm-up call (its output returned), then up to
    ``runs`` timed calls, at least one, stopping once ``budget_s`` is spent."""
    out = fn()
    times: list[float] = []
    while len(times) < max(1, runs) and (not times or sum(times) + times[-1] <= budget_s):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), len(times), out


@dataclass
class Line:
    method: str
    repository: str
    commit: str | None = None
    documented: str | None = None
    warning: str = ""
    error: str = ""  # why the line was aborted
    check: dict = field(default_factory=dict)  # relative errors of the checks
    train: tuple[float, float] | None = None  # (authors' s, ours s)
    evaluation: tuple[float, float] | None = None
    runs: dict = field(default_factory=dict)
    note: str = ""
    floor: tuple[float, float] | None = None  # (train, eval) seconds at the measured matmul rate
    floor_flops: dict = field(default_factory=dict)  # {"train": {part: FLOPs}, "eval": {...}}


@dataclass
class Settings:
    k: int = 100
    batch: int = 1
    eval_images: int = 32
    check_images: int = 2
    runs: int = 3
    budget_s: float = 60.0
    tolerance: float = FP32_TOLERANCE
    loop_eval_images: int = 0  # > 0: the authors' eval of a per-image loop timed on this many images, scaled


def compare_updates(entry: AuthorsCode, authors: AuthorsModel, ours, tolerance: float, what: str = "") -> dict:
    """Relative errors of the update each side left in the entry's learned tensors after its last step."""
    theirs_update, ours_update = authors.update(), our_update(ours, entry)
    errors = {}
    for name, grad in theirs_update.items():
        where = f"{entry.method} update of {name}" + (f", {what}" if what else "")
        if grad is None or ours_update[name] is None:
            raise AuthorsMismatch(f"{where}: no gradient on one side")
        errors[f"update {name}"] = check_equal(where, ours_update[name], grad, tolerance)
    return errors


def compare_method(
    entry: AuthorsCode, checkout: str, clip, settings: Settings, log=print, docs=DOCS, flops_per_s: float = 0.0
) -> Line:
    line = Line(entry.method, entry.repository)
    line.commit, line.documented = checkout_commit(checkout), documented_commit(entry.repository, docs)
    line.warning = commit_warning(entry.repository, line.commit, line.documented, checkout)
    if line.warning:
        log(f"WARNING ({entry.method}): {line.warning}")
    names = class_names(settings.k) if settings.k > 0 else []
    generator = torch.Generator().manual_seed(0)
    size = backbone.image_size(clip)
    images = torch.randn(settings.eval_images, 3, size, size, generator=generator)
    labels = torch.arange(settings.batch) % settings.k
    batch = images[: settings.batch]
    if entry.views > 1:  # independent views stand in as the images rolled along their width
        batch = torch.stack([batch.roll(i, dims=-1) for i in range(entry.views)], dim=1)
    if entry.floor is not None and flops_per_s > 0:
        line.floor_flops = entry.floor(clip, names, settings.batch, settings.eval_images)
        line.floor = tuple(sum(line.floor_flops[case].values()) / flops_per_s for case in ("train", "eval"))
    try:
        torch.manual_seed(0)
        authors = (entry.driver or AuthorsModel)(entry, checkout, clip, names)
        ours = build_ours(entry, clip, names, authors)
        check = images[: settings.check_images]
        line.check["eval logits"] = check_equal(
            f"{entry.method} eval logits", our_logits(ours, check), authors.logits(check), settings.tolerance
        )
        line.note = entry.note
        if entry.train_unavailable:
            line.note = "; ".join(filter(None, [line.note, f"train step not timed: {entry.train_unavailable}"]))
        else:
            t_theirs, n_theirs, loss_theirs = timed(
                seeded(lambda: authors.step(batch, labels)), settings.runs, settings.budget_s
            )
            t_ours, n_ours, loss_ours = timed(
                seeded(lambda: our_step(ours, batch, labels)), settings.runs, settings.budget_s
            )
            # learning rate 0: the warm-up step saw the same weights on both sides
            line.check["training loss"] = check_equal(
                f"{entry.method} training loss", loss_ours, loss_theirs, settings.tolerance
            )
            line.check.update(compare_updates(entry, authors, ours, settings.tolerance))
            # the same batch under other labels, one untimed step each: another branch of the update (ProGrad's)
            extra = [label % settings.k for label in entry.update_labels if label % settings.k != int(labels[0])]
            for label in sorted(set(extra)):
                relabelled = torch.full_like(labels, label)
                what = f"label {label}"
                random.seed(0)
                theirs_loss = authors.step(batch, relabelled)
                random.seed(0)
                ours_loss = our_step(ours, batch, relabelled)
                errors = {
                    "training loss": check_equal(
                        f"{entry.method} training loss, {what}", ours_loss, theirs_loss, settings.tolerance
                    )
                }
                errors.update(compare_updates(entry, authors, ours, settings.tolerance, what))
                for key, error in errors.items():
                    key = f"{key}, other labels"
                    line.check[key] = max(line.check.get(key, 0.0), error)
            line.train, line.runs["train"] = (t_theirs, t_ours), (n_theirs, n_ours)
        # The authors' per-image loop costs the same for every image: time a few and scale when asked.
        few = settings.loop_eval_images if entry.eval_loops_over_images and settings.loop_eval_images else len(images)
        few = min(few, len(images))
        t_theirs, n_theirs, out_theirs = timed(lambda: authors.logits(images[:few]), settings.runs, settings.budget_s)
        t_theirs *= len(images) / few
        t_ours, n_ours, out_ours = timed(lambda: our_logits(ours, images), settings.runs, settings.budget_s)
        line.check["eval logits, all images"] = check_equal(
            f"{entry.method} eval logits ({few} images)", out_ours[:few], out_theirs, settings.tolerance
        )
        if few < len(images):
            scaled = f"the authors' eval timed on {few} images, x{len(images) / few:g} (a loop over images)"
            line.note = "; ".join(filter(None, [line.note, scaled]))
        line.evaluation, line.runs["eval"] = (t_theirs, t_ours), (n_theirs, n_ours)
        read_ours = getattr(authors, "logits_from_our_file", None)  # a driver whose authors' loader reads our file
        if read_ours is not None:
            line.check["eval logits, our file in their loader"] = check_equal(
                f"{entry.method} eval logits of the file our job writes, read by their loader",
                our_logits(ours, check),
                read_ours(ours, check),
                settings.tolerance,
            )
    except AuthorsMismatch as error:
        line.error, line.train, line.evaluation = f"MISMATCH: {error}", None, None
        log(f"ABORTED ({entry.method}): {line.error}")
    except Exception as error:  # the authors' code did not run here: say so in the line, time the others
        line.error, line.train, line.evaluation = f"FAILED: {type(error).__name__}: {error}", None, None
        log(f"FAILED ({entry.method}): {line.error}")
    return line
