"""The prompt text around a learnable span, as MaPLe and PromptSRC build it (their maple.py:84-131,
promptsrc.py:88-133): the initial context, the fixed tokens around it (ProGrad's too), and the
assembled prompts."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bounds import OutOfBounds
from clipcore import backbone

# The authors' rule: init words start the context only when it has at most this many tokens.
MAX_INIT_CONTEXT = 4


def context_init(clip, n_ctx: int, ctx_init: str) -> tuple[torch.Tensor, str]:
    """(initial context [n_ctx, D] in the model dtype, prompt prefix text).

    As MaPLe and PromptSRC do it: with init words and n_ctx <= 4, the context starts as the token
    embeddings of the first n_ctx words' tokens and the prompt text keeps *all* the words, so with
    n_ctx = 2 and "a photo of a" the prompt is "a photo of a {name}." with "a photo" learnable and
    "of a" fixed words. Otherwise N(0, 0.02^2) and "X X ... X" placeholders (one token each).
    """
    dtype = backbone.model_dtype(clip)
    device = clip.token_embedding.weight.device
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be at least 1, got {n_ctx}.")
    if ctx_init and n_ctx <= MAX_INIT_CONTEXT:
        init = ctx_init.replace("_", " ")
        ids = backbone.tokenize(init).to(device)
        return backbone.token_embeddings(clip, ids)[0, 1 : 1 + n_ctx].clone(), init
    ctx = torch.empty(n_ctx, backbone.text_width(clip), dtype=dtype, device=device)
    nn.init.normal_(ctx, std=0.02)
    return ctx, " ".join(["X"] * n_ctx)


def init_tokens(ctx_init: str) -> int:
    """How many tokens the init words are (between SOS and EOT)."""
    return int(backbone.eot_positions(backbone.tokenize(ctx_init.replace("_", " ")))[0]) - 1


def check_context(method: str, n_ctx: int, ctx_init: str, key: str) -> None:
    """``context_init``'s options agree: init words that start the context (n_ctx <= 4) have at least
    n_ctx tokens (the authors' code would take the EOT and padding as context), and init words are not
    given where they would be ignored (n_ctx > 4: a random context). Raises ``bounds.OutOfBounds``."""
    if not ctx_init:
        return
    init = ctx_init.replace("_", " ")
    where = f"Options of method {method!r}: {key} {n_ctx} with ctx_init {init!r}"
    if n_ctx > MAX_INIT_CONTEXT:
        raise OutOfBounds(
            f"{where}: init words start the context only when {key} <= {MAX_INIT_CONTEXT} (the authors' rule), "
            f"so they would be ignored. Set both: options.ctx_init='' for {n_ctx} randomly initialised tokens, "
            f"or {key} <= {MAX_INIT_CONTEXT} with these words."
        )
    tokens = init_tokens(init)
    if n_ctx > tokens:
        raise OutOfBounds(f"{where}: the words are only {tokens} tokens. Give {key} <= {tokens}, or more words.")


def prompt_token_ids(prefix_text: str, names: Sequence[str], n_ctx: int, key: str = "n_ctx") -> torch.Tensor:
    """The ids of the prompts "<prefix_text> <name>." [K, 77]; a prompt longer than CLIP's context is a
    one-line ``OutOfBounds`` naming ``key`` and the largest value that fits (known only with the names)."""
    texts = [f"{prefix_text} {name}." for name in names]
    tok, limit = backbone.tokenizer(), 77
    lengths = [len(tok.encode(text)) + 2 for text in texts]  # + SOS, EOT
    longest = max(range(len(texts)), key=lengths.__getitem__, default=None)
    if longest is not None and lengths[longest] > limit:
        name = names[longest]
        fits = n_ctx - (lengths[longest] - limit)
        raise OutOfBounds(
            f"{key} = {n_ctx} does not fit CLIP's {limit}-token context: the longest class name {name!r} is "
            f"{len(tok.encode(name + '.'))} tokens with its '.', making its prompt {lengths[longest]} tokens. "
            + (f"Give {key} <= {fits}." if fits >= 1 else "Shorten the class names or the context words.")
        )
    return backbone.tokenize(texts)


def register_prompt_tokens(
    module: nn.Module, clip, classnames: Sequence[str], prefix_text: str, n_ctx: int, key: str = "n_ctx"
) -> None:
    """Buffers of the prompts "<prefix_text> <name>." as in CoOp (PROTOCOL.md 7.1): ``token_prefix``
    (SOS) and ``token_suffix`` (positions 1 + n_ctx .. 76: fixed words, name, ".", EOT, padding), saved
    in checkpoints and dropped on load; ``tokenized_prompts`` (not saved) locates the EOTs."""
    device = clip.token_embedding.weight.device
    names = [name.replace("_", " ") for name in classnames]
    ids = prompt_token_ids(prefix_text, names, n_ctx, key).to(device)
    embedding = backbone.token_embeddings(clip, ids)
    module.register_buffer("token_prefix", embedding[:, :1].clone())
    module.register_buffer("token_suffix", embedding[:, 1 + n_ctx :].clone())
    module.register_buffer("tokenized_prompts", ids, persistent=False)


def assemble(module: nn.Module, ctx: torch.Tensor) -> torch.Tensor:
    """[SOS | ctx | suffix] for every class: [K, 77, D]."""
    k = module.token_prefix.shape[0]
    return torch.cat([module.token_prefix, ctx.unsqueeze(0).expand(k, -1, -1), module.token_suffix], dim=1)
