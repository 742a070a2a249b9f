"""The machinery MaPLe and PromptSRC share: where deep prompts go in open_clip's own blocks
(methods/parts/deep_prompts.py, checked with forward hooks on those blocks), dtypes, exact truncated text
encoding, the hooks' lifetime, the frozen teachers computed once (methods/parts/teachers.py), and the CoOp /
CoCoOp path left alone."""

import copy

import deep_reference as ref
import pytest
import torch

import methods
from clipcore import backbone
from methods.parts import deep_prompts


@pytest.fixture(scope="module")
def deep_clip():
    """A tiny CLIP with 4 blocks per tower, so that depth 3 leaves a block beyond the depth."""
    return backbone.freeze(backbone.build_random_clip("tiny", text_layers=4, vision_layers=4, image_size=64))


def inputs_of(blocks):
    """Record each block's input (as the block sees it, after any pre-hook) and output."""
    seen, handles = {}, []
    for i, block in enumerate(blocks):
        handles.append(
            block.register_forward_hook(lambda m, args, out, i=i: seen.update({i: (args[0].detach(), out.detach())}))
        )
    return seen, handles


def prompts(n, width, count, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, width, generator=g) for _ in range(count)]


def test_text_prompts_replace_positions_after_sos_in_blocks_below_the_depth(deep_clip):
    clip = deep_clip
    n, width = 2, backbone.text_width(clip)
    p0, p1, p2 = prompts(n, width, 3, seed=0)
    embeddings, ids = ref.prompt_embeddings(clip, ["sea lake", "cat"], "a photo of a", p0)
    seen, handles = inputs_of(clip.transformer.resblocks)
    try:
        with torch.no_grad():
            deep_prompts.encode_text(clip, embeddings, ids, deep=[p1, p2])
    finally:
        for h in handles:
            h.remove()
    pos = clip.positional_embedding
    # block 0: the input prompts with the positional embedding (added at the input only)
    torch.testing.assert_close(seen[0][0][:, 1 : 1 + n], (p0 + pos[1 : 1 + n]).expand(2, -1, -1))
    for i, p in ((1, p1), (2, p2)):  # deep blocks: positions 1..n are exactly that block's prompt
        x_in, previous_out = seen[i][0], seen[i - 1][1]
        torch.testing.assert_close(x_in[:, 1 : 1 + n], p.expand(2, -1, -1), rtol=0, atol=0)
        assert not torch.allclose(previous_out[:, 1 : 1 + n], x_in[:, 1 : 1 + n])  # the old ones were dropped
        torch.testing.assert_close(x_in[:, :1], previous_out[:, :1], rtol=0, atol=0)  # SOS untouched
        torch.testing.assert_close(x_in[:, 1 + n :], previous_out[:, 1 + n :], rtol=0, atol=0)  # the rest too
    # block 3 (at the depth): the prompt positions pass through from block 2
    torch.testing.assert_close(seen[3][0], seen[2][1], rtol=0, atol=0)
    # truncated after the last EOT: no block saw the padding
    assert seen[0][0].shape[1] == int(ids.argmax(-1).max()) + 1


