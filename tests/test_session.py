"""The session: turn-by-turn == rebuilt, the three contexts across turns, fork, rewind,
and failing turns that change nothing."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from bagel.errors import ImageError, InputError
from workbench.params import GenerationParams
from workbench.session import Session

FAST = GenerationParams(
    num_timesteps=4,
    height=32,
    width=32,
    cfg_interval=(0.0, 1.0),
    cfg_img_scale=2.0,
    max_think_tokens=4,
)


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))


def next_logits(session: Session) -> torch.Tensor:
    return session.pipe.generate_text(session.main, 1, output_scores=True).scores[0]


def latent_after(session: Session, seed: int = 3) -> torch.Tensor:
    s = session
    return s.pipe.generate_image(
        s.main,
        32,
        32,
        FAST.sampler(),
        cfg_text_ctx=s.main.prefix(s.text_mark.length, s.text_mark.rope),
        cfg_img_ctx=s.image_dropped,
        generator=torch.Generator().manual_seed(seed),
    ).latent


def state(session: Session):
    return (
        session.main.length,
        session.main.rope,
        session.image_dropped.length,
        session.text_mark,
        len(session.turns),
    )


def test_turn_by_turn_equals_rebuilt_from_scratch(pipe):
    s = Session(pipe)
    s.add_text("a small house")
    generated = s.generate_image(FAST)
    s.add_image(picture(1), seed=5)
    s.add_text("now in winter")

    # the same content appended to fresh contexts in one go
    main, img = pipe.new_context(), pipe.new_context()
    pipe.append_text(main, "a small house")
    pipe.append_text(img, "a small house")
    pipe.append_image(main, generated, generator=torch.Generator().manual_seed(FAST.seed))
    pipe.append_image(main, picture(1), generator=torch.Generator().manual_seed(5))
    mark = (main.length, main.rope)
    pipe.append_text(main, "now in winter")
    pipe.append_text(img, "now in winter")
    rebuilt = Session(pipe, main, img)
    rebuilt.text_mark = type(s.text_mark)(*mark)

    assert state(s)[:4] == state(rebuilt)[:4]
    torch.testing.assert_close(next_logits(s), next_logits(rebuilt), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(latent_after(s), latent_after(rebuilt), rtol=1e-5, atol=1e-5)


def test_three_contexts_across_turns(pipe):
    s = Session(pipe)
    prepared = s.add_image(picture(2))
    image_tokens = s.main.length
    assert s.text_mark.length == image_tokens and s.image_dropped.length == 0  # no images there
    s.add_text("make it blue")
    n = len(pipe.tokenizer.frame("make it blue"))
    assert s.main.length == image_tokens + n
    assert s.text_mark.length == image_tokens  # text-dropped: main before the last text
    assert s.image_dropped.length == n
    s.generate_image(GenerationParams.edit(num_timesteps=3))
    assert s.turns[-1].image.size == prepared.size  # edit keeps the input size
    assert s.main.length == image_tokens + n + image_tokens  # the output re-entered as VAE+ViT
    assert s.text_mark.length == s.main.length and s.main.rope == 2 + n + 2
    assert s.image_dropped.length == n


def test_a_reply_stays_in_the_main_context_only(pipe):
    s = Session(pipe)
    s.add_image(picture(3))
    before_img = s.image_dropped.length
    reply = s.ask("what is this?", FAST)
    assert isinstance(reply, str) and s.turns[-1].role == "model"
    assert s.image_dropped.length == before_img + len(pipe.tokenizer.frame("what is this?"))
    assert s.main.length == s.text_mark.length + len(pipe.tokenizer.frame("what is this?")) + len(
        pipe.tokenizer.frame(reply)
    )


def test_think_then_generate_keeps_the_thought_out_of_the_guidance_contexts(pipe):
    s = Session(pipe)
    thought, image = s.think_then_generate("a castle", FAST)
    kinds = [(t.role, t.kind) for t in s.turns]
    assert kinds == [("user", "text"), ("user", "text"), ("model", "thinking"), ("model", "image")]
    assert image.size == (32, 32) and isinstance(thought, str)
    frame = pipe.tokenizer.frame
    assert s.image_dropped.length == len(frame(s.turns[0].text)) + len(frame("a castle"))


def test_fork_branches_are_independent_and_share_memory(pipe):
    s = Session(pipe)
    s.add_text("a forest path")
    s.add_image(picture(4))
    expected = latent_after(s)
    branch = s.fork()
    branch.add_text("with snow")
    branch.generate_image(FAST)
    assert torch.equal(latent_after(s), expected)  # the parent did not change
    assert len(s.turns) == 2 and len(branch.turns) == 4
    shared = s.main.spans[0][0]
    assert branch.main.spans[0][0] is shared  # no copy of the past
    both = s.memory().allocated_bytes + branch.memory().allocated_bytes
    from bagel.kv import allocated_bytes

    assert allocated_bytes(s.main, s.image_dropped, branch.main, branch.image_dropped) < both


def test_rewind_then_redo_equals_never_having_done(pipe):
    a, b = Session(pipe), Session(pipe)
    a.add_text("a boat")
    a.add_image(picture(5))
    a.add_text("at night")
    a.generate_image(FAST)
    a.rewind(2)
    a.add_text("at dawn")
    b.add_text("a boat")
    b.add_image(picture(5))
    b.add_text("at dawn")
    assert state(a) == state(b)
    torch.testing.assert_close(next_logits(a), next_logits(b), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(latent_after(a), latent_after(b), rtol=1e-5, atol=1e-5)


def test_failing_turns_change_nothing(pipe):
    s = Session(pipe)
    s.add_text("start")
    before = state(s)
    with pytest.raises(ImageError):
        s.add_image(b"not an image")
    with pytest.raises(InputError, match="do not fit"):
        s.add_text("word " * pipe.config.llm.max_position_embeddings)
    with pytest.raises(InputError, match="multiple of 16"):
        s.generate_image(GenerationParams(height=30, width=32))
    with pytest.raises(InputError, match="text must be a str"):
        s.ask(42)
    with pytest.raises(InputError, match="cannot rewind 5"):
        s.rewind(5)
    assert state(s) == before


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(num_timesteps=-3), "num_timesteps"),
        (dict(cfg_interval=(0.2, 1.4)), "cfg_interval"),
        (dict(height=64), "height and width must be given together"),
        (dict(seed=-1), "seed must be an integer between 0 and 2"),
        (dict(do_sample=True, temperature=0), "temperature must be >= 0.001"),
        (dict(do_sample=True, temperature=1e-300), "temperature must be >= 0.001"),
    ],
)
def test_bad_generation_params(kwargs, message):
    with pytest.raises(InputError, match=message):
        GenerationParams(**kwargs)
