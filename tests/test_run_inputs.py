"""What a result depends on beyond the run keys, checked on the tiny CLIP and synthetic data: a NaN that
a method's hook writes, a loaded prompt's own training settings, the backbone's weights and the images."""

import dataclasses
import os

import pytest
from fake_data import make_synthetic_dataset, tiny_run

from harness import results
from harness.checkpoint import LoadMismatchError
from harness.config import build_spec
from harness.runner import NonFiniteLossError, RunFailedError, run


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        str(root), num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=32
    )
    return str(root)


def spec(data_root, out, **values):
    return build_spec(tiny_run(data_root, out, **{"shots": 2, **values}))


# -- a non-finite number is never recorded ---------------------------------------------------------


def test_a_hook_that_writes_nan_stops_the_run_naming_the_epoch_and_the_tensors(data_root, tmp_path):
    # PromptSRC's Gaussian weights underflow to 0/0 with a mean far beyond the last epoch.
    s = spec(data_root, tmp_path, method="promptsrc", warmup_epochs=0, options={"gpa_mean": 100})
    with pytest.raises(RunFailedError, match=r"After epoch 1 .*on_epoch_end.*gpa_sum.*gpa_mean") as error:
        run(s)
    assert "learning rate" not in str(error.value).replace("not the learning rate", "")
    assert results.read_records(str(tmp_path)) == []


def test_a_nan_loss_names_its_terms_and_blames_the_weight_not_the_lr(data_root, tmp_path):
    # A finite weight (an infinite one is refused before the run) whose product overflows float32.
    s = spec(data_root, tmp_path, method="promptsrc", warmup_epochs=0, options={"text_loss_weight": 1e300})
    with pytest.raises(NonFiniteLossError) as error:
        run(s)
    message = str(error.value)
    assert "epoch 1, step 1" in message and "lr 0.01" in message
    assert "text_l1 inf" in message and "cross-entropy is finite" in message
    assert "Try a lower learning rate" not in message
    assert results.read_records(str(tmp_path)) == []


def test_a_diverging_lr_is_still_blamed_on_the_lr(data_root, tmp_path):
    s = spec(data_root, tmp_path, warmup_epochs=0, lr=1e30, batch_size=8)
    with pytest.raises(NonFiniteLossError, match=r"\(lr 5e\+29\)\. Not finite: ce nan\. Try a lower learning rate"):
        run(s)


# -- a loaded prompt is scored only under the settings it was trained with --------------------------


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """A finished 3-epoch CoOp training on the base classes: (its spec, its records)."""
    out = tmp_path_factory.mktemp("trained")
    s = spec(data_root, out, epochs=3, evaluate=[{"dataset": "synthetic", "subsample": "base"}])
    return s, run(s)


def evaluation(data_root, out, trained_spec, **values):
    return spec(data_root, out, **{"epochs": 3, "load_from": trained_spec.output_dir, **values}, evaluate=["synthetic"])


def test_an_evaluation_at_the_training_settings_shares_its_fingerprint(data_root, tmp_path, trained):
    train_spec, train_records = trained
    records = run(evaluation(data_root, tmp_path, train_spec))
    assert [r["fingerprint"] for r in records] == [train_records[0]["fingerprint"]]
    assert records[0]["load_any"] is None and records[0]["epochs"] == 3


def test_a_prompt_trained_at_other_settings_is_refused_naming_them(data_root, tmp_path, trained):
    with pytest.raises(LoadMismatchError) as error:
        run(evaluation(data_root, tmp_path, trained[0], epochs=10, lr=0.5))
    message = str(error.value)
    assert "epochs: 3 -> 10" in message and "lr: 0.01 -> 0.5" in message
    assert "--set epochs=3 lr=0.01" in message and "load_any=true" in message
    assert results.read_records(str(tmp_path)) == []


