"""CoPrompt (PROTOCOL-successors-3.md CoPrompt) on small random CLIPs: the logits, the loss and the update of
every learned tensor against a computation written out here (MaPLe's coupled prompts from deep_reference, the
two adapters, the description and image consistency terms with Python's random draw), what trains, the
options and descriptions refused, the authors' whole-model checkpoint on new classes, the published configs,
and a runner job on two views killed and resumed."""

import json
import os
import random

import deep_reference as ref
import pytest
import torch
import torch.nn.functional as F
from crash_child import kill_at
from fake_data import make_synthetic_dataset, tiny_run

import methods
from bounds import OutOfBounds
from harness import backbone, data, results
from harness.checkpoint import latest_checkpoint
from harness.config import build_spec
from harness.runner import run
from methods.coprompt import DescriptionsError

NAMES = ["golden_retriever", "cat", "sea lake", "fire truck"]


def descriptions_file(tmp_path, names, per_class=3):
    """Different sentences per class and per index, so the drawn index changes the loss."""
    table = {
        n.replace("_", " "): [f"a {n.replace('_', ' ')} seen {w}" for w in ("up close", "far away", "at night")][
            :per_class
        ]
        for n in names
    }
    path = tmp_path / "descriptions.json"
    path.write_text(json.dumps(table))
    return str(path)


def build(clip, names=NAMES, seed=0, **options):
    torch.manual_seed(seed)
    return methods.build_method("coprompt", clip, names, **options)


@pytest.fixture
def model(deep_clip, tmp_path):
    m = build(deep_clip, prompt_depth=3, weight=0.7, descriptions=descriptions_file(tmp_path, NAMES))
    ref.perturb(m, scale=0.1)
    return m


def learned(model):
    return dict(model._learned().named_parameters())


# -- the computation written out (trainers/coprompt.py:267-366) ----------------------------------------


def adapter(w, name, x):
    return F.relu(F.relu(x @ w[f"{name}.fc.0.weight"].t()) @ w[f"{name}.fc.2.weight"].t())


def reference_features(clip, w, names, images):
    """(f, t): MaPLe's prompted features, mixed with the adapters (0.1 image, 0.2 text), normalised."""
    ctx = w["prompt_learner.ctx"]
    deep_text = [w[f"prompt_learner.compound_prompts_text.{i}"] for i in range(2)]
    v0 = F.linear(ctx, w["prompt_learner.proj.weight"], w["prompt_learner.proj.bias"])
    v = [
        F.linear(
            p,
            w[f"prompt_learner.compound_prompt_projections.{i}.weight"],
            w[f"prompt_learner.compound_prompt_projections.{i}.bias"],
        )
        for i, p in enumerate(deep_text)
    ]
    embeddings, ids = ref.prompt_embeddings(clip, names, "a photo of a", ctx)
    text = ref.text_features(clip, embeddings, ids, deep_text)
    image = ref.image_features(clip, images, v0, v)
    f = 0.1 * adapter(w, "adapter_image", image) + 0.9 * image
    t = 0.2 * adapter(w, "adapter_text", text) + 0.8 * text
    return F.normalize(f, dim=-1), F.normalize(t, dim=-1)


def plain_text(clip, texts):
    ids = backbone.tokenize(texts)
    return ref.text_features(clip, clip.token_embedding(ids), ids)


def reference_loss(clip, w, names, descriptions, views, labels, weight, j):
    f, t = reference_features(clip, w, names, views[:, 0])
    logits = clip.logit_scale.exp() * f @ t.t()
    d = F.normalize(plain_text(clip, [descriptions[n.replace("_", " ")][j] for n in names]), dim=-1)
    f0 = F.normalize(ref.image_features(clip, views[:, 1]), dim=-1)
    text = 1 - F.cosine_similarity(t, d, dim=1).mean()
    image = 1 - F.cosine_similarity(f, f0, dim=1).mean()
    return F.cross_entropy(logits, labels) + weight * (text + image), logits


def test_logits_are_maples_prompted_features_through_the_two_adapters(model, deep_clip, small_images):
    model.eval()
    with torch.no_grad():
        f, t = reference_features(deep_clip, learned(model), NAMES, small_images)
        expected = deep_clip.logit_scale.exp() * f @ t.t()
        torch.testing.assert_close(model(small_images), expected, rtol=1e-4, atol=1e-4)
        without = ref.cosine_logits(deep_clip, model.encode_image(small_images), model.prompted_text_features())
    assert (without - expected).abs().max() > 1e-3  # the adapters change the logits


