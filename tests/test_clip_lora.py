"""CLIP-LoRA against an independent computation of MaxZanella/CLIP-LoRA's ``loralib/layers.py``
(``LinearLoRA``, ``PlainMultiheadAttentionLoRA``) and ``lora.py`` (docs/PROTOCOL-successors-3-fewshot.md
"CLIP-LoRA"), written out here: the authors' separate q, k, v Linears copied from ``in_proj_weight`` replace
the attention modules of a copy of CLIP."""

from __future__ import annotations

import copy
import glob
import math
import os

import pytest
import torch
import torch.nn.functional as F
from crash_child import kill_at
from torch import nn

from bounds import OutOfBounds
from harness import backbone, load_clip, results
from harness.checkpoint import LoadMismatchError
from harness.config import build_spec
from harness.runner import run
from methods import build_method
from methods.parts.base import CheckpointError

NAMES = ["cat", "dog", "red_car", "tree", "boat"]


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    return load_clip("tiny")


def images(clip, n: int = 6, seed: int = 3) -> torch.Tensor:
    size = backbone.image_size(clip)
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# -- the authors' computation, written out ------------------------------------------------------------


class RefLinearLoRA(nn.Linear):
    """layers.py:151-208: the frozen Linear plus scaling * dropout(x) @ (B A)^T, scaling alpha / sqrt(r)."""

    def __init__(self, linear: nn.Linear, r: int, alpha: float, dropout_rate: float):
        super().__init__(linear.in_features, linear.out_features)
        self.load_state_dict(linear.state_dict())
        self.weight.requires_grad = False
        self.bias.requires_grad = False
        self.w_lora_A = nn.Parameter(torch.zeros(r, linear.in_features))
        self.w_lora_B = nn.Parameter(torch.zeros(linear.out_features, r))
        self.scaling = alpha / math.sqrt(r)
        self.dropout = nn.Dropout(dropout_rate) if dropout_rate > 0 else None

    def forward(self, x):
        original = nn.Linear.forward(self, x)
        if self.training and self.dropout is not None:
            x = self.dropout(x)
        return original + torch.matmul(x, (self.w_lora_B @ self.w_lora_A).transpose(0, 1)) * self.scaling


