"""CoCoOp's fast text path (methods/parts/prompt_encoder.py) equals the published per-image computation.

Logits, loss and the gradient of every trainable parameter, for several batch sizes and class names
of very different token lengths; chunking, memory-budget splitting (checkpointing), the prefix
key/value cache against plain truncation, the memory estimate, mixed precision, and the benchmark's
correctness check, all on the tiny CLIP.
"""

import pytest
import torch

import methods
from benchmarks import bench
from benchmarks.cocoop_check import FastPathMismatch, check_fast_path, relative_error
from benchmarks.cocoop_check import train_step as cocoop_step
from clipcore import backbone
from methods.parts import prompt_encoder

# 1 token ("cat") to 20: the EOTs, hence the sequence lengths, differ a lot within a batch.
NAMES = [
    "cat",
    "2000 AM General Hummer SUV",
    "golden_retriever",
    "sea lake",
    "Mexican hairless dog (xoloitzcuintli)",
    "a remarkably long class name that keeps going on and on for many tokens",
    "dog",
]


def build(clip, names=NAMES, seed=0, **options):
    torch.manual_seed(seed)
    model = methods.build_method("cocoop", clip, names, **options)
    with torch.no_grad():  # move the Meta-Net off its init so pi(x) is not negligible
        generator = torch.Generator().manual_seed(seed + 100)
        for p in model.trainable_parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    return model


def features(batch, seed=0):
    return torch.randn(batch, 32, generator=torch.Generator().manual_seed(seed))


def train_step(model, feats, labels):
    """(logits, loss, gradients) of one training step: the benchmark's own step function."""
    return cocoop_step(model, feats, labels)


def assert_same_step(got, reference):
    logits, loss, grads = got
    ref_logits, ref_loss, ref_grads = reference
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    assert len(grads) == len(ref_grads) == 5  # ctx, linear1.{weight,bias}, linear2.{weight,bias}
    for g, ref in zip(grads, ref_grads):
        assert relative_error(g, ref) < 1e-4
        torch.testing.assert_close(g, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())


@pytest.fixture(scope="module")
def tiny():
    return backbone.load_clip("tiny")


