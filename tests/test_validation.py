"""Every run key and method option is checked against its declared type and range before anything is
written, through every entry (the command line, --set, YAML, the sweep, the Python API): a bad value is
one line naming the key, the value and what is allowed; a good one trains to finite numbers."""

import math
import os
import tempfile
import types
import typing
from typing import Annotated

import pytest
import torch
import yaml
from fake_data import make_synthetic_dataset
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import methods
from bounds import OutOfBounds, Range
from clipcore.checkpoint_file import load_checkpoint_file
from harness import checkpoint, cli, results
from harness.config import ConfigError, RunSpec, build_spec, parse_overrides, validate
from harness.runner import Run, RunFailedError, run
from methods.parts import registry

NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_synthetic_dataset(
        str(root), num_classes=4, train_per_class=10, val_per_class=4, test_per_class=2, image_size=24
    )
    return str(root)


def values(data_root, out, **changes) -> dict:
    base = {
        "method": "coop",
        "dataset": "synthetic",
        "data_root": data_root,
        "backbone": "tiny",
        "precision": "fp32",
        "shots": 2,
        "epochs": 1,
        "batch_size": 4,
        "test_batch_size": 8,
        "num_workers": 0,
        "tracking": "none",
        "experiment": "test",
        "output_dir": os.path.join(str(out), "run"),
    }
    return {**base, **changes}


def command(data_root, out, *extra) -> list[str]:
    spec = values(data_root, out)
    args = ["run"]
    for key in ("method", "dataset", "data_root", "backbone", "precision", "shots", "epochs", "batch_size"):
        args += ["--" + key.replace("_", "-"), str(spec[key])]
    args += ["--num-workers", "0", "--tracking", "none", "--output-dir", spec["output_dir"], "--results", str(out)]
    return [*args, *extra]


def refused(capsys, argv, *expected) -> str:
    """Run the command line in this process: exit status 2 and one ``error:`` line holding ``expected``."""
    code = cli.main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]


def nothing_written(out) -> bool:
    return not os.path.exists(os.path.join(str(out), "run")) and results.read_records(str(out)) == []


# -- the command line: bad values that ran, recorded a result, or ended in a traceback --------------


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["--lr", ".nan"], ["'lr'", "nan", "(0, 1e+30]"]),
        (["--lr", ".nan", "--precision", "amp"], ["'lr'", "nan"]),
        (["--lr", ".inf"], ["'lr'", "inf", "finite"]),
        (["--lr", "-0.5"], ["'lr'", "-0.5", "(0, 1e+30]"]),
        (["--momentum", "5"], ["'momentum'", "5", "[0, 1)"]),
        (["--warmup-epochs", "-3"], ["'warmup_epochs'", "-3", ">= 0"]),
        (["--weight-decay", "-100"], ["'weight_decay'", "-100", "[0, 1]"]),
        # huge but finite: torch's optimisers crash converting them to float32
        (["--weight-decay", "1e300"], ["'weight_decay'", "1e+300", "[0, 1]"]),
        (["--lr", "1e300"], ["'lr'", "1e+300", "(0, 1e+30]"]),
        (["--warmup-lr", "1e300"], ["'warmup_lr'", "1e+300", "(0, 1e+30]"]),
        (["--method", "coop_dept", "-o", "cat_lr_mult=1e300"], ["'cat_lr_mult'", "1e+300", "1000"]),
        (["--device", "cuda:99"], ["'device'", "'cuda:99'", "torch sees"]),
        (["--evaluate", "[{}]"], ["evaluate entry {}"]),
        (["--method", "zsclip", "-o", "dataset=banana"], ["'dataset'", "zsclip", "'banana'", "a registered dataset"]),
        (["--lr", "'0.01'"], ["'lr'", "'0.01' (str)"]),
        (["--set", "lr='0.01'"], ["'lr'", "'0.01' (str)"]),
        (["--num-workers", "-4"], ["'num_workers'", "-4", ">= 0"]),
        (["--optimizer", "adam", "--adam-eps", ".inf"], ["'adam_eps'", "inf", "> 0"]),
        (["--seed", "-5"], ["'seed'", "-5", "[0, 4294967295]"]),
        (["--device", "banana"], ["'device'", "banana", "cuda:N"]),
        (["-o", "n_ctx=0"], ["'n_ctx'", "coop", "0", "[1, 75]"]),
        (["--method", "zsclip", "-o", "template=5"], ["'template'", "zsclip", "5", "'{}'"]),
        (["--method", "coop_dept", "-o", "cat_weight=.nan"], ["'cat_weight'", "nan", "[0, 1]"]),
        (["--method", "mmrl", "-o", "alpha=5"], ["'alpha'", "mmrl", "5", "[0, 1]"]),
    ],
)
def test_a_bad_value_on_the_command_line_is_one_line_before_anything_is_written(
    capsys, data_root, tmp_path, extra, expected
):
    refused(capsys, command(data_root, tmp_path, *extra), *expected)
    assert nothing_written(tmp_path)


