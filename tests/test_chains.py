"""Chains: frames and context growth per step, traces, stop reasons, constrained choices
that equal the argmax of independently computed scores, replay, and bad input that
changes nothing."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from PIL import Image

from bagel.contexts import prefill
from bagel.errors import ImageError, InputError
from bagel.llm import Routing
from workbench import chains
from workbench.chains import ACTIONS, DEFAULT_TEMPLATES, Beat
from workbench.chains import checks as chain_checks
from workbench.params import GenerationParams
from workbench.session import Session
from workbench.store import load, replay, save

FAST = GenerationParams(num_timesteps=3, height=32, width=32, max_think_tokens=4, seed=1)


def picture(seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.fixture
def session(pipe):
    s = Session(pipe)
    s.add_image(picture())
    return s


def state(s: Session):
    return (s.main.length, s.main.rope, s.image_dropped.length, s.text_mark, len(s.turns))


def text_tokens(s: Session, text: str) -> int:
    return len(s.pipe.tokenizer.frame(text))


def independent_scores(pipe, ctx, options: list[str]) -> list[float]:
    """log p(option, <|im_end|> | ctx, <|im_start|>) fed one token at a time, the way
    generate_text decodes (its first logits are checked against generate_text's)."""
    lm_head, out = pipe.net.language_model.lm_head, []
    first = pipe.generate_text(ctx, 1, output_scores=True).scores[0]
    for option in options:
        targets = [*pipe.tokenizer.encode(option), pipe.tokenizer.eos_id]
        scratch, token, total = ctx.fork(), pipe.tokenizer.bos_id, 0.0
        for target in targets:
            hidden = prefill(
                pipe.net,
                pipe.backend,
                scratch,
                pipe.net.embed_tokens(torch.tensor([token])),
                torch.tensor([scratch.rope]),
                Routing.text(1),
                causal=True,
                rope_advance=1,
            )
            with torch.inference_mode():
                logits = lm_head(hidden[0, -1]).float()
            if token == pipe.tokenizer.bos_id:
                torch.testing.assert_close(logits, first)
            total += float(torch.log_softmax(logits, dim=-1)[target])
            token = target
        out.append(total)
    return out


def scripted(pipe, monkeypatch, answers: list[str]):
    """Make the model's choices follow `answers` (one per question; then the real ones)."""
    real, queue = pipe.score_continuations, list(answers)

    def score(ctx, options):
        if not queue:
            return real(ctx, options)
        want = queue.pop(0)
        return [0.0 if option == want else -5.0 for option in options]

    monkeypatch.setattr(pipe, "score_continuations", score)


# -- scoring and the choice turn ----------------------------------------------------------


def test_score_continuations_equals_token_by_token_and_changes_nothing(pipe, session):
    session.add_text("which way?")
    options = ["yes", "no", "turn_left", "strafe_right"]
    before = (session.main.length, session.main.rope)
    scores = pipe.score_continuations(session.main, options)
    assert (session.main.length, session.main.rope) == before
    expected = independent_scores(pipe, session.main, options)
    np.testing.assert_allclose(scores, expected, rtol=1e-5, atol=1e-4)
    assert len(set(scores)) == len(scores) and all(x < 0 for x in scores)


def test_choose_records_question_and_answer(pipe, session):
    before = session.main.length
    answer, scores = session.choose("is it a cat?", ["yes", "no"])
    assert answer == ["yes", "no"][int(np.argmax(scores))]
    question, choice = session.turns[-2:]
    assert (question.role, question.kind, question.text) == ("user", "text", "is it a cat?")
    assert (choice.role, choice.kind, choice.text) == ("model", "choice", answer)
    assert choice.options == ("yes", "no") and choice.scores == tuple(scores)
    assert session.main.length == before + text_tokens(session, "is it a cat?") + text_tokens(
        session, answer
    )


@pytest.mark.parametrize(
    ("options", "message"),
    [([], "non-empty list"), ("yes", "non-empty list"), (["yes", ""], "non-empty string")],
)
def test_bad_choice_changes_nothing(session, options, message):
    before = state(session)
    with pytest.raises(InputError, match=message):
        session.choose("is it?", options)
    with pytest.raises(InputError, match="distinct"):
        session.choose("is it?", ["yes", "yes"])
    with pytest.raises(InputError, match=message):
        session.answer(options)  # the answer alone checks its options the same way
    assert state(session) == before


def test_answer_alone_is_chooses_second_half(pipe, session):
    """`answer` after a question added as a user text gives what `choose` gives."""
    fork = session.fork()
    expected = fork.choose("is it a cat?", ["yes", "no"])
    session.add_text("is it a cat?")
    assert session.answer(["yes", "no"]) == expected
    fields = lambda t: (t.role, t.kind, t.text, t.options, t.scores, t.before)  # noqa: E731
    assert [fields(t) for t in session.turns] == [fields(t) for t in fork.turns]
    assert (session.main.length, session.main.rope) == (fork.main.length, fork.main.rope)


# -- the chains ---------------------------------------------------------------------------


def test_navigate_grows_the_context_by_each_step_and_uses_the_templates(session):
    per_image = session.main.length
    templates = {"turn_left": "Pan left by thirty degrees."}
    steps = ["forward", "turn_left", "forward"]
    lengths, turns = [session.main.length], len(session.turns)
    result = chains.navigate(session, steps, FAST, templates=templates)
    assert result.kind == "navigate" and result.stopped == "done"
    assert [f.label for f in result.frames] == steps
    assert len(session.turns) == turns + 2 * len(steps) == turns + len(result.trace)
    texts = [templates.get(a, DEFAULT_TEMPLATES[a]) for a in steps]
    for k, text in enumerate(texts):
        instruction, image = result.trace[2 * k : 2 * k + 2]
        assert (instruction.kind, instruction.text, image.kind) == ("instruction", text, "image")
        assert session.turns[instruction.turn].text == text
        frame = result.frames[k]
        assert frame.turn == image.turn and session.turns[frame.turn].image is frame.image
        assert session.turns[frame.turn].params.seed == FAST.seed + k  # frame k: seed + k
        lengths.append(lengths[-1] + text_tokens(session, text) + per_image)
    assert session.main.length == lengths[-1]
    assert [t.before[0].length for t in session.turns[turns::2]] == lengths[:-1]


def test_rotate_fills_the_template_per_step(session):
    result = chains.rotate(session, 22.5, 3, axis="depth", params=FAST)
    assert [f.label for f in result.frames] == ["22.5deg", "45deg", "67.5deg"]
    expected = "Rotate the object 22.5 degrees about its depth axis."
    assert [s.text for s in result.trace if s.kind == "instruction"] == [expected] * 3
    own = chains.rotate(session, -30, 1, params=FAST, template="Spin it {degrees} degrees.")
    assert own.trace[0].text == "Spin it -30 degrees." and len(own.frames) == 1


def test_predict_autoregressive_with_and_without_an_instruction(session):
    per_image, turns = session.main.length, len(session.turns)
    result = chains.predict(session, 2, FAST)
    assert [f.label for f in result.frames] == ["t+1", "t+2"]
    assert [s.kind for s in result.trace] == ["image", "image"]
    assert len(session.turns) == turns + 2 and session.main.length == 3 * per_image
    result = chains.predict(session, 2, FAST, instruction="The next moment.")
    assert [s.kind for s in result.trace] == ["instruction", "image"] * 2
    assert session.main.length == 5 * per_image + 2 * text_tokens(session, "The next moment.")


def test_predict_forcing_window_1_makes_the_autoregressive_frames(pipe, session):
    other = Session(pipe)
    other.add_image(picture())
    forced = chains.predict(session, 3, FAST, mode="forcing")
    stepwise = chains.predict(other, 3, FAST)
    assert [f.label for f in forced.frames] == ["t+1", "t+2", "t+3"]
    for a, b in zip(forced.frames, stepwise.frames, strict=True):
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert state(session) == state(other)
    assert [t.forcing.index for t in session.turns[1:]] == [0, 1, 2]


def test_predict_forcing_pyramid_saves_and_replays_identically(pipe, session, tmp_path):
    before = state(session)
    result = chains.predict(
        session, 3, FAST, mode="forcing", window=2, schedule="pyramid", instruction="Next."
    )
    assert [s.kind for s in result.trace] == ["instruction", "image", "image", "image"]
    assert len(result.frames) == 3 and state(session)[4] == before[4] + 4
    folder = save(session, tmp_path / "forced")
    loaded = load(folder, pipe)
    assert [t.forcing for t in loaded.turns] == [t.forcing for t in session.turns]
    report = replay(folder, pipe)
    assert report.identical and [f.turn for f in report.frames] == [2, 3, 4]


def test_predict_forcing_cancelled_or_bad_changes_nothing(session):
    before = state(session)

    def cancel(done, total):
        if done == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chains.predict(
            session, 3, FAST, mode="forcing", window=2, schedule="uniform", progress=cancel
        )
    assert state(session) == before
    with pytest.raises(InputError, match="apply to mode='forcing'"):
        chains.predict(session, 3, FAST, window=2)
    with pytest.raises(InputError, match="window 1"):
        chains.predict(session, 3, FAST, mode="forcing", window=2)
    assert state(session) == before


def test_story_keeps_every_beat_and_captions_each_frame(pipe):
    s = Session(pipe)
    beats = ["a fox in a forest", Beat("the fox meets an owl", picture(7))]
    result = chains.story(s, beats, FAST, caption=True)
    kinds = [(t.role, t.kind) for t in result.trace]
    assert [k for _, k in kinds] == [
        "instruction",
        "image",
        "question",
        "caption",
        "reference",
        "instruction",
        "image",
        "question",
        "caption",
    ]
    assert [t.role for t in result.trace[4:5]] == ["user"]  # the reference is a user image
    assert [f.label for f in result.frames] == ["beat-1", "beat-2"]
    for frame in result.frames:
        caption = s.turns[frame.turn + 2]
        assert caption.kind == "text" and caption.role == "model"
        assert frame.caption == caption.text
    assert len(s.turns) == len(result.trace)  # every turn of the story is in the trace
    assert s.main.length > result.trace[4].turn  # the second beat sees the first


def test_edit_stops_at_max_rounds_and_keeps_the_whole_trace(pipe, session, monkeypatch):
    scripted(pipe, monkeypatch, ["no", "no", "no"])
    result = chains.edit(session, "make it blue", FAST, max_rounds=3)
    assert result.stopped == "max_rounds" and len(result.frames) == 3
    assert [s.kind for s in result.trace] == ["instruction", "image", "question", "judgement"] * 3
    assert [s.text for s in result.trace if s.kind == "judgement"] == ["no"] * 3
    judgement = result.trace[3]
    assert judgement.scores == {"yes": -5.0, "no": 0.0}


def test_edit_with_thinking_stops_when_judged_ok(pipe, session, monkeypatch):
    scripted(pipe, monkeypatch, ["no", "yes"])
    result = chains.edit(session, "add a hat", FAST, think=True, max_rounds=5)
    assert result.stopped == "judged_ok" and [f.label for f in result.frames] == [
        "round-1",
        "round-2",
    ]
    one_round = ["system", "instruction", "thinking", "image", "question", "judgement"]
    assert [s.kind for s in result.trace] == one_round * 2
    assert result.trace[2].role == "model" and isinstance(result.trace[2].text, str)


def test_edit_judge_uses_the_real_scores(session):
    result = chains.edit(session, "make it blue", FAST, max_rounds=2)
    judgements = [s for s in result.trace if s.kind == "judgement"]
    for j in judgements:
        assert j.text == max(j.scores, key=j.scores.get)
    assert result.stopped == ("judged_ok" if judgements[-1].text == "yes" else "max_rounds")


def test_agent_choice_is_the_argmax_of_independent_scores(pipe, session):
    allowed = ["turn_left", "look_down", "strafe_right"]
    result = chains.agent(session, "find the river", allowed, FAST, max_steps=2)
    choices = [s for s in result.trace if s.kind == "action"]
    assert choices and result.stopped in ("goal", "max_steps")
    for step in choices:
        assert step.text in [*allowed, "done"]
        before = session.turns[step.turn].before[0]
        ctx = session.main.prefix(before.length, before.rope)
        scores = independent_scores(pipe, ctx, [*allowed, "done"])
        assert step.text == [*allowed, "done"][int(np.argmax(scores))]
        np.testing.assert_allclose(list(step.scores.values()), scores, rtol=1e-5, atol=1e-4)
    rendered = [f.label for f in result.frames]
    assert rendered == [c.text for c in choices if c.text != "done"]


def test_agent_stops_at_the_goal_and_grows_by_each_step(pipe, session, monkeypatch):
    scripted(pipe, monkeypatch, ["back", "done"])
    per_image, start = session.main.length, session.main.length
    templates = {"back": "Step back."}
    result = chains.agent(session, "see the whole room", params=FAST, templates=templates)
    assert result.stopped == "goal" and [f.label for f in result.frames] == ["back"]
    kinds = [s.kind for s in result.trace]
    assert kinds == ["question", "action", "instruction", "image", "question", "action"]
    question = result.trace[0].text
    assert "see the whole room" in question and "strafe_right, done" in question
    assert result.trace[2].text == "Step back."
    grown = 2 * text_tokens(session, question) + text_tokens(session, "back")
    grown += text_tokens(session, "done") + text_tokens(session, "Step back.") + per_image
    assert session.main.length == start + grown


def test_agent_session_saves_loads_and_replays(pipe, session, tmp_path):
    chains.agent(session, "find the door", ["forward", "turn_right"], FAST, max_steps=2)
    folder = save(session, tmp_path / "agent")
    loaded = load(folder, pipe)
    assert [(t.role, t.kind, t.text, t.options) for t in loaded.turns] == [
        (t.role, t.kind, t.text, t.options) for t in session.turns
    ]
    assert state(loaded) == state(session)
    report = replay(folder, pipe)
    choices = [i for i, t in enumerate(session.turns) if t.kind == "choice"]
    assert report.identical and [i for i, _ in report.texts_equal] == choices
    assert len(report.frames) == sum(t.role == "model" and t.kind == "image" for t in loaded.turns)


def test_progress_counts_denoising_steps_over_the_chain(session):
    calls = []
    chains.navigate(session, ["forward", "back"], FAST, progress=lambda i, n: calls.append((i, n)))
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]


