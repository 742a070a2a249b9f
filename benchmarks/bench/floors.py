"""FLOP floors: the work no exact method can avoid (the text transformer over each class's own positions up to
its EOT, the image encoder's forward), which the benchmarks divide by the measured matmul rate."""

from __future__ import annotations

from clipcore import backbone


def _layer_flops(width: int, tokens: float, key_sum: float) -> float:
    # per token: q/k/v (3 D^2), out_proj (D^2), MLP (8 D^2) multiply-adds; attention 2 * keys * D.
    return 2 * (12 * width * width * tokens + 2 * width * key_sum)


def cocoop_floor_flops(clip, classnames: list[str], batch: int, n_ctx: int = 4, training: bool = False) -> float:
    """FLOPs no exact method can avoid for CoCoOp's text side (``batch`` = 1 gives CoOp's, whose one
    context serves all images): per image, SOS + context once; per (image, class), the class's own
    positions up to its EOT (no padding), each attending causally to the positions before it; in the
    last layer only keys/values beyond the EOT rows; the projection. x2 with a backward (input
    gradients only: the weights are frozen)."""
    width, layers = backbone.text_width(clip), len(clip.transformer.resblocks)
    prefix = 1 + n_ctx
    ids = backbone.tokenize([f"{' '.join(['X'] * n_ctx)} {n}." for n in classnames])
    ends = (backbone.eot_positions(ids) + 1).double()  # e_c + 1: positions up to and incl. the EOT
    pairs = batch * len(classnames)
    tokens = batch * (prefix + (ends - prefix).sum().item())
    # position t (1-based) attends to t keys: sum over the prefix, then over each class's own positions
    keys = batch * (prefix * (prefix + 1) / 2 + ((ends * (ends + 1) - prefix * (prefix + 1)) / 2).sum().item())
    eot_keys = batch * ends.sum().item()
    flops = (layers - 1) * _layer_flops(width, tokens, keys)
    # last layer: k, v (2 D^2) for every position; q, out_proj, MLP (10 D^2) and attention for EOT rows
    flops += 2 * 2 * width * width * tokens + 2 * (10 * width * width * pairs + 2 * width * eot_keys)
    flops += 2 * pairs * width * backbone.embed_dim(clip)
    return flops * (2 if training else 1)


def image_encoder_flops(clip, images: int) -> float:
    visual = clip.visual
    width = visual.conv1.weight.shape[0]
    patches = (backbone.image_size(clip) // visual.conv1.weight.shape[-1]) ** 2
    tokens = patches + 1
    layers = len(visual.transformer.resblocks)
    per_image = layers * _layer_flops(width, tokens, tokens * tokens)
    per_image += 2 * patches * width * visual.conv1.weight[0].numel()
    return images * per_image
