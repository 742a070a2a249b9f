"""Exact, fast text encoding of CoCoOp's B x K instance-conditioned prompts.

Image b's prompt for class c (PROTOCOL.md 8.2) is

    [SOS, v_1 + pi_b, ..., v_M + pi_b,  name_c tokens, ".", EOT, padding ...]
    |------ prefix: P = 1 + M positions -|------ suffix: positions P .. e_c ------|

where e_c is the EOT position of class c. The published code encodes the K prompts of each image in
its own text-encoder call over all 77 positions. This module computes the same features with these
exact savings (no approximation; fp32 results agree to rounding):

1. Causal truncation. The text transformer is causal: position t attends to positions <= t only,
   so the feature read at e_c is unchanged when every position after e_c is dropped.

2. Length buckets. Classes are sorted by e_c and grouped into contiguous buckets, each cut at its
   own longest EOT, so short names ("cat") do not pay for long ones. The grouping minimises
       sum over buckets (rows * classes_in_bucket * bucket_length)  +  overhead * number_of_buckets
   by an exact dynamic programme over the sorted distinct lengths (`plan_buckets`); ``overhead`` is
   the cost of one more bucket in token-equivalents (small on CPUs, large on GPUs).

3. Prefix key/value cache. Positions 0..M hold the same embeddings for all K classes of an image,
   and by causality their hidden states in every layer depend on positions 0..M only. They are
   therefore computed once per image (B sequences of P tokens), giving for every layer l the keys and
   values of those positions
       K_l^pre = LN1_l(h_l^pre) W_k + b_k,     V_l^pre = LN1_l(h_l^pre) W_v + b_v      [B, H, P, d_h]
   The B x K class suffixes then go through layer l with only their own positions (`encode_packed`):
   suffix position t (absolute P + t) attends to the cached prefix and to suffix positions <= t,
       a_t = softmax(q_t [K^pre ; K^suf_{<=t}]^T / sqrt(d_h)) [V^pre ; V^suf_{<=t}],
   which is exactly the full causal attention at that position (the prefix keys/values are those the
   full sequence would produce). Everything else in a block (out_proj, residuals, LN2, MLP, layer
   scales) acts position by position. Each (image, class) pair costs e_c + 1 - P positions instead
   of e_c + 1 (and 77 in the published loop).

4. Last layer, EOT row only. Only the EOT hidden state of the last layer is read, so that layer's
   queries, attention output, out_proj and MLP are computed for one row per sequence (its keys and
   values still cover all positions).

5. One packed pass. When memory allows (below), the prefix rows and every bucket's rows are stacked
   into one [T, D] matrix and go through the layers together (`encode_packed`): everything that acts
   position by position (LN, the q/k/v, out and MLP projections, residuals) is one matrix product or
   elementwise pass per layer over all T rows, and only attention runs per bucket (and for the
   prefix). Separate calls would repeat each layer's weight reads per bucket, run the prefix's
   P-row products at a fraction of the machine's rate, and multiply the operator count. Inside a
   block, QuickGELU(h) = h sigmoid(1.702 h) is computed as silu(1.702 h) / 1.702 (`_mlp`): three
   passes in backward instead of five.

Memory. Sequences are encoded in chunks sized from a memory budget (`memory_budget`; `chunk_size`
caps the sequences per call). When every bucket is one chunk, and either the step's graph fits the
budget (training) or all buckets' transient memory does and the positions are few
(`PACKED_POSITIONS_WITHOUT_GRAD`, no gradients), they run as the one packed pass of 5; otherwise
the prefix keys/values are computed first (`prefix_cache`) and each chunk is its own pass over them.
Without gradients a chunk's memory is transient (one layer at a time).
With gradients every chunk's activations would be kept until backward: when the whole step's
activations (`estimate_step_memory`) exceed the budget, each chunk runs under
``torch.utils.checkpoint`` (recomputed during backward), so activation memory is bounded by one
chunk and the gradients are the same.

The module reuses the frozen weights of open_clip's ``ResidualAttentionBlock`` (``ln_1``,
``attn.in_proj_*``, ``attn.out_proj``, ``ls_1``, ``ln_2``, ``mlp``, ``ls_2``); ``supports_prefix_cache``
checks that structure and callers fall back to plain truncation (savings 1, 2) otherwise. Only plain
torch ops are used, so it runs on any device and under autocast (bf16 / fp16).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function
from torch.utils.checkpoint import checkpoint

from clipcore import backbone

try:  # the block class whose structure the prefix cache re-implements
    from open_clip.transformer import QuickGELU, ResidualAttentionBlock
except ImportError:  # pragma: no cover
    QuickGELU = ResidualAttentionBlock = None

MB = 1024 * 1024
DEFAULT_CPU_BUDGET_MB = 2048
CUDA_BUDGET_FRACTION = 0.5  # of the memory free when the forward starts

# Bytes each token keeps per layer for backward, in units of (width * element size): LN1 input,
# q/k/v, the concatenated keys/values, attention output, out_proj input, LN2 input, c_fc input,
# QuickGELU's input and sigmoid (4 widths each), c_proj input. Saved-tensor hooks measure 14-16 on
# ViT-B/16's text tower (see tests/test_cocoop_fast.py, which checks the estimate against them).
TRAIN_WIDTHS_PER_TOKEN_LAYER = 16
# Transient memory per token while one layer runs (hidden state, q/k/v, MLP hidden and activation,
# attention output), in the same units: all that runs without gradients, and the working set on top
# of the kept activations with them.
TRANSIENT_WIDTHS_PER_TOKEN = 16

# Without gradients, a packed pass of more positions than this is split into one pass per chunk: each
# is then large enough for full-rate matrix products, and the fresh [T, 4D] tensors of one huge pass
# cost more in page faults than packing saves (CoCoOp, K = 100, 1 thread: packed 19% faster for 2
# images, 5% for 8, 5% slower for 32).
PACKED_POSITIONS_WITHOUT_GRAD = 4096

# ---------------------------------------------------------------------------------------------------
# One transformer block, split so that keys/values of earlier positions can be supplied from a cache
# ---------------------------------------------------------------------------------------------------


def supports_prefix_cache(clip) -> bool:
    """True when every text block is open_clip's standard pre-LN ResidualAttentionBlock with a packed,
    biased, self-attention ``nn.MultiheadAttention`` and the text mask is causal."""
    if ResidualAttentionBlock is None or getattr(clip, "attn_mask", None) is None:
        return False
    for block in clip.transformer.resblocks:
        attn = getattr(block, "attn", None)
        if (
            type(block) is not ResidualAttentionBlock
            or hasattr(block, "ln_1_kv")
            or not isinstance(attn, nn.MultiheadAttention)
            or not attn._qkv_same_embed_dim
            or attn.in_proj_bias is None
            or attn.bias_k is not None
        ):
            return False
    return True


def _heads(rows: torch.Tensor, n: int, length: int, parts: int, heads: int) -> tuple[torch.Tensor, ...]:
    """``parts`` tensors [n, H, L, d_h] (q, k, v or k, v) of packed projections ``rows`` [n * L, parts * D]."""
    width = rows.shape[-1] // parts
    # unbind, not one select per part: its backward stacks the parts' gradients in one pass, where each
    # select's backward would fill a zero tensor the size of all parts and add them up.
    return rows.view(n, length, parts, heads, width // heads).permute(2, 0, 3, 1, 4).unbind(0)


def _merge_heads(attended: torch.Tensor) -> torch.Tensor:
    """[n, H, L, d_h] -> [n * L, D]."""
    n, heads, length, head_dim = attended.shape
    return attended.transpose(1, 2).reshape(n * length, heads * head_dim)


# QuickGELU(h) = h * sigmoid(1.702 h) = silu(1.702 h) / 1.702
QUICK_GELU_SCALE = 1.702


def _mlp(block, x: torch.Tensor) -> torch.Tensor:
    """block.mlp(x) for rows x [T, D]: c_fc, QuickGELU, c_proj, with QuickGELU as silu(1.702 h) / 1.702:
    the same passes forward, and three in backward (scale, fused silu, scale) instead of five. The
    scales stay out of the matrix products (their alpha/beta would save the two passes, but BLAS then
    gives results that change with the thread count, and a resumed run must repeat a run bit for bit)."""
    mlp = block.mlp
    if QuickGELU is None or type(mlp.gelu) is not QuickGELU:
        return mlp(x)
    # In place where autograd allows it (neither addmm nor silu keeps its output for backward): one new
    # [T, 4D] tensor instead of three.
    hidden = torch.addmm(mlp.c_fc.bias, x, mlp.c_fc.weight.t()).mul_(QUICK_GELU_SCALE)
    return torch.addmm(mlp.c_proj.bias, F.silu(hidden).div_(QUICK_GELU_SCALE), mlp.c_proj.weight.t())


def _finish_block(block, x: torch.Tensor, merged: torch.Tensor) -> torch.Tensor:
    """x + ls_1(out_proj(attention)), then + ls_2(mlp(ln_2(.))): the position-wise rest of a block, on
    rows x [T, D] with their attention outputs ``merged`` [T, D]."""
    out = block.attn.out_proj
    x = x + block.ls_1(torch.addmm(out.bias, merged, out.weight.t()))
    return x + block.ls_2(_mlp(block, block.ln_2(x)))


def prefix_cache(clip, prefix: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-layer keys and values [B, H, P, d_h] of the prefix embeddings [B, P, D] (SOS + context)."""
    dtype = backbone.model_dtype(clip)
    batch, length, width = prefix.shape
    x = (prefix.to(dtype) + clip.positional_embedding[:length].to(dtype)).reshape(-1, width)
    blocks = clip.transformer.resblocks
    cache = []
    for i, block in enumerate(blocks):
        attn = block.attn
        qkv = torch.addmm(attn.in_proj_bias, block.ln_1(x), attn.in_proj_weight.t())
        q, k, v = _heads(qkv, batch, length, 3, attn.num_heads)
        cache.append((k, v))
        if i + 1 < len(blocks):  # the prefix's outputs of the last layer are never read
            x = _finish_block(block, x, _merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True)))
    return cache


