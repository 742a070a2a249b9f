"""The command line as a newcomer meets it: yes/no run keys as bare switches, the methods a study runs by
default (the same with and without data), ``status`` read from what a sweep recorded, one home for results
that the report reads, and a console of one line per job with the details in each run's log."""

import argparse
import dataclasses
import glob
import os
import subprocess
import sys
import typing

import pytest
import yaml
from fake_data import make_synthetic_dataset, tiny_run

from harness import cli, results, sweep
from harness.config import ConfigError, RunSpec

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("clidata")
    make_synthetic_dataset(
        str(root), num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=24
    )
    return str(root)


def run_args(data_root, out) -> list[str]:
    """``harness run`` of a one-epoch CoOp job on the synthetic dataset, scored on its base classes."""
    values = tiny_run(data_root, out, epochs=1, shots=2)
    args = ["run"]
    for key in ("method", "dataset", "data_root", "backbone", "precision", "shots", "seed", "subsample", "epochs"):
        args += ["--" + key.replace("_", "-"), str(values[key])]
    for key in ("batch_size", "lr", "num_workers", "tracking", "experiment", "output_dir"):
        args += ["--" + key.replace("_", "-"), str(values[key])]
    return args


# -- yes/no run keys ----------------------------------------------------------------------------------------


def test_every_yes_no_run_key_is_a_bare_switch_that_still_takes_a_value():
    parser = argparse.ArgumentParser()
    cli._run_parser(parser.add_subparsers(dest="command"))
    hints = typing.get_type_hints(RunSpec)
    switches = [f.name for f in dataclasses.fields(RunSpec) if hints[f.name] is bool]
    assert {"force", "reevaluate", "load_any"} <= set(switches)
    for name in switches:
        flag = "--" + name.replace("_", "-")
        assert getattr(parser.parse_args(["run", flag]), f"field_{name}") == "true", flag
        assert getattr(parser.parse_args(["run", flag, "false"]), f"field_{name}") == "false", flag
    # A bare switch leaves the next flag alone.
    parsed = parser.parse_args(["run", "--force", "--epochs", "3"])
    assert (parsed.field_force, parsed.field_epochs) == ("true", "3")


def test_force_and_reevaluate_as_the_nothing_to_do_line_spells_them(data_root, tmp_path, capsys):
    args = [*run_args(data_root, tmp_path), "--results", str(tmp_path)]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert cli.main(args) == 0
    suggestion = capsys.readouterr().out
    assert "Nothing to do" in suggestion and "--force redoes" in suggestion and "--reevaluate re-scores" in suggestion
    assert cli.main([*args, "--reevaluate"]) == 0, capsys.readouterr().err
    assert cli.main([*args, "--force"]) == 0, capsys.readouterr().err
    assert cli.main([*args, "--reevaluate", "true"]) == 0, capsys.readouterr().err
    records = results.read_records(str(tmp_path))
    assert [r["reevaluated"] for r in records] == [False, True, False, True]
    assert records[1]["run_dir"] == records[0]["run_dir"] != records[2]["run_dir"]  # --force: a fresh folder


def test_reevaluate_rescores_a_fitted_method_whatever_its_epochs_say(data_root, tmp_path, capsys):
    """A fitted method (the linear probe) has no epochs: its checkpoint is epoch 0, whatever the run key says
    (here 1, the default 10 without its config)."""
    args = [*run_args(data_root, tmp_path), "--results", str(tmp_path), "--method", "lpclip", "--subsample", "all"]
    args += ["--shots", "1"]
    assert cli.main(args) == 0, capsys.readouterr().err
    assert cli.main([*args, "--reevaluate"]) == 0, capsys.readouterr().err
    first, again = results.read_records(str(tmp_path))
    assert again["reevaluated"] and again["metrics"] == first["metrics"] and again["epochs"] == first["epochs"] == 0


def test_force_with_reevaluate_is_refused_before_any_folder_is_made(data_root, tmp_path, capsys):
    args = [*run_args(data_root, tmp_path), "--results", str(tmp_path)]
    assert cli.main([*args, "--force", "--reevaluate"]) == 2
    assert "force and reevaluate are both true" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []  # no fresh run folder left without a checkpoint in it


