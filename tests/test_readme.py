"""The README and the documentation pages say what is true: the Python example runs as written (on the tiny
backbone) and does what it says, every generated block is what its report makes, the commands work."""

import glob
import os
import re
import shutil

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def document_holding(name: str, root: str = ROOT) -> str:
    """The text of the document (README.md or a page of docs/) that holds generated block ``name``."""
    from benchmarks.readme import locate

    with open(locate(name, root), encoding="utf-8") as f:
        return f.read()


def copy_documents(into, stale: bool = False) -> list:
    """README.md and docs/*.md copied under ``into`` (every generated block's body 'stale' with ``stale``)."""
    (into / "docs").mkdir(parents=True, exist_ok=True)
    copies = []
    for path in [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]:
        target = into / os.path.relpath(path, ROOT)
        shutil.copy(path, target)
        if stale:
            target.write_text(_stale_blocks(target.read_text(encoding="utf-8")), encoding="utf-8")
        copies.append(target)
    return copies


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    with open(os.path.join(ROOT, "docs", "api.md")) as f:
        api = f.read()
    blocks = re.findall(r"```python\n(.*?)```", api, flags=re.S)
    assert blocks, "docs/api.md has no python example"
    code = blocks[0].replace("/tmp/", f"{tmp_path}/")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "docs/api.md", "exec"), namespace)
    # What the example's comments promise:
    assert namespace["logits"].shape == (2, len(namespace["names"]))  # [2, 3]
    width = namespace["clip"].ln_final.weight.shape[0]
    assert f"torch.Size([4, {width}])" in capsys.readouterr().out  # ctx: [4, width]
    saved = torch.load(tmp_path / "prompt_learner" / "model.pth.tar-10", weights_only=False)
    assert saved["epoch"] == 10 and set(saved["state_dict"]) >= {"ctx", "token_prefix", "token_suffix"}
    # The context moved to other class names; their prefix/suffix were rebuilt, not copied.
    moved, original = namespace["coop_on_new"].prompt_learner, namespace["coop"].prompt_learner
    assert torch.equal(moved.ctx, original.ctx)
    assert moved.token_suffix.shape[0] == 2 and original.token_suffix.shape[0] == 3
    assert namespace["zeroshot"].templates == ["a photo of a {}, a type of pet."]