def test_a_chain_that_fails_midway_is_undone(session):
    before = state(session)

    def cancel(done, total):
        if done == 3:  # during the second frame
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        chains.navigate(session, ["forward", "back"], FAST, progress=cancel)
    assert state(session) == before


BAD = [
    (lambda s: chains.navigate(s, ["forward", "jump"], FAST), "unknown action 'jump'.*strafe"),
    (lambda s: chains.navigate(s, [], FAST), "actions must be a non-empty list"),
    (lambda s: chains.navigate(s, ["forward"], FAST, {"fly": "Fly."}), "unknown action 'fly'"),
    (lambda s: chains.navigate(s, ["forward"], FAST, {"back": ""}), r"templates\['back'\]"),
    (lambda s: chains.navigate(s, ["back"], GenerationParams(height=40, width=32)), "multiple"),
    (lambda s: chains.navigate(s, ["back"], {"seed": 1}), "must be a GenerationParams"),
    (lambda s: chains.rotate(s, float("nan"), 2, params=FAST), "degrees must be finite"),
    (lambda s: chains.rotate(s, "30", 2, params=FAST), "degrees must be a number"),
    (lambda s: chains.rotate(s, 30, 0, params=FAST), "steps must be an integer >= 1"),
    (lambda s: chains.rotate(s, 30, 2, axis="diagonal", params=FAST), "axis must be one of"),
    (lambda s: chains.rotate(s, 30, 2, params=FAST, template="Spin it."), "must contain"),
    (lambda s: chains.rotate(s, 30, 2, params=FAST, template="{degrees} {speed}"), "speed"),
    (lambda s: chains.rotate(s, 30, 2, params=FAST, template="{degrees"), "not a valid"),
    (lambda s: chains.predict(s, 0, FAST), "frames must be an integer >= 1"),
    (lambda s: chains.predict(s, 2, FAST, mode="magic"), "mode must be one of"),
    (lambda s: chains.predict(s, 2, FAST, mode="forcing", window=0), "window must be"),
    (lambda s: chains.predict(s, 2, FAST, mode="forcing", schedule="x"), "schedule must be"),
    (lambda s: chains.predict(s, 2, FAST, instruction=""), "instruction must be"),
    (lambda s: chains.story(s, ["a", 3], FAST), r"beats\[1\] must be a str or a Beat"),
    (lambda s: chains.story(s, ["a", Beat(" ")], FAST), r"beats\[1\].text"),
    (lambda s: chains.story(s, ["a", Beat("b", b"junk")], FAST), r"beats\[1\].image"),
    (lambda s: chains.story(s, ["a"], FAST, caption="yes"), "caption must be True or False"),
    (lambda s: chains.edit(s, "blue", FAST, max_rounds=0), "max_rounds must be"),
    (lambda s: chains.edit(s, 5, FAST), "instruction must be"),
    (lambda s: chains.agent(s, "go", ["forward", "forward"], FAST), "distinct"),
    (lambda s: chains.agent(s, "go", ["fly"], FAST), "unknown action 'fly'"),
    (lambda s: chains.agent(s, "", params=FAST), "goal must be"),
    (lambda s: chains.agent(s, "go", params=FAST, max_steps=-1), "max_steps must be"),
    (lambda s: chains.navigate(s, ["back"], FAST, progress=3), "progress must be callable"),
]


