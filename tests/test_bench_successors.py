"""The benchmark's memory/speed lines for the successors, run on the tiny CLIP."""

import pytest
import torch

from benchmarks import bench
from clipcore import backbone


def test_successor_lines_on_tiny(monkeypatch):
    monkeypatch.setattr(bench.cases, "build_vitb16_clip", lambda device="cpu": backbone.load_clip("tiny"))
    monkeypatch.setattr(bench.cases, "matmul_throughput", lambda device, dtype=None: 1e10)
    settings = bench.Settings(ks=(10,), eval_images=2, train_batches=(1,), budget_s=0.5, quick=True)
    b = bench.Bench(settings, torch.device("cpu"), log=lambda msg: None)
    rows = []
    for method in ("kgcoop", "maple", "promptsrc"):
        monkeypatch.setitem(bench.SUCCESSORS, method, {})  # the tiny CLIP has 2 blocks: default depths clamp
        row = b.successor(method, 10, 2, 2)
        assert row.train_s > 0 and row.eval_s > 0 and 0 < row.train_floor_flops and 0 < row.eval_floor_flops
        rows.append(row)
    kg, maple, src = rows
    assert kg.teacher_s > 0 and src.teacher_s > 0 and maple.teacher_s is None and "teacher" in src.note
    # Prompting the image tower keeps its activations for backward; KgCoOp's tower runs without a graph.
    assert maple.train_bytes > kg.train_bytes > 0 and src.train_bytes > kg.train_bytes
    assert src.train_floor_flops > maple.train_floor_flops > kg.train_floor_flops
    assert (kg.trainable, maple.trainable) == (4 * 64, 2 * 64 + (64 * 128 + 128) * 2 + 2 * 64)
    text = "\n".join(bench.render_successors(rows, 1e10, torch.device("cpu")))
    assert "| maple | 16,896 | 10 |" in text and "kept for backward" in text


@pytest.mark.parametrize("method", sorted(bench.SUCCESSORS))
def test_every_successor_has_a_line(monkeypatch, method):
    # Every trainable method besides CoOp and CoCoOp gets a line: a training step through its published update
    # (its own ``backward`` where it has one) leaves a gradient on what it trains, and an evaluation.
    monkeypatch.setattr(bench.cases, "build_vitb16_clip", lambda device="cpu": backbone.load_clip("tiny"))
    monkeypatch.setattr(bench.cases, "matmul_throughput", lambda device, dtype=None: 1e10)
    settings = bench.Settings(ks=(10,), eval_images=2, train_batches=(1,), budget_s=0.5, quick=True)
    b = bench.Bench(settings, torch.device("cpu"), log=lambda msg: None)
    depth_options = {
        "maple": {},
        "promptsrc": {},
        "tcp": {"injection_layer": 1},
        "mmrl": {"rep_layers": [1, 2]},
        "mma": {"adapter_start": 1, "adapter_end": 2},
        "coprompt": {"prompt_depth": 2},
    }
    if method in depth_options:  # the tiny CLIP has 2 blocks: the published depths do not fit it
        monkeypatch.setitem(bench.SUCCESSORS, method, depth_options[method])
    row = b.successor(method, 10, 2, 2)
    assert row.train_s > 0 and row.eval_s > 0 and row.trainable > 0
    text = "\n".join(bench.render_successors([row], 1e10, torch.device("cpu")))
    assert f"| {method} | {row.trainable:,} | 10 |" in text
