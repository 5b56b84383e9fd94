"""The official single-call recipe (spec §7.8): what each of the three contexts holds."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from bagel.errors import InputError
from bagel.flow import SamplerParams
from bagel.interleave import build_contexts, interleave_inference
from bagel.tokenizer import GEN_THINK_PROMPT, VLM_THINK_PROMPT

IMAGE = Image.new("RGB", (64, 48), (200, 30, 30))


def n_text(pipe, text):
    return len(pipe.tokenizer.frame(text))


def image_tokens(pipe, vae=True):
    h, w = 48 // 16, 64 // 16
    vit = pipe.vit_rule.size_for(64, 48)
    n_vit = (vit[0] // 14) * (vit[1] // 14) + 2
    return (h * w + 2 if vae else 0) + n_vit


def keys(ctx):
    return torch.cat([k for k, _ in ctx.chunks(0)], dim=1)


def texts_only(pipe, texts):
    ctx = pipe.new_context()
    for t in texts:
        pipe.append_text(ctx, t)
    return ctx


@pytest.mark.parametrize(
    ("inputs", "think", "main", "text_dropped", "image_dropped"),
    [
        (["a cat"], False, ["a cat"], [], ["a cat"]),
        (
            ["a cat"],
            True,
            [GEN_THINK_PROMPT, "a cat"],
            [GEN_THINK_PROMPT],
            [GEN_THINK_PROMPT, "a cat"],
        ),
        ([IMAGE, "blue"], False, ["IMG", "blue"], ["IMG"], ["blue"]),
        (
            [IMAGE, "blue"],
            True,
            [GEN_THINK_PROMPT, "IMG", "blue"],
            [GEN_THINK_PROMPT, "IMG"],
            [GEN_THINK_PROMPT, "blue"],
        ),
    ],
)
def test_generation_contexts_hold_what_the_spec_says(
    pipe, inputs, think, main, text_dropped, image_dropped
):
    ctx, _ = build_contexts(pipe, inputs, understanding=False, think=think)

    def size(items):
        return sum(image_tokens(pipe) if i == "IMG" else n_text(pipe, i) for i in items)

    assert ctx.main.length == size(main)
    assert ctx.text_dropped.length == size(text_dropped)
    assert ctx.main.rope == sum(2 if i == "IMG" else n_text(pipe, i) for i in main)
    # the text-dropped context is a view of the main one: same storage, no copy
    if ctx.text_dropped.length:
        assert ctx.text_dropped.spans[0][0] is ctx.main.spans[0][0]
    expected = texts_only(pipe, image_dropped)
    torch.testing.assert_close(keys(ctx.image_dropped), keys(expected), rtol=0, atol=0)


def test_understanding_adds_vit_tokens_only(pipe):
    ctx, size = build_contexts(pipe, [IMAGE, "what is it?"], understanding=True, think=True)
    assert ctx.main.length == n_text(pipe, VLM_THINK_PROMPT) + image_tokens(
        pipe, vae=False
    ) + n_text(pipe, "what is it?")
    assert size == (48, 64)


def test_single_calls_end_to_end(pipe):
    params = SamplerParams.edit(num_timesteps=3)
    edit = interleave_inference(
        pipe, [IMAGE, "make it blue"], params=params, generator=torch.Generator().manual_seed(0)
    )
    assert edit.image.size == (64, 48) and edit.text is None
    t2i = interleave_inference(
        pipe,
        ["a cat"],
        think=True,
        max_think_tokens=5,
        params=SamplerParams(num_timesteps=3),
        image_size=(32, 32),
    )
    assert t2i.image.size == (32, 32) and isinstance(t2i.text, str)
    answer = interleave_inference(pipe, [IMAGE, "what?"], understanding=True, max_think_tokens=5)
    assert answer.image is None and isinstance(answer.text, str)


def test_bad_inputs(pipe):
    with pytest.raises(InputError, match="at least one"):
        build_contexts(pipe, [], understanding=False, think=False)
    with pytest.raises(InputError, match=r"inputs\[1\] must be a str or a PIL image"):
        build_contexts(pipe, ["ok", 3], understanding=False, think=False)
