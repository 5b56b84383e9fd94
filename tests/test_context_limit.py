"""Context limits: refuse, drop_vit and keep_last_images on the tiny model; a context
with dropped tokens == the same reduced sequence computed from scratch; rewind across a
drop; failing turns that change nothing; memory per branch with shared storage."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from test_pipeline import latent_segment, text_embeds, vit_segment

from bagel.contexts import wrap_image
from bagel.errors import InputError
from bagel.llm import Routing
from workbench.memory import memory_report
from workbench.params import ContextLimit, GenerationParams
from workbench.session import Session
from workbench.transcript import Mark, image_rows

from reference_forward import Sequence, reference_forward

FAST = GenerationParams(
    num_timesteps=3, height=32, width=32, cfg_interval=(0.0, 1.0), cfg_img_scale=2.0, seed=7
)
# picture(): 48x32 → 8 VAE rows (2x3 latent tokens + markers) and 8 ViT rows (2x3 patches
# of 14 px + markers); "a red cat" is 5 text rows; a 32x32 output is 6 + 6 rows.
DROP_VIT = ContextLimit(max_tokens=25, policy="drop_vit")  # 16 + 5 + 12 = 33 needs a drop


def picture(seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 48, 3), dtype=np.uint8))


def state(s: Session):
    return (s.main.length, s.main.rope, s.image_dropped.length, s.text_mark, len(s.turns))


def keys(s: Session) -> torch.Tensor:
    return torch.cat([k for k, _ in s.main.chunks(0)], dim=1)


def next_logits(s: Session) -> torch.Tensor:
    return s.pipe.generate_text(s.main, 1, output_scores=True).scores[0]


def image_then_text(pipe, limit: ContextLimit) -> Session:
    s = Session(pipe, limit=limit)
    s.add_image(picture(1), seed=1)  # rows 0..7 VAE, 8..15 ViT; positions 0, 1
    s.add_text("a red cat")  # rows 16..20, positions 2..6
    return s


def test_sizes_this_file_relies_on(pipe):
    s = image_then_text(pipe, ContextLimit())
    assert pipe.image_token_counts(48, 32) == (8, 8) and pipe.image_token_counts(32, 32) == (6, 6)
    assert image_rows(s.turns) == {(0, "vae"): (0, 8), (0, "vit"): (8, 16)}
    assert state(s)[:4] == (21, 7, 5, Mark(16, 2))


def test_refuse_names_tokens_budget_and_position(pipe):
    s = image_then_text(pipe, ContextLimit(max_tokens=30))
    before = state(s)
    with pytest.raises(InputError) as err:
        s.add_image(picture(2))
    message = str(err.value)
    for part in ("needs 16 tokens", "budget of 30", "holds 21", "'refuse'", "position 7"):
        assert part in message
    assert state(s) == before
    s.add_text("a")  # 3 tokens still fit
    assert s.main.length == 24


def test_drop_vit_removes_the_oldest_vit_tokens_until_the_turn_fits(pipe):
    s = image_then_text(pipe, DROP_VIT)
    s.generate_image(FAST)
    drop = s.turns[2]
    assert (drop.role, drop.kind, drop.dropped) == ("session", "drop", ((0, "vit"),))
    # the ViT rows are gone, the rope is not; the text-dropped prefix lost them too
    assert s.main.length == 25 and s.main.rope == 9
    assert s.turns[3].before[1] == Mark(8, 2)  # what generation used: A's VAE rows only
    assert image_rows(s.turns) == {(0, "vae"): (0, 8), (3, "vae"): (13, 19), (3, "vit"): (19, 25)}
    # the next image does not fit even without the generated ViT (25 - 6 + 16 > 25):
    # refused, and nothing is dropped
    with pytest.raises(InputError, match="even without the ViT tokens of every earlier image"):
        s.add_image(picture(2))
    assert len(s.turns) == 4
    s.limit = ContextLimit(max_tokens=35, policy="drop_vit")
    s.add_image(picture(2))  # 25 + 16 > 35: dropping the generated ViT (6) is enough
    assert s.turns[4].dropped == ((3, "vit"),) and s.main.length == 35


def test_drop_vit_drops_the_oldest_first_and_only_what_is_needed(pipe):
    s = Session(pipe, limit=ContextLimit(max_tokens=35, policy="drop_vit"))
    s.add_image(picture(1))
    s.add_image(picture(2))
    s.add_text("a red cat")  # 32 + 5 > 35: one ViT part is enough
    assert s.turns[2].dropped == ((0, "vit"),) and s.main.length == 29


def test_keep_last_images_drops_older_images_before_each_turn(pipe):
    s = Session(pipe, limit=ContextLimit(policy="keep_last_images", keep_images=1))
    s.add_image(picture(1))
    s.add_text("a red cat")
    s.add_image(picture(2))  # image 0 is still the last one before this turn: kept
    assert s.main.length == 37 and [t.kind for t in s.turns] == ["image", "text", "image"]
    s.add_text("a")
    assert [t.kind for t in s.turns] == ["image", "text", "image", "drop", "text"]
    assert s.turns[3].dropped == ((0, "vae"), (0, "vit"))
    assert s.main.length == 37 - 16 + 3 and s.main.rope == 2 + 5 + 2 + 3
    assert image_rows(s.turns) == {(2, "vae"): (5, 13), (2, "vit"): (13, 21)}
    s.limit = ContextLimit(max_tokens=24, policy="keep_last_images", keep_images=1)
    with pytest.raises(InputError, match="even keeping only the last 1 images"):
        s.add_text("a")  # 24 + 3 > 24, and the only image left is the last one


def test_a_context_with_dropped_tokens_equals_the_reduced_sequence_from_scratch(pipe):
    s = image_then_text(pipe, ContextLimit(max_tokens=16, policy="drop_vit"))
    assert [t.kind for t in s.turns] == ["image", "drop", "text"]  # 16 + 5 > 16
    prepared = pipe.prepare_image(picture(1))
    latent = pipe.encode_latent(prepared, torch.Generator().manual_seed(1))
    seq = Sequence()
    seq.add_image(latent_segment(pipe, latent), latent=True)  # position 0
    seq.add_image(vit_segment(pipe, prepared), latent=False)  # position 1 ...
    for column in (seq.embeds, seq.positions, seq.is_gen, seq.causal):
        del column[1]  # ... dropped: its position stays used
    seq.add_text(text_embeds(pipe, "a red cat"))  # positions 2..6
    assert (s.main.length, s.main.rope) == (sum(e.shape[0] for e in seq.embeds), seq.rope)

    text_query = seq.copy()
    text_query.add_text(pipe.net.embed_tokens(torch.tensor([pipe.tokenizer.bos_id])))
    hidden = reference_forward(pipe.net.language_model, *text_query.tensors())
    expected = pipe.net.language_model.lm_head(hidden[-1])
    torch.testing.assert_close(next_logits(s), expected, rtol=1e-4, atol=1e-4)

    x = torch.randn(4, 64, generator=torch.Generator().manual_seed(3))
    t = torch.tensor(0.6)
    with torch.inference_mode():
        query = wrap_image(
            pipe.net, pipe.tokenizer, pipe.net.latent_tokens(x, t.reshape(1), (2, 2))
        )
    image_query = seq.copy()
    image_query.add_image(query, latent=True)  # at position 7, after the dropped one
    hidden = reference_forward(pipe.net.language_model, *image_query.tensors())
    with torch.inference_mode():
        expected = pipe.net.llm2vae(hidden[-5:-1])
    velocity = pipe.velocity(x, t, (2, 2), [s.main], Routing.latent_spans(6, [(1, 5)]))
    torch.testing.assert_close(velocity[0], expected, rtol=1e-4, atol=1e-4)


def test_generation_after_a_drop_equals_hand_built_contexts(pipe):
    s = image_then_text(pipe, DROP_VIT)
    image = s.generate_image(FAST)
    main, texts = pipe.new_context(), pipe.new_context()
    pipe.append_image(main, picture(1), generator=torch.Generator().manual_seed(1))
    for ctx in (main, texts):
        pipe.append_text(ctx, "a red cat")
    main.drop([(8, 16)])
    out = pipe.generate_image(
        main,
        32,
        32,
        FAST.sampler(),
        cfg_text_ctx=main.prefix(8, 2),  # the text-dropped context: image 0's VAE rows
        cfg_img_ctx=texts,
        generator=FAST.generator(),
    )
    assert np.array_equal(np.asarray(out.image), np.asarray(image))


def test_rewind_across_a_drop_restores_the_earlier_context(pipe):
    s = image_then_text(pipe, DROP_VIT)
    before, before_keys, before_logits = state(s), keys(s), next_logits(s)
    first = s.generate_image(FAST)
    s.rewind(1)  # the image only: the drop stays
    assert [t.kind for t in s.turns] == ["image", "text", "drop"] and s.main.length == 13
    assert s.text_mark == Mark(8, 2)
    assert np.array_equal(np.asarray(s.generate_image(FAST)), np.asarray(first))  # redo
    s.rewind(2)  # the image and the drop
    assert state(s) == before and torch.equal(keys(s), before_keys)
    torch.testing.assert_close(next_logits(s), before_logits, rtol=0, atol=0)
    s.limit = ContextLimit()
    s.add_image(picture(2))  # appends after the restored rows, into a fresh block
    assert torch.equal(keys(s)[:, :21], before_keys) and s.main.length == 37


def test_failing_turns_undo_their_drop(pipe):
    s = image_then_text(pipe, DROP_VIT)
    before, before_keys = state(s), keys(s)

    def cancel(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        s.generate_image(FAST, progress=cancel)  # after the drop, during sampling
    assert state(s) == before and torch.equal(keys(s), before_keys)
    with pytest.raises(InputError, match="needs 19 tokens"):
        s.ask("a", GenerationParams(max_think_tokens=14))  # 21 - 8 + 3 + 16 > 25
    assert state(s) == before
    with pytest.raises(InputError, match="positions do not fit"):
        s.add_text("word " * pipe.config.llm.max_position_embeddings)
    assert state(s) == before


def test_fork_memory_counts_shared_blocks_once(pipe):
    s = Session(pipe)
    s.add_text("word " * 300)  # long enough to fill its blocks: bytes ≈ tokens
    branch = s.fork()
    branch.add_text("with snow")
    parent, child = (report := memory_report(s, branch)).branches
    per_token = pipe.kv_layout.bytes_per_token
    n = s.main.length
    assert (parent.main_tokens, parent.image_dropped_tokens) == (n, n)
    assert child.main_tokens == n + 8 and child.text_dropped_tokens == n  # "with snow": 8
    assert parent.read_bytes == 2 * n * per_token
    assert child.read_bytes == 2 * (n + 8) * per_token
    assert parent.exclusive_bytes == 0  # everything it holds, the branch reads too
    assert child.exclusive_bytes == 2 * 256 * per_token  # its own tail blocks
    assert report.total_bytes == parent.allocated_bytes + child.exclusive_bytes
    assert report.total_bytes < parent.read_bytes + child.read_bytes
    assert s.memory() == dataclasses.replace(parent, exclusive_bytes=parent.allocated_bytes)


def test_memory_keeps_counting_rows_kept_for_undo(pipe):
    s = image_then_text(pipe, ContextLimit(max_tokens=16, policy="drop_vit"))
    m = s.memory()
    assert (m.main_tokens, m.text_dropped_tokens, m.image_dropped_tokens) == (13, 8, 5)
    # the text went to a fresh block (the drop removed the tail rows of the first one,
    # which the undo context still reads): two blocks for main, one for the texts
    assert m.allocated_bytes == 3 * 256 * pipe.kv_layout.bytes_per_token
    assert m.read_bytes == (13 + 5) * pipe.kv_layout.bytes_per_token
    assert s.kept_contexts()[2] is s.turns[1].undo


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(max_tokens=0), "max_tokens must be a positive integer"),
        (dict(policy="lru"), "policy must be one of"),
        (dict(policy="drop_vit"), "needs max_tokens"),
        (dict(policy="keep_last_images"), "keep_images is set with"),
        (dict(keep_images=2), "keep_images is set with"),
        (dict(policy="keep_last_images", keep_images=0), "keep_images must be a positive"),
    ],
)
def test_bad_context_limits(kwargs, message):
    with pytest.raises(InputError, match=message):
        ContextLimit(**kwargs)
