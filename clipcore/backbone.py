"""The frozen CLIP backbone: the table of backbones, loading, precision, tokenisation, the two encoders.

Everything here follows PROTOCOL.md 2. Models are open_clip ``CLIP`` objects built with QuickGELU
(as OpenAI trained them; open_clip's plain ``ViT-B-16`` config would use GELU and silently change
every number).

Backbones are one table, ``BACKBONES``: name -> how to build it, and an optional preparation step
(download, pre-training) that a sweep runs once in its driver before any job starts. ``load_clip``,
config validation and sweep preparation all read it. Built in:

  * OpenAI's names (``"ViT-B/16"``, ``"RN50"``, ...): the file is looked up in ``~/.cache/clip``
    (where the authors' code keeps it) and downloaded by open_clip otherwise;
  * ``"tiny"``: a small random CLIP (``build_random_clip``), deterministic, for tests;
  * and, outside the table, a path to an OpenAI-format checkpoint (TorchScript archive or plain
    state dict), whose architecture is read from the file.

Plugins add more with ``register_backbone`` (the miniature world's ``"tiny-pretrained"``).

What a result depends on in the backbone is its weights (``weights_identity``, part of a result's
fingerprint): a backbone read from a file is identified by the file's content (its sha256, computed
once per path, size and modification time and kept in the user's cache folder, so a job does not
read 350 MB to hash it again), a backbone built by code (``tiny``, from a fixed seed) by its name and
the harness's code (each record's ``git_commit``). A registered name says which file it promises
(``published``: OpenAI's sha256, which open_clip checks on download and which names its URL; the
miniature world's sidecar records its file's): that file is the name's default and is not named in
the fingerprint; another file at that place (``~/.cache/clip/ViT-B-16.pt`` overwritten) is.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg, build_model_from_openai_state_dict, convert_weights_to_lp
from open_clip.pretrained import download_pretrained_from_url, get_pretrained_url
from open_clip.tokenizer import SimpleTokenizer

from clipcore.atomic import atomic_torch_save, atomic_write_text
from clipcore.plugins import load_plugins

log = logging.getLogger(__name__)

PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}

# OpenAI's names (as the authors' configs write them) -> open_clip's model names.
OPENAI_MODELS = {
    "RN50": "RN50",
    "RN101": "RN101",
    "RN50x4": "RN50x4",
    "RN50x16": "RN50x16",
    "RN50x64": "RN50x64",
    "ViT-B/32": "ViT-B-32",
    "ViT-B/16": "ViT-B-16",
    "ViT-L/14": "ViT-L-14",
    "ViT-L/14@336px": "ViT-L-14-336",
}


class BackboneError(ValueError):
    pass


# ---------------------------------------------------------------------------------------------
# Random CLIPs of a named shape (tests, the benchmark, the miniature world's starting point)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CLIPShape:
    """The dimensions of a ViT CLIP. Heads are width // 64 in both towers, as OpenAI's architecture
    derives them, so a model saved as an OpenAI-format state dict is rebuilt identically by
    ``load_clip(path)``."""

    embed_dim: int
    vision_width: int
    vision_layers: int
    text_width: int
    text_layers: int
    patch_size: int = 32
    image_size: int = 224
    context_length: int = 77
    vocab_size: int = 49408


CLIP_SHAPES: dict[str, CLIPShape] = {
    # Small enough to build in a blink. The joint embedding (32) differs from the text width (64) on
    # purpose: it catches code that confuses CoCoOp's vis_dim with ctx_dim.
    "tiny": CLIPShape(embed_dim=32, vision_width=128, vision_layers=2, text_width=64, text_layers=2),
    # The miniature world's model before pre-training (miniworld.pretrain): 48-pixel pictures.
    "miniworld": CLIPShape(
        embed_dim=64, vision_width=128, vision_layers=3, text_width=128, text_layers=2, patch_size=8, image_size=48
    ),
    # OpenAI's ViT-B/16 dimensions (the benchmark's model).
    "vit_b16": CLIPShape(
        embed_dim=512, vision_width=768, vision_layers=12, text_width=512, text_layers=12, patch_size=16
    ),
}


def build_random_clip(shape: str | CLIPShape = "tiny", seed: int = 0, precision: str = "fp32", **changes) -> CLIP:
    """A randomly initialised CLIP of a named (or given) shape, identical for a seed; ``changes``
    override fields of the shape (``image_size=64``, ...). Trainable and in train mode, as built:
    ``load_clip`` freezes it."""
    if isinstance(shape, str):
        if shape not in CLIP_SHAPES:
            raise BackboneError(f"Unknown CLIP shape {shape!r}; shapes: {', '.join(CLIP_SHAPES)}.")
        shape = CLIP_SHAPES[shape]
    shape = replace(shape, **changes)
    vision = CLIPVisionCfg(
        layers=shape.vision_layers,
        width=shape.vision_width,
        patch_size=shape.patch_size,
        image_size=shape.image_size,
        head_width=64,
    )
    text = CLIPTextCfg(
        context_length=shape.context_length,
        vocab_size=shape.vocab_size,
        width=shape.text_width,
        heads=max(1, shape.text_width // 64),
        layers=shape.text_layers,
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = CLIP(
            shape.embed_dim,
            vision_cfg=vision,
            text_cfg=text,
            quick_gelu=True,
            init_logit_scale=float(np.log(100.0)),
            cast_dtype=PRECISIONS[precision],
        )
    if PRECISIONS[precision] is not None:
        convert_weights_to_lp(model, dtype=PRECISIONS[precision])
    return model


# ---------------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Backbone:
    """How to get one backbone. ``build(precision)`` returns the CLIP (``load_clip`` moves it to the
    device and freezes it); ``prepare()`` fetches or creates what ``build`` needs (a download, a
    pre-training), once, in the sweep's driver rather than in every job."""

    name: str
    build: Callable[[str], CLIP]
    prepare: Callable[[], object] | None = None
    description: str = ""
    file: Callable[[], str] | None = None  # where the weights file lies (absent until ``prepare``); None: built by code
    published: Callable[[], str | None] | None = None  # the sha256 the name promises for that file, if known


