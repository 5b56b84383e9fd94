"""The most RoPE positions a scenario's run can take, counted before it runs.

A run that passes the model's position limit is refused by the session at the turn
that would pass it, after the steps before it were saved. Counting the turns of every
chain up front (their texts through the model's tokenizer) lets the scenario be refused
before anything is written instead. The count follows the turns each chain appends
(workbench/chains/__init__.py) and the positions each session verb reserves: a text takes its
framed tokens, an image FRAME_ROPE_STRIDE positions (its VAE and its ViT block), a reply
up to max_think_tokens + 2, a constrained choice its longest option + 1.

It is exact for chains without replies or early stops; an agent or edit loop that stops
early takes less. A reply is counted as the session reserves it before the turn: the
reply's text is tokenized again when it enters the context (as in the reference), and a
text that re-encodes into more tokens than were generated (the random tiny model's
broken UTF-8 does) takes more, so near the limit such a run can still be refused once
running, by the session.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, Any

from bagel.forcing import FRAME_ROPE_STRIDE
from bagel.tokenizer import GEN_THINK_PROMPT
from workbench import chains
from workbench.params import GenerationParams

if TYPE_CHECKING:
    from bagel.pipeline import BagelPipeline
    from workbench.scenario.read import Scenario

IMAGE = FRAME_ROPE_STRIDE
# each chain's keyword defaults, read once from workbench.chains (a scenario passes only
# the keys its file gives); taken at import, before anything can stand in for a chain
DEFAULTS = {
    name: {
        key: p.default
        for key, p in inspect.signature(getattr(chains, name)).parameters.items()
        if p.default is not p.empty
    }
    for name in ("navigate", "rotate", "predict", "story", "edit", "agent")
}


def scenario_positions(scenario: Scenario, pipe: BagelPipeline) -> list[tuple[str, int]]:
    """(field, positions taken once it has run) for the start and each step, cumulative."""
    count = _Counter(pipe)
    total, out = 0, []
    if scenario.start.image is not None:
        total = IMAGE
        out.append(("start.image", total))
    elif scenario.start.prompt is not None:  # a blank prompt is a framed empty text
        total = count.text(scenario.start.prompt) + IMAGE
        out.append(("start.prompt", total))
    for i, step in enumerate(scenario.steps):
        total += getattr(count, step.chain)(_Args(step.chain, step.args, step.params))
        out.append((f"steps[{i}].{step.chain}", total))
    return out


def chain_positions(
    pipe: BagelPipeline, chain: str, args: dict[str, Any], params: GenerationParams
) -> int:
    """The most positions `workbench.chains.<chain>(session, **args, params=params)` can
    take (args left out take the chain's defaults; story beats are `chains.Beat`s). Its
    texts must be valid Unicode and a rotate template pass `chain_checks.check_template`
    first, as the chain itself checks them."""
    return getattr(_Counter(pipe), chain)(_Args(chain, args, params))


class _Args:
    """A chain's arguments, with the chain's own defaults for those left out."""

    def __init__(self, chain: str, args: dict[str, Any], params: GenerationParams):
        self.args, self.params = {**DEFAULTS[chain], **args}, params

    def __getitem__(self, key: str) -> Any:
        return self.args[key]


class _Counter:
    """Positions per chain, one method per chain name."""

    def __init__(self, pipe: BagelPipeline):
        self.pipe = pipe

    def text(self, text: str) -> int:
        return len(self.pipe.tokenizer.frame(text))

    def reply(self, params: GenerationParams) -> int:
        return params.max_think_tokens + 2

    def choice(self, question: str, options: list[str]) -> int:
        longest = max(len(ids) for ids in self.pipe.check_options(options))
        return self.text(question) + longest + 1

    def templates(self, given: dict[str, str] | None) -> dict[str, str]:
        return {**chains.DEFAULT_TEMPLATES, **(given or {})}

    def navigate(self, a: _Args) -> int:
        templates = self.templates(a["templates"])
        return sum(self.text(templates[action]) + IMAGE for action in a["actions"])

    def rotate(self, a: _Args) -> int:
        template = a["template"] or chains.ROTATE_TEMPLATE
        instruction = template.format(degrees=f"{a['degrees']:g}", axis=a["axis"])
        return a["steps"] * (self.text(instruction) + IMAGE)

    def predict(self, a: _Args) -> int:
        instruction = 0 if a["instruction"] is None else self.text(a["instruction"])
        if a["mode"] == "forcing":
            return instruction + a["frames"] * IMAGE
        return a["frames"] * (instruction + IMAGE)

    def story(self, a: _Args) -> int:
        total = 0
        for beat in a["beats"]:
            total += (IMAGE if beat.image is not None else 0) + self.text(beat.text) + IMAGE
            if a["caption"]:
                total += self.text(chains.CAPTION_QUESTION) + self.reply(a.params)
        return total

    def edit(self, a: _Args) -> int:
        instruction = a["instruction"]
        if a["think"]:
            made = self.text(GEN_THINK_PROMPT) + self.text(instruction) + self.reply(a.params)
        else:
            made = self.text(instruction)
        judge = chains.JUDGE_QUESTION.format(instruction=instruction)
        return a["max_rounds"] * (made + IMAGE + self.choice(judge, list(chains.JUDGE_OPTIONS)))

    def agent(self, a: _Args) -> int:
        actions, templates = list(a["actions"]), self.templates(a["templates"])
        options = [*actions, chains.DONE]
        question = chains.AGENT_QUESTION.format(goal=a["goal"], options=", ".join(options))
        longest = max(self.text(templates[action]) for action in actions)
        return a["max_steps"] * (self.choice(question, options) + longest + IMAGE)