def test_evaluation_targets_with_unknown_or_empty_keys_are_refused(capsys, data_root, tmp_path):
    # YAML reads {dataset:synthetic} as one key without a value: scored on all classes, it looked like a result.
    line = refused(capsys, command(data_root, tmp_path, "--evaluate", "[{dataset:synthetic,subsample:new}]"))
    assert "'dataset:synthetic'" in line and "space after the colon" in line
    refused(capsys, command(data_root, tmp_path, "--evaluate", "[{dataset: synthetic, split: new}]"), "['split']")
    refused(capsys, command(data_root, tmp_path, "--evaluate", "[{dataset: synthetic, subsample: }]"), "no value")
    assert nothing_written(tmp_path)
    spec = build_spec(values(data_root, tmp_path, evaluate=["synthetic", {"subsample": "new"}]))
    assert spec.eval_targets() == [("synthetic", "all"), ("synthetic", "new")]


def _types(annotation) -> set:
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _types(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return set().union(*(_types(a) for a in typing.get_args(annotation)))
    return {annotation}


NUMBER_OPTIONS = [
    (method, key)
    for method in methods.list_methods()
    for key, annotation in registry.option_types(method).items()
    if float in _types(annotation)
]


def test_the_loss_weights_are_number_options():
    weights = {"kg_weight", "alpha", "reg_weight", "cat_weight", "text_loss_weight", "prograd_lambda"}
    assert weights <= {key for _, key in NUMBER_OPTIONS}


@pytest.mark.parametrize("method, key", NUMBER_OPTIONS)
def test_every_number_option_refuses_nan_and_infinity(data_root, tmp_path, method, key):
    for bad in (NAN, INF, -INF):
        with pytest.raises(ConfigError, match=rf"Option '{key}' of method '{method}' must be .*got {bad}"):
            build_spec(values(data_root, tmp_path, method=method, options={key: bad}))


def test_a_new_methods_declared_options_are_checked_without_editing_the_checker(data_root, tmp_path):
    @registry.register_method("_test_declared")
    class Declared(methods.CLIPMethod):
        def __init__(self, clip_model, classnames, *, mix: Annotated[float, Range(0, 1)] = 0.5, note: str = ""):
            super().__init__(clip_model, classnames)

    try:
        with pytest.raises(ConfigError, match=r"Option 'mix' of method '_test_declared' must be .* in \[0, 1\], got 2"):
            build_spec(values(data_root, tmp_path, method="_test_declared", options={"mix": 2}))
        with pytest.raises(ConfigError, match=r"Option 'note' .* must be a string, got 3"):
            build_spec(values(data_root, tmp_path, method="_test_declared", options={"note": 3}))
        build_spec(values(data_root, tmp_path, method="_test_declared", options={"mix": 1, "note": "x"}))
    finally:
        del registry.METHODS["_test_declared"]


# -- n_ctx and ctx_init --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "config", ["coop/vit_b16_ctxv1", "cocoop/vit_b16_c4_ep10_batch1_ctxv1", "kgcoop/vit_b16_ep100_ctxv1"]
)
def test_n_ctx_that_the_init_words_would_override_is_an_error_naming_both_fixes(data_root, tmp_path, config):
    base = {k: v for k, v in values(data_root, tmp_path).items() if k != "method"}
    with pytest.raises(ConfigError, match=r"n_ctx 8 contradicts ctx_init 'a photo of a'.*options.ctx_init=''"):
        build_spec({**base, "config": config}, parse_overrides(["options.n_ctx=8"]))
    both = build_spec({**base, "config": config}, parse_overrides(["options.n_ctx=8", "options.ctx_init="]))
    assert both.options["n_ctx"] == 8 and both.options["ctx_init"] == ""


