"""load_clip: names, OpenAI-format files, precision layout, tokeniser facts, errors."""

import pytest
import torch

import methods
from clipcore import backbone
from harness import load_clip


def test_tiny_is_frozen_deterministic_and_quickgelu(tiny_clip):
    again = load_clip("tiny")
    for (name, p), (_, q) in zip(tiny_clip.named_parameters(), again.named_parameters()):
        assert torch.equal(p, q), name
        assert not p.requires_grad
    assert not tiny_clip.training
    act = tiny_clip.transformer.resblocks[0].mlp.gelu
    assert type(act).__name__ == "QuickGELU"
    assert tiny_clip.logit_scale.exp().item() == pytest.approx(100.0)


def test_tokeniser_facts():
    ids = backbone.tokenize("a photo of x.")[0]
    assert ids[:7].tolist() == [49406, 320, 1125, 539, 343, 269, 49407]  # PROTOCOL.md 2.4
    assert ids[7:].abs().sum() == 0 and ids.shape == (77,)
    with pytest.raises(ValueError, match="more than the context length"):
        backbone.tokenize("word " * 80)


@pytest.mark.parametrize("kind", ["state_dict", "wrapped", "torchscript"])
def test_openai_format_file_builds_the_same_model(tiny_clip, classnames, images, tmp_path, kind):
    path = tmp_path / f"clip-{kind}.pt"
    if kind == "state_dict":
        backbone.save_openai_state_dict(tiny_clip, str(path))
    elif kind == "wrapped":  # {"state_dict": {"module.<key>": ...}} as some trainers write it
        torch.save({"state_dict": {f"module.{k}": v for k, v in tiny_clip.state_dict().items()}}, path)
    else:  # a TorchScript archive, as OpenAI distributes its weights
        holder = torch.nn.Module()
        for name, tensor in tiny_clip.state_dict().items():
            *parents, leaf = name.split(".")
            module = holder
            for part in parents:
                if not hasattr(module, part):
                    module.add_module(part, torch.nn.Module())
                module = getattr(module, part)
            module.register_buffer(leaf, tensor.clone())
        torch.jit.save(torch.jit.script(holder), str(path))
    loaded = load_clip(str(path))
    assert not any(p.requires_grad for p in loaded.parameters())
    zs_a = methods.build_method("zsclip", tiny_clip, classnames)
    zs_b = methods.build_method("zsclip", loaded, classnames)
    with torch.no_grad():
        torch.testing.assert_close(zs_b(images), zs_a(images), rtol=1e-5, atol=1e-5)


def test_fp16_layout_follows_openai(tmp_path):
    clip = load_clip("tiny", precision="fp16")
    # PROTOCOL.md 2.2: linear/conv/attention weights and the projections in fp16; LayerNorms,
    # embeddings and logit_scale in fp32; model dtype = dtype of the patch conv.
    assert backbone.model_dtype(clip) == torch.float16
    assert clip.visual.conv1.weight.dtype == torch.float16
    assert clip.transformer.resblocks[0].attn.in_proj_weight.dtype == torch.float16
    assert clip.text_projection.dtype == torch.float16 and clip.visual.proj.dtype == torch.float16
    assert clip.ln_final.weight.dtype == torch.float32
    assert clip.token_embedding.weight.dtype == torch.float32
    assert clip.positional_embedding.dtype == torch.float32
    assert clip.logit_scale.dtype == torch.float32
    # A prompt learner built on it holds fp16 context, as the paper's fp16 setting does.
    coop = methods.build_method("coop", clip, ["cat", "dog"])
    assert coop.prompt_learner.ctx.dtype == torch.float16
    # ... and a file written in fp16 loads back in fp32 with the same values.
    path = tmp_path / "fp16.pt"
    backbone.save_openai_state_dict(clip, str(path))
    fp32 = load_clip(str(path), precision="fp32")
    assert fp32.visual.conv1.weight.dtype == torch.float32
    torch.testing.assert_close(fp32.visual.conv1.weight, clip.visual.conv1.weight.float())


def test_bf16_precision():
    clip = load_clip("tiny", precision="bf16")
    assert backbone.model_dtype(clip) == torch.bfloat16
    assert clip.ln_final.weight.dtype == torch.float32


def test_errors_list_the_choices(tmp_path):
    with pytest.raises(ValueError, match="Choices: RN50, .*ViT-B/16.*tiny"):
        load_clip("ViT-B-17")
    with pytest.raises(ValueError, match="did you mean 'ViT-B/16'"):
        load_clip("ViT-B-16")
    with pytest.raises(ValueError, match="Unknown precision"):
        load_clip("tiny", precision="fp8")
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    with pytest.raises(ValueError, match="not an OpenAI-format CLIP checkpoint"):
        load_clip(str(junk))


def test_openai_name_without_network_explains_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))

    def offline(url, cache_dir=None):
        raise OSError("network is unreachable")

    monkeypatch.setattr(backbone, "download_pretrained_from_url", offline)
    with pytest.raises(ValueError, match=r"ViT-B-16\.pt.*\.cache/clip"):
        load_clip("ViT-B/16")