class RefAttention(nn.Module):
    """layers.py:340-509, PlainMultiheadAttentionLoRA.forward_module for CLIP's self-attention."""

    def __init__(self, mha: nn.MultiheadAttention, params, r, alpha, dropout_rate):
        super().__init__()
        e = self.embed_dim = mha.embed_dim
        self.num_heads, self.head_dim, self.batch_first = mha.num_heads, mha.head_dim, mha.batch_first
        w, b = mha.in_proj_weight.data, mha.in_proj_bias.data
        linears = {}
        for name, rows in (("q_proj", slice(0, e)), ("k_proj", slice(e, 2 * e)), ("v_proj", slice(2 * e, 3 * e))):
            lin = nn.Linear(e, e)
            lin.weight.data.copy_(w[rows])
            lin.bias.data.copy_(b[rows])
            linears[name] = lin
        linears["proj"] = nn.Linear(e, e)
        linears["proj"].weight.data.copy_(mha.out_proj.weight.data)
        linears["proj"].bias.data.copy_(mha.out_proj.bias.data)
        for p, name in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "proj")):
            module = RefLinearLoRA(linears[name], r, alpha, dropout_rate) if p in params else linears[name]
            setattr(self, name, module)

    def forward(self, query, key, value, need_weights=True, attn_mask=None, **_):
        if self.batch_first:
            query, key, value = [x.transpose(1, 0) for x in (query, key, value)]
        tgt_len, bsz, embed_dim = query.shape
        src_len = key.shape[0]
        q, k, v = self.q_proj(query), self.k_proj(key), self.v_proj(value)
        if attn_mask is not None:
            attn_mask = attn_mask.unsqueeze(0)  # a 2-D float mask (CLIP's causal one)
            attn_mask = attn_mask.unsqueeze(0)
        q = q.view(tgt_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        k = k.view(src_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        v = v.view(src_len, bsz * self.num_heads, self.head_dim).transpose(0, 1)
        q = q.view(bsz, self.num_heads, tgt_len, self.head_dim)
        k = k.view(bsz, self.num_heads, src_len, self.head_dim)
        v = v.view(bsz, self.num_heads, src_len, self.head_dim)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask, 0.0, False)
        out = out.permute(2, 0, 1, 3).contiguous().view(bsz * tgt_len, embed_dim)
        out = self.proj(out).view(tgt_len, bsz, out.size(1))
        return out.transpose(1, 0), None


def ref_model(clip, params=("q", "k", "v"), r=2, alpha=1.0, dropout_rate=0.25, towers=("text", "vision")):
    """A copy of CLIP with every attention replaced, as utils.py:107-134 (apply_lora, position 'all')."""
    ref = copy.deepcopy(clip)
    blocks = {"text": ref.transformer.resblocks, "vision": ref.visual.transformer.resblocks}
    for tower in towers:
        for block in blocks[tower]:
            block.attn = RefAttention(block.attn, params, r, alpha, dropout_rate)
    for n, p in ref.named_parameters():  # mark_only_lora_as_trainable
        p.requires_grad = "lora_" in n
    return ref


def ref_logits(ref, names, x, template="a photo of a {}."):
    """lora.py:94-113: the text of every class encoded, then the images; 100 x the cosines."""
    ids = backbone.tokenize([template.format(n.replace("_", " ")) for n in names])
    text = backbone.encode_text_embeddings(ref, ref.token_embedding(ids), ids)
    text = text / text.norm(dim=-1, keepdim=True)
    f = ref.encode_image(x)
    f = f / f.norm(dim=-1, keepdim=True)
    return 100 * f @ text.t()


def lora_params(ref) -> dict:
    return {n: p for n, p in ref.named_parameters() if "lora_" in n}


def rel(a, b) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-12))