def test_methods_table_is_what_the_code_counts_and_the_papers_publish():
    """Every row of the README's methods table (written by ``python -m benchmarks.methods_table``) is true:
    a registered method, its paper and code as its file says, trainable parameters counted on a random
    ViT-B/16-shaped CLIP with the options of its default config, published H as in
    reports/paper/base2new.csv and published 16-shot accuracy as in reports/paper/fewshot.csv (ViT-B/16
    averages), demo H and demo 16-shot accuracy as in the reference runs, "n/a" where the study's YAML does
    not list the method. A registered method the README does not show yet is not an error (the table is
    regenerated, not typed)."""
    import csv

    import torch

    import methods
    from benchmarks import methods_table
    from benchmarks.readme import read_block
    from clipcore import backbone
    from harness import sweep
    from harness.config import default_method_options

    block = read_block(os.path.join(ROOT, "README.md"), methods_table.BLOCK)
    assert block.startswith(methods_table.HEADER)
    rows = [
        [c.strip() for c in line.strip().strip("|").split("|")]
        for line in block[len(methods_table.HEADER) :].splitlines()
    ]
    assert rows and all(len(r) == 8 and r[0].startswith("`") for r in rows), block
    with open(os.path.join(ROOT, "reports", "paper", "base2new.csv"), newline="") as f:
        published = {r["method"]: r["h"] for r in csv.DictReader(f) if r["dataset"] == "average"}
    with open(os.path.join(ROOT, "reports", "paper", "fewshot.csv"), newline="") as f:
        published_16 = {
            r["method"]: float(r["accuracy"])
            for r in csv.DictReader(f)
            if (r["dataset"], r["backbone"], r["shots"]) == ("average", "ViT-B/16", "16")
        }
    reference = os.path.join(ROOT, "reports", "demo-reference")
    with open(os.path.join(reference, "table1_base2new.csv"), newline="") as f:
        demo_h = {r["method"]: r["shown"] for r in csv.DictReader(f) if r["row"] == "average" and r["metric"] == "H"}
    with open(os.path.join(reference, "fewshot", "fewshot_16shot.csv"), newline="") as f:
        demo_16 = {r["method"]: r["shown"] for r in csv.DictReader(f) if r["row"] == "average"}
    base2new, fewshot = (set(sweep.load_experiment(e)["methods"]) for e in ("base2new", "fewshot"))
    clip = backbone.freeze(backbone.build_random_clip("vit_b16"))
    for name, paper, code, count, h, ours, h16, ours16 in rows:
        name = name.strip("`")
        assert name in methods.list_methods(), f"the README shows {name!r}, which is not registered"
        info = methods.method_info(name)
        assert paper == f"{info.label} ({info.paper} {info.year})" and code == info.source, name
        # A count that grows with the classes reads "F + P per class": at two classes it would pass for the
        # method's size on a study of a hundred.
        fixed, _, per_class = (
            count.removesuffix(" per class").rpartition(" + ") if "per class" in count else (count, 0, 0)
        )
        fixed, per_class = (int(str(v or 0).replace(",", "")) for v in (fixed, per_class))
        if name == "tip_adapter_f":  # its cache keys are learned: 16 pictures a class x CLIP's 512 dims
            assert (fixed, per_class) == (0, 16 * 512), count
        else:
            for classes in (["golden retriever", "tabby cat"], ["golden retriever", "tabby cat", "red fox"]):
                torch.manual_seed(0)
                model = methods.build_method(name, clip, classes, **default_method_options(name))
                assert model.num_trainable_parameters() == fixed + per_class * len(classes), (name, count)
        if name in base2new:
            assert (h, ours) == (published.get(name, "–"), demo_h.get(name, "`METHODS=`")), name
        else:
            assert (h, ours) == ("n/a", "n/a"), name
        if name in fewshot:
            assert h16 == (f"{published_16[name]:.2f}" if name in published_16 else "–"), name
            assert ours16 == demo_16.get(name, "`METHODS=`"), name
        else:
            assert (h16, ours16) == ("n/a", "n/a"), name
    # The paper's three and the successors are shown; the demo ran the first three.
    shown = [r[0].strip("`") for r in rows]
    assert {"zsclip", "coop", "cocoop", "kgcoop", "maple", "promptsrc", "tip_adapter_f"} <= set(shown)
    assert shown[:2] == ["zsclip", "lpclip"]  # in year order, ties in registration order
    # the reference runs have every method of the base-to-new and few-shot studies
    # (python -m benchmarks.demo reference, python -m benchmarks.fewshot_demo reference)
    assert set(demo_h) == base2new
    assert set(demo_16) == fewshot