def test_a_ctx_init_of_n_ctx_words_is_consistent_where_the_words_are_the_init(data_root, tmp_path):
    build_spec(values(data_root, tmp_path, options={"n_ctx": 5, "ctx_init": "a good photo of a"}))
    # KgCoOp and TCP start from "a photo of a" whatever the words: other words would be recorded, not used.
    for method in ("kgcoop", "tcp"):
        for n_ctx in (4, 5):
            with pytest.raises(ConfigError, match="would not be used.*options.ctx_init='a photo of a'"):
                options = {"n_ctx": n_ctx, "ctx_init": "a good photo of a"}
                build_spec(values(data_root, tmp_path, method=method, options=options))
        build_spec(values(data_root, tmp_path, method=method, options={"n_ctx": 4, "ctx_init": "a_photo_of_a"}))


def test_maple_and_promptsrc_learn_the_first_words_of_their_init(data_root, tmp_path):
    # MaPLe's published setting: 2 learnable tokens, "a photo of a" (the other words stay fixed).
    build_spec(values(data_root, tmp_path, method="maple", options={"n_ctx": 2, "ctx_init": "a photo of a"}))
    with pytest.raises(ConfigError, match="only 2 tokens"):
        build_spec(values(data_root, tmp_path, method="maple", options={"n_ctx": 3, "ctx_init": "a photo"}))
    with pytest.raises(ConfigError, match=r"n_ctx_text 8 .* would be ignored.*options.ctx_init=''"):
        build_spec(values(data_root, tmp_path, method="promptsrc", options={"n_ctx_text": 8}))


def test_the_sweep_refuses_before_launching_anything(capsys, data_root, tmp_path):
    out = tmp_path / "out"
    argv = ["sweep", "base2new", "--methods", "coop", "--data-root", data_root, "--out", str(out)]
    refused(capsys, [*argv, "--set", "options.n_ctx=8"], "n_ctx 8 contradicts ctx_init")
    refused(capsys, [*argv, "--set", "lr=.nan"], "'lr'")
    assert not os.path.exists(out / "runs") and results.read_records(str(out)) == []


# -- the Python API -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        ({"lr": NAN}, "'lr'"),
        ({"seed": -5}, "'seed'"),
        ({"epochs": "3"}, r"'epochs' must be an integer >= 0, got '3' \(str\)"),
        ({"options": {"n_ctx": 8}}, "n_ctx 8 contradicts"),
        ({"evaluate": [{"dataset": "synthetic", "split": "new"}]}, r"\['split'\]"),
        ({"evaluate": [{}]}, "evaluate entry {}"),
        ({"lr": "0.01"}, r"'lr' .* got '0.01' \(str\)"),
        ({"device": "cuda:99"}, "'device' is 'cuda:99', but torch sees"),
        ({"options": {"dataset": "banana"}, "method": "kgcoop"}, "'dataset' of method 'kgcoop'"),
        # the runner's warm-up would start CLIP-LoRA's own cosine at warmup_lr, 20 times below its lr
        ({"method": "clip_lora", "warmup_epochs": 1}, "'warmup_epochs' is 1, .* Set warmup_epochs=0"),
        # n_iters x 0 shots: a budget of no step, the initial model (zero-shot CLIP) recorded as trained
        ({"method": "clip_lora", "warmup_epochs": 0, "shots": 0}, "'shots' is 0 .* Give shots >= 1"),
    ],
)
def test_a_runspec_built_in_python_is_validated_before_anything_is_written(data_root, tmp_path, change, message):
    spec = RunSpec(**values(data_root, tmp_path, **change))
    with pytest.raises(ConfigError, match=message):
        run(spec)
    with pytest.raises(ConfigError, match=message):
        Run(spec)
    assert nothing_written(tmp_path)


def test_only_an_unquoted_number_on_the_command_line_becomes_a_number():
    assert parse_overrides(["lr=0.01", "epochs=2", "seed=1e3"]) == {"lr": 0.01, "epochs": 2, "seed": 1000.0}
    assert parse_overrides(["lr='0.01'", 'options.ctx_init="1e-3"']) == {"lr": "0.01", "options": {"ctx_init": "1e-3"}}