@pytest.mark.parametrize("batch", [1, 3, 8])
def test_fast_path_equals_per_image_path(tiny, batch):
    feats, labels = features(batch, batch), torch.arange(batch) % len(NAMES)
    reference = train_step(build(tiny, batched=False), feats, labels)
    fast = build(tiny)
    assert_same_step(train_step(fast, feats, labels), reference)
    assert fast.last_plan is not None and not fast.last_plan.checkpointed
    assert fast.last_plan.chunks == 1  # the prefix and all buckets in one packed pass
    # Classes of different lengths land in different buckets, each cut at its own EOT.
    assert len(fast.last_plan.buckets) > 1
    assert fast.last_plan.positions < batch * len(NAMES) * fast.prompt_learner.prompt_length()
    with torch.no_grad():
        torch.testing.assert_close(fast.eval().logits_from_features(feats), reference[0], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_chunking_equals_one_call(tiny, prefix_cache):
    feats, labels = features(3, 1), torch.tensor([0, 5, 1])
    one = build(tiny, prefix_cache=prefix_cache, chunk_size=10_000)
    reference = train_step(one, feats, labels)
    chunked = build(tiny, prefix_cache=prefix_cache, chunk_size=2)
    assert_same_step(train_step(chunked, feats, labels), reference)
    assert chunked.last_plan.chunks > one.last_plan.chunks
    assert chunked.last_plan.chunks >= (3 * len(NAMES)) // 2


@pytest.mark.parametrize("prefix_cache", [True, False])
def test_batch_over_memory_budget_is_split_not_failed(tiny, prefix_cache):
    feats, labels = features(8, 2), torch.arange(8) % len(NAMES)
    reference = train_step(build(tiny, batched=False), feats, labels)
    small = build(tiny, prefix_cache=prefix_cache, memory_budget_mb=0.05)  # ~50 kB: a few sequences per chunk
    assert_same_step(train_step(small, feats, labels), reference)
    plan = small.last_plan
    assert plan.checkpointed and plan.chunks > len(plan.buckets) and plan.budget_bytes == int(0.05 * 2**20)
    # The estimate for the plan stays near the budget; the whole step's graph would not have.
    whole = build(tiny, prefix_cache=prefix_cache)
    train_step(whole, feats, labels)
    assert not whole.last_plan.checkpointed and whole.last_plan.estimated_bytes > plan.budget_bytes
    assert plan.estimated_bytes < whole.last_plan.estimated_bytes
    # Without gradients the budget only sizes the chunks (nothing is kept for a backward).
    small.eval()
    with torch.no_grad():
        torch.testing.assert_close(small.logits_from_features(feats), reference[0], rtol=1e-4, atol=1e-4)
    assert not small.last_plan.checkpointed and small.last_plan.chunks > len(small.last_plan.buckets)


def test_prefix_cache_equals_plain_truncation(tiny):
    feats, labels = features(3, 3), torch.tensor([2, 4, 6])
    plain = build(tiny, prefix_cache=False)
    cached = build(tiny, prefix_cache=True)
    assert_same_step(train_step(cached, feats, labels), train_step(plain, feats, labels))
    # The cache encodes each image's SOS + context once instead of once per class.
    prefix = 1 + cached.prompt_learner.n_ctx
    assert plain.last_plan.positions - cached.last_plan.positions == 3 * (len(NAMES) - 1) * prefix


def test_prefix_cache_functions_equal_full_text_encoder(tiny):
    """The building blocks directly: prefix keys/values + suffixes == encode_text_embeddings."""
    model = build(tiny)
    pl = model.prompt_learner
    ctx = pl.ctx.detach().unsqueeze(0) + torch.randn(2, 1, pl.ctx.shape[-1]) * 0.1  # two "images"
    assert prompt_encoder.supports_prefix_cache(tiny)
    prefix = torch.cat([pl.token_prefix[:1].expand(2, -1, -1), ctx], dim=1)
    cache = prompt_encoder.prefix_cache(tiny, prefix)
    assert len(cache) == len(tiny.transformer.resblocks) and cache[0][0].shape[:3] == (2, 1, 1 + pl.n_ctx)
    p = 1 + pl.n_ctx
    eot = backbone.eot_positions(pl.tokenized_prompts)
    length = int(eot.max()) + 1 - p
    for image in range(2):
        index = torch.full((len(NAMES),), image)
        got = prompt_encoder.encode_suffixes(tiny, pl.token_suffix[:, :length], eot - p, cache, index)
        want = backbone.encode_text_embeddings(tiny, pl.assemble(ctx[image]), pl.tokenized_prompts, truncate=False)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_falls_back_to_truncation_for_other_block_types(tiny, monkeypatch):
    monkeypatch.setattr(prompt_encoder, "ResidualAttentionBlock", type("Other", (), {}))
    assert not prompt_encoder.supports_prefix_cache(tiny)
    feats, labels = features(2, 4), torch.tensor([0, 1])
    fallback = build(tiny)
    got = train_step(fallback, feats, labels)
    assert fallback.last_plan.positions == sum(n * c for n, c in fallback.last_plan.buckets) * 2  # full sequences
    assert_same_step(got, train_step(build(tiny, batched=False), feats, labels))


def test_plan_buckets():
    lengths = torch.tensor([5, 3, 9, 3, 5, 5, 12])
    exact = prompt_encoder.plan_buckets(lengths, rows_per_class=4, overhead_tokens=0)
    assert [sorted(lengths[b].tolist()) for b in exact] == [[3, 3], [5, 5, 5], [9], [12]]
    one = prompt_encoder.plan_buckets(lengths, rows_per_class=4, overhead_tokens=10**6)
    assert len(one) == 1 and sorted(one[0].tolist()) == list(range(7))
    for buckets in (exact, one, prompt_encoder.plan_buckets(lengths, 4, 8)):
        assert sorted(torch.cat(buckets).tolist()) == list(range(7))


def test_memory_estimate_matches_saved_activations(tiny):
    """estimate_step_memory against what autograd actually keeps (saved-tensor hooks), and its shape."""
    model = build(tiny)
    model.train()
    feats = features(4, 5)
    weights = {p.untyped_storage().data_ptr() for p in list(tiny.parameters()) + list(model.parameters())}
    weights |= {b.untyped_storage().data_ptr() for b in list(tiny.buffers()) + list(model.buffers())}
    saved = {}

    def pack(t):
        storage = t.untyped_storage()
        if storage.data_ptr() not in weights:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model.logits_from_features(feats)
    measured = sum(saved.values())
    estimated = model.last_plan.estimated_bytes
    assert measured <= estimated <= 4 * measured, (measured, estimated)
    est = lambda **kw: prompt_encoder.estimate_step_memory(
        tiny, **{"batch": 8, "num_classes": 100, "seq_len": 12, **kw}
    )  # noqa: E731
    assert est(batch=16) > est() and est(num_classes=200) > est()
    assert est(chunk_sequences=50) < est() / 4  # one chunk of 50 of the 800 sequences kept at a time
    assert est(prefix_cache=False) > est() > est(training=False)


def test_mixed_precision_paths_run(tiny):
    """bf16 autocast (the GPU setting, here on the CPU) and the fp16 model layout stay close to fp32."""
    feats, labels = features(3, 6), torch.tensor([0, 1, 2])
    reference = train_step(build(tiny, batched=False), feats, labels)
    model = build(tiny)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        logits, _, grads = train_step(model, feats, labels)
    assert relative_error(logits.float(), reference[0]) < 5e-2
    assert all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    half = backbone.load_clip("tiny", precision="fp16")
    model16 = build(half, chunk_size=4)
    with torch.no_grad():
        out = model16.eval().logits_from_features(feats.half())
    assert out.dtype == torch.float16 and relative_error(out.float(), reference[0]) < 5e-2


def test_options_and_checkpoint_keys(tiny):
    with pytest.raises(ValueError, match="memory_budget_mb"):
        methods.build_method("cocoop", tiny, NAMES, memory_budget_mb=0)
    with pytest.raises(ValueError, match="chunk_size"):
        methods.build_method("cocoop", tiny, NAMES, chunk_size=0)
    keys = set(build(tiny).prompt_learner.state_dict())
    assert keys == {
        "ctx",
        "token_prefix",
        "token_suffix",
        "meta_net.linear1.weight",
        "meta_net.linear1.bias",
        "meta_net.linear2.weight",
        "meta_net.linear2.bias",
    }


def test_bench_correctness_check_on_tiny(tiny, monkeypatch):
    errors = check_fast_path(tiny, NAMES, batch=2)
    assert max(errors.values()) < 1e-4 and {"eval logits", "loss", "grad ctx"} <= set(errors)
    # A fast path that is off by a little must abort the benchmark.
    original = prompt_encoder.encode_packed  # every prefix-cache path's layers (packed or chunk by chunk)
    monkeypatch.setattr(prompt_encoder, "encode_packed", lambda *a, **k: [f * 1.01 + 0.01 for f in original(*a, **k)])
    with pytest.raises(FastPathMismatch, match="MISMATCH"):
        check_fast_path(tiny, NAMES, batch=2)


def test_bench_floor_and_names(tiny):
    names = bench.class_names(100)
    lengths = {len(backbone.tokenizer().encode(n)) for n in names}
    assert len(names) == 100 and len(set(names)) == 100 and len(lengths) >= 4
    floor = bench.cocoop_floor_flops(tiny, names, batch=2)
    assert 0 < floor < bench.cocoop_floor_flops(tiny, names, batch=2, training=True) == 2 * floor
    assert bench.cocoop_floor_flops(tiny, names, batch=4) < 2.1 * floor
    row = bench.Row("CoCoOp eval", 100, 32, baseline_s=10.0, fast_s=1.0, floor_s=0.5, error=1e-6)
    text = bench.render([row], ["# title"], ["* profile"], torch.device("cpu"), 1e11, 60.0)
    assert "| CoCoOp eval | 100 | 10.0 | 1.000 | 10.0x | 0.500 | 2.0 |" in text