def test_demo_blocks_are_the_reference_run():
    """The README's demo table, timing, pattern checks and ablation sentence are the files a reference
    run wrote (reports/demo-reference/), not typed by hand."""
    import sys

    sys.path.insert(0, ROOT)
    from benchmarks import demo

    reference = os.path.join(ROOT, demo.REFERENCE_DIR)
    blocks = demo.readme_blocks(reference)
    transfer = {"table2", "table3", "pattern_crossdataset", "pattern_domaingen", "transfer_run"}
    assert {"table1", "run", "pattern", "ablations", "leaderboard", "efficiency"} | transfer <= set(blocks)
    for name, body in blocks.items():
        text = document_holding(f"demo:{name}")
        written = text.split(f"<!-- BEGIN demo:{name} -->\n", 1)[1].split(f"<!-- END demo:{name} -->", 1)[0]
        assert written == body, name
    text = document_holding("demo:pattern")
    # The pattern table is what the checks compute from the reference's per-seed averages, and those
    # averages agree with the Average row of the reference's Table 1.
    import json
    import statistics

    with open(os.path.join(reference, "run.json")) as f:
        averages = json.load(f)["seed_averages"]
    assert demo.checks_markdown(demo.pattern_checks(averages)) == blocks["pattern"]
    table = demo.read_table(os.path.join(reference, "table1_base2new.csv"))
    for method, rows in averages.items():
        for metric in ("base", "new"):
            assert abs(statistics.fmean(rows[metric]) - table[("average", method, metric.capitalize())]) < 1e-6
    # The prose after the table says whether the claims hold; it must agree with the checks.
    holds = [c["holds"] for c in demo.pattern_checks(averages)]
    prose = text.split("<!-- END demo:pattern -->", 1)[1].split("\n\n", 2)[1]
    assert prose.startswith("All four hold") == all(holds), prose[:80]
    # Tables 2 and 3 likewise: each study's checks are computed from the reference's per-seed source and
    # target averages, which agree with the tables' source and Average rows; its prose agrees with them.
    for experiment, claims in demo.TRANSFER_CLAIMS.items():
        with open(os.path.join(reference, "run.json")) as f:
            averages = json.load(f)["transfer_seed_averages"][experiment]
        checks = demo.pattern_checks(averages, claims)
        assert demo.checks_markdown(checks, demo.TRANSFER_WHAT) == blocks[f"pattern_{experiment}"]
        table = demo.read_table(os.path.join(reference, f"{demo.TRANSFER_TABLES[experiment]}.csv"))
        source = demo.sweep.load_experiment(experiment, profile="demo")["source"]
        for method, rows in averages.items():
            assert abs(statistics.fmean(rows["targets"]) - table[("average", method, "Accuracy")]) < 1e-6
            assert abs(statistics.fmean(rows["source"]) - table[(source, method, "Accuracy")]) < 1e-6
        text = document_holding(f"demo:pattern_{experiment}")
        prose = text.split(f"<!-- END demo:pattern_{experiment} -->", 1)[1].split("\n\n", 2)[1]
        assert prose.startswith("All ") == all(c["holds"] for c in checks), (experiment, prose[:80])


def test_bench_table_is_the_report(monkeypatch):
    """The documented benchmark rows are what ``python -m benchmarks.readme bench`` writes from reports/bench.md."""
    from benchmarks import bench
    from benchmarks.readme import read_document_block

    monkeypatch.chdir(ROOT)
    assert read_document_block(bench.README_BLOCK) == bench.readme_block(bench.REPORT), (
        "the bench block is stale: python -m benchmarks.readme bench"
    )


