"""Bad input through the real command line: one clear error (what, where, what to do), a non-zero
exit status, no traceback; ``--debug`` shows the traceback.

Each case breaks one thing of a small working setup (the tiny CLIP, generated data) and runs
``python -m harness`` in a subprocess, as a user would.
"""

import json
import os
import subprocess
import sys

import pytest
from fake_data import make_synthetic_dataset

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def setup(tmp_path):
    """(data root, a command prefix that trains CoOp on it for one epoch)."""
    root = tmp_path / "data"
    make_synthetic_dataset(
        str(root), num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=24
    )
    base = [
        "run", "--method", "coop", "--dataset", "synthetic", "--data-root", str(root), "--backbone", "tiny",
        "--precision", "fp32", "--shots", "2", "--epochs", "1", "--batch-size", "2", "--num-workers", "0",
        "--tracking", "none", "--output-dir", str(tmp_path / "out" / "run"), "--results", str(tmp_path / "out"),
    ]  # fmt: skip
    return root, base


def harness(*args, debug=False):
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_DEBUG"}
    command = [sys.executable, "-m", "harness", *(["--debug"] if debug else []), *map(str, args)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def assert_clean(out, *expected, code=2):
    assert out.returncode == code, out.stderr[-3000:]
    assert "Traceback" not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, out.stderr[-3000:]
    for text in expected:
        assert text in out.stderr, (text, out.stderr[-3000:])


def split_path(root):
    return root / "synthetic" / "split_zhou_Synthetic.json"


def test_missing_dataset_folder(setup):
    root, base = setup
    os.rename(root / "synthetic", root / "elsewhere")
    assert_clean(harness(*base), f"dataset folder {root / 'synthetic'} not found", "expected the layout")


def test_missing_split_file(setup):
    root, base = setup
    os.unlink(split_path(root))
    assert_clean(harness(*base), f"split file {split_path(root)} not found", "put it at")


def test_malformed_split_json(setup):
    root, base = setup
    split_path(root).write_text('{"train": [')
    assert_clean(harness(*base), "cannot read split file", str(split_path(root)), "expected a JSON object")


def test_wrongly_shaped_split_json(setup):
    root, base = setup
    split_path(root).write_text(json.dumps([["a.jpg", 0, "cat"]]))
    assert_clean(harness(*base), "has the wrong structure", str(split_path(root)))


def test_listed_image_missing(setup):
    root, base = setup
    first = json.loads(split_path(root).read_text())["test"][0][0]
    os.unlink(root / "synthetic" / "images" / first)
    assert_clean(harness(*base), "image(s) listed by", first.split("/")[-1], "re-download")


@pytest.mark.parametrize("split", ["train", "test"])
def test_truncated_jpeg(setup, split):
    root, base = setup
    items = json.loads(split_path(root).read_text())[split]
    for rel, _, _ in items:  # every image of the split: whichever the few-shot draw picks
        path = root / "synthetic" / "images" / rel
        path.write_bytes(path.read_bytes()[:60])
    out = harness(*base)
    assert_clean(out, "cannot decode image", "truncated or corrupt")


def test_class_without_training_images(setup):
    root, base = setup
    split = json.loads(split_path(root).read_text())
    split["train"] = [item for item in split["train"] if item[1] != 3]
    split_path(root).write_text(json.dumps(split))
    assert_clean(harness(*base), str(split_path(root)), "have no training images", "(label 3)")


def test_yaml_syntax_error_in_a_run_config(setup, tmp_path):
    _, base = setup
    bad = tmp_path / "run.yaml"
    bad.write_text("method: coop\nepochs: [1, 2\n")
    assert_clean(harness(*base, "--config", bad), "YAML syntax error", str(bad))


def test_yaml_syntax_error_in_an_experiment(tmp_path):
    bad = tmp_path / "mine.yaml"
    bad.write_text("name: mine\nprotocol: base2new\ndatasets: [dtd\n")
    assert_clean(harness("sweep", bad, "--data-root", tmp_path, "--dry-run"), "YAML syntax error", str(bad))


def test_unknown_method(setup):
    _, base = setup
    out = harness(*[a if a != "coop" else "maple-x" for a in base])
    assert_clean(out, "Unknown method 'maple-x'", "Registered methods: ")


def test_unknown_method_in_a_sweep_names_the_studys_and_the_registered_ones(tmp_path):
    out = harness("sweep", "base2new", "--profile", "demo", "--methods", "maple-x", "--dry-run", "--out", tmp_path)
    assert_clean(out, "'maple-x' is neither one of this experiment's methods (zsclip, coop", "registered method (")


def test_output_folder_that_cannot_be_written(setup):
    _, base = setup
    base = base[:-1] + ["/sys/prompt-harness-test/run"]
    assert_clean(harness(*base), "/sys/prompt-harness-test", "choose another output folder")


def test_checkpoint_of_another_method(setup, tmp_path):
    root, base = setup
    trained = harness(*[a if a != "coop" else "cocoop" for a in base])
    assert trained.returncode == 0, trained.stderr[-3000:]
    out = harness(*base[:-1], str(tmp_path / "eval"), "--load-from", tmp_path / "out" / "run")
    # Refused before any weight is copied: the checkpoint says which method it was trained with.
    assert_clean(out, "model.pth.tar-1", "method: cocoop -> coop", "--set method=cocoop")


def test_nonfinite_loss_is_a_failed_run(setup):
    _, base = setup
    out = harness(*base, "--lr", "1e30", "--warmup-epochs", "0", "--epochs", "2")
    assert_clean(out, "Loss is", "Try a lower learning rate", code=1)


def test_debug_shows_the_traceback(setup):
    root, base = setup
    os.unlink(split_path(root))
    out = harness(*base, debug=True)
    assert out.returncode != 0 and "Traceback" in out.stderr and "SplitFileError" in out.stderr


def test_a_run_whose_results_exist_says_so(setup, tmp_path):
    _, base = setup
    assert harness(*base).returncode == 0
    again = harness(*base)
    assert again.returncode == 0
    assert "Nothing to do" in again.stdout and str(tmp_path / "out" / "results.jsonl") in again.stdout