def randomise_b(model, seed: int = 7) -> None:
    """B starts at zero (so the model starts as CLIP): give it values, so every adapter acts and learns."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in model.prompt_learner.named_parameters():
            if n.endswith("w_lora_B"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))


# -- the computation --------------------------------------------------------------------------------


def test_initialisation_is_the_authors_and_the_model_starts_as_clip(clip):
    model = build_method("clip_lora", clip, NAMES).eval()
    state = model.prompt_learner.state_dict()
    ref = ref_model(clip)
    assert set(state) == set(lora_params(ref))  # the authors' model keys, both towers, q k v of every block
    for name, value in state.items():
        if name.endswith("w_lora_B"):
            assert torch.equal(value, torch.zeros_like(value))
        else:  # kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))
            bound = 1 / math.sqrt(value.shape[1])
            assert value.abs().max() <= bound and value.abs().max() > 0.5 * bound
    x = images(clip)
    with torch.no_grad():
        text = backbone.encode_texts(clip, [f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
        zero_shot = 100 * F.normalize(clip.encode_image(x), dim=-1) @ F.normalize(text, dim=-1).t()
        assert rel(model(x), zero_shot) < 1e-5


@pytest.mark.parametrize("params", [["q", "k", "v"], ["v", "o"]])
def test_logits_loss_and_updates_equal_the_authors_computation(clip, params):
    torch.manual_seed(11)
    model = build_method("clip_lora", clip, NAMES, params=params, r=3, alpha=2.0, dropout_rate=0.25)
    randomise_b(model)
    ref = ref_model(clip, params=params, r=3, alpha=2.0, dropout_rate=0.25)
    ref.load_state_dict(model.prompt_learner.state_dict(), strict=False)
    ours_params, ref_params = dict(model.prompt_learner.named_parameters()), lora_params(ref)
    x, y = images(clip), torch.tensor([0, 1, 2, 3, 4, 0])
    # evaluation: no dropout
    model.eval()
    ref.eval()
    with torch.no_grad():
        assert rel(model(x), ref_logits(ref, NAMES, x)) < 1e-4
    # training: the dropout draws in the same order (text first, q, k, v per block), so the same masks
    model.train()
    ref.train()
    opt = torch.optim.AdamW(list(ours_params.values()), lr=2e-4, weight_decay=1e-2, betas=(0.9, 0.999))
    ref_opt = torch.optim.AdamW(list(ref_params.values()), lr=2e-4, weight_decay=1e-2, betas=(0.9, 0.999))
    for step in range(2):
        torch.manual_seed(100 + step)
        details: dict = {}
        loss = model.training_loss(x, y, details=details)
        torch.manual_seed(100 + step)
        ref_out = ref_logits(ref, NAMES, x)
        ref_loss = F.cross_entropy(ref_out, y)
        assert rel(details["logits"], ref_out) < 1e-4
        assert float(loss) == pytest.approx(float(ref_loss), rel=1e-4)
        opt.zero_grad()
        ref_opt.zero_grad()
        loss.backward()
        ref_loss.backward()
        for name, p in ref_params.items():
            assert rel(ours_params[name].grad, p.grad) < 1e-4, name
        opt.step()
        ref_opt.step()
        for name, p in ref_params.items():
            assert rel(ours_params[name], p) < 1e-4, name
    assert any(rel(p, torch.zeros_like(p)) > 0 for n, p in ours_params.items() if n.endswith("w_lora_B"))


def test_dropout_acts_in_training_only(clip):
    model = build_method("clip_lora", clip, NAMES, dropout_rate=0.5)
    randomise_b(model)
    x = images(clip)
    with torch.no_grad():
        model.eval()
        first, second = model(x), model(x)
        assert torch.equal(first, second)
        model.train()
        assert rel(model(x), first) > 1e-4


def test_the_shared_clip_is_unchanged_and_other_methods_see_it_as_before(clip):
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    x = images(clip)
    zsclip = build_method("zsclip", clip, NAMES)
    with torch.no_grad():
        zero_shot = zsclip(x)
    model = build_method("clip_lora", clip, NAMES).train()
    randomise_b(model)
    opt = torch.optim.AdamW(model.trainable_parameters(), lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        model.training_loss(x, torch.tensor([0, 1, 2, 3, 4, 0])).backward()
        opt.step()
    assert all(torch.equal(before[k], v) for k, v in clip.state_dict().items())
    assert not any(p.grad is not None for p in clip.parameters())
    assert not any("forward" in vars(m) for m in clip.modules())  # no adapted attention left behind
    with torch.no_grad():
        assert torch.equal(zsclip(x), zero_shot)
        assert rel(model.eval()(x), zero_shot) > 1e-3  # while the adapters do act inside the method


@pytest.mark.parametrize(
    "options, message",
    [
        ({"r": 0}, "r"),
        ({"dropout_rate": 1.0}, "dropout_rate"),
        ({"params": ["q", "x"]}, "params"),
        ({"params": []}, "params"),
        ({"params": ["q", "q"]}, "params"),
        ({"encoder": "audio"}, "encoder"),
        ({"position": "middle"}, "position"),
        ({"alpha": 0}, "alpha"),
        ({"n_iters": 0}, "n_iters"),
        ({"template": "a photo"}, "template"),
    ],
)
def test_options_out_of_range_are_refused(clip, options, message):
    with pytest.raises(OutOfBounds, match=message):
        build_method("clip_lora", clip, NAMES, **options)


def test_a_position_beyond_the_towers_blocks_is_refused_with_the_fix(clip):
    with pytest.raises(OutOfBounds, match="position 'all'"):
        build_method("clip_lora", clip, NAMES, position="mid")  # blocks 4-7 of a 2-block CLIP


def test_one_tower_adapts_only_that_tower(clip):
    text = build_method("clip_lora", clip, NAMES, encoder="text")
    assert all(k.startswith("transformer.") for k in text.prompt_learner.state_dict())
    vision = build_method("clip_lora", clip, NAMES, encoder="vision")
    assert all(k.startswith("visual.transformer.") for k in vision.prompt_learner.state_dict())


def test_the_step_schedule_is_a_cosine_over_n_iters_times_shots_to_1e_6(clip):
    model = build_method("clip_lora", clip, NAMES, n_iters=5)
    param = nn.Parameter(torch.zeros(1))
    opt = torch.optim.AdamW([param], lr=2e-4)
    scheduler, steps = model.step_schedule(opt, shots=4, steps_per_epoch=3, epochs=7)  # 20 steps: 7 epochs
    assert steps == 20
    rates = []
    for _ in range(steps):
        rates.append(opt.param_groups[0]["lr"])
        opt.step()
        scheduler.step()
    assert rates == pytest.approx([1e-6 + (2e-4 - 1e-6) * (1 + math.cos(math.pi * t / 20)) / 2 for t in range(20)])
    with pytest.raises(OutOfBounds, match="set epochs=7"):
        model.step_schedule(opt, shots=4, steps_per_epoch=3, epochs=10)


# -- the authors' save_lora file --------------------------------------------------------------------

SPEC = {"backbone": "ViT-B/16", "dataset": "fgvc_aircraft", "shots": 4, "seed": 3}
AUTHORS_PATH = "vitb16/fgvc/4shots/seed3/lora_weights.pt"  # save_lora's folders, their dataset key


def authors_save_lora(ref, params, r, alpha, encoder, position) -> dict:
    """utils.py:107-184 written out: apply_lora's list_lora_layers (text blocks, then vision blocks), then
    save_lora's dict of each layer's q, k, v, o adapters in that order, and its metadata."""
    towers = {"text": ref.transformer.resblocks, "vision": ref.visual.transformer.resblocks}
    chosen = {"both": ("text", "vision"), "text": ("text",), "vision": ("vision",)}[encoder]
    list_lora_layers = [block.attn for tower in chosen for block in towers[tower]]
    weights = {}
    for i, layer in enumerate(list_lora_layers):
        layer_weights = {}
        for p, name in (("q", "q_proj"), ("k", "k_proj"), ("v", "v_proj"), ("o", "proj")):
            if p in params:
                module = getattr(layer, name)
                layer_weights[name] = {"w_lora_A": module.w_lora_A.data, "w_lora_B": module.w_lora_B.data}
        weights[f"layer_{i}"] = layer_weights
    metadata = {"r": r, "alpha": alpha, "encoder": encoder, "params": params, "position": position}
    return {"weights": weights, "metadata": metadata}


def assert_same_tree(ours, theirs, where="file"):
    if isinstance(theirs, dict):
        assert isinstance(ours, dict) and list(ours) == list(theirs), where  # the same keys in the same order
        for key in theirs:
            assert_same_tree(ours[key], theirs[key], f"{where}[{key!r}]")
    elif isinstance(theirs, torch.Tensor):
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs), where
    else:
        assert type(ours) is type(theirs) and ours == theirs, where


@pytest.mark.parametrize("params, encoder", [(["v", "q", "o"], "both"), (["k"], "vision")])
def test_the_authors_file_is_save_lora_s_dict_in_their_layer_order(clip, params, encoder):
    model = build_method("clip_lora", clip, NAMES, params=params, r=3, alpha=2.0, encoder=encoder)
    randomise_b(model)
    ref = ref_model(
        clip, params=params, r=3, alpha=2.0, towers=("text", "vision") if encoder == "both" else ("vision",)
    )
    ref.load_state_dict(model.prompt_learner.state_dict(), strict=False)
    files = model.authors_files(SPEC)
    assert list(files) == [AUTHORS_PATH]
    # their argparse gives alpha as an int (run_utils.py:36)
    assert_same_tree(files[AUTHORS_PATH], authors_save_lora(ref, params, 3, 2, encoder, "all"))


def test_the_authors_file_loads_into_a_fresh_model_with_the_same_logits(clip, tmp_path):
    model = build_method("clip_lora", clip, NAMES, params=["q", "v", "o"], r=3, alpha=2.0).eval()
    randomise_b(model)
    path = str(tmp_path / "lora_weights.pt")
    torch.save(model.authors_files(SPEC)[AUTHORS_PATH], path)
    torch.manual_seed(5)  # another A
    fresh = build_method("clip_lora", clip, NAMES, params=["q", "v", "o"], r=3, alpha=2.0).eval()
    x = images(clip)
    with torch.no_grad():
        assert not torch.equal(fresh(x), model(x))
        fresh.load_prompt_checkpoint(path)
        assert torch.equal(fresh(x), model(x))


@pytest.mark.parametrize(
    "options, key, saved, ours",
    [
        ({"r": 3}, "r", "2", "3"),
        ({"encoder": "text"}, "encoder", "'both'", "'text'"),
        ({"alpha": 0.5}, "alpha", "1", "0.5"),
        ({"params": ["v", "q", "k"]}, "params", "['q', 'k', 'v']", "['v', 'q', 'k']"),  # their lists, compared as lists
    ],
)
def test_an_authors_file_of_other_options_is_refused_as_load_lora_does(clip, tmp_path, options, key, saved, ours):
    path = str(tmp_path / "lora_weights.pt")
    torch.save(build_method("clip_lora", clip, NAMES).authors_files(SPEC)[AUTHORS_PATH], path)
    other = build_method("clip_lora", clip, NAMES, **options)
    with pytest.raises(CheckpointError) as refused:
        other.load_prompt_checkpoint(path)
    message = str(refused.value)
    assert "\n" not in message and message.startswith(path)
    assert f"its metadata {key} is {saved}, this clip_lora model's option {key} is {ours} " in message
    assert f"--set options.{key}={saved}" in message


def test_an_authors_file_of_another_depth_or_other_adapters_is_refused(clip, tmp_path):
    """What their load_lora passes over silently: a missing layer (another backbone's depth), a missing projection."""
    path = str(tmp_path / "lora_weights.pt")
    model = build_method("clip_lora", clip, NAMES)
    contents = model.authors_files(SPEC)[AUTHORS_PATH]
    del contents["weights"]["layer_3"]
    torch.save(contents, path)
    with pytest.raises(CheckpointError, match="holds 3 adapted attention layers, this model adapts 4"):
        model.load_prompt_checkpoint(path)
    contents = model.authors_files(SPEC)[AUTHORS_PATH]
    del contents["weights"]["layer_1"]["k_proj"]
    torch.save(contents, path)
    with pytest.raises(CheckpointError, match="layer_1 holds adapters \\['q_proj', 'v_proj'\\]"):
        model.load_prompt_checkpoint(path)


# -- through the runner: a job, its checkpoint, kill and resume --------------------------------------


def lora_spec(data_root, out, **values):
    # 2 shots x 5 classes = 10 images, batch 2: 5 steps an epoch; n_iters 4 x 2 shots = 8 steps, 2 epochs, the
    # second cut after its third step.
    base = {
        "method": "clip_lora",
        "config": "clip_lora/vit_b16",
        "dataset": "synthetic",
        "data_root": data_root,
        "backbone": "tiny",
        "precision": "fp32",
        "shots": 2,
        "seed": 2,
        "batch_size": 2,
        "epochs": 2,
        "lr": 0.01,
        "subsample": "all",
        "num_workers": 0,
        "tracking": "none",
        "experiment": "test",
        "options": {"n_iters": 4},
        "output_dir": os.path.join(str(out), "run"),
    }
    base.update(values)
    return build_spec(base)


@pytest.fixture(scope="module")
def straight(data_root, tmp_path_factory):
    spec = lora_spec(data_root, tmp_path_factory.mktemp("straight"))
    return spec, run(spec)[0]


def test_the_job_stops_at_its_step_budget_and_its_checkpoint_scores_the_same(data_root, straight, tmp_path):
    spec, record = straight
    assert record["method"] == "clip_lora" and record["options"]["n_iters"] == 4
    saved = torch.load(os.path.join(spec.output_dir, "clip_lora", "model.pth.tar-2"), weights_only=False)
    assert saved["scheduler"]["last_epoch"] == 8  # stepped per step, 8 steps
    assert {int(s["step"]) for s in saved["optimizer"]["state"].values()} == {8}
    assert saved["optimizer"]["param_groups"][0]["lr"] == pytest.approx(1e-6)  # the cosine's end
    assert any(float(v.abs().max()) > 0 for k, v in saved["state_dict"].items() if k.endswith("w_lora_B"))
    loaded = run(lora_spec(data_root, tmp_path, load_from=spec.output_dir))[0]
    assert loaded["metrics"] == record["metrics"]


def test_the_job_leaves_the_authors_file_and_evaluating_it_scores_the_same(data_root, straight, tmp_path):
    spec, record = straight
    saved = torch.load(os.path.join(spec.output_dir, "clip_lora", "model.pth.tar-2"), weights_only=False)
    # where load_lora looks under --save_path <run>/clip_lora for --backbone tiny --dataset synthetic --shots 2 --seed 2
    path = os.path.join(spec.output_dir, "clip_lora", "tiny", "synthetic", "2shots", "seed2", "lora_weights.pt")
    authors = torch.load(path)  # plain tensors and lists: their torch.load reads it
    assert authors["metadata"] == {"r": 2, "alpha": 1, "encoder": "both", "params": ["q", "k", "v"], "position": "all"}
    layers = [
        saved["state_dict"][f"{tower}.resblocks.{i}.attn.v_proj.w_lora_B"]
        for tower in ("transformer", "visual.transformer")
        for i in range(2)
    ]
    assert len(authors["weights"]) == 4
    for i, expected in enumerate(layers):
        assert torch.equal(authors["weights"][f"layer_{i}"]["v_proj"]["w_lora_B"], expected)
    loaded = run(lora_spec(data_root, tmp_path, load_from=path))[0]
    assert loaded["metrics"] == record["metrics"]
    with pytest.raises(LoadMismatchError, match="options.r: 2 -> 4"):  # its job's spec says so
        run(lora_spec(data_root, tmp_path / "other", load_from=path, options={"n_iters": 4, "r": 4}))
    theirs = tmp_path / "theirs" / "lora_weights.pt"  # outside our run folders, as their code leaves it
    theirs.parent.mkdir()
    torch.save(authors, str(theirs))
    with pytest.raises(CheckpointError, match="metadata r is 2"):  # only its metadata says so
        run(lora_spec(data_root, tmp_path / "other2", load_from=str(theirs), options={"n_iters": 4, "r": 4}))


@pytest.mark.parametrize(
    "change, match",
    [({"seed": 3}, "seed: 2 -> 3"), ({"options": {"n_iters": 4, "dropout_rate": 0.5}}, "dropout_rate: 0.25 -> 0.5")],
)
def test_an_authors_file_of_ours_is_checked_against_the_job_that_wrote_it(data_root, straight, tmp_path, change, match):
    # The file holds no spec: its run folder's fingerprint and final checkpoint say what trained it.
    spec, _ = straight
    path = os.path.join(spec.output_dir, "clip_lora", "tiny", "synthetic", "2shots", "seed2", "lora_weights.pt")
    with pytest.raises(LoadMismatchError, match=match):
        run(lora_spec(data_root, tmp_path, load_from=path, **change))
    (record,) = run(lora_spec(data_root, tmp_path / "any", load_from=path, load_any=True, **change))
    assert match in record["load_any"] and record["fingerprint"] != straight[1]["fingerprint"]


def test_epochs_other_than_the_budgets_are_refused_with_the_right_value(data_root, tmp_path):
    with pytest.raises(OutOfBounds, match="set epochs=2"):
        run(lora_spec(data_root, tmp_path, epochs=3))


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["mid-epoch:2", "checkpoint-write:2"])
def test_a_killed_job_resumes_to_the_straight_run(data_root, tmp_path, straight, moment):
    _, record = straight
    killed = lora_spec(data_root, tmp_path / "killed")
    kill_at(killed.to_dict(), moment, tmp_path)
    assert results.read_records(str(tmp_path / "killed")) == []
    resumed = run(killed)
    assert resumed[0]["metrics"] == record["metrics"]
    logs = "".join(open(p).read() for p in glob.glob(os.path.join(killed.output_dir, "log.txt*")))
    assert "Resuming from" in logs
