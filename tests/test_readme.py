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
