"""The side-by-side benchmark's plumbing (benchmarks/vs_authors/), without the network: a stand-in
"authors' repository" written here (a Dassl-style CoOp trainer computing CoOp's logits by its own
code on an OpenAI-layout CLIP loaded from the state dict the benchmark hands over), imported with
Dassl stubbed, checked against our CoOp, timed, and written as a table. A second stand-in trainer
computes ProGrad's two losses and hands them to an update method of a stand-in framework file
(as ProGrad's bundled Dassl.ProGrad does), checked against our ProGrad's ``backward``; a variant of
the first returns several outputs and caches its text side at evaluation (as MMRL's does)."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import textwrap

import pytest
import torch

from benchmarks import vs_authors
from benchmarks.readme import refresh
from clipcore import backbone

FAKE_CLIP = '''
import open_clip
import torch

_MODELS = {"ViT-B/16": "https://example.invalid/ViT-B-16.pt"}


def _download(url, root=None):
    raise RuntimeError("no network in the tests: the benchmark must point _download at its weights")


def tokenize(texts):
    return open_clip.tokenize(texts)


def build_model(state_dict):
    """An OpenAI-layout CLIP from its state dict, its shape read from the tensors."""
    def layers(prefix):
        return len({k[len(prefix) :].split(".")[0] for k in state_dict if k.startswith(prefix)})

    conv = state_dict["visual.conv1.weight"]
    grid = int((state_dict["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    text_width = state_dict["ln_final.weight"].shape[0]
    vision = open_clip.model.CLIPVisionCfg(
        layers=layers("visual.transformer.resblocks."), width=conv.shape[0], patch_size=conv.shape[-1],
        image_size=conv.shape[-1] * grid, head_width=64,
    )
    text = open_clip.model.CLIPTextCfg(
        context_length=state_dict["positional_embedding"].shape[0],
        vocab_size=state_dict["token_embedding.weight"].shape[0],
        width=text_width, heads=max(1, text_width // 64), layers=layers("transformer.resblocks."),
    )
    embed_dim = state_dict["text_projection"].shape[1]
    model = open_clip.model.CLIP(embed_dim, vision_cfg=vision, text_cfg=text, quick_gelu=True)
    model.load_state_dict(state_dict)
    return model.eval()
'''

FAKE_TRAINER = """
import torch
import torch.nn as nn
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY, TrainerX
from dassl.optim import build_optimizer, build_lr_scheduler

from clip import clip


def load_clip_to_cpu(cfg):
    path = clip._download(clip._MODELS[cfg.MODEL.BACKBONE.NAME])
    return clip.build_model(torch.load(path, map_location="cpu"))