# -- the methods a study runs by default -------------------------------------------------------------------


def jobs_per_dataset(seeds: int) -> int:
    """Base-to-new: zero-shot CLIP's one job per dataset, CoOp's and CoCoOp's train and eval per seed."""
    return 1 + 2 * 2 * seeds


def test_a_study_runs_the_papers_methods_by_default_with_or_without_data():
    real, demo = sweep.load_experiment("base2new"), sweep.load_experiment("base2new", profile="demo")
    for experiment in (real, demo):
        narrowed = sweep.narrow(experiment)
        assert list(narrowed["methods"]) == ["zsclip", "coop", "cocoop"]
        jobs = sweep.expand(narrowed, "/data", "/out")
        assert len(jobs) == len(experiment["datasets"]) * jobs_per_dataset(len(experiment["seeds"]))
    assert len(sweep.expand(sweep.narrow(real), "/data", "/out")) == 11 * jobs_per_dataset(3)  # not 605
    every = sweep.narrow(real, methods=["all"])  # --methods all / METHODS=all
    assert list(every["methods"]) == list(real["methods"]) and len(real["methods"]) > 3
    trained = len(real["methods"]) - 1
    assert len(sweep.expand(every, "/data", "/out")) == 11 * (1 + trained * 2 * 3)
    # Every study follows the one rule: its profiles run the methods it runs without them.
    names = sorted(f[:-5] for f in os.listdir(sweep.EXPERIMENT_DIR) if f.endswith(".yaml") and f != "launcher.yaml")
    for name in names:
        plain = sweep.load_experiment(name)
        for profile in plain.get("profiles") or {}:
            profiled = sweep.load_experiment(name, profile=profile)
            assert list(sweep.narrow(profiled)["methods"]) == list(sweep.narrow(plain)["methods"]), (name, profile)
    # The demo reference still runs the others after the default three.
    from benchmarks.demo import other_methods

    assert other_methods() == [m for m in real["methods"] if m not in ("zsclip", "coop", "cocoop")]


def test_a_profile_that_changes_the_default_methods_is_refused(tmp_path):
    path = tmp_path / "study.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "protocol": "base2new",
                "datasets": ["synthetic"],
                "methods": {"coop": {"config": "coop/vit_b16_ctxv1"}},
                "profiles": {"quick": {"default_methods": ["coop"]}},
            }
        )
    )
    with pytest.raises(ConfigError, match="profile 'quick' sets default_methods.*move default_methods to the top"):
        sweep.load_experiment(str(path))


# -- a sweep's console, its logs, and its status -----------------------------------------------------------

MINI = {
    "name": "mini",
    "protocol": "base2new",
    "datasets": ["synthetic"],
    "seeds": [1, 2],
    "shots": 1,  # within the few training images of each synthetic class: no warning that K exceeds them
    "backbone": "tiny",
    "precision": "fp32",
    "tracking": "none",
    "run": {"num_workers": 0, "batch_size": 4, "test_batch_size": 50},
    "default_methods": ["zsclip", "coop"],
    "methods": {
        "zsclip": {"config": "zsclip/vit_b16"},
        "coop": {"config": "coop/vit_b16_ctxv1", "run": {"epochs": 2}},
        "cocoop": {"config": "cocoop/vit_b16_c4_ep10_batch1_ctxv1", "run": {"epochs": 2, "batch_size": 2}},
    },
}