def test_bench_readme_rows_are_read_from_the_report(tmp_path):
    """The README's rows are the report's cells, by column name; a step that does not fit says so with
    its memory; a case the report lacks (a --quick run has no K = 1000) is left out; no block, a clear error."""
    import pytest

    from benchmarks import bench

    report = tmp_path / "bench.md"
    report.write_text(
        "# x\n\nGenerated by `python -m benchmarks.bench` on 2026-12-06T04:40+00:00.\n\n"
        "* Machine: a CPU, 2 logical CPUs.\n\nMatmul throughput measured for the floor: 200 GFLOP/s.\n\n"
        "| case | K | published / straightforward (s) | fast (s) | speed-up | floor (s) | fast / floor "
        "| max rel. error | notes |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n"
        "| CoCoOp train step, batch 1 | 100 | 6.000 | 0.500 | 12.0x | 0.250 | 2.0 | 1e-06 | x |\n"
        "| CoCoOp train step, batch 8 | 100 | — | 2.000 | — | 1.000 | 2.0 | — | published: does not fit: "
        "needs ~26 GB (all 8 graphs); fast: 3 runs |\n"
        "| CoCoOp train step, batch 1 | 10 | 0.700 | 0.100 | 7.0x | 0.020 | 5.0 | 1e-06 | x |\n"
        "\nWhere the fast path's time goes:\n\n| not | this |\n"
    )
    block = bench.readme_block(str(report))
    rows = [line for line in block.splitlines() if line.startswith("| CoCoOp")]
    assert rows == [
        "| CoCoOp training step, batch 1 | 100 | 6.000 | 0.500 | 12.0× | 0.250 | 2.0 |",
        "| CoCoOp training step, batch 8 | 100 | does not fit (~26 GB) | 2.000 | — | 1.000 | 2.0 |",
    ]
    assert "2026-12-06T04:40" in block and "Machine: a CPU" in block and "200 GFLOP/s" in block
    readme = tmp_path / "README.md"
    readme.write_text("top\n<!-- BEGIN bench:table -->\nold\n<!-- END bench:table -->\nbottom\n")
    from benchmarks.readme import refresh

    refresh(str(tmp_path), ("bench",), str(report))
    assert readme.read_text() == f"top\n<!-- BEGIN bench:table -->\n{block}<!-- END bench:table -->\nbottom\n"
    readme.write_text("no block\n")
    with pytest.raises(ValueError, match=r"'bench:table' must be in exactly one document, found in none of"):
        refresh(str(tmp_path), ("bench",), str(report))
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "page.md").write_text(block.join(["<!-- BEGIN bench:table -->\n", "<!-- END bench:table -->"]))
    readme.write_text((tmp_path / "docs" / "page.md").read_text())
    with pytest.raises(ValueError, match=r"'bench:table' must be in exactly one document, found in .*README.md, "):
        refresh(str(tmp_path), ("bench",), str(report))  # a block lives in one place


# -- who writes the README ------------------------------------------------------------------------


def _stale_blocks(text: str) -> str:
    """Every generated block's body replaced by 'stale', so that any write shows."""
    return re.sub(r"(<!-- BEGIN (\S+) -->\n).*?(<!-- END \2 -->)", r"\1stale\n\3", text, flags=re.S)


def test_only_the_refresh_command_writes_readme_blocks():
    """``benchmarks.readme`` is the one module that writes the README's blocks; every other module of
    benchmarks/ (the benchmarks, the reference runs, the methods table) only makes them."""
    import ast
    import glob

    writers = []
    for path in sorted(glob.glob(os.path.join(ROOT, "benchmarks", "**", "*.py"), recursive=True)):
        with open(path) as f:
            tree = ast.parse(f.read())
        names = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        names |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) for a in n.names}
        if "write_blocks" in names and os.path.basename(path) != "readme.py":
            writers.append(os.path.basename(path))
    assert writers == []


def test_benchmark_commands_leave_the_readme_as_it_is(tmp_path, monkeypatch):
    """The benchmarks' and reference runs' command lines, their former ``readme`` commands included, run in a
    folder holding a README copy with stale blocks: not a byte of it changes."""
    import contextlib

    from benchmarks import bench, demo, fewshot_demo, vs_authors

    copies = copy_documents(tmp_path, stale=True)
    stale = [c.read_text(encoding="utf-8") for c in copies]
    monkeypatch.chdir(tmp_path)
    commands = [
        (bench.main, ["readme", "--out", os.path.join(ROOT, bench.REPORT)]),
        (vs_authors.main, ["readme", "--out", os.path.join(ROOT, vs_authors.REPORT), "--readme", str(copies[0])]),
        (demo.main, ["readme"]),
        (fewshot_demo.main, ["readme"]),
    ]
    for main, argv in commands:
        with contextlib.suppress(SystemExit):  # argparse refuses a command that does not exist
            main(argv)
    assert [c.read_text(encoding="utf-8") for c in copies] == stale