def test_load_any_records_the_training_settings_marked_as_a_settings_run_of_their_own(data_root, tmp_path, trained):
    from harness.report.gate import settings_run

    train_spec, train_records = trained
    records = run(evaluation(data_root, tmp_path, train_spec, epochs=10, lr=0.5, load_any=True))
    (record,) = records
    assert record["load_any"] == "epochs: 3 -> 10, lr: 0.01 -> 0.5"
    assert record["settings"]["epochs"] == 3 and record["settings"]["lr"] == 0.01  # the training run's
    assert record["settings"]["load_any"] == record["load_any"]
    assert record["fingerprint"] != train_records[0]["fingerprint"]
    assert settings_run(record) != settings_run(train_records[0])
    # Finished: a second run finds its record.
    assert run(evaluation(data_root, tmp_path, train_spec, epochs=10, lr=0.5, load_any=True)) == []


def test_a_partial_training_is_refused(data_root, tmp_path, trained):
    import shutil

    from harness import checkpoint

    partial = tmp_path / "partial"
    shutil.copytree(trained[0].output_dir, partial)
    last, epoch = checkpoint.latest_checkpoint(str(partial))
    os.unlink(last)
    assert checkpoint.latest_checkpoint(str(partial))[1] == epoch - 1
    with pytest.raises(
        LoadMismatchError, match=r"epoch 2 of a 3-epoch training that did not finish.*finish its training"
    ):
        run(evaluation(data_root, tmp_path, trained[0], load_from=str(partial)))
    (record,) = run(evaluation(data_root, tmp_path, trained[0], load_from=str(partial), load_any=True))
    assert record["load_any"] == "epoch 2 of 3" and record["epochs"] == 2


def test_a_fit_on_other_classes_is_refused_even_with_load_any(data_root, tmp_path):
    """Tip-Adapter's cache of the 2 base classes holds as many rows as the 2 new ones: scored on them, row i
    would stand for new class i and give a number that looks like one."""
    fitted = {"method": "tip_adapter", "config": "tip_adapter/vit_b16", "epochs": 0}
    fitted["options"] = {"augment_epoch": 1, "search_step": [4, 4]}
    base = spec(data_root, tmp_path / "base", **fitted, evaluate=[{"dataset": "synthetic", "subsample": "base"}])
    run(base)
    for load_any in (False, True):
        new = spec(data_root, tmp_path / "new", **fitted, subsample="new", evaluate=[], load_from=base.output_dir)
        new = dataclasses.replace(new, load_any=load_any)
        with pytest.raises(LoadMismatchError, match=r"other classes .*subsample: base -> new.*--set subsample=base"):
            run(new)
    assert [r["subsample"] for r in results.read_records(str(tmp_path / "new"))] == []
    same = spec(data_root, tmp_path / "same", **fitted, load_from=base.output_dir, evaluate=[])
    assert [r["subsample"] for r in run(same)] == ["base"]  # on its own classes it loads


def test_a_checkpoint_without_a_spec_is_accepted_with_a_warning_if_its_epoch_fits(data_root, tmp_path, trained, caplog):
    import torch

    from harness import checkpoint

    path, _ = checkpoint.latest_checkpoint(trained[0].output_dir)
    contents = torch.load(path, weights_only=False)
    del contents["spec"]
    authors = str(tmp_path / "authors.pth.tar-3")
    torch.save(contents, authors)
    (record,) = run(evaluation(data_root, tmp_path / "a", trained[0], load_from=authors))
    assert record["load_any"] is None and "holds no training spec" in caplog.text
    with pytest.raises(LoadMismatchError, match="epochs: 3 -> 10"):
        run(evaluation(data_root, tmp_path / "b", trained[0], load_from=authors, epochs=10))


# -- the backbone's weights and the images are part of a result ------------------------------------