class PromptLearner(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        words = cfg.TRAINER.FAKE.CTX_INIT
        n_ctx = len(words.split(" "))
        with torch.no_grad():
            ctx = clip_model.token_embedding(clip.tokenize(words))[0, 1 : 1 + n_ctx]
        self.ctx = nn.Parameter(ctx + 0.05 * torch.randn(ctx.shape))  # away from its init, so it matters
        self.tokenized = torch.cat([clip.tokenize(f"{words} {name}.") for name in classnames])
        with torch.no_grad():
            embedding = clip_model.token_embedding(self.tokenized)
        self.register_buffer("token_prefix", embedding[:, :1])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx :])

    def forward(self):
        ctx = self.ctx.unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class CustomCLIP(nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        self.prompt_learner = PromptLearner(cfg, classnames, clip_model)
        self.clip = clip_model
        self.wrong_scale = cfg.TRAINER.FAKE.WRONG_SCALE

        self.several_outputs = cfg.TRAINER.FAKE.SEVERAL_OUTPUTS
        self.cached_text, self.text_encodes = None, 0

    def encode_text(self):
        m = self.clip
        self.text_encodes += 1
        x = self.prompt_learner() + m.positional_embedding
        x = m.transformer(x, attn_mask=m.attn_mask)
        x = m.ln_final(x)
        return x[torch.arange(x.shape[0]), self.prompt_learner.tokenized.argmax(dim=-1)] @ m.text_projection

    def logits(self, image, text):
        m = self.clip
        img = m.encode_image(image)
        img = img / img.norm(dim=-1, keepdim=True)
        text = text / text.norm(dim=-1, keepdim=True)
        return self.wrong_scale * m.logit_scale.exp() * img @ text.t()

    def forward(self, image, label=None):
        if self.prompt_learner.training:
            return F.cross_entropy(self.logits(image, self.encode_text()), label)
        if self.cached_text is None:  # a cache kept once made, as MMRL's eval forward keeps its text features
            self.cached_text = self.encode_text()
        logits = self.logits(image, self.cached_text)
        if self.several_outputs:  # the scored logits second, between other terms
            return logits + 1.0, logits, image
        return logits


@TRAINER_REGISTRY.register()
class FakeCoOp(TrainerX):
    def build_model(self):
        clip_model = load_clip_to_cpu(self.cfg)
        self.model = CustomCLIP(self.cfg, self.dm.dataset.classnames, clip_model)
        for name, p in self.model.named_parameters():
            p.requires_grad_("prompt_learner" in name)
        self.optim = build_optimizer(self.model.prompt_learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)

    def forward_backward(self, batch):
        loss = self.model(batch["img"], batch["label"])
        self.model_backward_and_update(loss)
        return {"loss": loss.item()}
"""

FAKE_PROGRAD = """
import torch
import torch.nn.functional as F

from dassl.engine import TRAINER_REGISTRY
from dassl.engine.trainer import TrainerX
from dassl.optim import build_optimizer, build_lr_scheduler
from an_unused_plotting_library import *

from .fakecoop import CustomCLIP, load_clip_to_cpu  # CLIP loaded through another module's clip


class ZeroShot(torch.nn.Module):
    def __init__(self, cfg, classnames, clip_model):
        super().__init__()
        from clip import clip

        self.clip = clip_model
        tokens = torch.cat([clip.tokenize(cfg.TRAINER.FAKE.TEMPLATE.format(name)) for name in classnames])
        with torch.no_grad():
            text = clip_model.encode_text(tokens)
        self.text = text / text.norm(dim=-1, keepdim=True)

    def forward(self, image):
        img = self.clip.encode_image(image)
        return self.clip.logit_scale.exp() * (img / img.norm(dim=-1, keepdim=True)) @ self.text.t()


@TRAINER_REGISTRY.register()
class FakeProGrad(TrainerX):
    def build_model(self):
        classnames = self.dm.dataset.classnames
        self.model = CustomCLIP(self.cfg, classnames, load_clip_to_cpu(self.cfg))
        self.zero_shot = ZeroShot(self.cfg, classnames, load_clip_to_cpu(self.cfg))
        for name, p in self.model.named_parameters():
            p.requires_grad_("prompt_learner" in name)
        self.optim = build_optimizer(self.model.prompt_learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", self.model.prompt_learner, self.optim, self.sched)

    def forward_backward(self, batch):
        logits = self.model.logits(batch["img"], self.model.encode_text())
        with torch.no_grad():
            teacher = F.softmax(self.zero_shot(batch["img"]), dim=1)
        xe = F.cross_entropy(logits, batch["label"])
        kl = -(teacher * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        self.two_loss_update(xe, kl, self.cfg.TRAINER.FAKE.LAMBDA)
        return {"xe_loss": xe.item(), "kl_loss": kl.item()}
"""

# The framework's update, as the benchmark lifts it from the checkout: only ``Base.two_loss_update`` is
# compiled (this file's import of a module that does not exist is never run).
FAKE_FRAMEWORK = """
import a_framework_module_that_does_not_exist


class Base:
    def unrelated(self):
        raise AssertionError("not this one")

    def two_loss_update(self, main_loss, guide_loss, lambda_=1.0):
        (name,) = self.get_model_names()
        params = [p for p in self._models[name].parameters() if p.requires_grad]
        guides = torch.autograd.grad(guide_loss, params, retain_graph=True)
        self._optims[name].zero_grad()
        main_loss.backward()
        for p, guide in zip(params, guides):
            unit = guide.flatten() / guide.norm()
            along = torch.dot(p.grad.flatten(), unit)
            if along < 0:  # the main gradient points against the guide: remove lambda_ of that component
                p.grad = p.grad - lambda_ * along * unit.view_as(p.grad)
        self._optims[name].step()
"""

REPOSITORY = "someone/FakeCoOp"


def git(repo, *args):
    return subprocess.run(
        ["git", "-C", str(repo), "-c", "user.email=t@example.invalid", "-c", "user.name=t", *args],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()


@pytest.fixture(scope="module")
def fake_repo(tmp_path_factory):
    """A git checkout laid out like the authors' repositories: folder/clip/, folder/trainers/."""
    repo = tmp_path_factory.mktemp("authors")
    for path, text in {
        "code/clip/__init__.py": "",
        "code/clip/clip.py": FAKE_CLIP,
        "code/trainers/__init__.py": "",
        "code/trainers/fakecoop.py": FAKE_TRAINER,
        "code/trainers/fakeprograd.py": FAKE_PROGRAD,
        "framework/engine.py": FAKE_FRAMEWORK,
    }.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(textwrap.dedent(text))
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "fake authors")
    return repo, git(repo, "rev-parse", "HEAD")


@pytest.fixture(scope="module")
def tiny_clip():
    return backbone.freeze(backbone.build_random_clip("tiny", seed=0))


def fake_cfg(**keys) -> dict:
    return {"TRAINER": {"FAKE": {"CTX_INIT": "a photo of a", "WRONG_SCALE": 1.0, "SEVERAL_OUTPUTS": False, **keys}}}


def adapter(wrong_scale: float = 1.0, loops: bool = False) -> dict:
    entry = vs_authors.AuthorsCode(
        "coop",
        REPOSITORY,
        "trainers.fakecoop:FakeCoOp",
        fake_cfg(WRONG_SCALE=wrong_scale),
        {"n_ctx": 4, "ctx_init": "a photo of a"},
        folder="code",
        eval_loops_over_images=loops,
    )
    return {"coop": entry}


def prograd_adapter(theirs_lambda: float = 1.0, wrong_scale: float = 1.0) -> dict:
    """The stand-in ProGrad against ours: their update from the stand-in framework file, their CE as the loss."""
    entry = vs_authors.AuthorsCode(
        "prograd",
        REPOSITORY,
        "trainers.fakeprograd:FakeProGrad",
        fake_cfg(TEMPLATE="a photo of a {}.", LAMBDA=theirs_lambda, WRONG_SCALE=wrong_scale),
        {"n_ctx": 4, "ctx_init": "a photo of a", "template": "a photo of a {}.", "prograd_lambda": 1.0},
        folder="code",
        loss_key="xe_loss",
        framework={"two_loss_update": "framework/engine.py:Base.two_loss_update"},
        gradients=(("ctx", "prompt_learner.ctx"),),
        update_labels=tuple(range(5)),
        unused_imports=("an_unused_plotting_library",),
    )
    return {"prograd": entry}


def run(repo, tiny_clip, tmp_path, docs_text: str, wrong_scale: float = 1.0, *extra: str) -> tuple[int, str]:
    docs = tmp_path / "PROTOCOL.md"
    docs.write_text(docs_text)
    out = tmp_path / "report.md"
    argv = ["--authors", f"coop={repo}", "--k", "5", "--eval-images", "3", "--runs", "2", "--out", str(out)]
    loops = "--loop-eval-images" in extra
    rc = vs_authors.main([*argv, *extra], adapters=adapter(wrong_scale, loops), clip=tiny_clip, docs=(str(docs),))
    return rc, out.read_text()


def table_row(report: str, method: str) -> list[str]:
    (row,) = [line for line in report.splitlines() if line.startswith(f"| {method} |")]
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_fake_authors_code_is_imported_checked_and_timed(fake_repo, tiny_clip, tmp_path):
    repo, commit = fake_repo
    before = {name for name in sys.modules if name.split(".")[0] in ("dassl", "clip", "trainers")}
    rc, report = run(
        repo, tiny_clip, tmp_path, f"| CoOp | {REPOSITORY} @ {commit[:7]} |\n", 1.0, "--loop-eval-images", "1"
    )
    assert rc == 0, report
    cells = table_row(report, "coop")
    assert cells[1] == f"{REPOSITORY} @ {commit[:7]}"
    train_theirs, train_ours, train_ratio, train_floor, eval_theirs, eval_ours, eval_ratio, eval_floor = cells[2:10]
    for seconds in (train_theirs, train_ours, eval_theirs, eval_ours):
        assert float(seconds) > 0
    assert float(train_ratio.rstrip("×")) == pytest.approx(float(train_theirs) / float(train_ours), rel=0.1)
    assert float(eval_ratio.rstrip("×")) == pytest.approx(float(eval_theirs) / float(eval_ours), rel=0.1)
    assert train_floor == eval_floor == "—"  # the stand-in has no floor
    assert cells[10].startswith("yes (")
    assert "WARNING" not in report and "training loss" in report and "Machine:" in report
    assert "the authors' eval timed on 1 images, x3" in report  # a per-image loop, scaled
    # the stubs and the fake's packages are gone again
    assert {name for name in sys.modules if name.split(".")[0] in ("dassl", "clip", "trainers")} == before


def test_differing_logits_abort_the_line_and_another_commit_is_warned(fake_repo, tiny_clip, tmp_path):
    repo, commit = fake_repo
    other = "0123456" if not commit.startswith("0123456") else "7654321"
    rc, report = run(repo, tiny_clip, tmp_path, f"| CoOp | {REPOSITORY} @ {other} |", wrong_scale=1.01)
    assert rc == 1
    cells = table_row(report, "coop")
    assert cells[2:10] == ["—"] * 8  # nothing timed
    assert cells[10].startswith("MISMATCH: coop eval logits: relative error")
    assert f"WARNING: the checkout holds {commit[:7]}, docs/ was read at {other}" in report


def run_adapters(repo, tiny_clip, tmp_path, adapters: dict) -> tuple[int, str]:
    out = tmp_path / "report.md"
    (method,) = adapters
    argv = ["--authors", f"{method}={repo}", "--k", "5", "--eval-images", "3", "--runs", "2", "--out", str(out)]
    rc = vs_authors.main(argv, adapters=adapters, clip=tiny_clip, docs=(str(tmp_path / "none.md"),))
    return rc, out.read_text()


def test_an_update_from_the_authors_framework_is_compared_with_our_backward(fake_repo, tiny_clip, tmp_path):
    """ProGrad's plumbing: their trainer's update method comes from the checkout's framework file, their
    summary's CE is the loss, ours runs ``backward``, and the two updates left in ``ctx.grad`` agree on the
    timed batch and under the other labels; the stub of the never-called import is gone afterwards."""
    repo, commit = fake_repo
    rc, report = run_adapters(repo, tiny_clip, tmp_path, prograd_adapter())
    assert rc == 0, report
    assert table_row(report, "prograd")[10].startswith("yes (")
    for check in ("training loss", "update ctx", "training loss, other labels", "update ctx, other labels"):
        assert f"{check} " in report
    assert not any(name.split(".")[0] == "an_unused_plotting_library" for name in sys.modules)


def test_a_different_update_aborts_the_line(fake_repo, tiny_clip, tmp_path):
    """Their projection at half strength: the same logits and CE, another update where the gradients
    conflict (under some of the labels tried), so the line is aborted on the update."""
    repo, commit = fake_repo
    rc, report = run_adapters(repo, tiny_clip, tmp_path, prograd_adapter(theirs_lambda=0.5))
    assert rc == 1
    cells = table_row(report, "prograd")
    assert cells[2:10] == ["—"] * 8
    assert cells[10].startswith("MISMATCH: prograd update of ctx, label "), cells[10]


def test_differing_logits_abort_the_prograd_line(fake_repo, tiny_clip, tmp_path):
    repo, commit = fake_repo
    rc, report = run_adapters(repo, tiny_clip, tmp_path, prograd_adapter(wrong_scale=1.01))
    assert rc == 1
    assert table_row(report, "prograd")[10].startswith("MISMATCH: prograd eval logits: relative error")


def test_scored_logits_read_from_several_outputs_and_the_eval_cache_cleared(fake_repo, tiny_clip, tmp_path):
    """MMRL's plumbing: the entry picks the scored logits among the model's outputs, and clears the cache the
    authors' eval keeps, before each of their evaluations: each then encodes the text once, as ours does."""
    repo, commit = fake_repo
    cleared = []

    def clear(model):
        cleared.append(model)
        model.cached_text = None

    entry = vs_authors.AuthorsCode(
        "coop",
        REPOSITORY,
        "trainers.fakecoop:FakeCoOp",
        fake_cfg(SEVERAL_OUTPUTS=True),
        {"n_ctx": 4, "ctx_init": "a photo of a"},
        folder="code",
        logits=lambda output: output[1],
        before_eval=clear,
    )
    rc, report = run_adapters(repo, tiny_clip, tmp_path, {"coop": entry})
    assert rc == 0, report
    train_runs, eval_runs = (int(n) for n in re.search(r"train (\d+), \d+, eval (\d+), \d+", report).groups())
    model = cleared[0]
    assert all(m is model for m in cleared) and len(cleared) == 2 + eval_runs  # the check, the warm-up, the runs
    assert model.text_encodes == len(cleared) + 1 + train_runs  # each eval and each training step (with warm-up)
    # the first output is not the scored one: read it, and the line is aborted
    wrong = dataclasses.replace(entry, logits=lambda output: output[0], before_eval=None)
    rc, report = run_adapters(repo, tiny_clip, tmp_path, {"coop": wrong})
    assert rc == 1 and table_row(report, "coop")[10].startswith("MISMATCH: coop eval logits")


def test_a_commit_mismatch_says_whether_the_code_differs(tmp_path):
    """The checkout at another commit than docs/ names: the warning says whether only documentation
    changed in between (the code timed is the code read) or which code files did."""
    repo = tmp_path / "repo"
    (repo / "trainers").mkdir(parents=True)
    (repo / "trainers" / "m.py").write_text("x = 1\n")
    (repo / "README.md").write_text("v1\n")
    git(repo, "init", "-q")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "read")
    read = git(repo, "rev-parse", "HEAD")
    (repo / "README.md").write_text("v2\n")
    git(repo, "commit", "-qam", "docs")
    docs_only = git(repo, "rev-parse", "HEAD")
    (repo / "trainers" / "m.py").write_text("x = 2\n")
    git(repo, "commit", "-qam", "code")
    code = git(repo, "rev-parse", "HEAD")
    warning = vs_authors.commit_warning(REPOSITORY, docs_only, read[:7], str(repo))
    assert warning.endswith("(they differ only in documentation: README.md; the code is the same)")
    warning = vs_authors.commit_warning(REPOSITORY, code, read[:7], str(repo))
    assert warning.endswith("(code differs: trainers/m.py)")
    # a commit the checkout does not hold: the plain warning
    assert vs_authors.commit_warning(REPOSITORY, code, "abcdef0", str(repo)) == (
        f"the checkout holds {code[:7]}, docs/ was read at abcdef0"
    )


def test_commits_read_from_the_checkout_and_from_docs(fake_repo, tmp_path):
    repo, commit = fake_repo
    docs = tmp_path / "PROTOCOL.md"
    docs.write_text(f"| KgCoOp | {REPOSITORY} @ {commit[:7]}, folder |\n| x | other/repo @ `abcdef0` |\n")
    assert vs_authors.checkout_commit(str(repo / "code")) == commit
    assert vs_authors.checkout_commit(str(tmp_path)) is None
    assert vs_authors.documented_commit(REPOSITORY, (str(docs),)) == commit[:7]
    assert vs_authors.documented_commit("other/repo", (str(docs),)) == "abcdef0"
    assert vs_authors.documented_commit("no/repo", (str(docs),)) is None
    assert vs_authors.commit_warning(REPOSITORY, commit, commit[:7]) == ""
    assert "docs/ names no commit" in vs_authors.commit_warning(REPOSITORY, commit, None)
    assert "not a git checkout" in vs_authors.commit_warning(REPOSITORY, None, commit[:7])
    # the real docs name the successors' commits
    assert vs_authors.documented_commit("htyao89/KgCoOp") == "c43ccc3"
    second_wave = {"prograd": "1b76203", "tcp": "bd97bec", "coop_dept": "d4ff416", "mmrl": "27d8821"}
    for method, documented in second_wave.items():  # docs/PROTOCOL-successors-2.md
        assert vs_authors.documented_commit(vs_authors.AUTHORS[method].repository) == documented
    # docs/PROTOCOL-successors-3.md, with the full hash
    assert vs_authors.documented_commit(vs_authors.AUTHORS["mma"].repository).startswith("547ee34")


def test_same_weights_reach_both_sides_through_the_authors_format(tiny_clip):
    clip = backbone.freeze(backbone.build_random_clip("tiny", seed=1))
    vs_authors.round_through_fp16(clip)
    for p in clip.parameters():
        assert torch.equal(p, p.half().float())
    with vs_authors.fp32_on_cpu():
        t = torch.ones(2)
        assert t.half().dtype == torch.float32  # the authors' .half() keeps fp32 here
    assert torch.ones(2).half().dtype == torch.float16  # and only there


def test_readme_block_comes_from_the_report(tmp_path):
    report, readme = tmp_path / "r.md", tmp_path / "README.md"
    report.write_text("# x\n\nMachine: a CPU.\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n* notes\n")
    readme.write_text("top\n<!-- BEGIN vs-authors:table -->\nold\n<!-- END vs-authors:table -->\nbottom\n")
    refresh(str(tmp_path), ("vs-authors",), str(report))
    text = readme.read_text()
    assert "old" not in text and "| 1 | 2 |" in text and "Machine: a CPU." in text
    assert text.startswith("top\n") and text.endswith("bottom\n")
    readme.write_text("no block\n")
    with pytest.raises(ValueError, match="'vs-authors:table' must be in exactly one document, found in none"):
        refresh(str(tmp_path), ("vs-authors",), str(report))


@pytest.mark.parametrize(
    "item, message",
    [
        ("cocoop", "expected METHOD=DIR"),
        ("nosuch=/tmp", "no authors' adapter for 'nosuch'"),
        ("coop=/no/such", "git clone"),
    ],
)
def test_bad_authors_argument(item, message):
    with pytest.raises(SystemExit, match=message):
        vs_authors.parse_authors([item], vs_authors.AUTHORS)


def test_readme_table_is_the_report(tmp_path):
    """The documented vs-authors block is what ``python -m benchmarks.readme vs-authors`` writes from the report."""
    from benchmarks.readme import blocks, read_document_block

    if not os.path.exists(vs_authors.REPORT):
        pytest.skip(f"{vs_authors.REPORT} not made yet (make bench-authors)")
    assert read_document_block(vs_authors.README_BLOCK) == blocks("vs-authors")[vs_authors.README_BLOCK], (
        "the vs-authors block is stale: python -m benchmarks.readme vs-authors"
    )


def test_the_floor_uses_the_fastest_matmul_rate_probed(fake_repo, tiny_clip, tmp_path, monkeypatch):
    """A probe that catches a busy moment must not raise the floor above what the machine does: the rate is
    probed before each method and the fastest seen serves every line."""
    import dataclasses

    repo, commit = fake_repo
    flops = {"train": {"text": 8e9}, "eval": {"text": 4e9}}
    entry = dataclasses.replace(adapter(1.0, False)["coop"], floor=lambda *_: flops)
    rates = iter([1e9, 4e9])  # the first probe (before the run) slow, the one before the method fast
    monkeypatch.setattr(vs_authors.cli, "matmul_throughput", lambda device: next(rates))
    docs = tmp_path / "PROTOCOL.md"
    docs.write_text(f"| CoOp | {REPOSITORY} @ {commit[:7]} |\n")
    out = tmp_path / "report.md"
    argv = ["--authors", f"coop={repo}", "--k", "5", "--eval-images", "3", "--runs", "1", "--out", str(out)]
    assert vs_authors.main(argv, adapters={"coop": entry}, clip=tiny_clip, docs=(str(docs),)) == 0
    report = out.read_text()
    cells = table_row(report, "coop")
    assert (float(cells[5]), float(cells[9])) == (2.0, 1.0)  # 8 and 4 GFLOP at 4 GFLOP/s, not at 1
    assert "(4 GFLOP/s, the fastest of a probe before each method)" in report


# Tip-Adapter's plain scripts, as the benchmark drives them: utils.py's classifier and cache, main.py's two runs
# (their lines, trimmed of prints and data loading); ``wrong_beta`` scales beta in the fine-tuning's forward only.
FAKE_TIP_UTILS = """
import torch
import torch.nn.functional as F
import torch.nn as nn

import clip


def cls_acc(output, target, topk=1):
    pred = output.topk(topk, 1, True, True)[1].t()
    correct = pred.eq(target.view(1, -1).expand_as(pred))
    return 100 * float(correct[:topk].reshape(-1).float().sum(0, keepdim=True)) / target.shape[0]


def clip_classifier(classnames, template, clip_model):
    with torch.no_grad():
        clip_weights = []
        for classname in classnames:
            classname = classname.replace('_', ' ')
            texts = clip.tokenize([t.format(classname) for t in template]).cuda()
            class_embeddings = clip_model.encode_text(texts)
            class_embeddings /= class_embeddings.norm(dim=-1, keepdim=True)
            class_embedding = class_embeddings.mean(dim=0)
            class_embedding /= class_embedding.norm()
            clip_weights.append(class_embedding)
        clip_weights = torch.stack(clip_weights, dim=1).cuda()
    return clip_weights


def build_cache_model(cfg, clip_model, train_loader_cache):
    cache_keys, cache_values = [], []
    with torch.no_grad():
        for augment_idx in range(cfg['augment_epoch']):
            train_features = []
            for i, (images, target) in enumerate(train_loader_cache):
                train_features.append(clip_model.encode_image(images.cuda()))
                if augment_idx == 0:
                    cache_values.append(target.cuda())
            cache_keys.append(torch.cat(train_features, dim=0).unsqueeze(0))
    cache_keys = torch.cat(cache_keys, dim=0).mean(dim=0)
    cache_keys /= cache_keys.norm(dim=-1, keepdim=True)
    cache_keys = cache_keys.permute(1, 0)
    cache_values = F.one_hot(torch.cat(cache_values, dim=0)).half()
    return cache_keys, cache_values


def search_hp(cfg, cache_keys, cache_values, features, labels, clip_weights, adapter=None):
    scale, step = cfg['search_scale'], cfg['search_step']
    beta_list = [i * (scale[0] - 0.1) / step[0] + 0.1 for i in range(step[0])]
    alpha_list = [i * (scale[1] - 0.1) / step[1] + 0.1 for i in range(step[1])]
    best_acc, best_beta, best_alpha = 0, 0, 0
    for beta in beta_list:
        for alpha in alpha_list:
            affinity = adapter(features) if adapter else features @ cache_keys
            cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
            tip_logits = 100. * features @ clip_weights + cache_logits * alpha
            acc = cls_acc(tip_logits, labels)
            if acc > best_acc:
                best_acc, best_beta, best_alpha = acc, beta, alpha
    return best_beta, best_alpha
"""

FAKE_TIP_MAIN = """
import torch
import torch.nn.functional as F
import torch.nn as nn

from utils import *


def run_tip_adapter(cfg, cache_keys, cache_values, val_features, val_labels, test_features, test_labels, clip_weights):
    clip_logits = 100. * val_features @ clip_weights
    acc = cls_acc(clip_logits, val_labels)
    beta, alpha = cfg['init_beta'], cfg['init_alpha']
    affinity = val_features @ cache_keys
    cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
    tip_logits = clip_logits + cache_logits * alpha
    acc = cls_acc(tip_logits, val_labels)
    best_beta, best_alpha = search_hp(cfg, cache_keys, cache_values, val_features, val_labels, clip_weights)


def run_tip_adapter_F(
    cfg, cache_keys, cache_values, val_features, val_labels, test_features, test_labels, clip_weights, clip_model,
    train_loader_F,
):
    adapter = nn.Linear(cache_keys.shape[0], cache_keys.shape[1], bias=False).to(clip_model.dtype).cuda()
    adapter.weight = nn.Parameter(cache_keys.t())
    optimizer = torch.optim.AdamW(adapter.parameters(), lr=cfg['lr'], eps=1e-4)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg['train_epoch'] * len(train_loader_F))
    beta, alpha = cfg['init_beta'], cfg['init_alpha']
    best_acc = 0.0
    for train_idx in range(cfg['train_epoch']):
        adapter.train()
        for i, (images, target) in enumerate(train_loader_F):
            with torch.no_grad():
                image_features = clip_model.encode_image(images)
                image_features /= image_features.norm(dim=-1, keepdim=True)
            affinity = adapter(image_features)
            wrong = beta * cfg.get('wrong_beta', 1.0)
            cache_logits = ((-1) * (wrong - wrong * affinity)).exp() @ cache_values
            clip_logits = 100. * image_features @ clip_weights
            tip_logits = clip_logits + cache_logits * alpha
            loss = F.cross_entropy(tip_logits, target)
            acc = cls_acc(tip_logits, target)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            scheduler.step()
        adapter.eval()
        affinity = adapter(test_features)
        cache_logits = ((-1) * (beta - beta * affinity)).exp() @ cache_values
        tip_logits = 100. * test_features @ clip_weights + cache_logits * alpha
        acc = cls_acc(tip_logits, test_labels)
        if acc > best_acc:
            best_acc = acc
            torch.save(adapter.weight, cfg['cache_dir'] + "/best_F_" + str(cfg['shots']) + "shots.pt")
    adapter.weight = torch.load(cfg['cache_dir'] + "/best_F_" + str(cfg['shots']) + "shots.pt")
    best_beta, best_alpha = search_hp(
        cfg, cache_keys, cache_values, val_features, val_labels, clip_weights, adapter=adapter
    )
"""

FAKE_CLIP_LOAD = """

def load(name, device="cpu", jit=False):
    model = build_model(torch.load(name, map_location="cpu"))
    # OpenAI's CLIP says its dtype (Tip-Adapter-F's adapter is cast to it)
    model.__class__ = type("OpenAICLIP", (type(model),), {"dtype": property(lambda m: m.visual.conv1.weight.dtype)})
    return model, None
"""


@pytest.fixture(scope="module")
def fake_tip_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("tip")
    for path, text in {
        "clip/__init__.py": "from .clip import *\n",
        "clip/clip.py": textwrap.dedent(FAKE_CLIP) + FAKE_CLIP_LOAD,
        "utils.py": FAKE_TIP_UTILS,
        "main.py": FAKE_TIP_MAIN,
    }.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    return repo


def tip_adapter(wrong_beta: float = 1.0) -> dict:
    entry = vs_authors.AUTHORS["tip_adapter_f"]
    return {"tip_adapter_f": dataclasses.replace(entry, cfg={**entry.cfg, "shots": 2, "wrong_beta": wrong_beta})}


def test_tip_adapter_scripts_are_driven_checked_and_timed(fake_tip_repo, tiny_clip, tmp_path):
    """Tip-Adapter's plumbing: no trainer; their cache, logits, loss and keys' update, read from their functions,
    equal ours; their top-level modules (main, utils, clip) are gone again afterwards."""
    before = {name for name in sys.modules if name.split(".")[0] in ("main", "utils", "clip")}
    rc, report = run_adapters(fake_tip_repo, tiny_clip, tmp_path, tip_adapter())
    assert rc == 0, report
    cells = table_row(report, "tip_adapter_f")
    assert cells[10].startswith("yes (") and all(float(c) > 0 for c in (cells[2], cells[3], cells[6], cells[7]))
    for check in ("eval logits", "training loss", "update adapter.weight"):
        assert f"{check} " in report
    assert {name for name in sys.modules if name.split(".")[0] in ("main", "utils", "clip")} == before


def test_a_different_tip_adapter_f_objective_aborts_the_line(fake_tip_repo, tiny_clip, tmp_path):
    rc, report = run_adapters(fake_tip_repo, tiny_clip, tmp_path, tip_adapter(wrong_beta=1.05))
    assert rc == 1
    cell = table_row(report, "tip_adapter_f")[10]
    # the same eval logits (the wrong beta is in their training forward only), another loss or update
    assert cell.startswith(("MISMATCH: tip_adapter_f training loss", "MISMATCH: tip_adapter_f update")), cell


# -- CLIP-LoRA: plain scripts, its own loralib ------------------------------------------------------------

FAKE_LORALIB_LAYERS = """
import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class LinearLoRA(nn.Linear):
    def __init__(self, weight, bias, r, alpha, dropout_rate, wrong_scale):
        super().__init__(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            self.weight.copy_(weight)
            self.bias.copy_(bias)
        self.w_lora_A = nn.Parameter(torch.zeros(r, weight.shape[1]))
        self.w_lora_B = nn.Parameter(torch.zeros(weight.shape[0], r))
        nn.init.kaiming_uniform_(self.w_lora_A, a=math.sqrt(5))
        self.scaling = alpha / math.sqrt(r) * wrong_scale
        self.dropout = nn.Dropout(dropout_rate)

    def forward(self, x):
        out = F.linear(x, self.weight, self.bias)
        if self.training:
            x = self.dropout(x)
        return out + x @ (self.w_lora_B @ self.w_lora_A).t() * self.scaling


class PlainMultiheadAttentionLoRA(nn.Module):
    def __init__(self, mha, r, alpha, dropout_rate, wrong_scale):
        super().__init__()
        e = mha.embed_dim
        self.heads, self.batch_first = mha.num_heads, mha.batch_first
        w, b = mha.in_proj_weight.data, mha.in_proj_bias.data
        args = (r, alpha, dropout_rate, wrong_scale)
        self.q_proj = LinearLoRA(w[:e], b[:e], *args)
        self.k_proj = LinearLoRA(w[e : 2 * e], b[e : 2 * e], *args)
        self.v_proj = LinearLoRA(w[2 * e :], b[2 * e :], *args)
        self.proj = mha.out_proj

    def forward(self, query, key, value, need_weights=False, attn_mask=None):
        x = query.transpose(0, 1) if self.batch_first else query
        length, batch, e = x.shape

        def heads(t):
            return t.view(length, batch, self.heads, e // self.heads).permute(1, 2, 0, 3)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        out = F.scaled_dot_product_attention(q, k, v, attn_mask)
        out = self.proj(out.permute(2, 0, 1, 3).reshape(length * batch, e)).view(length, batch, e)
        return (out.transpose(0, 1) if self.batch_first else out), None
"""

FAKE_LORALIB_UTILS = """
import torch

from .layers import PlainMultiheadAttentionLoRA


def apply_lora(args, clip_model):
    layers = []
    for tower in (clip_model.transformer, clip_model.visual.transformer):
        for block in tower.resblocks:
            block.attn = PlainMultiheadAttentionLoRA(
                block.attn, args.r, args.alpha, args.dropout_rate, getattr(args, "wrong_scale", 1.0)
            )
            layers.append(block.attn)
    return layers


def lora_state_dict(model):
    return {k: v for k, v in model.state_dict().items() if "lora_" in k}


def load_lora(args, list_lora_layers):  # utils.py:187-230, the q, k, v adapters
    backbone = args.backbone.replace("/", "").replace("-", "").lower()
    path = f"{args.save_path}/{backbone}/{args.dataset}/{args.shots}shots/seed{args.seed}/{args.filename}.pt"
    loaded = torch.load(path)
    for key in ("r", "alpha", "encoder", "params", "position"):
        if loaded["metadata"][key] != getattr(args, key):
            raise ValueError(f"{key} mismatch")
    for i, layer in enumerate(list_lora_layers):
        for name, matrices in loaded["weights"][f"layer_{i}"].items():
            getattr(layer, name).w_lora_A.data.copy_(matrices["w_lora_A"])
            getattr(layer, name).w_lora_B.data.copy_(matrices["w_lora_B"])
"""

FAKE_LORA = """
import torch
import torch.nn.functional as F

import clip
from loralib.utils import apply_lora, load_lora, lora_state_dict


def cls_acc(output, target, topk=1):
    return 100 * float((output.argmax(-1) == target).float().mean())


def text_features(clip_model, dataset):
    texts = [dataset.template[0].format(c.replace("_", " ")) for c in dataset.classnames]
    f = clip_model.encode_text(clip.tokenize(texts))
    return f / f.norm(dim=-1, keepdim=True)


def evaluate_lora(args, clip_model, loader, dataset):
    clip_model.eval()
    with torch.no_grad():
        text = text_features(clip_model, dataset)
        for images, target in loader:
            f = clip_model.encode_image(images)
            cls_acc((f / f.norm(dim=-1, keepdim=True)) @ text.t(), target)


def run_lora(args, clip_model, logit_scale, dataset, train_loader, val_loader, test_loader):
    for n, p in clip_model.named_parameters():
        p.requires_grad = "lora_" in n
    params = [p for n, p in clip_model.named_parameters() if "lora_" in n]
    optimizer = torch.optim.AdamW(params, lr=args.lr, weight_decay=1e-2)
    clip_model.train()
    for images, target in train_loader:
        text = text_features(clip_model, dataset)
        f = clip_model.encode_image(images)
        logits = logit_scale * (f / f.norm(dim=-1, keepdim=True)) @ text.t()
        loss = F.cross_entropy(logits, target)
        cls_acc(logits, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        break
    evaluate_lora(args, clip_model, test_loader, dataset)
"""


@pytest.fixture(scope="module")
def fake_lora_repo(tmp_path_factory):
    repo = tmp_path_factory.mktemp("clip_lora")
    for path, text in {
        "clip/__init__.py": "from .clip import *\n",
        "clip/clip.py": textwrap.dedent(FAKE_CLIP) + FAKE_CLIP_LOAD,
        "loralib/__init__.py": "",
        "loralib/layers.py": FAKE_LORALIB_LAYERS,
        "loralib/utils.py": FAKE_LORALIB_UTILS,
        "lora.py": FAKE_LORA,
    }.items():
        (repo / path).parent.mkdir(parents=True, exist_ok=True)
        (repo / path).write_text(text)
    return repo


def clip_lora(wrong_scale: float = 1.0) -> dict:
    """The entry for the tiny CLIP's two blocks (its update compared on each of them)."""
    entry = vs_authors.AUTHORS["clip_lora"]
    names = tuple((n, o) for n, o in entry.gradients if ".resblocks.0." in n or ".resblocks.1." in n)
    return {"clip_lora": dataclasses.replace(entry, cfg={**entry.cfg, "wrong_scale": wrong_scale}, gradients=names)}


def test_clip_lora_scripts_are_driven_checked_and_timed(fake_lora_repo, tiny_clip, tmp_path):
    """CLIP-LoRA's plumbing: its loralib adapts its own clip model, lora.py's logits, loss and every adapter's
    update, read from its functions, equal ours; its top-level modules are gone again afterwards."""
    tops = ("lora", "loralib", "clip")
    before = {name for name in sys.modules if name.split(".")[0] in tops}
    rc, report = run_adapters(fake_lora_repo, tiny_clip, tmp_path, clip_lora())
    assert rc == 0, report
    cells = table_row(report, "clip_lora")
    assert cells[10].startswith("yes (") and all(float(c) > 0 for c in (cells[2], cells[3], cells[6], cells[7]))
    checks = ("eval logits", "training loss", "update visual.transformer.resblocks.1.attn.v_proj.w_lora_B")
    for check in (*checks, "eval logits, our file in their loader"):  # their load_lora read what our job writes
        assert f"{check} " in report
    assert {name for name in sys.modules if name.split(".")[0] in tops} == before


def test_a_different_lora_scaling_aborts_the_clip_lora_line(fake_lora_repo, tiny_clip, tmp_path):
    rc, report = run_adapters(fake_lora_repo, tiny_clip, tmp_path, clip_lora(wrong_scale=1.05))
    assert rc == 1
    assert table_row(report, "clip_lora")[10].startswith("MISMATCH: clip_lora eval logits")


@pytest.mark.parametrize(
    "method, lacks", [("coop", "trainers/"), ("tip_adapter_f", "main.py"), ("clip_lora", "lora.py")]
)
def test_a_checkout_without_the_authors_code_is_refused_with_the_clone_command(tmp_path, tiny_clip, method, lacks):
    """Each driver's first check (a Dassl trainer's, Tip-Adapter's, CLIP-LoRA's): the folder, what it lacks
    and where the code is, before anything is imported."""
    from benchmarks.vs_authors.drivers import AuthorsModel

    entry = vs_authors.AUTHORS[method]
    (tmp_path / entry.folder).mkdir(parents=True, exist_ok=True)
    (tmp_path / entry.folder / "trainers").write_text("a file where Dassl trainers keep a folder")
    with pytest.raises(FileNotFoundError, match=f"has no {re.escape(lacks)}: .*git clone .*{entry.repository}"):
        (entry.driver or AuthorsModel)(entry, str(tmp_path), tiny_clip, ["a", "b"])
