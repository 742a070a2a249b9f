"""Benchmark: CoCoOp's published per-image path against the fast exact path.

    python -m benchmarks.bench [--quick] [--out reports/bench.md]

It writes its report (``--out``); ``python -m benchmarks.readme bench [--from REPORT]`` copies the report's
main rows into docs/benchmarks.md.

On one random CLIP with OpenAI's ViT-B/16 dimensions (open_clip ``CLIP``, QuickGELU, fp32, no
download) it times, in one process:

* a CoCoOp training step (forward + backward) at batch 1 and 8, and CoCoOp evaluation of 32 images
  from precomputed image features, at K = 10, 100 and 1000 classes (ImageNet class names, whose
  lengths vary from 1 to 12 tokens): ``batched=False`` (one text-encoder call per image over all 77
  positions, as published) against the default path (``methods.parts.prompt_encoder``);
* CoOp and zero-shot CLIP evaluation of 32 images including and excluding the image encoder
  (feature cache), CoOp with all 77 positions against truncation;
* one memory/speed line per successor method (every trainable method besides CoOp and CoCoOp,
  ``SUCCESSORS``, with the options of its default config): a training
  step (batch 4, the published update, forward + backward) and an evaluation of the images
  including the image encoder (MaPLe and PromptSRC prompt it, so no feature cache applies), at K = 100,
  with the memory a training step keeps for backward.

Before timing it checks that both paths give the same logits (and loss and gradients), relative
error < 1e-4 in fp32, and it compares the outputs of every timed pair again: a mismatch aborts.
Each time is the median of up to three runs after a warm-up. Next to each fast time is its floor:
the FLOPs the fast path cannot avoid (the text transformer over the positions no exact method can
skip: every class's name tokens up to its EOT, per image, plus each image's SOS + context once;
x2 for a training step, whose backward needs input gradients only) divided by the matmul
throughput measured on this machine. Cases the published path cannot run here (memory) or that
would take too long are estimated from smaller runs or skipped, and the table says which.
A profile of the fast path (torch.profiler, operator categories) follows the table.

On a CUDA device the timings run under bf16 autocast (the correctness check stays fp32) and the
table also reports images per second. Not a test: it takes ~10 minutes on 2 CPU cores (``--quick``:
~3 minutes, K = 10 and 100 only).

The package, one idea a module: ``probes`` (the model, class names, the machine, its threads and matmul
rate), ``floors`` (the FLOPs no exact method avoids), ``cases`` (the timed cases, one method each, and
their rows), ``profiling`` (where the fast path's time goes), ``report`` (the report's text and the
README's rows read back from it), ``cli`` (the command line; ``__main__`` runs it).
"""

from benchmarks.bench.cases import SUCCESSORS, Bench, Row, Settings, SuccessorRow, measure, successor_step
from benchmarks.bench.cli import main
from benchmarks.bench.floors import cocoop_floor_flops, image_encoder_flops
from benchmarks.bench.probes import (
    available_memory,
    build_vitb16_clip,
    choose_threads,
    class_names,
    machine_description,
    matmul_throughput,
    synchronize,
)
from benchmarks.bench.profiling import profile_fast_path, summarise_profile
from benchmarks.bench.report import (
    README_BLOCK,
    README_ROWS,
    REPORT,
    load_note,
    readme_block,
    render,
    render_successors,
    report_rows,
)

__all__ = [
    "README_BLOCK",
    "README_ROWS",
    "REPORT",
    "SUCCESSORS",
    "Bench",
    "Row",
    "Settings",
    "SuccessorRow",
    "available_memory",
    "build_vitb16_clip",
    "choose_threads",
    "class_names",
    "cocoop_floor_flops",
    "image_encoder_flops",
    "load_note",
    "machine_description",
    "main",
    "matmul_throughput",
    "measure",
    "profile_fast_path",
    "readme_block",
    "render",
    "render_successors",
    "report_rows",
    "successor_step",
    "summarise_profile",
    "synchronize",
]