BACKBONES: dict[str, Backbone] = {}
FILE_CHOICE = "<path to an OpenAI-format .pt file>"


def register_backbone(
    name: str,
    build: Callable[[str], CLIP],
    prepare: Callable[[], object] | None = None,
    description: str = "",
    file: Callable[[], str] | None = None,
    published: Callable[[], str | None] | None = None,
) -> Backbone:
    if name in BACKBONES:
        raise BackboneError(f"Backbone {name!r} is registered twice.")
    BACKBONES[name] = Backbone(name, build, prepare, description, file, published)
    return BACKBONES[name]


def available_backbones() -> list[str]:
    load_plugins()
    return list(BACKBONES) + [FILE_CHOICE]


def get_backbone(spec: str) -> Backbone:
    """The table entry for ``spec`` (a registered name, or an existing OpenAI-format file)."""
    if spec not in BACKBONES:
        load_plugins()
    if spec in BACKBONES:
        return BACKBONES[spec]
    path = os.path.expanduser(str(spec))
    if os.path.isfile(path):
        return Backbone(path, partial(load_openai_file, path), description="OpenAI-format file", file=lambda: path)
    openai_name = {v: k for k, v in OPENAI_MODELS.items()}.get(spec)
    hint = f" (did you mean {openai_name!r}? OpenAI's names use a slash)" if openai_name else ""
    raise BackboneError(
        f"Unknown backbone {spec!r}{hint}: not a known name and no such file.\n"
        f"Choices: {', '.join(available_backbones())}."
    )


def prepare_backbone(spec: str) -> None:
    """Run ``spec``'s preparation step, if it has one."""
    entry = get_backbone(spec)
    if entry.prepare is not None:
        entry.prepare()


def weights_identity(spec: str) -> str | None:
    """What a result knows of ``spec``'s weights (see the module's docstring): the first 16 hex digits
    of its file's sha256, or None where the name says it all (built by code; the file the name promises;
    no file yet, which ``prepare`` fetches as the name promises)."""
    entry = get_backbone(spec)
    if entry.file is None:
        return None
    path = entry.file()
    if not os.path.isfile(path):
        return None
    digest = file_sha256(path)
    return None if entry.published and digest == entry.published() else digest[:16]


DIGESTS_FILE = "file-digests.json"
_digests: dict = {}


def file_sha256(path: str) -> str:
    """The sha256 of a file, computed once per (path, size, modification time): remembered in this
    process and in the user's cache folder (``clipcore.paths.cache_dir``), shared by every job."""
    from clipcore.paths import cache_dir

    path = os.path.abspath(path)
    st = os.stat(path)
    stamp = [st.st_size, st.st_mtime_ns]
    store = cache_dir(DIGESTS_FILE)
    if path not in _digests:
        try:
            with open(store) as f:
                _digests.update({k: v for k, v in json.load(f).items() if k not in _digests})
        except (OSError, ValueError, AttributeError):
            pass
    known = _digests.get(path)
    if isinstance(known, list) and known[:2] == stamp:
        return known[2]
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    _digests[path] = stamp + [h.hexdigest()]
    try:  # a lost race with another job's write costs a later job one more hash, nothing else
        atomic_write_text(store, json.dumps(_digests, indent=0, sort_keys=True) + "\n")
    except OSError as exc:
        log.warning("Could not remember the digest of %s in %s (%s); it is computed again next time.", path, store, exc)
    return h.hexdigest()