@pytest.mark.parametrize(("call", "message"), BAD)
def test_bad_input_changes_nothing(session, call, message):
    before = state(session)
    with pytest.raises((InputError, ImageError), match=message):
        call(session)
    assert state(session) == before


@pytest.mark.parametrize("chain", ["rotate", "predict", "edit", "agent"])
def test_chains_that_start_from_an_image_refuse_an_empty_session(pipe, chain):
    s = Session(pipe)
    calls = {
        "rotate": lambda: chains.rotate(s, 30, 1, params=FAST),
        "predict": lambda: chains.predict(s, 1, FAST),
        "edit": lambda: chains.edit(s, "blue", FAST),
        "agent": lambda: chains.agent(s, "go", params=FAST),
    }
    with pytest.raises(InputError, match=f"{chain} starts from an image"):
        calls[chain]()
    assert len(s.turns) == 0 and s.main.length == 0


def test_actions_and_templates_agree():
    assert set(DEFAULT_TEMPLATES) == set(ACTIONS) and len(ACTIONS) == 8


def test_check_template_bounds_what_a_template_can_expand_to():
    assert chain_checks.check_template("Turn {degrees:>8} degrees about {axis}") is not None
    for template, says in [
        ("{degrees:>10000000}", "width or precision over 100"),
        ("{degrees:.101}", "width or precision over 100"),
        ("{degrees:>{axis}}", "may not hold a placeholder"),
        ("{degrees[0]}", "unknown placeholder"),
        ("turn {axis}", "must contain {degrees}"),
        ("{degrees", "not a valid template"),
    ]:
        with pytest.raises(InputError, match=re.escape(says)):
            chain_checks.check_template(template)
