"""The README's Python example runs as written (on the tiny backbone) and does what it says."""

import os
import re

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_readme_python_example_runs(tmp_path, monkeypatch, capsys):
    with open(os.path.join(ROOT, "README.md")) as f:
        blocks = re.findall(r"```python\n(.*?)```", f.read(), flags=re.S)
    assert blocks, "README.md has no python example"
    code = blocks[0].replace("/tmp/", f"{tmp_path}/")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
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
    """The README's method table: trainable parameters counted on a random ViT-B/16-shaped CLIP with each
    method's published options, published H as in reports/paper/base2new.csv."""
    import csv

    import torch

    import methods
    from harness import backbone

    with open(os.path.join(ROOT, "README.md")) as f:
        section = f.read().split("## Methods", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 5 and cells[0].startswith("`"):
            rows[cells[0].strip("`")] = (int(cells[2].replace(",", "")), cells[3], cells[4])
    assert set(rows) == set(methods.list_methods())
    with open(os.path.join(ROOT, "reports", "paper", "base2new.csv"), newline="") as f:
        published = {r["method"]: r["h"] for r in csv.DictReader(f) if r["dataset"] == "average"}
    clip = backbone.freeze(backbone.build_random_clip("vit_b16"))
    options = {  # experiments/methods/<name>/<published base-to-new config>
        "coop": {"n_ctx": 4, "ctx_init": "a photo of a"},
        "cocoop": {"n_ctx": 4, "ctx_init": "a photo of a"},
        "kgcoop": {"n_ctx": 4, "ctx_init": "a photo of a"},
        "maple": {"n_ctx": 2, "ctx_init": "a photo of a", "prompt_depth": 9},
        "promptsrc": {"prompt_depth_text": 9, "prompt_depth_vision": 9, "templates": ["a photo of a {}."]},
        "coop_dept": {"n_ctx": 16, "ctx_init": "", "subsample": "new"},  # without the head's 513 per base class
    }
    with open(os.path.join(ROOT, "reports", "demo-reference", "table1_base2new.csv"), newline="") as f:
        demo_h = {r["method"]: r["shown"] for r in csv.DictReader(f) if r["row"] == "average" and r["metric"] == "H"}
    for name, (count, h, ours) in rows.items():
        assert ours == demo_h.get(name, "`METHODS=`"), name
        torch.manual_seed(0)
        model = methods.build_method(name, clip, ["golden retriever", "tabby cat"], **options.get(name, {}))
        assert model.num_trainable_parameters() == count, name
        assert h == published[name], name


def test_demo_blocks_are_the_reference_run():
    """The README's demo table, timing, pattern checks and ablation sentence are the files a reference
    run wrote (reports/demo-reference/), not typed by hand."""
    import sys

    sys.path.insert(0, ROOT)
    from benchmarks import demo

    reference = os.path.join(ROOT, demo.REFERENCE_DIR)
    with open(os.path.join(ROOT, "README.md")) as f:
        text = f.read()
    blocks = demo.readme_blocks(reference)
    assert {"table1", "run", "pattern", "ablations"} <= set(blocks)
    for name, body in blocks.items():
        written = text.split(f"<!-- BEGIN demo:{name} -->\n", 1)[1].split(f"<!-- END demo:{name} -->", 1)[0]
        assert written == body, name
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
