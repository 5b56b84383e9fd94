"""The three guidance contexts of a session's generated images, against a reference that
builds them by hand from the pipeline's public verbs, never from Session.

The rule the reference follows (docs/session.md): the main context holds every turn; the
text-dropped context is main up to the last user text (so it ends before the prompt of the
image, but keeps every earlier text and image); the image-dropped context holds the user
texts only (no image, no reply, no thought). A generated image re-enters main (and with it
what later becomes the text-dropped context) as VAE tokens sampled with its seed, then ViT.
Each scenario runs one generate, edit or think turn after an earlier generated image, so
that all three contexts differ; the sampler uses both guidance scales at every step.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bagel.tokenizer import GEN_THINK_PROMPT
from workbench.params import GenerationParams
from workbench.session import Session

GEN = GenerationParams(
    num_timesteps=4,
    height=32,
    width=32,
    cfg_text_scale=4.0,
    cfg_img_scale=2.0,
    cfg_interval=(0.0, 1.0),
    max_think_tokens=4,
    seed=11,
)
EDIT = GenerationParams.edit(num_timesteps=4, cfg_text_scale=4.0, max_think_tokens=4, seed=12)


def picture() -> Image.Image:
    rng = np.random.default_rng(5)
    return Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))


class Reference:
    """The three contexts, each its own KVContext, appended to by hand."""

    def __init__(self, pipe):
        self.pipe = pipe
        self.main, self.text_dropped, self.image_dropped = (pipe.new_context() for _ in range(3))
        self.pending: list = []  # what main got since the last user text

    def user_text(self, text: str) -> None:
        for append in self.pending:  # the text-dropped context catches up to here
            append(self.text_dropped)
        self.pending = []
        for ctx in (self.main, self.image_dropped):
            self.pipe.append_text(ctx, text)
        self.pending.append(lambda ctx: self.pipe.append_text(ctx, text))

    def image(self, image: Image.Image, seed: int) -> None:
        """An image (given or generated) into main and, as it stands, the text-dropped one."""

        def append(ctx):
            self.pipe.append_image(ctx, image, generator=torch.Generator().manual_seed(seed))

        append(self.main)
        for earlier in self.pending:
            earlier(self.text_dropped)
        self.pending = []
        append(self.text_dropped)

    def reply(self, params: GenerationParams) -> str:
        """A reply or thought: main only."""
        text = self.pipe.generate_text(
            self.main, params.max_think_tokens, params.do_sample, params.temperature,
            params.generator(),
        ).text  # fmt: skip
        self.pipe.append_text(self.main, text)
        self.pending.append(lambda ctx: self.pipe.append_text(ctx, text))
        return text

    def generate(self, params: GenerationParams, height: int, width: int) -> Image.Image:
        out = self.pipe.generate_image(
            self.main,
            height,
            width,
            params.sampler(),
            cfg_text_ctx=self.text_dropped,
            cfg_img_ctx=self.image_dropped,
            generator=params.generator(),
        )
        self.image(out.image, params.seed)
        return out.image


def _start(pipe) -> tuple[Session, Reference]:
    """A first prompt and a generated image, in both."""
    s, ref = Session(pipe), Reference(pipe)
    s.add_text("a red house by a lake")
    first = s.generate_image(GEN)
    ref.user_text("a red house by a lake")
    assert _same(first, ref.generate(GEN, 32, 32))
    return s, ref


def _same(a: Image.Image, b: Image.Image) -> bool:
    return a.size == b.size and np.array_equal(np.asarray(a), np.asarray(b))


def _check_lengths(s: Session, ref: Reference) -> None:
    assert (s.main.length, s.main.rope) == (ref.main.length, ref.main.rope)
    assert (s.image_dropped.length, s.image_dropped.rope) == (
        ref.image_dropped.length,
        ref.image_dropped.rope,
    )


def test_generate_turn(pipe):
    s, ref = _start(pipe)
    s.add_text("now at night")
    ref.user_text("now at night")
    assert (s.text_mark.length, s.text_mark.rope) == (
        ref.text_dropped.length,
        ref.text_dropped.rope,
    )
    params = GenerationParams(**{**GEN.__dict__, "seed": 13})
    image = s.generate_image(params)
    assert _same(image, ref.generate(params, 32, 32))
    _check_lengths(s, ref)


def test_edit_turn(pipe):
    s, ref = _start(pipe)
    prepared = s.add_image(picture(), seed=5)
    ref.image(picture(), 5)
    s.add_text("make it blue")
    ref.user_text("make it blue")
    edited = s.generate_image(EDIT)  # no size given: the input image's
    assert edited.size == prepared.size
    assert _same(edited, ref.generate(EDIT, prepared.height, prepared.width))
    _check_lengths(s, ref)


def test_think_turn(pipe):
    s, ref = _start(pipe)
    thought, image = s.think_then_generate("a castle on the hill", GEN)
    ref.user_text(GEN_THINK_PROMPT)
    ref.user_text("a castle on the hill")
    assert thought == ref.reply(GEN)
    assert _same(image, ref.generate(GEN, 32, 32))
    _check_lengths(s, ref)


@pytest.mark.parametrize("scale", ["cfg_text_scale", "cfg_img_scale"])
def test_each_guidance_context_changes_the_image(pipe, scale):
    """The comparisons above can fail: without one guidance branch the image differs."""
    s, ref = _start(pipe)
    s.add_text("now at night")
    ref.user_text("now at night")
    image = s.generate_image(GEN)
    off = GenerationParams(**{**GEN.__dict__, scale: 1.0})
    assert not _same(image, ref.generate(off, 32, 32))