def test_the_refresh_command_writes_the_blocks_from_the_reports(tmp_path, monkeypatch, capsys):
    """``python -m benchmarks.readme SOURCE ...`` writes those sources' blocks from the reports kept in reports/,
    as README.md has them; ``--from`` reads a report of the user's choice; the other blocks stay as they were."""
    from benchmarks import bench
    from benchmarks import readme as refresh_command

    copies = copy_documents(tmp_path / "tree", stale=True)
    root = str(tmp_path / "tree")
    monkeypatch.chdir(ROOT)
    sources = ["bench", "vs-authors", "demo", "fewshot", "data"]  # methods: its own test (slow: it builds every method)
    assert refresh_command.main([*sources, "--root", root]) == 0
    names = [n for c in copies for n in re.findall(r"<!-- BEGIN (\S+) -->", c.read_text(encoding="utf-8"))]
    assert "bench:table" in names and "demo:leaderboard" in names and len(names) == len(set(names))
    for name in names:
        expected = "stale\n" if name == "methods:table" else refresh_command.read_document_block(name, ROOT)
        assert refresh_command.read_document_block(name, root) == expected, name
    # One source from a chosen report: a user's own benchmark run.
    mine = tmp_path / "mine.md"
    with open(bench.REPORT, encoding="utf-8") as f:
        mine.write_text(f.read().replace("Generated by `python -m benchmarks.bench`", "Generated by `mine`"))
    assert refresh_command.main(["bench", "--from", str(mine), "--root", root]) == 0
    assert "Generated by `mine`" in refresh_command.read_document_block("bench:table", root)
    assert refresh_command.main(["bench", "demo", "--from", str(mine), "--root", root]) == 2
    assert "--from names one report" in capsys.readouterr().err
    assert refresh_command.main(["bench", "--from", str(tmp_path / "none.md"), "--root", root]) == 2
    assert "none.md: no such report" in capsys.readouterr().err


# -- make demo-drift ------------------------------------------------------------------------------