def test_a_sweep_on_this_machine_refuses_a_gpu_it_lacks_and_a_slurm_sweep_does_not(
    capsys, data_root, tmp_path, monkeypatch
):
    from harness import sweep
    from harness.launcher import driver

    experiment = {
        "name": "mini",
        "protocol": "base2new",
        "datasets": ["synthetic"],
        "seeds": [1],
        "shots": 2,
        "backbone": "tiny",
        "precision": "fp32",
        "tracking": "none",
        "methods": {"coop": {"config": "coop/vit_b16_ctxv1", "run": {"epochs": 1}}},
    }
    path, out = tmp_path / "mini.yaml", tmp_path / "out"
    path.write_text(yaml.safe_dump(experiment))
    argv = ["sweep", str(path), "--data-root", data_root, "--out", str(out), "--set", "device=cuda:99"]
    refused(capsys, [*argv, "--launcher", "local"], "'device' is 'cuda:99'", "torch sees")
    assert not os.path.exists(out / "mini")
    # Submitted from a login node without GPUs, a Slurm sweep's jobs run on GPU nodes: not refused here.
    jobs = sweep.expand(sweep.load_experiment(str(path)), data_root, str(out), {"device": "cuda:99"})
    submitted = []
    monkeypatch.setattr(driver, "submit_slurm", lambda todo, *args: submitted.extend(todo) or {})
    launch = driver.launch(jobs, "mini", str(out), "slurm", wait=False, printer=lambda line: None)
    assert submitted and {s.state for s in launch} == {"pending"}
    with pytest.raises(ConfigError, match="cuda:99"):
        driver.launch(jobs, "mini", str(tmp_path / "out2"), "debug", printer=lambda line: None)


# -- refused once the model is built (the class names or the backbone are needed): one line, and the
# corrected command runs in the same folder


@pytest.mark.parametrize(
    "extra, expected",
    [
        (["-o", "n_ctx=75", "-o", "ctx_init="], ["n_ctx = 75", "longest class name", "n_ctx <= 7"]),
        (["--method", "prograd", "-o", "n_ctx=75", "-o", "ctx_init="], ["n_ctx = 75", "n_ctx <= 7"]),
        (["--method", "maple", "-o", "prompt_depth=100"], ["prompt_depth 100", "2 blocks", "prompt_depth <= 2"]),
        (["--method", "promptsrc", "-o", "prompt_depth_text=100"], ["prompt_depth_text 100", "<= 2"]),
        (["--method", "promptsrc", "-o", "prompt_depth_vision=100"], ["prompt_depth_vision 100", "<= 2"]),
        (["--method", "tcp", "-o", "injection_layer=100"], ["injection_layer 100", "(0..1)", "injection_layer <= 1"]),
        (["--method", "mmrl", "-o", "rep_layers=[1, 100]"], ["rep_layers"]),
        (["--load-from", "/nonexistent/run"], ["/nonexistent/run"]),
        (["--precision", "fp16", "--lr", "1e5"], ["'lr'", "100000", "torch.float16", "65504"]),  # SGD's crash
    ],
)
def test_a_value_the_model_cannot_take_is_one_line_and_does_not_block_the_corrected_run(
    capsys, data_root, tmp_path, extra, expected
):
    refused(capsys, command(data_root, tmp_path, *extra), *expected)
    assert results.read_records(str(tmp_path)) == []
    assert cli.main(command(data_root, tmp_path, "--epochs", "2")) == 0, capsys.readouterr().err
    assert [r["method"] for r in results.read_records(str(tmp_path))] == ["coop"]


def test_too_few_images_for_the_linear_probes_shots_is_one_line_naming_them(capsys, data_root, tmp_path):
    argv = command(data_root, tmp_path, "--method", "lpclip", "--shots", "16")
    line = refused(capsys, argv, "synthetic", "train split has 10 image(s)", "16", "shots <= 10")
    assert results.read_records(str(tmp_path)) == [], line


@pytest.mark.parametrize("method", ["lpclip", "tip_adapter"])
def test_an_empty_val_split_is_one_line_for_a_method_fitted_on_it(capsys, tmp_path, method):
    root = tmp_path / "data"
    make_synthetic_dataset(
        str(root), num_classes=3, train_per_class=4, val_per_class=0, test_per_class=2, image_size=24
    )
    argv = command(str(root), tmp_path, "--method", method, "--shots", "2")
    line = refused(capsys, argv, "synthetic's val split (all classes) is empty", repr(method))
    assert results.read_records(str(tmp_path)) == [], line


# -- properties: refused before anything is written, or trained to finite numbers ----------------

ODD = [NAN, INF, -INF, -1, -1e9, 1e12, 0, 1, 0.5, 2, 3, True, None, "", "x", "a photo of a", "{}", "a photo of a {}."]
ODD += [[], [1], [1, 2], [2, 1], ["a {}."], {"a": 1}]
VALUE = st.one_of(st.sampled_from(ODD), st.integers(-3, 80), st.floats(allow_nan=True, allow_infinity=True))
FAST = settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