def test_vision_prompts_appended_before_ln_pre_without_positional_embedding(deep_clip):
    clip = deep_clip
    n, width = 3, deep_prompts.vision_width(clip)
    v0, v1, v2 = prompts(n, width, 3, seed=1)
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    seen, handles = inputs_of(clip.visual.transformer.resblocks)
    ln_pre = {}
    handles.append(clip.visual.ln_pre.register_forward_hook(lambda m, a, out: ln_pre.update(x=a[0], y=out)))
    try:
        with torch.no_grad():
            deep_prompts.encode_image(clip, images, v0, [v1, v2])
    finally:
        for h in handles:
            h.remove()
    patches = (64 // 32) ** 2
    assert ln_pre["x"].shape == (2, 1 + patches + n, width)
    torch.testing.assert_close(ln_pre["x"][:, -n:], v0.expand(2, -1, -1), rtol=0, atol=0)  # no positional embedding
    torch.testing.assert_close(ln_pre["y"][:, -n:], clip.visual.ln_pre(v0).expand(2, -1, -1))  # but ln_pre
    torch.testing.assert_close(seen[0][0], ln_pre["y"], rtol=0, atol=0)
    for i, p in ((1, v1), (2, v2)):
        x_in, previous_out = seen[i][0], seen[i - 1][1]
        torch.testing.assert_close(x_in[:, -n:], p.expand(2, -1, -1), rtol=0, atol=0)
        torch.testing.assert_close(x_in[:, :-n], previous_out[:, :-n], rtol=0, atol=0)  # CLS and patches untouched
    torch.testing.assert_close(seen[3][0], seen[2][1], rtol=0, atol=0)  # beyond the depth: pass through


def test_prompted_forwards_equal_the_hand_written_reference(deep_clip):
    clip = deep_clip
    t = prompts(2, backbone.text_width(clip), 3, seed=3)
    v = prompts(2, deep_prompts.vision_width(clip), 3, seed=4)
    embeddings, ids = ref.prompt_embeddings(
        clip, ["golden retriever", "cat", "2000 AM General Hummer SUV"], "X X", t[0]
    )
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(
            deep_prompts.encode_text(clip, embeddings, ids, t[1:]), ref.text_features(clip, embeddings, ids, t[1:])
        )
        torch.testing.assert_close(
            deep_prompts.encode_image(clip, images, v[0], v[1:]), ref.image_features(clip, images, v[0], v[1:])
        )


def test_hooks_exist_only_during_the_prompted_forward(deep_clip):
    clip = deep_clip
    images = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(6))
    modules = [clip.visual.ln_pre, *clip.visual.transformer.resblocks, *clip.transformer.resblocks]
    before = backbone.encode_image(clip, images)
    v = prompts(2, deep_prompts.vision_width(clip), 2, seed=7)
    with pytest.raises(RuntimeError, match="inside"):
        with deep_prompts.prompted(clip, vision_input=v[0], vision=v[1:], text=prompts(2, 64, 1, 8)):
            hooked = [clip.visual.ln_pre, clip.visual.transformer.resblocks[1], clip.transformer.resblocks[1]]
            assert all(m._forward_pre_hooks for m in hooked)
            assert not clip.visual.transformer.resblocks[0]._forward_pre_hooks  # block 0 has no prompts of its own
            raise RuntimeError("inside")
    assert not any(m._forward_pre_hooks for m in modules)
    torch.testing.assert_close(backbone.encode_image(clip, images), before, rtol=0, atol=0)


def test_prompts_enter_in_the_activation_dtype_and_train_in_their_own():
    clip = backbone.load_clip("tiny", precision="fp16")
    p = [torch.randn(2, backbone.text_width(clip), requires_grad=True) for _ in range(2)]  # fp32 parameters
    embeddings, ids = ref.prompt_embeddings(clip, ["cat", "dog"], "X X", p[0].detach().half())
    seen, handles = inputs_of(clip.transformer.resblocks[:2])
    try:
        deep_prompts.encode_text(clip, embeddings, ids, [p[1]]).float().sum().backward()
    finally:
        for h in handles:
            h.remove()
    assert seen[1][0].dtype == torch.float16
    torch.testing.assert_close(seen[1][0][:, 1:3], p[1].detach().half().expand(2, -1, -1), rtol=0, atol=0)
    assert p[1].grad is not None and p[1].grad.dtype == torch.float32 and p[1].grad.abs().sum() > 0


def test_truncated_bucketed_text_encoding_equals_77_positions_with_gradients(deep_clip):
    clip = deep_clip
    names = ["cat", "golden retriever", "2000 AM General Hummer SUV", "sea lake", "Apply_Eye_Makeup"]
    ctx = torch.randn(4, backbone.text_width(clip), generator=torch.Generator().manual_seed(9)).requires_grad_()
    deep = [torch.randn(4, backbone.text_width(clip), requires_grad=True) for _ in range(2)]
    outs = []
    for encode in (deep_prompts.encode_text, ref.text_features):
        embeddings, ids = ref.prompt_embeddings(clip, names, "X X X X", ctx)
        out = encode(clip, embeddings, ids, deep)
        (out * torch.arange(out.shape[1])).sum().backward()
        outs.append((out.detach(), ctx.grad.clone(), [d.grad.clone() for d in deep]))
        ctx.grad = None
        for d in deep:
            d.grad = None
    (fast, g_fast, d_fast), (full, g_full, d_full) = outs
    torch.testing.assert_close(fast, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fast, g_full, rtol=1e-4, atol=1e-5)
    for a, b in zip(d_fast, d_full):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def count_text_passes(clip):
    calls = []
    handle = clip.transformer.register_forward_hook(lambda m, a, out: calls.append(a[0].shape[0]))
    return calls, handle