def load_clip(spec: str = "ViT-B/16", device: str | torch.device = "cpu", precision: str = "fp32") -> CLIP:
    """The frozen CLIP for ``spec``, in eval mode, with no gradients on its weights.

    precision: "fp32", "fp16" (OpenAI's mixed layout, PROTOCOL.md 2.2) or "bf16" (the same
    layout in bfloat16).
    """
    if precision not in PRECISIONS:
        raise BackboneError(f"Unknown precision {precision!r}; choose one of {sorted(PRECISIONS)}.")
    return freeze(get_backbone(spec).build(precision).to(device))


def freeze(model: CLIP) -> CLIP:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ---------------------------------------------------------------------------------------------
# OpenAI-format files
# ---------------------------------------------------------------------------------------------


def _read_openai_state_dict(path: str) -> dict:
    """State dict of an OpenAI-format file: a TorchScript archive or a plain (or wrapped) state dict."""
    try:
        with warnings.catch_warnings():
            # OpenAI publishes its CLIP weights as TorchScript archives, which torch now calls deprecated: the
            # archive is only read for its tensors here, so the warning says nothing the user can act on.
            warnings.filterwarnings("ignore", message=r"`torch\.jit\.load` is", category=FutureWarning)
            archive = torch.jit.load(path, map_location="cpu")
        return archive.state_dict()
    except (RuntimeError, ValueError):
        pass
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise BackboneError(f"{path} cannot be read as a CLIP checkpoint ({type(exc).__name__}: {exc}).") from exc
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or "token_embedding.weight" not in {k.removeprefix("module.") for k in obj}:
        raise BackboneError(
            f"{path} is not an OpenAI-format CLIP checkpoint: expected a TorchScript archive or a state "
            "dict with keys such as 'token_embedding.weight', 'visual.conv1.weight', 'text_projection'."
        )
    return {k.removeprefix("module."): v for k, v in obj.items()}


def _model_from_state_dict(state_dict: dict, precision: str) -> CLIP:
    # open_clip's own builder reads the architecture from the tensor shapes (any size, ViT or RN).
    # It loads the values into OpenAI's mixed fp16 layout, which would round an fp32 file, so the
    # exact values are loaded again into the fp32 model before any conversion (PROTOCOL.md 2.2).
    model = build_model_from_openai_state_dict(dict(state_dict), quick_gelu=True, cast_dtype=torch.float16)
    model.float()
    model.load_state_dict(
        {k: v for k, v in state_dict.items() if k not in ("input_resolution", "context_length", "vocab_size")}
    )
    if PRECISIONS[precision] is not None:
        convert_weights_to_lp(model, dtype=PRECISIONS[precision])
    return model


def openai_local_file(name: str, cache_dir: str | None = None) -> str:
    """Where OpenAI's weights for ``name`` lie once fetched: ``~/.cache/clip``, as the authors' code keeps them."""
    url = get_pretrained_url(OPENAI_MODELS[name], "openai")
    return os.path.join(cache_dir or os.path.expanduser("~/.cache/clip"), os.path.basename(url))


def openai_published_sha256(name: str) -> str | None:
    """The sha256 of OpenAI's file for ``name``: the folder of its URL names it."""
    url = get_pretrained_url(OPENAI_MODELS[name], "openai")
    folder = url.rstrip("/").split("/")[-2] if url.count("/") > 3 else ""
    return folder if len(folder) == 64 else None


def resolve_openai_file(name: str, cache_dir: str | None = None) -> str:
    """Local path of OpenAI's weights for ``name``: ~/.cache/clip first, else open_clip downloads."""
    url = get_pretrained_url(OPENAI_MODELS[name], "openai")
    cache_dir = cache_dir or os.path.expanduser("~/.cache/clip")
    local = openai_local_file(name, cache_dir)
    if os.path.isfile(local):
        return local
    try:
        return download_pretrained_from_url(url, cache_dir=cache_dir)
    except Exception as exc:  # no network on the cluster node, say, or a proxy
        raise BackboneError(
            f"Could not find or download OpenAI's {name} weights: {exc}.\n"
            f"Fix: download {url} on a machine with internet access and place it at {local} "
            "(the same place the authors' code uses), or pass the file's path as the backbone."
        ) from exc


def save_openai_state_dict(model: CLIP, path: str) -> None:
    """Write ``model`` as an OpenAI-format plain state dict (what ``load_clip(path)`` reads), atomically."""
    atomic_torch_save({k: v.detach().cpu() for k, v in model.state_dict().items()}, path)


def load_openai_file(path: str, precision: str = "fp32") -> CLIP:
    """The frozen CLIP in an OpenAI-format file (TorchScript archive or state dict), eval mode."""
    return freeze(_model_from_state_dict(_read_openai_state_dict(path), precision))