def encode_suffixes(
    clip,
    suffix: torch.Tensor,
    eot: torch.Tensor,
    cache: list[tuple[torch.Tensor, torch.Tensor]],
    image_index: torch.Tensor,
) -> torch.Tensor:
    """Text features [N, E] of N sequences given their suffix embeddings [N, S, D] (positions P..P+S-1).

    eot [N]: each sequence's EOT index within the suffix; image_index [N]: the image (row of
    ``cache``) whose prefix precedes the suffix.
    """
    return encode_packed(clip, [suffix], [eot], [image_index], cache=cache)[0]


def encode_packed(
    clip,
    suffixes: list[torch.Tensor],
    eots: list[torch.Tensor],
    image_indices: list[torch.Tensor],
    *,
    prefix: torch.Tensor | None = None,
    cache: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> list[torch.Tensor]:
    """Text features [N_g, E] of groups of sequences (length buckets) in one pass through the layers.

    Group g holds N_g suffixes [N_g, S_g, D] (positions P..P+S_g-1), their EOT indices within the
    suffix eots[g] [N_g] and the image of each, image_indices[g] [N_g]. The prefix comes as embeddings
    ``prefix`` [B, P, D] (SOS + context, encoded here alongside the suffixes) or as the per-layer keys
    and values ``cache`` of ``prefix_cache``.

    All rows of all groups (and the prefix) are packed into one [T, D] matrix, so every position-wise
    step (LN, the q/k/v, out and MLP projections, residuals) is one matrix product or pass per layer
    over all T rows; only attention is per group (each group is one length, its rows of one shape).
    """
    dtype = backbone.model_dtype(clip)
    positional = clip.positional_embedding.to(dtype)
    width = positional.shape[-1]
    if prefix is not None:
        batch, prefix_len = prefix.shape[:2]
    else:
        batch, _, prefix_len, _ = cache[0][0].shape
    shapes = [suffix.shape[:2] for suffix in suffixes]  # (N_g, S_g)
    rows = [n * length for n, length in shapes]
    pieces = [(s.to(dtype) + positional[prefix_len : prefix_len + s.shape[1]]).reshape(-1, width) for s in suffixes]
    if prefix is not None:
        rows = [batch * prefix_len, *rows]
        pieces = [(prefix.to(dtype) + positional[:prefix_len]).reshape(-1, width), *pieces]
    x = torch.cat(pieces) if len(pieces) > 1 else pieces[0]
    device = x.device
    starts = list(itertools.accumulate(rows, initial=0))[-len(shapes) - 1 : -1]  # each group's first row in x
    # The row of each sequence's EOT in x, group by group.
    eot_rows = torch.cat(
        [start + torch.arange(n, device=device) * length + eot for (n, length), start, eot in zip(shapes, starts, eots)]
    )
    # Suffix position t sees the P prefix keys and suffix keys <= t: key j allowed iff j <= t + P.
    allowed = [
        torch.ones(length, prefix_len + length, dtype=torch.bool, device=device).tril(prefix_len)
        for _, length in shapes
    ]

    def with_prefix(pre: torch.Tensor, own: torch.Tensor, image_index: torch.Tensor) -> torch.Tensor:
        # One image: its prefix keys/values broadcast to every row (no gather; backward is a sum).
        pre = pre.expand(own.shape[0], -1, -1, -1) if pre.shape[0] == 1 else pre[image_index]
        return torch.cat([pre, own], dim=2)

    blocks = clip.transformer.resblocks
    for i, block in enumerate(blocks):
        attn, heads = block.attn, block.attn.num_heads
        weight, bias = attn.in_proj_weight, attn.in_proj_bias
        h = block.ln_1(x)
        last = i + 1 == len(blocks)
        if last:  # only the EOT rows are read: their queries, and keys/values of every row
            kv = torch.addmm(bias[width:], h, weight[width:].t()).split(rows)
            queries = torch.addmm(bias[:width], h[eot_rows], weight[:width].t()).split([n for n, _ in shapes])
            parts = [_heads(part, n, length, 2, heads) for part, (n, length) in zip(kv[-len(shapes) :], shapes)]
        else:
            qkv = torch.addmm(bias, h, weight.t()).split(rows)
            parts = [_heads(part, n, length, 3, heads) for part, (n, length) in zip(qkv[-len(shapes) :], shapes)]
        merged = []
        if prefix is None:
            k_pre, v_pre = cache[i]
        elif last:  # the prefix's last-layer outputs are never read
            k_pre, v_pre = _heads(kv[0], batch, prefix_len, 2, heads)
        else:
            q_pre, k_pre, v_pre = _heads(qkv[0], batch, prefix_len, 3, heads)
            merged.append(_merge_heads(F.scaled_dot_product_attention(q_pre, k_pre, v_pre, is_causal=True)))
        for g, ((n, length), part, image_index) in enumerate(zip(shapes, parts, image_indices)):
            k = with_prefix(k_pre, part[-2], image_index)
            v = with_prefix(v_pre, part[-1], image_index)
            if last:
                q = queries[g].view(n, 1, heads, width // heads).transpose(1, 2)  # [N, H, 1, d_h]
                keys = torch.arange(prefix_len + length, device=device)
                mask = (keys <= eots[g].unsqueeze(1) + prefix_len)[:, None, None, :]  # [N, 1, 1, P + S]
                merged.append(_merge_heads(F.scaled_dot_product_attention(q, k, v, attn_mask=mask)))
            else:
                merged.append(_merge_heads(F.scaled_dot_product_attention(part[0], k, v, attn_mask=allowed[g])))
        merged = torch.cat(merged) if len(merged) > 1 else merged[0]
        x = _finish_block(block, x[eot_rows] if last else x, merged)
    x = clip.ln_final(x).to(dtype)
    return list((x @ clip.text_projection).split([n for n, _ in shapes]))


# ---------------------------------------------------------------------------------------------------
# Planning: buckets, chunks, memory
# ---------------------------------------------------------------------------------------------------


def plan_buckets(lengths: torch.Tensor, rows_per_class: int, overhead_tokens: int) -> list[torch.Tensor]:
    """Class indices grouped into buckets of similar sequence length (see the module docstring, 2).

    lengths [K]: positions each class's sequences need; rows_per_class: sequences per class (B).
    Minimises sum(rows_per_class * classes * max_length) + overhead_tokens * buckets over partitions
    of the sorted lengths into contiguous runs.
    """
    lengths = lengths.cpu()
    order = torch.argsort(lengths, stable=True)
    values, counts = torch.unique_consecutive(lengths[order], return_counts=True)
    values, counts = values.tolist(), counts.tolist()
    groups = len(values)
    best = [0.0] + [math.inf] * groups  # best[j]: cheapest cover of the first j distinct lengths
    cut = [0] * (groups + 1)
    for j in range(1, groups + 1):
        classes = 0
        for i in range(j, 0, -1):  # last bucket = distinct lengths i..j (1-based)
            classes += counts[i - 1]
            cost = best[i - 1] + rows_per_class * classes * values[j - 1] + overhead_tokens
            if cost < best[j]:
                best[j], cut[j] = cost, i - 1
    sizes, j = [], groups
    while j > 0:
        sizes.append(sum(counts[cut[j] : j]))
        j = cut[j]
    return list(torch.split(order, sizes[::-1]))


def encode_in_length_buckets(token_ids: torch.Tensor, encode_rows, chunk: int | None = None) -> torch.Tensor:
    """Features [N, E] of the N sequences ``token_ids`` [N, 77], in their order, from ``encode_rows(rows)``
    (the features of sequences ``rows``) called once per length bucket (see the module docstring, 2),
    in pieces of at most ``chunk`` sequences: each call can be cut after its own last EOT."""
    device = token_ids.device
    lengths = backbone.eot_positions(token_ids) + 1
    parts, order = [], []
    for bucket in plan_buckets(lengths, 1, default_overhead_tokens(device)):
        for rows in torch.split(bucket.to(device), chunk or len(bucket)):
            parts.append(encode_rows(rows))
            order.append(rows)
    return torch.cat(parts)[torch.argsort(torch.cat(order))]


def default_memory_budget(device: torch.device) -> int:
    """Bytes: 2 GiB on CPUs, half the free memory on CUDA devices."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * CUDA_BUDGET_FRACTION)
    return DEFAULT_CPU_BUDGET_MB * MB


def default_overhead_tokens(device: torch.device, packed: bool = False) -> int:
    """Cost of one more bucket in token-equivalents (kernel launches dominate on GPUs). ``packed``: the
    buckets share one pass (``encode_packed``), so one more costs only its attention calls, not a whole
    encoder call: on a CPU, 8 was faster than 32 for CoCoOp's K = 100 training step (1 and 2 threads)."""
    if torch.device(device).type == "cuda":
        return 8192
    return 8 if packed else 32


def _dims(clip) -> tuple[int, int, int, int]:
    """(width, heads, layers, element size) of the text tower."""
    block = clip.transformer.resblocks[0]
    return (
        backbone.text_width(clip),
        block.attn.num_heads,
        len(clip.transformer.resblocks),
        backbone.model_dtype(clip).itemsize,
    )


def token_bytes(clip, keys: int, training: bool) -> int:
    """Memory one token position costs: kept for backward over all layers (training) or transient in
    one layer (no gradients). ``keys``: attention keys it sees (attention weights, H per key)."""
    width, heads, layers, size = _dims(clip)
    transient = TRANSIENT_WIDTHS_PER_TOKEN * width + 2 * heads * keys
    if training:
        return (layers * (TRAIN_WIDTHS_PER_TOKEN_LAYER * width + heads * keys) + transient) * size
    return transient * size


def estimate_step_memory(
    clip,
    batch: int,
    num_classes: int,
    seq_len: int,
    *,
    n_ctx: int = 4,
    chunk_sequences: int | None = None,
    training: bool = True,
    prefix_cache: bool = True,
) -> int:
    """Bytes the text encoder needs for one CoCoOp forward(+backward) of ``batch`` images x
    ``num_classes`` classes whose sequences are ``seq_len`` positions long (up to the EOT).

    With a prefix cache each sequence encodes T = seq_len - (1 + n_ctx) positions, plus 1 + n_ctx per
    image; without, T = seq_len. With L layers, width D, H heads, element size s and c = 16 (the
    activations a token keeps per layer for backward, in widths, measured):

        per token, no gradients    m_e = (16 * D + 2 * H * seq_len) * s       (one layer at a time)
        per token, training        m_t = L * (c * D + H * seq_len) * s + m_e

        training, no checkpoint    B * K * T * m_t                          (all chunks kept)
        training, chunks of n      n * T * m_t + B * K * (2 D + E) * s       (one chunk recomputed at
                                                                             a time; inputs/outputs kept)
        no gradients, chunks of n  n * T * m_e + B * K * E * s

    (plus the prefix pass, B * (1 + n_ctx) * m_t, and the features). The forward picks the largest
    chunk that keeps this under its memory budget.
    """
    width, heads, layers, size = _dims(clip)
    embed = backbone.embed_dim(clip)
    prefix_len = 1 + n_ctx
    positions = seq_len - prefix_len if prefix_cache else seq_len
    sequences = batch * num_classes
    per_token = token_bytes(clip, seq_len, training)
    prefix = batch * prefix_len * token_bytes(clip, prefix_len, True) if (training and prefix_cache) else 0
    outputs = sequences * embed * size
    if not training:
        chunk = min(chunk_sequences or sequences, sequences)
        return chunk * positions * per_token + outputs + prefix
    if chunk_sequences is None:
        return sequences * positions * per_token + outputs + prefix
    chunk = min(chunk_sequences, sequences)
    return chunk * positions * per_token + sequences * (2 * width + embed) * size + outputs + prefix


@dataclass
class EncodePlan:
    """What the last forward did (for tests, logs and the benchmark)."""

    buckets: list[tuple[int, int]] = field(default_factory=list)  # (sequence length, classes)
    chunks: int = 0  # text-encoder calls over the class suffixes (or full prompts)
    checkpointed: bool = False  # chunks recomputed during backward
    positions: int = 0  # token positions encoded, all calls together
    estimated_bytes: int = 0  # the step's estimated text-encoder memory under this plan
    budget_bytes: int = 0


def encode_instance_prompts(
    clip,
    ctx: torch.Tensor,
    token_prefix: torch.Tensor,
    token_suffix: torch.Tensor,
    tokenized_prompts: torch.Tensor,
    *,
    use_prefix_cache: bool = True,
    chunk_size: int | None = None,
    memory_budget: int | None = None,
    overhead_tokens: int | None = None,
) -> tuple[torch.Tensor, EncodePlan]:
    """Unnormalised text features [B, K, E] of the prompts [SOS | ctx[b] | suffix_c] for all b, c.

    ctx [B, M, D] (per-image context); token_prefix [K, 1, D]; token_suffix [K, 77 - 1 - M, D];
    tokenized_prompts [K, 77] (locates each EOT). ``chunk_size`` caps sequences per call;
    ``memory_budget`` (bytes) sizes chunks and decides on checkpointing (default
    ``default_memory_budget``).
    """
    batch, n_ctx, width = ctx.shape
    num_classes = token_prefix.shape[0]
    device = ctx.device
    prefix_len = 1 + n_ctx
    use_prefix_cache = use_prefix_cache and supports_prefix_cache(clip)
    budget = memory_budget if memory_budget is not None else default_memory_budget(device)
    overhead = overhead_tokens if overhead_tokens is not None else default_overhead_tokens(device, packed=True)
    training = torch.is_grad_enabled() and ctx.requires_grad

    eot = backbone.eot_positions(tokenized_prompts)  # [K]
    # Positions each class's sequences need (per call): the suffix only, or the whole prompt.
    needed = eot + 1 - prefix_len if use_prefix_cache else eot + 1
    buckets = plan_buckets(needed, batch, overhead)
    plan = EncodePlan(budget_bytes=int(budget))

    # Memory: all chunks' activations are kept for backward unless they are checkpointed.
    lengths = [int(needed[cls].max()) for cls in buckets]
    keys = [length + (prefix_len if use_prefix_cache else 0) for length in lengths]
    graph = sum(batch * len(cls) * n * token_bytes(clip, k, True) for cls, n, k in zip(buckets, lengths, keys))
    plan.checkpointed = training and graph > budget

    # Every (image, class) pair of each bucket, image-major, in chunks of at most `rows` sequences.
    chunks = []  # (image_index, class_index, length, bytes per token)
    for classes, length, k in zip(buckets, lengths, keys):
        plan.buckets.append((length, len(classes)))
        image_index = torch.arange(batch, device=device).repeat_interleave(len(classes))
        class_index = classes.to(device).repeat(batch)
        per_token = token_bytes(clip, k, training)
        if training and not plan.checkpointed:
            rows = image_index.numel()  # everything fits: one call per bucket
        else:
            rows = max(1, int(budget // (per_token * length)))
        if chunk_size is not None:
            rows = min(rows, chunk_size)
        for start in range(0, image_index.numel(), rows):
            chunks.append((image_index[start : start + rows], class_index[start : start + rows], length, per_token))
            plan.positions += chunks[-1][0].numel() * length
    pass_bytes = sum(img.numel() * length * per_token for img, _, length, per_token in chunks)
    # One packed pass over the prefix and all buckets when each bucket is one chunk and the memory
    # allows it (training: the graph fits the budget; without gradients: all buckets' transient memory).
    packed = (
        use_prefix_cache
        and len(chunks) == len(buckets)
        and (
            not plan.checkpointed
            if training
            else pass_bytes <= budget and plan.positions + batch * prefix_len <= PACKED_POSITIONS_WITHOUT_GRAD
        )
    )

    prefix = cache = None
    if use_prefix_cache:
        prefix = torch.cat([token_prefix[:1].expand(batch, -1, -1), ctx], dim=1)  # same SOS for all classes
        plan.positions += batch * prefix_len
    if use_prefix_cache and not packed:
        with record_function("prompt_encoder.prefix_cache"):
            cache = prefix_cache(clip, prefix)

    @record_function("prompt_encoder.chunk")
    def encode_chunk(image_index: torch.Tensor, class_index: torch.Tensor, length: int) -> torch.Tensor:
        if use_prefix_cache:
            suffix = token_suffix[class_index, :length]
            return encode_suffixes(clip, suffix, eot[class_index] - prefix_len, cache, image_index)
        prompts = torch.cat(
            [token_prefix[class_index], ctx[image_index], token_suffix[class_index, : length - prefix_len]], dim=1
        )
        return backbone.encode_text_embeddings(clip, prompts, tokenized_prompts[class_index])

    order = [img * num_classes + cls for img, cls, _, _ in chunks]
    if packed:
        with record_function("prompt_encoder.chunk"):
            features = encode_packed(
                clip,
                [token_suffix[cls, :length] for _, cls, length, _ in chunks],
                [eot[cls] - prefix_len for _, cls, _, _ in chunks],
                [img for img, _, _, _ in chunks],
                prefix=prefix,
            )
        plan.chunks, chunk_bytes = 1, pass_bytes
    else:
        features, chunk_bytes = [], 0
        for img, cls, length, per_token in chunks:
            if plan.checkpointed:
                out = checkpoint(encode_chunk, img, cls, length, use_reentrant=False, preserve_rng_state=False)
            else:
                out = encode_chunk(img, cls, length)
            features.append(out)
            chunk_bytes = max(chunk_bytes, img.numel() * length * per_token)
        plan.chunks = len(chunks)
    features, order = torch.cat(features), torch.cat(order)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(order.numel(), device=device)
    # Kept for backward: the whole graph, or one (recomputed) chunk plus what checkpoints keep.
    kept = batch * num_classes * (2 * width + backbone.embed_dim(clip)) * backbone.model_dtype(clip).itemsize
    plan.estimated_bytes = int(graph if (training and not plan.checkpointed) else chunk_bytes + kept)
    return features[inverse].reshape(batch, num_classes, -1), plan