def test_teachers_are_computed_once_per_class_set_and_shared():
    clip = backbone.freeze(backbone.build_random_clip("tiny"))
    names = ["golden_retriever", "cat", "sea lake"]
    images, labels = torch.randn(2, 3, 224, 224), torch.tensor([0, 2])
    calls, handle = count_text_passes(clip)  # rows per pass through the text transformer
    try:
        first = methods.build_method("promptsrc", clip, names)
        with torch.no_grad():
            first.eval()(images)  # evaluation: the prompted classes once, no teacher
        assert sum(calls) == len(names)
        del calls[:]
        first.train().training_loss(images, labels)  # the first step: the 60 templates, once, then the prompts
        assert sum(calls) == 60 * len(names) + len(names)
        del calls[:]
        first.training_loss(images, labels)  # later steps: the prompts only
        second = methods.build_method("promptsrc", clip, names).train()
        second.training_loss(images, labels)  # another model of the same classes: shared, not recomputed
        assert sum(calls) == 2 * len(names)
        torch.testing.assert_close(first.teacher_text, second.teacher_text, rtol=0, atol=0)
        del calls[:]
        methods.build_method("promptsrc", clip, names[:2]).train().training_loss(images, labels // 2)
        assert sum(calls) == 60 * 2 + 2  # another class set: its own teacher
        del calls[:]
        for _ in range(2):  # KgCoOp's prompts go through the prefix-cache encoder, not the transformer's forward
            model = methods.build_method("kgcoop", clip, names, template="a photo of a {}, a type of pet.")
            model.train().training_loss(images, labels)
        assert calls == [len(names)]
    finally:
        handle.remove()


def test_teacher_dtypes_follow_the_published_fp16_run():
    fp16 = backbone.load_clip("tiny", precision="fp16")
    names = ["cat", "dog"]
    # PromptSRC: a separate fp32 CLIP (promptsrc.py:99) even in the fp16 run
    src = methods.build_method("promptsrc", fp16, names)
    assert src.teacher_text.dtype == torch.float32
    float_copy = copy.deepcopy(fp16).float()
    expected = torch.stack(
        [backbone.encode_texts(float_copy, [t.format(n) for n in names]) for t in methods.promptsrc.PROMPTSRC_TEMPLATES]
    ).mean(0)
    torch.testing.assert_close(src.teacher_text, torch.nn.functional.normalize(expected, dim=-1))
    assert all(p.dtype != torch.float32 for p in fp16.transformer.resblocks[0].mlp.parameters())  # not converted
    # KgCoOp: the fp16 CLIP (kgcoop.py:132)
    kg = methods.build_method("kgcoop", fp16, names)
    assert kg.teacher_text.dtype == torch.float16
    # fp32 runs: everything fp32
    fp32 = backbone.load_clip("tiny")
    assert methods.build_method("kgcoop", fp32, names).teacher_text.dtype == torch.float32
    assert methods.build_method("promptsrc", fp32, names).teacher_text.dtype == torch.float32


def test_coop_and_cocoop_unchanged_on_a_clip_the_new_methods_used(tiny_clip, classnames, images):
    # The new methods hook the shared CLIP only inside their own forward: CoOp / CoCoOp computed after
    # them run the same (hook-free) code and give the same numbers.
    torch.manual_seed(0)
    coop = methods.build_method("coop", tiny_clip, classnames)
    cocoop = methods.build_method("cocoop", tiny_clip, classnames)
    with torch.no_grad():
        before = coop(images), cocoop(images)
    for name in ("maple", "promptsrc", "kgcoop"):
        model = methods.build_method(name, tiny_clip, classnames).train()
        model.training_loss(images, torch.tensor([0, 1, 2])).backward()
    modules = [tiny_clip.visual.ln_pre, *tiny_clip.visual.transformer.resblocks, *tiny_clip.transformer.resblocks]
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in modules)
    with torch.no_grad():
        after = coop(images), cocoop(images)
    for a, b in zip(after, before):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_resnet_backbones_are_refused_with_a_clear_error(classnames):
    class FakeVisual(torch.nn.Module):
        pass

    clip = backbone.freeze(backbone.build_random_clip("tiny"))
    clip.visual = FakeVisual()
    for name in ("maple", "promptsrc"):
        with pytest.raises(deep_prompts.DeepPromptError, match="ViT backbone"):
            methods.build_method(name, clip, classnames)
