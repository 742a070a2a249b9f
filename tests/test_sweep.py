"""Experiments expand into the paper's jobs; launchers run them, skip what exists, survive kills."""

import json
import os
import subprocess
import sys

import pytest
import yaml
from crash_child import kill_at
from fake_data import make_synthetic_dataset

from harness import results, sweep
from harness.config import ConfigError
from harness.launcher import JobState, JobStatus, launch, load_state, plan, save_state, status

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SMALL = {
    "name": "mini",
    "protocol": "base2new",
    "datasets": ["synthetic"],
    "seeds": [1, 2],
    "shots": 2,
    "class_incremental": True,
    "backbone": "tiny",
    "precision": "fp32",
    "tracking": "none",
    "run": {"num_workers": 0, "batch_size": 4, "test_batch_size": 50},
    "methods": {
        "zsclip": {"config": "zsclip/vit_b16"},
        "coop": {"config": "coop/vit_b16_ctxv1", "run": {"epochs": 2}},
        "cocoop": {"config": "cocoop/vit_b16_c4_ep10_batch1_ctxv1", "run": {"epochs": 2, "batch_size": 2}},
    },
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweepdata")
    make_synthetic_dataset(
        str(root), num_classes=4, train_per_class=4, val_per_class=1, test_per_class=3, image_size=24
    )
    return str(root)


@pytest.fixture
def small_experiment(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(yaml.safe_dump(SMALL))
    return str(path)


def test_paper_experiments_expand_to_the_published_jobs():
    b2n = sweep.expand(sweep.load_experiment("base2new"), "/data", "/out")
    # zero-shot: one job per dataset; every other method (CoOp, CoCoOp, the successors): train + eval per dataset
    # and seed.
    trained = [m for m in sweep.load_experiment("base2new")["methods"] if m != "zsclip"]
    assert {"coop", "cocoop", "kgcoop", "maple", "promptsrc", "prograd", "tcp"} <= set(trained)
    assert len(b2n) == 11 + len(trained) * 11 * 3 * 2
    coop_imagenet = next(j for j in b2n if j.name == "base2new/coop/imagenet/seed1/train")
    assert coop_imagenet.spec.config == "coop/vit_b16_ep50_ctxv1" and coop_imagenet.spec.epochs == 50
    coop_pets = next(j for j in b2n if j.name == "base2new/coop/oxford_pets/seed2/train")
    assert (coop_pets.spec.epochs, coop_pets.spec.batch_size, coop_pets.spec.seed, coop_pets.spec.shots) == (
        200,
        32,
        2,
        16,
    )
    assert coop_pets.targets() == [("oxford_pets", "base")]
    evaluation = next(j for j in b2n if j.name == "base2new/cocoop/oxford_pets/seed2/eval")
    assert evaluation.depends_on == ["base2new/cocoop/oxford_pets/seed2/train"]
    assert evaluation.targets() == [("oxford_pets", "new"), ("oxford_pets", "all")]
    train = next(j for j in b2n if j.name == "base2new/cocoop/oxford_pets/seed2/train")
    assert evaluation.spec.load_from == train.spec.output_dir and train.spec.epochs == 10 and train.spec.batch_size == 1
    # The successors with their authors' settings (PROTOCOL-successors.md 1)
    published = {
        "kgcoop": (100, 128, 0.002, {"n_ctx": 4, "ctx_init": "a photo of a", "kg_weight": 8.0}),
        "maple": (5, 4, 0.0035, {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 9}),
        "promptsrc": (20, 4, 0.0025, {"prompt_depth_text": 9, "prompt_depth_vision": 9, "gpa_mean": 15, "gpa_std": 1}),
        "coop_dept": (10, 4, 0.0035, {"n_ctx": 16, "ctx_init": "", "cat_weight": 0.7, "cat_lr_mult": 6.5}),
        "mmrl": (10, 4, 0.001, {"n_rep_tokens": 5, "rep_layers": [6, 7, 8, 9, 10, 11, 12], "task": "B2N"}),
    }
    for method, (epochs, batch, lr, options) in published.items():
        job = next(j for j in b2n if j.name == f"base2new/{method}/dtd/seed3/train")
        precision = "amp" if method == "mmrl" else "fp16"
        assert (job.spec.epochs, job.spec.batch_size, job.spec.lr, job.spec.precision) == (epochs, batch, lr, precision)
        assert options.items() <= job.spec.options.items()
    # ProGrad at the study's ViT-B/16 and 16 shots (the project's choice), TCP with Adam eps 1e-3
    # (PROTOCOL-successors-2.md 1); both at their ImageNet (and TCP's SUN397) schedules there.
    prograd = next(j for j in b2n if j.name == "base2new/prograd/dtd/seed3/train").spec
    assert (prograd.epochs, prograd.batch_size, prograd.lr, prograd.optimizer, prograd.shots) == (
        100,
        32,
        0.002,
        "sgd",
        16,
    )
    assert prograd.backbone == "ViT-B/16" and prograd.options["n_ctx"] == 16
    tcp = next(j for j in b2n if j.name == "base2new/tcp/dtd/seed3/train").spec
    assert (tcp.epochs, tcp.batch_size, tcp.lr, tcp.optimizer, tcp.adam_eps) == (50, 32, 0.002, "adam", 1e-3)
    assert (tcp.options["injection_layer"], tcp.options["kg_weight"], tcp.options["ctx_init"]) == (8, 8.0, "")
    for name, epochs in (("prograd/imagenet", 50), ("tcp/imagenet", 25), ("tcp/sun397", 25)):
        assert next(j for j in b2n if j.name == f"base2new/{name}/seed1/train").spec.epochs == epochs, name
    mmrl = next(j for j in b2n if j.name == "base2new/mmrl/dtd/seed3/train").spec
    assert (mmrl.optimizer, mmrl.crop_scale) == ("adamw", [0.5, 1.0])
    mmrl_imagenet = next(j for j in b2n if j.name == "base2new/mmrl/imagenet/seed1/train").spec
    assert (mmrl_imagenet.epochs, mmrl_imagenet.batch_size) == (5, 32)
    assert {"coop_dept", "mmrl"} <= set(trained)
    src = next(j for j in b2n if j.name == "base2new/promptsrc/dtd/seed3/train").spec.options
    assert (src["text_loss_weight"], src["image_loss_weight"], src["n_ctx_text"], src["n_ctx_vision"]) == (25, 10, 4, 4)
    zs = next(j for j in b2n if j.name == "base2new/zsclip/dtd")
    assert zs.spec.seed is None and zs.targets() == [("dtd", "base"), ("dtd", "new"), ("dtd", "all")]

    cross = sweep.expand(sweep.load_experiment("crossdataset"), "/data", "/out")
    domain = sweep.expand(sweep.load_experiment("domaingen"), "/data", "/out")
    cross_train = {j.spec.output_dir for j in cross if j.kind == "train"}
    domain_train = {j.spec.output_dir for j in domain if j.kind == "train"}
    trained_xd = [m for m in sweep.load_experiment("crossdataset")["methods"] if m != "zsclip"]
    # one ImageNet model per method and seed, shared by the two studies
    assert len(cross_train) == 3 * len(trained_xd) and cross_train == domain_train
    mmrl_xd = next(j for j in cross if j.name == "crossdataset/mmrl/imagenet/seed1/train").spec
    assert (mmrl_xd.epochs, mmrl_xd.warmup_epochs, mmrl_xd.batch_size, mmrl_xd.options["task"]) == (1, 0, 32, "CD")
    assert (mmrl_xd.options["reg_weight"], mmrl_xd.options["rep_dim"], mmrl_xd.subsample) == (0.2, 512, "all")
    maple_xd = next(j for j in cross if j.name == "crossdataset/maple/imagenet/seed1/train").spec
    assert (maple_xd.epochs, maple_xd.lr, maple_xd.options["prompt_depth"]) == (2, 0.0026, 3)
    src_xd = next(j for j in domain if j.name == "domaingen/promptsrc/imagenet/seed2/train").spec
    assert (src_xd.options["prompt_depth_text"], src_xd.options["gpa_mean"], src_xd.options["gpa_std"]) == (3, 6, 10)
    cross_eval = next(j for j in cross if j.name == "crossdataset/coop/imagenet/seed1/eval")
    assert [d for d, _ in cross_eval.targets()] == [
        "caltech101",
        "oxford_pets",
        "stanford_cars",
        "oxford_flowers",
        "food101",
        "fgvc_aircraft",
        "sun397",
        "dtd",
        "eurosat",
        "ucf101",
    ]
    assert {s for _, s in cross_eval.targets()} == {"all"}
    zs_domain = next(j for j in domain if j.spec.method == "zsclip")
    assert [d for d, _ in zs_domain.targets()] == [
        "imagenet",
        "imagenetv2",
        "imagenet_sketch",
        "imagenet_a",
        "imagenet_r",
    ]

    ablations = sweep.expand(sweep.load_experiment("ablations"), "/data", "/out")
    contexts = {j.spec.options.get("n_ctx") for j in ablations if j.spec.method == "cocoop"}
    assert contexts == {4, 8, 16}
    bigger = sweep.expand(sweep.load_experiment("bigger_coop"), "/data", "/out")
    assert {j.spec.options["n_ctx"] for j in bigger} == {60}


def test_a_registered_method_the_study_does_not_list_runs_with_its_default_config(monkeypatch):
    import methods
    from harness.config import default_method_config, load_method_config

    bigger = sweep.load_experiment("bigger_coop")
    assert "cocoop" not in bigger["methods"]
    jobs = sweep.expand(sweep.narrow(bigger, seeds=["1"], methods=["coop_c60", "cocoop"]), "/data", "/out")
    assert {j.spec.config for j in jobs if j.spec.method == "cocoop"} == {"cocoop/vit_b16_c4_ep10_batch1_ctxv1"}
    assert {j.spec.options["n_ctx"] for j in jobs if j.spec.method == "coop"} == {60}  # listed: the study's config
    crossdataset = sweep.narrow(sweep.load_experiment("crossdataset"), methods=["zsclip"])
    assert crossdataset["methods"] == {"zsclip": {"config": "zsclip/vit_b16"}}  # the only file in its folder
    assert default_method_config("kgcoop") == "kgcoop/vit_b16_ep100_ctxv1"
    for name in methods.list_methods():  # METHODS=<any registered method> has a config to run with
        assert load_method_config(default_method_config(name))["method"] == name

    class Unconfigured(methods.method_class("coop")):
        pass

    monkeypatch.setitem(methods.METHODS, "unconfigured", Unconfigured)
    with pytest.raises(ConfigError, match=r"no config in .*experiments/methods/unconfigured: add its published config"):
        sweep.narrow(bigger, methods=["unconfigured"])
    monkeypatch.setattr(methods.method_class("coop"), "default_config", "")
    with pytest.raises(ConfigError, match=r"7 configs in .*coop \(coop/vit_b16, .* in methods/coop.py"):
        default_method_config("coop")
    monkeypatch.setattr(Unconfigured, "default_config", "unconfigured/nowhere", raising=False)
    with pytest.raises(ConfigError, match=r"tests/test_sweep.py: default_config 'unconfigured/nowhere' is not"):
        default_method_config("unconfigured")


def test_narrowing_and_bad_names():
    experiment = sweep.narrow(sweep.load_experiment("base2new"), ["eurosat", "dtd"], ["2"], ["cocoop"])
    jobs = sweep.expand(experiment, "/data", "/out")
    assert sorted(j.name for j in jobs) == sorted(
        f"base2new/cocoop/{d}/seed2/{k}" for d in ("dtd", "eurosat") for k in ("train", "eval")
    )
    with pytest.raises(ConfigError, match=r"\['mnist'\] not in this experiment's datasets"):
        sweep.narrow(sweep.load_experiment("base2new"), datasets=["mnist"])
    with pytest.raises(ConfigError, match=r"neither one of this experiment's methods \(zsclip, coop, cocoop, kgcoop"):
        sweep.narrow(sweep.load_experiment("base2new"), methods=["no_such_method"])
    successors = sweep.narrow(sweep.load_experiment("base2new"), ["dtd"], ["1"], ["kgcoop", "maple", "promptsrc"])
    assert len(sweep.expand(successors, "/data", "/out")) == 3 * 2  # make base2new METHODS=kgcoop,maple,promptsrc
    with pytest.raises(ConfigError, match="Experiments: ablations, base2new"):
        sweep.load_experiment("base2old")
    with pytest.raises(ConfigError, match="needs a data root"):
        sweep.prepare_data(sweep.load_experiment("crossdataset"), "", "/out")
    with pytest.raises(ConfigError, match="no profile 'fast'"):
        sweep.load_experiment("base2new", profile="fast")


def test_demo_profile_uses_generated_data_and_the_tiny_pretrained_clip():
    demo = sweep.load_experiment("base2new", profile="demo")
    assert demo["data"] == "generated" and demo["backbone"] == "tiny-pretrained"
    assert demo["datasets"] == ["miniworld_dusk", "miniworld_stage", "miniworld_sea"]
    jobs = sweep.expand(demo, "/gen", "/out")
    assert {j.spec.backbone for j in jobs} == {"tiny-pretrained"} and {j.spec.precision for j in jobs} == {"fp32"}
    demo_train = {j.spec.method: j.spec for j in jobs if j.kind == "train"}
    assert {"kgcoop", "maple", "promptsrc", "prograd", "tcp"} <= set(
        demo_train
    )  # the successors run in the demo too ...
    # ... when asked: without --methods the demo runs the paper's three, in this process
    assert list(sweep.narrow(demo)["methods"]) == ["zsclip", "coop", "cocoop"]
    assert list(sweep.narrow(demo, methods=["maple"])["methods"]) == ["maple"]
    assert list(sweep.narrow(demo, methods=["all"])["methods"]) == list(demo["methods"])
    assert demo["launcher"] == {"name": "debug", "post_mortem": False, "threads": 1}
    src = demo_train["promptsrc"]
    assert src.epochs == 8 and (src.options["gpa_mean"], src.options["gpa_std"]) == (6, 1)
    assert src.options["text_loss_weight"] == 25  # the rest of the published config stays
    ablations = sweep.expand(sweep.load_experiment("ablations", profile="demo"), "/gen", "/out")
    assert {j.spec.options.get("n_ctx") for j in ablations if j.spec.method == "cocoop"} == {4, 8, 16}
    assert {j.spec.epochs for j in ablations if j.spec.method == "cocoop"} == {10}  # the published 10
    # The initialised CoCoOp arm trains in the same folder as base2new's demo CoCoOp: trained once.
    b2n_train = {j.spec.output_dir for j in jobs if j.kind == "train" and j.spec.method == "cocoop"}
    assert b2n_train <= {j.spec.output_dir for j in ablations if j.kind == "train"}


def test_transfer_demo_profiles_share_their_trainings_at_the_published_schedules():
    cross = sweep.narrow(sweep.load_experiment("crossdataset", profile="demo"))
    domain = sweep.narrow(sweep.load_experiment("domaingen", profile="demo"))
    for experiment in (cross, domain):
        assert list(experiment["methods"]) == ["zsclip", "coop", "cocoop"]
        assert experiment["data"] == "generated" and experiment["backbone"] == "tiny-pretrained"
    cross_jobs, domain_jobs = sweep.expand(cross, "/gen", "/out"), sweep.expand(domain, "/gen", "/out")
    trains = [{j.spec.output_dir: j.spec for j in jobs if j.kind == "train"} for jobs in (cross_jobs, domain_jobs)]
    assert len(trains[0]) == 2 * 3 and set(trains[0]) == set(trains[1])  # CoOp and CoCoOp, 3 seeds: trained once
    assert {(s.method, s.epochs) for s in trains[0].values()} == {("coop", 50), ("cocoop", 10)}  # the published
    assert {(s.dataset, s.subsample, s.shots) for s in trains[0].values()} == {(cross["source"], "all", 16)}
    zero_shot = next(j for j in cross_jobs if j.spec.method == "zsclip")
    assert [d for d, _ in zero_shot.targets()] == [cross["source"], *cross["targets"]]


def test_the_state_file_holds_plain_strings_and_older_files_load(tmp_path):
    # sweep.json as launches wrote it before job statuses were an enum: plain strings, read back as
    # JobStatus and written again byte for byte the same.
    written = [
        {"name": "x/coop/train", "kind": "train", "run_dir": "/r", "depends_on": [], "state": "failed",
         "job_id": "7", "stdout": "o.log", "stderr": "e.log", "error": "NonFiniteLossError: nan"},
        {"name": "x/coop/eval", "kind": "eval", "run_dir": "/r", "depends_on": ["x/coop/train"], "state": "blocked",
         "job_id": None, "stdout": None, "stderr": None, "error": "not run: x/coop/train failed"},
    ]  # fmt: skip
    os.makedirs(tmp_path / "x")
    with open(tmp_path / "x" / "sweep.json", "w") as f:
        json.dump(written, f, indent=1)
    before = (tmp_path / "x" / "sweep.json").read_text()
    states = load_state(str(tmp_path), "x")
    assert [s.state for s in states] == [JobStatus.FAILED, JobStatus.BLOCKED]
    assert all(type(s.state) is JobStatus for s in states)
    save_state(str(tmp_path), "x", states)
    assert (tmp_path / "x" / "sweep.json").read_text() == before
    with pytest.raises(ValueError, match="finished"):
        JobState("x/coop/train", "train", "/r", state="finished")


def test_debug_sweep_runs_everything_then_skips_it(small_experiment, data_root, tmp_path):
    out = str(tmp_path / "out")
    jobs = sweep.expand(sweep.load_experiment(small_experiment), data_root, out)
    assert len(jobs) == 1 + 2 * 2 * 2
    lines = []
    states = launch(jobs, "mini", out, "debug", printer=lines.append)
    assert {s.state for s in states} == {"done"}, states
    records = results.read_records(out)
    # zsclip 3 + (coop, cocoop) x 2 seeds x (base + new + all)
    assert len(records) == 3 + 2 * 2 * 3
    assert {(r["method"], r["subsample"]) for r in records} >= {("coop", "new"), ("cocoop", "all"), ("zsclip", "base")}
    # A re-run finds every result and submits nothing.
    again = launch(
        sweep.expand(sweep.load_experiment(small_experiment), data_root, out),
        "mini",
        out,
        "debug",
        printer=lines.append,
    )
    assert {s.state for s in again} == {"skipped"} and "Nothing to do" in lines[-1]
    rows = status(jobs, out, "mini")
    assert {r["state"] for r in rows} == {"done"}


def test_killed_job_is_finished_by_the_next_sweep_without_redoing_others(small_experiment, data_root, tmp_path):
    out = str(tmp_path / "out")
    experiment = sweep.narrow(sweep.load_experiment(small_experiment), methods=["coop", "cocoop"], seeds=["1"])
    jobs = sweep.expand(experiment, data_root, out)
    launch([j for j in jobs if j.spec.method == "coop"], "mini", out, "debug", printer=lambda *_: None)
    coop_records = {json.dumps(r, sort_keys=True) for r in results.read_records(out)}
    # The CoCoOp training is killed (SIGKILL) in its second epoch, like a pre-empted job.
    train = next(j for j in jobs if j.name == "mini/cocoop/synthetic/seed1/train")
    kill_at(train.spec.to_dict(), "mid-epoch:2", tmp_path)
    rows = {r["job"]: r for r in status(jobs, out, "mini")}
    assert rows[train.name]["state"] == "partial" and rows[train.name]["detail"] == "epoch 1/2 checkpointed"
    todo = [s for s in plan(jobs) if s.state == "pending"]
    assert [s.name for s in todo] == [train.name, "mini/cocoop/synthetic/seed1/eval"]
    states = launch(jobs, "mini", out, "debug", printer=lambda *_: None)
    assert [s.state for s in states if s.name.startswith("mini/coop")] == ["skipped", "skipped"]
    assert {json.dumps(r, sort_keys=True) for r in results.read_records(out)} >= coop_records
    assert len(results.read_records(out)) == 6
    with open(os.path.join(out, "mini", "sweep.json")) as f:
        assert {s["state"] for s in json.load(f)} == {"skipped", "done"}


def test_debug_launcher_runs_its_jobs_at_the_threads_set_and_gives_them_back(
    small_experiment, data_root, tmp_path, monkeypatch
):
    import torch

    from harness.launcher.settings import launcher_settings

    experiment = sweep.narrow(sweep.load_experiment(small_experiment), methods=["zsclip"])
    experiment["launcher"] = {"name": "debug", "post_mortem": False, "threads": 1}
    name, cfg = launcher_settings(experiment)
    assert (name, cfg["threads"]) == ("debug", 1)
    seen, before = [], torch.get_num_threads()
    import harness.runner  # the job imports run from it when it starts: spy there

    original = harness.runner.run
    monkeypatch.setattr(harness.runner, "run", lambda spec: seen.append(torch.get_num_threads()) or original(spec))
    torch.set_num_threads(2)
    try:
        out = str(tmp_path / "out")
        states = launch(sweep.expand(experiment, data_root, out), "mini", out, name, cfg, printer=lambda *_: None)
        assert [s.state for s in states] == ["done"] and seen == [1]
        assert torch.get_num_threads() == 2  # the sweep's process has its threads back
    finally:
        torch.set_num_threads(before)


def test_progress_counts_the_ended_jobs_and_estimates_the_time_left():
    from harness.launcher.progress import Progress, duration
    from harness.launcher.state import JobState, JobStatus

    now = [100.0]
    states = [JobState(f"j{i}", "train", "") for i in range(4)]
    progress = Progress(states, clock=lambda: now[0])
    assert progress.text() == "0/4 ended, 0s"
    now[0], states[0].state = 130.0, JobStatus.DONE
    assert progress.text() == "1/4 ended, 30s so far, about 1m30s left"  # 30 s a job, three to go
    now[0], states[1].state, states[2].state = 160.0, JobStatus.FAILED, JobStatus.BLOCKED
    assert progress.text() == "3/4 ended, 1m00s so far, about 20s left"
    states[3].state = JobStatus.DONE
    assert progress.text() == "4/4 ended, 1m00s"
    assert (duration(59.4), duration(3725)) == ("59s", "1h02m")


@pytest.mark.slow
def test_local_launcher_runs_jobs_in_subprocesses(small_experiment, data_root, tmp_path):
    out = str(tmp_path / "out")
    experiment = sweep.narrow(sweep.load_experiment(small_experiment), methods=["zsclip", "coop"], seeds=["1"])
    jobs = sweep.expand(experiment, data_root, out)
    lines = []
    states = launch(jobs, "mini", out, "local", {"max_parallel": 2}, poll_s=0.5, printer=lines.append)
    assert [s.state for s in states] == ["done", "done", "done"], lines
    assert all(s.job_id and os.path.isfile(s.stderr) for s in states)
    assert len(results.read_records(out)) == 6
    # The evaluation started only after its training finished.
    order = [line for line in lines if line.startswith("[")]
    first = lambda prefix: next(i for i, line in enumerate(order) if line.startswith(prefix))  # noqa: E731
    assert first("[done] mini/coop/synthetic/seed1/train  (") < first("[start] mini/coop/synthetic/seed1/eval")
    assert "  (3/3 ended, " in [line for line in order if line.startswith("[done]")][-1]
    assert {s.name: s.state for s in load_state(out, "mini")} == {s.name: "done" for s in states}


def test_failed_job_reports_its_log_and_blocks_its_dependents(small_experiment, data_root, tmp_path):
    out = str(tmp_path / "out")
    experiment = sweep.narrow(sweep.load_experiment(small_experiment), methods=["coop"], seeds=["1"])
    jobs = sweep.expand(experiment, data_root, out)
    jobs[0].spec.data_root = str(tmp_path / "nowhere")  # the training job cannot find its data
    lines = []
    states = launch(jobs, "mini", out, "debug", printer=lines.append)
    assert [s.state for s in states] == ["failed", "blocked"]
    assert "DatasetNotFoundError" in states[0].error or "not found" in states[0].error.lower()
    assert any(line.startswith("Sweep finished: 1 blocked, 1 failed") for line in lines)
    # the log the console and status name is a file that holds the error
    assert f"  failed: {jobs[0].name} ({states[0].error}); log: {states[0].stderr}" in lines
    assert "nowhere" in open(states[0].stderr).read()


def test_cli_dry_run_prints_the_plan(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "harness",
            "sweep",
            "base2new",
            "--data-root",
            str(tmp_path),
            "--out",
            str(tmp_path / "o"),
            "--datasets",
            "eurosat",
            "--seeds",
            "1",
            "--methods",
            "all",
            "--dry-run",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    trained = [m for m in sweep.load_experiment("base2new")["methods"] if m != "zsclip"]
    jobs = 1 + 2 * len(trained)  # CLIP + train and eval of every other method
    assert f"{jobs} jobs: {jobs} to run" in out.stdout and "base2new/cocoop/eurosat/seed1/eval" in out.stdout
    assert "after base2new/cocoop/eurosat/seed1/train" in out.stdout
    assert "after base2new/maple/eurosat/seed1/train" in out.stdout


def test_missing_dataset_folders_stop_the_sweep_before_submission(tmp_path):
    jobs = sweep.expand(
        sweep.narrow(sweep.load_experiment("base2new"), ["eurosat", "dtd"], ["1"]), str(tmp_path), str(tmp_path / "out")
    )
    (tmp_path / "dtd").mkdir()
    with pytest.raises(
        ConfigError,
        match=r"missing under the data root: eurosat \(.*eurosat\)\. "
        r"See what to fetch with: python -m harness.data check",
    ):
        sweep.check_data_folders(jobs)
    (tmp_path / "eurosat").mkdir()
    sweep.check_data_folders(jobs)


def test_local_failure_names_the_remote_error(small_experiment, data_root, tmp_path):
    out = str(tmp_path / "out")
    experiment = sweep.narrow(sweep.load_experiment(small_experiment), methods=["zsclip"])
    jobs = sweep.expand(experiment, str(tmp_path / "nowhere"), out)
    states = launch(jobs, "mini", out, "local", poll_s=0.5, printer=lambda *_: None)
    assert states[0].state == "failed"
    assert states[0].error.startswith("harness.data.errors.DatasetNotFoundError: Synthetic: dataset folder")
    assert os.path.isfile(states[0].stderr)


def test_backbones_are_prepared_once_in_the_driver(monkeypatch, tmp_path):
    from clipcore import backbone

    calls = []
    monkeypatch.setattr(backbone, "resolve_openai_file", lambda name: calls.append(name) or "/x.pt")
    jobs = sweep.expand(
        sweep.narrow(sweep.load_experiment("base2new"), ["dtd", "eurosat"], ["1", "2"]),
        str(tmp_path),
        str(tmp_path / "o"),
    )
    sweep.prepare_backbones(jobs, printer=lambda *_: None)
    assert calls == ["ViT-B/16"]  # one download for all jobs

    def offline(name):
        raise backbone.BackboneError("no network")

    monkeypatch.setattr(backbone, "resolve_openai_file", offline)
    lines = []
    sweep.prepare_backbones(jobs, printer=lines.append)
    assert lines == ["warning: could not prepare backbone 'ViT-B/16' here (no network); each job will try itself"]


def test_status_cli_after_a_debug_sweep(small_experiment, data_root, tmp_path):
    out = str(tmp_path / "out")
    cli = [
        sys.executable,
        "-m",
        "harness",
        "sweep",
        small_experiment,
        "--data-root",
        data_root,
        "--out",
        out,
        "--methods",
        "zsclip",
        "--launcher",
        "debug",
    ]
    ran = subprocess.run(cli, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert ran.returncode == 0, ran.stderr[-2000:]
    status_cli = [sys.executable, "-m", "harness", "status", small_experiment, "--out", out]
    shown = subprocess.run(status_cli, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and "mini/zsclip/synthetic" in shown.stdout and "total: 1 done" in shown.stdout


def test_command_line_run_keys_win_over_the_experiment_and_profile():
    # The demo profile sets epochs per method; `--set epochs=3 shots=4` must still win everywhere.
    demo = sweep.load_experiment("base2new", profile="demo")
    jobs = sweep.expand(demo, "/gen", "/out", {"epochs": 3, "shots": 4})
    trains = [j for j in jobs if j.kind == "train"]
    assert trains and {j.spec.epochs for j in trains} == {3} and {j.spec.shots for j in trains} == {4}
    assert all("/shots4_" in j.spec.output_dir for j in trains)
    evals = [j for j in jobs if j.kind == "eval" and j.spec.load_from]
    assert {j.spec.shots for j in evals} == {4}  # the record keys of evaluations follow their training
    for key, flag in (("seed", "--seeds"), ("dataset", "--datasets"), ("output_dir", "--out")):
        message = rf"'{key}' is set for each job by the sweep and cannot be given with --set: use {flag}"
        with pytest.raises(ConfigError, match=message):
            sweep.expand(demo, "/gen", "/out", {key: 3})