for _name in OPENAI_MODELS:
    register_backbone(
        _name,
        build=lambda precision, name=_name: load_openai_file(resolve_openai_file(name), precision),
        prepare=lambda name=_name: resolve_openai_file(name),
        description="OpenAI's weights (~/.cache/clip, or downloaded)",
        file=lambda name=_name: openai_local_file(name),
        published=lambda name=_name: openai_published_sha256(name),
    )
register_backbone(
    "tiny",
    build=lambda precision: build_random_clip("tiny", precision=precision),
    description="small random CLIP (tests)",
)


# ---------------------------------------------------------------------------------------------
# Tokeniser and encoders
# ---------------------------------------------------------------------------------------------

_TOKENIZER: SimpleTokenizer | None = None


def tokenizer() -> SimpleTokenizer:
    global _TOKENIZER
    if _TOKENIZER is None:
        _TOKENIZER = SimpleTokenizer()
    return _TOKENIZER


def tokenize(texts: str | Sequence[str], context_length: int = 77) -> torch.LongTensor:
    """CLIP's BPE ids, [SOS] + text + [EOT] padded with 0 (PROTOCOL.md 2.4).

    Unlike open_clip's tokenizer, a text that does not fit raises instead of being truncated
    silently, as OpenAI's reference tokenizer does.
    """
    if isinstance(texts, str):
        texts = [texts]
    tok = tokenizer()
    for text in texts:
        n = len(tok.encode(text)) + 2
        if n > context_length:
            raise ValueError(f"Text is {n} tokens long, more than the context length {context_length}: {text!r}")
    return tok(list(texts), context_length=context_length)


def model_dtype(clip: CLIP) -> torch.dtype:
    """PROTOCOL.md 2.2: the dtype of the first layer's weight (the patch conv for ViTs)."""
    visual = clip.visual
    first = getattr(visual, "conv1", None)
    return first.weight.dtype if first is not None else next(visual.parameters()).dtype


def text_width(clip: CLIP) -> int:
    return clip.ln_final.weight.shape[0]


def embed_dim(clip: CLIP) -> int:
    return clip.text_projection.shape[1]


def image_size(clip: CLIP) -> int:
    size = clip.visual.image_size
    return size[0] if isinstance(size, (tuple, list)) else int(size)


@torch.no_grad()
def encode_image(clip: CLIP, images: torch.Tensor) -> torch.Tensor:
    """Unnormalised image features. The tower is frozen, so no graph is kept: no prompt parameter
    sits upstream of it, and the gradients the methods need start at these features."""
    return clip.encode_image(images.to(model_dtype(clip)))


def token_embeddings(clip: CLIP, token_ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return clip.token_embedding(token_ids).to(model_dtype(clip))


def eot_positions(token_ids: torch.Tensor) -> torch.Tensor:
    # EOT (49407) is the largest id in every sequence (PROTOCOL.md 2.3).
    return token_ids.argmax(dim=-1)


def encode_text_embeddings(
    clip: CLIP, embeddings: torch.Tensor, token_ids: torch.Tensor, truncate: bool = True
) -> torch.Tensor:
    """Text features from prompt embeddings [N, 77, D] (PROTOCOL.md 7.3).

    ``token_ids`` [N, 77] locate each row's EOT. With ``truncate`` the sequences are cut after the
    batch's last EOT: the text transformer is causal, so no position up to an EOT ever attends to a
    later one and the pooled features are the same as with all 77 positions, at a fraction of the
    cost (a prompt such as "a photo of a dog." ends at position 7).
    """
    eot = eot_positions(token_ids)
    dtype = model_dtype(clip)
    length = int(eot.max().item()) + 1 if truncate else embeddings.shape[1]
    x = embeddings[:, :length].to(dtype) + clip.positional_embedding[:length].to(dtype)
    x = clip.transformer(x, attn_mask=clip.attn_mask[:length, :length])
    x = clip.ln_final(x).to(dtype)
    x = x[torch.arange(x.shape[0], device=x.device), eot]
    return x @ clip.text_projection


@torch.no_grad()
def encode_texts(clip: CLIP, texts: Sequence[str], truncate: bool = True, batch_size: int = 1000) -> torch.Tensor:
    """Unnormalised text features of plain strings (PROTOCOL.md 2.3), in batches."""
    device = clip.positional_embedding.device
    out = []
    for start in range(0, len(texts), batch_size):
        ids = tokenize(list(texts[start : start + batch_size]), clip.context_length).to(device)
        out.append(encode_text_embeddings(clip, token_embeddings(clip, ids), ids, truncate=truncate))
    return torch.cat(out)


def cosine_logits(clip: CLIP, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
    """exp(logit_scale) * cos(f, t) (PROTOCOL.md 6.2 step 4); logit_scale is frozen (x100 for OpenAI)."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    return clip.logit_scale.exp() * image_features @ text_features.t().to(image_features.dtype)