@pytest.fixture
def own_cache(tmp_path, monkeypatch):
    """A cache folder of this test's own (the file digests the backbone remembers)."""
    from clipcore import backbone

    monkeypatch.setenv("HARNESS_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(backbone, "_digests", {})


def zero_shot(data_root, out, **values):
    return spec(data_root, out, method="zsclip", options={"template": "a photo of a {}."}, **values)


def test_an_overwritten_backbone_file_is_a_new_result(data_root, tmp_path, own_cache):
    from clipcore.backbone import build_random_clip, save_openai_state_dict

    weights = str(tmp_path / "clip.pt")
    save_openai_state_dict(build_random_clip("tiny", seed=0), weights)
    first = run(zero_shot(data_root, tmp_path, backbone=weights))
    assert run(zero_shot(data_root, tmp_path, backbone=weights)) == []  # unchanged: nothing to do
    save_openai_state_dict(build_random_clip("tiny", seed=1), weights)
    second = run(zero_shot(data_root, tmp_path, backbone=weights, output_dir=str(tmp_path / "run2")))
    assert len(second) == len(first) == 2
    assert second[0]["settings"]["weights"] != first[0]["settings"]["weights"]
    assert second[0]["fingerprint"] != first[0]["fingerprint"]


def test_a_named_backbone_names_its_file_only_when_it_is_not_the_promised_one(tmp_path, own_cache):
    from clipcore import backbone

    path = tmp_path / "named.pt"
    path.write_bytes(b"published weights")
    promised = backbone.file_sha256(str(path))
    backbone.register_backbone("promised-file", build=None, file=lambda: str(path), published=lambda: promised)
    try:
        assert backbone.weights_identity("promised-file") is None
        path.write_bytes(b"other weights, same place")
        assert backbone.weights_identity("promised-file") == backbone.file_sha256(str(path))[:16] != promised[:16]
        path.unlink()  # not fetched yet: the name's promise stands
        assert backbone.weights_identity("promised-file") is None
    finally:
        del backbone.BACKBONES["promised-file"]
    assert backbone.weights_identity("tiny") is None  # built by code from a fixed seed


def resize(paths, size=40):
    from PIL import Image

    for path in paths:
        Image.open(path).resize((size, size)).save(path, quality=90)


def test_a_moved_data_root_keeps_its_results_and_resized_images_do_not(data_root, tmp_path):
    import shutil

    from harness import data

    def copy(name):  # shutil.copy: new modification times, as a plain cp gives
        return shutil.copytree(data_root, tmp_path / name, copy_function=shutil.copy)

    out = tmp_path / "out"
    trained = run(spec(data_root, out))
    assert run(spec(str(copy("moved")), out)) == []  # the data root may move

    # Other test images, the same split file: each record's images stamp changes, the fingerprint not.
    root = str(copy("resized_test"))
    resize(d.impath for d in data.build_dataset("synthetic", root, num_shots=0).test)
    again = run(spec(root, out))
    assert [r["fingerprint"] for r in again] == [r["fingerprint"] for r in trained]
    assert [r["images"] for r in again] != [r["images"] for r in trained]

    # Other training images: another prompt, another fingerprint.
    root = str(copy("resized_train"))
    resize(d.impath for d in data.build_dataset("synthetic", root, num_shots=0).train)
    retrained = run(spec(root, out, output_dir=str(out / "retrained")))
    assert retrained and retrained[0]["fingerprint"] != trained[0]["fingerprint"]
    assert retrained[0]["settings"]["images"] != trained[0]["settings"]["images"]
    assert retrained[0]["settings"]["data"] == trained[0]["settings"]["data"]  # the split is the same


def test_an_evaluation_job_shares_its_training_jobs_fingerprint_and_stamps_its_own_images(data_root, tmp_path):
    from harness import fingerprint

    train = spec(data_root, tmp_path, evaluate=[{"dataset": "synthetic", "subsample": "base"}])
    evaluation = spec(
        data_root, tmp_path, load_from=train.output_dir, evaluate=[{"dataset": "synthetic", "subsample": "new"}]
    )
    assert fingerprint.settings_of(train) == fingerprint.settings_of(evaluation)
    base, new = (fingerprint.images_of(train, "synthetic", s) for s in ("base", "new"))
    assert base != new


def test_the_seeds_of_a_settings_run_share_its_variant_and_changed_images_part_it(data_root, tmp_path):
    import shutil

    from harness import data
    from harness.fingerprint import settings_of, variant_of

    one, two = (settings_of(spec(data_root, tmp_path, seed=seed)) for seed in (1, 2))
    assert one["images"] != two["images"]  # each seed draws its own images
    assert variant_of(one) == variant_of(two)  # one settings run: one table cell
    root = str(shutil.copytree(data_root, tmp_path / "resized"))
    resize(d.impath for d in data.build_dataset("synthetic", root, num_shots=0).train)
    assert variant_of(settings_of(spec(root, tmp_path, seed=2))) != variant_of(two)


def test_a_training_folder_written_before_the_inputs_were_stamped_still_loads(data_root, tmp_path, trained):
    import json
    import shutil

    from harness.fingerprint import FOLDER_FILE, fingerprint_of

    old = tmp_path / "old"
    shutil.copytree(trained[0].output_dir, old)
    with open(old / FOLDER_FILE) as f:
        held = json.load(f)
    held["settings"] = {k: v for k, v in held["settings"].items() if k not in ("images", "images_seed1", "weights")}
    held["fingerprint"] = fingerprint_of(held["settings"])
    (old / FOLDER_FILE).write_text(json.dumps(held))
    (record,) = run(evaluation(data_root, tmp_path, trained[0], load_from=str(old)))
    assert record["load_any"] is None and record["fingerprint"] == trained[1][0]["fingerprint"]
    held["settings"]["lr"] = 0.5  # a run key still counts
    held["fingerprint"] = fingerprint_of(held["settings"])
    (old / FOLDER_FILE).write_text(json.dumps(held))
    with pytest.raises(LoadMismatchError, match="lr: 0.5 -> 0.01"):
        run(evaluation(data_root, tmp_path / "again", trained[0], load_from=str(old)))


def test_a_transfer_studys_evaluation_jobs_share_their_training_jobs_settings(data_root, tmp_path):
    import yaml

    from harness import sweep

    experiment = tmp_path / "xd.yaml"
    experiment.write_text(
        yaml.safe_dump(
            {
                "name": "xd",
                "protocol": "transfer",
                "source": "synthetic",
                "targets": ["synthetic"],
                "seeds": [1, 2],
                "shots": 2,
                "backbone": "tiny",
                "precision": "fp32",
                "methods": {"coop": {"config": "coop/vit_b16_ctxv1"}},
            }
        )
    )
    jobs = {j.name: j for j in sweep.expand(sweep.load_experiment(str(experiment)), data_root, str(tmp_path / "o"))}
    evals = [j for j in jobs.values() if j.kind == "eval"]
    assert evals and all(j.settings == jobs[j.depends_on[0]].settings and "images" in j.settings for j in evals)


def test_an_edited_file_that_an_option_names_is_a_new_result(data_root, tmp_path):
    """CoPrompt's descriptions file, edited under the same name, changes what its consistency term pulls
    towards: the job is pending again, a settings run of its own, not skipped as finished."""
    import json

    path = tmp_path / "descriptions.json"
    names = ["red circle", "green square", "blue triangle", "yellow cross"]
    path.write_text(json.dumps({n: [f"a photo of a {n}."] for n in names}))
    values = {"method": "coprompt", "epochs": 1, "warmup_epochs": 0, "evaluate": [], "options": {"prompt_depth": 1}}
    values["options"]["descriptions"] = str(path)
    (first,) = run(spec(data_root, tmp_path / "a", **values))
    assert run(spec(data_root, tmp_path / "a", **values)) == []  # unchanged: finished
    path.write_text(json.dumps({n: [f"a drawing of a {n}, very {n}."] for n in names}))
    (edited,) = run(spec(data_root, tmp_path / "b", **values, results=str(tmp_path / "a")))
    assert edited["fingerprint"] != first["fingerprint"]
    assert edited["settings"]["option_files"] != first["settings"]["option_files"]