def test_a_flagged_sweep_prints_a_line_per_job_and_status_needs_none_of_its_flags(data_root, tmp_path, capsys):
    experiment, out = tmp_path / "mini.yaml", tmp_path / "out"
    experiment.write_text(yaml.safe_dump(MINI))
    command = [sys.executable, "-m", "harness", "sweep", str(experiment), "--data-root", data_root, "--out", str(out)]
    command += ["--launcher", "debug", "--backbone", "tiny", "--set", "epochs=1", "--seeds", "1"]
    env = {k: v for k, v in os.environ.items() if k != "HARNESS_DEBUG"}
    ran = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    console = (ran.stdout + ran.stderr).splitlines()
    names = ["mini/zsclip/synthetic", "mini/coop/synthetic/seed1/train", "mini/coop/synthetic/seed1/eval"]
    # Before it starts: the job count and the methods, and how to run the one the study leaves out.
    assert console[0] == "mini: 3 jobs (3 to run) of 2 method(s): zsclip, coop."
    assert console[1] == "  Not run: cocoop (--methods all, or METHODS=all with make, runs all 3)."
    for name in names:  # one line per job: its result and how far the sweep has come
        (line,) = [line for line in console if f" {name}  (" in line]
        assert line.startswith(f"[done] {name}  (") and " ended" in line and "): synthetic/" in line
    assert len(console) <= len(names) + 4, "\n".join(console)  # the two lines above, and the closing summary
    assert not [line for line in console if "Spec:" in line or "Warning" in line], "\n".join(console)
    # The details are in each run's log file.
    (log,) = glob.glob(str(out / "runs" / "**" / "log.txt"), recursive=True)
    text = open(log).read()
    assert "Spec: {" in text and "Fingerprint " in text and "epoch 1/1" in text

    # status reads what the sweep recorded: no --backbone, --set or --seeds again.
    assert cli.main(["status", str(experiment), "--out", str(out)]) == 0
    shown = capsys.readouterr().out.splitlines()
    for name in names:
        assert any(line.split()[:2] == [name, "done"] for line in shown), shown
    assert shown[-1] == "total: 3 done"
    with pytest.raises(SystemExit):  # status takes no sweep flags: there is nothing to repeat
        cli.main(["status", str(experiment), "--out", str(out), "--set", "epochs=1"])
    assert cli.main(["status", "base2new", "--out", str(out)]) == 2
    assert "No sweep of 'base2new' is recorded" in capsys.readouterr().err


# -- one home for results ----------------------------------------------------------------------------------


def test_a_run_records_where_the_report_reads_by_default(data_root, tmp_path, monkeypatch, capsys):
    # As a user types it, from a folder of their own: no --results, an --output-dir anywhere.
    env = {**os.environ, "PYTHONPATH": ROOT}
    command = [sys.executable, "-m", "harness", *run_args(data_root, tmp_path / "elsewhere")]
    ran = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert ran.returncode == 0, ran.stderr[-3000:]
    store = tmp_path / results.RESULTS_HOME / results.RESULTS_FILE
    (record,) = results.read_records(str(store))
    assert f"Recorded in {store}; the run's log and checkpoints: {record['run_dir']}" in ran.stdout
    console = ran.stdout + ran.stderr
    assert "log.txt" in console and "Spec:" not in console  # where the log is; the spec only in it
    assert "Spec: {" in open(os.path.join(record["run_dir"], "log.txt")).read()
    monkeypatch.chdir(tmp_path)
    assert cli.main(["report", "--out", str(tmp_path / "reports"), "--tracking", "none"]) == 0
    assert capsys.readouterr().out.startswith("1 records -> ")


def test_reading_a_torchscript_backbone_file_raises_no_deprecation_warning(tmp_path):
    import warnings

    import torch

    from harness import backbone

    path = str(tmp_path / "scripted.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), path)  # as OpenAI's files are written
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        state = backbone._read_openai_state_dict(path)
    assert set(state) == {"weight", "bias"}
    assert [str(w.message) for w in caught] == []


@pytest.mark.parametrize("damage", ['{"experiment": "mini", "jobs": {', "[]", "\xff\xfe"])
def test_a_damaged_expected_json_is_a_one_line_error_for_status_sweep_and_report(data_root, tmp_path, capsys, damage):
    experiment, out = tmp_path / "mini.yaml", tmp_path / "out"
    experiment.write_text(yaml.safe_dump(MINI))
    path = sweep.expectation_path(str(out), "mini")
    os.makedirs(os.path.dirname(path))
    with open(path, "w", encoding="latin-1") as f:
        f.write(damage)
    for argv in (
        ["status", str(experiment), "--out", str(out)],
        ["sweep", str(experiment), "--data-root", data_root, "--out", str(out), "--launcher", "debug"],
        ["report", "--results", str(out), "--out", str(tmp_path / "reports"), "--tracking", "none"],
    ):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert f"error: {path} is damaged" in err and "run its sweeps again" in err and "Traceback" not in err