def outcome(spec_values: dict, out: str):
    """(the spec, or None when refused); a refusal must leave the output folder untouched."""
    try:
        return build_spec(spec_values)
    except ConfigError as error:
        assert "\n" not in str(error), str(error)
        assert not os.path.exists(out) or os.listdir(out) == [], os.listdir(out)
        return None


@pytest.mark.parametrize("method", methods.list_methods())
def test_drawn_method_options_are_refused_or_build_a_finite_model(data_root, tiny_clip, method):
    names = sorted(registry.method_options(method))

    @FAST
    @given(st.dictionaries(st.sampled_from(names), VALUE, max_size=3))
    def check(options):
        out = tempfile.mkdtemp()
        spec = outcome(values(data_root, out, method=method, options=options), os.path.join(out, "run"))
        if spec is None:
            return
        built = dict(spec.options)
        if "dataset" in registry.method_options(method):
            built.setdefault("dataset", spec.dataset)
        try:
            model = methods.build_method(method, tiny_clip, ["red circle", "blue square"], **built)
        except OutOfBounds as error:  # known only with the backbone or class names (deep prompts beyond its blocks)
            assert "\n" not in str(error), str(error)
            return
        if model.fits_features:
            return  # fitted, not trained: its own test below runs it
        images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            assert torch.isfinite(model(images)).all(), options

    check()


RUN_KEY = {
    "lr": st.sampled_from([NAN, INF, -0.5, 0.0, 1e-4, 0.002, 0.05]),
    "momentum": st.sampled_from([NAN, -0.1, 0.0, 0.9, 1.0, 5]),
    "weight_decay": st.sampled_from([NAN, -100, 0.0, 5e-4]),
    "warmup_epochs": st.sampled_from([-3, 0, 1, 2, 1.5]),
    "warmup_lr": st.sampled_from([NAN, -1e-5, 0.0, 1e-5]),
    "optimizer": st.sampled_from(["sgd", "adam", "adamw", "rmsprop"]),
    "adam_eps": st.sampled_from([INF, NAN, 0.0, -1e-8, 1e-8, 1e-3]),
    "seed": st.sampled_from([-5, None, 0, 1, 2**40, "1"]),
    "device": st.sampled_from(["banana", "cpu", "auto", "cuda:x"]),
    "num_workers": st.sampled_from([-4, 0, None]),
    "crop_scale": st.sampled_from([[0.5, 1.0], [0.9, 0.5], [0.5], [NAN, 1.0]]),
    "precision": st.sampled_from(["fp32", "amp", "fp8"]),
}


def trains_to_finite_numbers(spec: RunSpec) -> None:
    """Either one record per target with finite metrics and a finite checkpoint, or a failed run that
    recorded nothing (a valid lr may still diverge: that is a failure, never a result)."""
    try:
        records = run(spec)
    except RunFailedError:
        assert results.read_records(os.path.dirname(spec.output_dir)) == []
        return
    assert len(records) == len(spec.eval_targets())
    assert all(math.isfinite(r["metrics"]["accuracy"]) for r in records)
    if spec.trains:
        path, _ = checkpoint.latest_checkpoint(spec.output_dir)
        state = load_checkpoint_file(path)["state_dict"]
        assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point()), path


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
@given(st.fixed_dictionaries({}, optional=RUN_KEY))
def test_drawn_run_keys_are_refused_or_train_coop_to_finite_numbers(data_root, changes):
    out = tempfile.mkdtemp()
    spec = outcome(values(data_root, out, **changes), os.path.join(out, "run"))
    if spec is not None:
        trains_to_finite_numbers(spec)


@pytest.mark.slow
@pytest.mark.parametrize("method", methods.list_methods())
def test_drawn_options_train_every_method_to_finite_numbers(data_root, method):
    names = sorted(registry.method_options(method))

    @settings(max_examples=3, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
    @given(st.dictionaries(st.sampled_from(names), VALUE, max_size=2))
    def check(options):
        out = tempfile.mkdtemp()
        spec = outcome(values(data_root, out, method=method, options=options), os.path.join(out, "run"))
        if spec is not None:
            try:
                trains_to_finite_numbers(spec)
            except OutOfBounds as error:  # known only with the backbone
                assert results.read_records(out) == [], str(error)

    check()


def test_validate_is_what_build_spec_and_the_runner_call(data_root, tmp_path):
    good = RunSpec(**values(data_root, tmp_path))
    validate(good)
    assert build_spec(values(data_root, tmp_path)) == good