def test_make_demo_drift_compares_the_demo_results_and_reruns_only_when_asked(tmp_path, capsys):
    """``make demo-drift`` reads the demos' results in output/demo (seconds); ``RERUN=1`` re-runs every demo
    study (minutes). Without results in the folder, one line says what to run."""
    import shutil
    import subprocess

    import pytest

    from benchmarks import demo

    if shutil.which("make") is None:
        pytest.skip("no make on this machine")

    def recipe(*variables):
        # Under ``make test`` the outer make's MAKELEVEL/MAKEFLAGS reach this one, which then prints
        # "Entering/Leaving directory" around the recipe: a fresh environment reads only the recipe.
        env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
        done = subprocess.run(
            ["make", "--no-print-directory", "-n", "demo-drift", *variables],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.strip().splitlines()[-1].split()

    assert recipe()[-4:] == ["benchmarks.demo", "drift", "--results", "output/demo"]
    assert recipe("OUT=elsewhere")[-2:] == ["--results", "elsewhere/demo"]
    assert recipe("RERUN=1")[-2:] == ["benchmarks.demo", "drift"]
    assert demo.main(["drift", "--results", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"no demo results in {tmp_path}" in err and "make demo-drift RERUN=1" in err
    with open(os.path.join(ROOT, "docs", "demo.md"), encoding="utf-8") as f:
        text = f.read()
    assert "`make demo-drift RERUN=1`" in text and "`output/demo`" in text


def test_drift_compares_the_methods_both_runs_have_and_names_the_others(tmp_path):
    """A demo run with the paper's three methods against a reference with every method: the successors are
    named once as not compared, not listed cell by cell as missing; a cell missing from a method that ran
    is still a gap, and a method the reference lacks (renamed since) is named, not passed over."""
    from benchmarks import demo

    header = "row,method,metric,mean\n"
    reference, now = tmp_path / "reference.csv", tmp_path / "now.csv"
    reference.write_text(
        header + "average,coop,H,80.0\naverage,coop,Base,90.0\naverage,kgcoop,H,85.0\naverage,mma,H,79.0\n"
    )
    now.write_text(header + "average,coop,H,81.5\naverage,mma_v2,H,79.0\n")  # mma renamed since the reference
    rows, not_run, unknown = demo.drift(str(reference), str(now))
    assert rows == [(("average", "coop", "H"), 80.0, 81.5), (("average", "coop", "Base"), 90.0, None)]
    assert not_run == ["kgcoop", "mma"] and unknown == ["mma_v2"]
    rows, not_run, unknown = demo.drift(str(reference), str(tmp_path / "none.csv"))
    assert rows == [] and not_run == ["coop", "kgcoop", "mma"] and unknown == []


# -- adding a dataset -----------------------------------------------------------------------------


def test_adding_a_dataset_as_the_documentation_says(tmp_path, monkeypatch):
    """The README's walkthrough, step by step: its plugin module and entry point (installed as a package's
    metadata would be), a folder and split file laid out as its DatasetInfo says, then its two commands:
    the check passes and a one-epoch job on the tiny CLIP writes its record."""
    import shlex
    import textwrap

    import tomllib
    from PIL import Image

    from clipcore import plugins
    from harness import cli
    from harness.data import check, registry
    from harness.data.splitfile import write_split_json
    from harness.data.types import Datum
    from harness.results import read_records

    with open(os.path.join(ROOT, "docs", "data.md"), encoding="utf-8") as f:
        section = f.read().split("\n## Adding a dataset\n", 1)[1].split("\n## ", 1)[0]

    def fenced(language):
        return textwrap.dedent(re.search(rf"```{language}\n(.*?)```", section, flags=re.S).group(1))

    plugin, entry_points = fenced("python"), tomllib.loads(fenced("toml"))
    ((name, module),) = entry_points["project"]["entry-points"][plugins.GROUP].items()
    site = tmp_path / "site"
    (site / module.replace(".", "/")).parent.mkdir(parents=True)
    (site / module.replace(".", "/")).with_suffix(".py").write_text(plugin)
    (site / module.split(".")[0] / "__init__.py").write_text("")
    dist = site / "my_package-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-package\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(f"[{plugins.GROUP}]\n{name} = {module}\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setattr(plugins, "_loaded", False)  # this process loaded the plugins before the package existed
    key = re.search(r'key="(\w+)"', plugin).group(1)
    paper_name = re.search(r'paper_name="(\w+)"', plugin).group(1)
    try:
        info = registry.get_info(key)  # not built in: the registry loads the plugins, ours registers it
        root = tmp_path / "data"
        image_dir = root / info.folder / info.image_dir
        splits = ([], [], [])
        for label, (cls, colour) in enumerate((("rose", (200, 30, 40)), ("tulip", (240, 200, 20)))):
            (image_dir / cls).mkdir(parents=True)
            for n in range(8):
                path = image_dir / cls / f"{n:04d}.jpg"
                Image.new("RGB", (32, 32), tuple(min(255, c + 3 * n) for c in colour)).save(path)
                splits[0 if n < 4 else 1 if n < 6 else 2].append(Datum(str(path), label, cls))
        write_split_json(str(root / info.folder / info.split_file), *splits, str(image_dir))

        monkeypatch.chdir(tmp_path)
        commands = [shlex.split(line.replace("/path/to/data", str(root))) for line in fenced("bash").splitlines()]
        (check_command, run_command) = [c for c in commands if c]
        assert check_command[:3] == [".venv/bin/python", "-m", "harness.data"]
        assert check.main(check_command[3:]) == 0
        assert run_command[:3] == [".venv/bin/python", "-m", "harness"]
        assert cli.main(run_command[3:]) == 0
        records = read_records(str(tmp_path / "output"))  # the store the walkthrough names
        assert [(r["dataset"], r["method"]) for r in records] == [(key, "coop")]
    finally:
        registry.DATASETS.pop(key, None)  # the registries are the process's: leave them as other tests expect
        registry._ALIASES.pop(paper_name.lower(), None)