def test_loss_and_the_update_of_every_learned_tensor(model, deep_clip, tmp_path):
    descriptions = json.loads(open(model.descriptions_source).read())
    views = torch.randn(3, 2, 3, 64, 64, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([1, 0, 3])
    model.train()
    random.seed(5)
    details = {}
    loss = model.training_loss(views, labels, details=details)
    loss.backward()
    random.seed(5)
    j = random.randint(0, 2)  # the authors' draw (coprompt.py:337-339)
    w = learned(model)
    expected, logits = reference_loss(deep_clip, w, NAMES, descriptions, views, labels, 0.7, j)
    torch.testing.assert_close(details["logits"], logits.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(loss.detach(), expected.detach(), rtol=1e-4, atol=1e-6)
    others = [reference_loss(deep_clip, w, NAMES, descriptions, views, labels, 0.7, k)[0] for k in range(3) if k != j]
    # the drawn description matters
    assert all(abs(float(o.detach()) - float(expected.detach())) > 1e-4 for o in others)
    swapped = reference_loss(deep_clip, w, NAMES, descriptions, views.flip(1), labels, 0.7, j)[0]
    # the prompted model sees view 1, the frozen CLIP view 2
    assert abs(float(swapped.detach()) - float(expected.detach())) > 1e-4
    names = list(w)
    for name, grad in zip(names, torch.autograd.grad(expected, [w[n] for n in names])):
        assert grad.abs().sum() > 0, name
        torch.testing.assert_close(w[name].grad, grad, rtol=1e-4, atol=1e-4 * grad.abs().max().item())
    assert not any(p.grad is not None for p in deep_clip.parameters())


def test_what_trains(model, deep_clip):
    e = backbone.embed_dim(deep_clip)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if p.requires_grad}
    adapters = {k: v for k, v in shapes.items() if k.startswith("adapter")}
    assert adapters == {
        "adapter_image.fc.0.weight": (e // 4, e),
        "adapter_image.fc.2.weight": (e, e // 4),
        "adapter_text.fc.0.weight": (e // 4, e),
        "adapter_text.fc.2.weight": (e, e // 4),
    }
    assert set(shapes) - set(adapters) == {f"prompt_learner.{n}" for n, _ in model.prompt_learner.named_parameters()}
    assert sorted(map(id, model.trainable_parameters())) == sorted(id(p) for p in learned(model).values())
    assert model.record_options() == {
        "n_ctx": 2,
        "prompt_depth": 3,
        "weight": 0.7,
        "distill": "cosine",
        "descriptions": "descriptions.json",
    }


@pytest.mark.parametrize(
    "options, message",
    [
        ({"weight": -1.0}, r"'weight' of method 'coprompt'"),
        ({"distill": "l1"}, r"'distill' of method 'coprompt'"),
        ({"n_ctx": 0}, r"'n_ctx' of method 'coprompt'"),
        ({"prompt_depth": 0}, r"'prompt_depth' of method 'coprompt'"),
        ({"dataset": "synthetic"}, r"no class descriptions for dataset 'synthetic'"),
    ],
)
def test_options_out_of_range_are_refused(tiny_clip, options, message):
    with pytest.raises((OutOfBounds, ValueError), match=message):
        build(tiny_clip, **options)


def test_missing_descriptions_name_the_file_and_where_to_get_it(tiny_clip, tmp_path):
    with pytest.raises(DescriptionsError, match=r"imagenet_prompt.json do not exist") as refused:
        build(tiny_clip, dataset="imagenet")
    # the exact file at the commit the others were copied from, and the blob a good copy hashes to
    url = "raw.githubusercontent.com/ShuvenduRoy/CoPrompt/a2a6c12e3622cfe4b3a127f4ba0c4f3eb841418c/gpt_file/"
    assert url + "imagenet_prompt.json" in str(refused.value)
    assert "86ab87f6934a4be4d628eae53c30b15dbb683f34" in str(refused.value)
    with pytest.raises(DescriptionsError, match=r"no descriptions for 1 of the 5 classes \(\['tabby'\]\)"):
        build(tiny_clip, NAMES + ["tabby"], descriptions=descriptions_file(tmp_path, NAMES))
    table = {n: ["one"] for n in ["golden retriever", "cat", "sea lake"]} | {"fire truck": ["one", "two"]}
    (tmp_path / "uneven.json").write_text(json.dumps(table))
    with pytest.raises(DescriptionsError, match=r"\[1, 2\] descriptions each"):
        build(tiny_clip, descriptions=str(tmp_path / "uneven.json"))


def test_an_imagenet_descriptions_file_other_than_the_authors_is_refused(tiny_clip, tmp_path, monkeypatch):
    """The ImageNet descriptions are the one default file a user saves (the others ship): the fingerprint names
    the dataset, not that file's content, so only the authors' exact file (its git blob) is read by default; a
    file of one's own goes through options.descriptions, which is stamped by content."""
    import subprocess

    from methods import coprompt

    monkeypatch.setattr(coprompt, "DESCRIPTIONS_DIR", str(tmp_path))
    path = descriptions_file(tmp_path, NAMES)
    os.replace(path, tmp_path / "imagenet_prompt.json")
    blob = subprocess.run(
        ["git", "hash-object", str(tmp_path / "imagenet_prompt.json")], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert coprompt.git_blob(str(tmp_path / "imagenet_prompt.json")) == blob
    with pytest.raises(DescriptionsError, match=rf"imagenet_prompt.json hashes to {blob}, not .*86ab87f6"):
        build(tiny_clip, dataset="imagenet")
    model = build(tiny_clip, dataset="imagenet", descriptions=str(tmp_path / "imagenet_prompt.json"))
    assert model.descriptions_source == str(tmp_path / "imagenet_prompt.json")


def test_the_authors_descriptions_cover_their_classes():
    # The demo's colours and one of the authors' files (EuroSAT: 10 classes, 10 sentences each).
    from methods.coprompt import description_file, read_descriptions
    from miniworld.vocab import DEMO_DATASETS

    cases = [(d.key, list(d.classes)) for d in DEMO_DATASETS if d.kind == "color"]
    for dataset, names in [*cases, ("eurosat", ["Annual Crop Land", "Sea or Lake"])]:
        found = read_descriptions(description_file(dataset), names)
        assert len(found) == len(names) and len({len(d) for d in found}) == 1 and found[0] != found[1]


# -- checkpoints ---------------------------------------------------------------------------------------


def test_new_classes_load_the_base_checkpoint_in_the_authors_layout(model, deep_clip, small_images, tmp_path):
    path = str(tmp_path / "MultiModalPromptLearner" / "model.pth.tar-8")
    model.save_prompt_checkpoint(path, epoch=8)
    state = torch.load(path, weights_only=False)["state_dict"]
    assert {"adapter_image.fc.0.weight", "prompt_learner.ctx", "image_encoder.conv1.weight"} <= set(state)
    assert "model_distill.visual.conv1.weight" in state  # the authors' second, frozen CLIP
    new = ["zebra", "lighthouse"]
    other = build(deep_clip, new, seed=7, prompt_depth=3, descriptions=descriptions_file(tmp_path, new))
    assert other.load_prompt_checkpoint(path)["epoch"] == 8
    for name, p in learned(other).items():
        assert torch.equal(p, learned(model)[name]), name
    with torch.no_grad():
        f, t = reference_features(deep_clip, learned(other), new, small_images)
        torch.testing.assert_close(
            other.eval()(small_images), deep_clip.logit_scale.exp() * f @ t.t(), rtol=1e-4, atol=1e-4
        )


# -- the published configs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config, depth, n_ctx, weight, epochs",
    [
        ("coprompt/vit_b16", 9, 2, 1.0, 8),
        ("coprompt/vit_b16_food101", 9, 4, 0.5, 5),
        ("coprompt/vit_b16_eurosat", 12, 2, 0.1, 8),
        ("coprompt/vit_b16_imagenet", 12, 4, 8.0, 8),
    ],
)
def test_the_published_configs(tmp_path, config, depth, n_ctx, weight, epochs):
    spec = build_spec({"config": config, "dataset": "oxford_pets", "data_root": "/d", "output_dir": str(tmp_path)})
    assert (spec.optimizer, spec.lr, spec.epochs, spec.batch_size, spec.warmup_epochs, spec.warmup_lr) == (
        "sgd",
        0.0035,
        epochs,
        4,
        1,
        1e-5,
    )
    assert spec.options == {
        "n_ctx": n_ctx,
        "ctx_init": "a photo of a",
        "prompt_depth": depth,
        "weight": weight,
        "distill": "cosine",
    }


# -- a runner job: two views, killed and resumed -------------------------------------------------------


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("copromptdata")
    make_synthetic_dataset(str(root), num_classes=4, train_per_class=6, val_per_class=1, test_per_class=3)
    return str(root)


@pytest.mark.slow
def test_a_job_on_two_views_killed_mid_training_resumes_to_the_same_numbers(data_root, tmp_path):
    names = data.build_dataset("synthetic", data_root, num_shots=4, seed=1, subsample="all").classnames
    values = {
        "method": "coprompt",
        "options": {"weight": 2.0, "descriptions": descriptions_file(tmp_path, names)},
        "epochs": 3,
        "lr": 0.05,
        "warmup_epochs": 0,
    }
    straight = build_spec(tiny_run(data_root, tmp_path / "straight", **values))
    expected = run(straight)
    killed = tiny_run(data_root, tmp_path / "killed", **values)
    kill_at(killed, "mid-epoch:3", tmp_path)
    assert latest_checkpoint(killed["output_dir"])[1] == 2
    resumed = run(build_spec(killed))
    assert [r["metrics"] for r in resumed] == [r["metrics"] for r in expected]
    assert {r["subsample"] for r in resumed} == {"base", "new"}
    a = torch.load(latest_checkpoint(straight.output_dir)[0], weights_only=False)["state_dict"]
    b = torch.load(latest_checkpoint(killed["output_dir"])[0], weights_only=False)["state_dict"]
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert results.read_records(str(tmp_path / "killed")) == resumed
