"""Benchmark: every method against its authors' own code, side by side.

    python -m benchmarks.vs_authors --authors cocoop=DIR coop=DIR kgcoop=DIR maple=DIR promptsrc=DIR \
        prograd=DIR tcp=DIR coop_dept=DIR mmrl=DIR tip_adapter_f=DIR mma=DIR coprompt=DIR clip_lora=DIR

It writes its report (``--out``, default reports/bench-vs-authors.md); ``python -m benchmarks.readme vs-authors
[--from REPORT]`` copies its table into docs/benchmarks.md.

For every method named with a checkout of its authors' repository (``git clone`` of the repository
in ``AUTHORS``; the commit it holds is read and written beside the figures, with a warning when it is
not the one ``docs/`` was read at), the authors' trainer class is imported from the checkout with the
few Dassl pieces it needs stubbed (``dassl_stub``; no network, no Dassl install) and the authors'
``clip`` package of that checkout. Both sides get the same random CLIP with OpenAI's ViT-B/16
dimensions: ours is built by ``clipcore.backbone``, its weights rounded through fp16 (the authors'
``build_model`` stores CLIP in fp16 before ``.float()``), and the authors' ``load_clip_to_cpu`` loads
that state dict from a file where it would have downloaded OpenAI's (their ``clip._download`` is
pointed at it). Same images, same class names (K ImageNet names), the same learned tensors (copied
from the authors' model into ours through the authors' checkpoint format).

Before timing, both must give the same evaluation logits (relative error < 1e-4 in fp32) and the
same training loss, and, where the entry names them, the same update left in the learned tensors'
``.grad`` (ProGrad's projected gradient); a difference aborts that method's line with the error. Then, fp32 on the CPU:
one training step (the authors' ``forward_backward``, forward + published objective + backward; its
optimiser has learning rate 0 so every run sees the same weights, and its update of the few prompt
parameters costs nothing measurable) against ours (``training_loss`` + backward, or the method's own
``backward`` where its update is not one loss's gradient, ``methods.parts.base``), and one evaluation
of ``--eval-images`` images, both including the image encoder. Each time is the median of the runs
after a warm-up. The report goes to ``reports/bench-vs-authors.md`` with the machine and its load.

Adding a method's authors' code is one new file, ``adapters/<method>.py`` (named as the method is in our
registry), holding one ``ENTRY = AuthorsCode(...)``: the repository, the folder of the checkout that holds
``trainers/`` and ``clip/``, the trainer class, the config keys it reads, our options that correspond,
and, where the authors' model returns more than logits, how to read them. ``adapters`` imports every
module of its folder, so nothing else lists it. A trainer that calls a framework method beyond the
stubbed ``TrainerX`` (ProGrad's ``prograd_backward_and_update`` of its bundled Dassl.ProGrad) gets that
method from the checkout's own framework file (``framework``), so the update compared is the authors'
code too. A repository with no trainer at all (Tip-Adapter's plain scripts) names a ``driver`` with
``AuthorsModel``'s interface instead (``drivers``).

The package, one idea a module: ``entry`` (what an entry says, and the pieces several entries name),
``adapters/`` (one entry per method), ``dassl_stub`` (the stubbed Dassl), ``importing`` (their code
imported with it, kept fp32 on the CPU), ``drivers`` (``AuthorsModel``, ``TipAdapterDriver``),
``commits`` (the commit timed against the one docs/ was read at), ``compare`` (the checks and the timing
of one method's line), ``report`` (the report and the README's block read from it), ``cli`` (the command
line; ``__main__`` runs it).
"""

from benchmarks.vs_authors.adapters import AUTHORS, discover
from benchmarks.vs_authors.cli import main, parse_authors
from benchmarks.vs_authors.commits import (
    DOCS,
    DOCUMENTATION,
    changed_files,
    checkout_commit,
    commit_warning,
    documented_commit,
)
from benchmarks.vs_authors.compare import (
    AuthorsMismatch,
    Line,
    Settings,
    build_ours,
    check_equal,
    compare_method,
    compare_updates,
    our_logits,
    our_step,
    our_update,
    timed,
)
from benchmarks.vs_authors.dassl_stub import StubNotProvided, TrainerX, stub_modules
from benchmarks.vs_authors.drivers import AuthorsModel, Cfg, TipAdapterDriver, base_cfg
from benchmarks.vs_authors.entry import AuthorsCode, clear_eval_text_cache, cocoop_floor, coop_floor
from benchmarks.vs_authors.importing import authors_import_path, fp32_on_cpu, framework_method, round_through_fp16
from benchmarks.vs_authors.report import README_BLOCK, REPORT, load_description, readme_block, render, table

__all__ = [
    "AUTHORS",
    "AuthorsCode",
    "AuthorsMismatch",
    "AuthorsModel",
    "Cfg",
    "DOCS",
    "DOCUMENTATION",
    "Line",
    "README_BLOCK",
    "REPORT",
    "Settings",
    "StubNotProvided",
    "TipAdapterDriver",
    "TrainerX",
    "authors_import_path",
    "base_cfg",
    "build_ours",
    "changed_files",
    "check_equal",
    "checkout_commit",
    "clear_eval_text_cache",
    "cocoop_floor",
    "commit_warning",
    "compare_method",
    "compare_updates",
    "coop_floor",
    "stub_modules",
    "discover",
    "documented_commit",
    "fp32_on_cpu",
    "framework_method",
    "load_description",
    "main",
    "our_logits",
    "our_step",
    "our_update",
    "parse_authors",
    "readme_block",
    "render",
    "round_through_fp16",
    "table",
    "timed",
]
