"""Generation settings shared by the session, the CLI, scenario files and the UI."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

import torch

from bagel.errors import InputError
from bagel.flow import SamplerParams

MAX_SEED = 2**63 - 1  # torch generators take seeds below 2**64; JSON readers stop at 2**63
MAX_SIDE = 2**16  # pixels; the model's own limit is far lower and checked at generation
MAX_THINK_TOKENS = 2**20  # far past any context the model holds; the context refuses sooner
MIN_TEMPERATURE = 1e-3  # far lower, logits / temperature overflow float32 and sampling fails
# the longest user text (prompt, question, option, instruction, beat, template) a session
# takes: far past what the model's positions hold (32768 for the release), checked before
# the tokenizer sees it (the tokenizer's native code can abort on texts of megabytes)
MAX_TEXT_CHARS = 100_000


def check_text_length(text: str, what: str = "text") -> str:
    """Return `text` if it has at most MAX_TEXT_CHARS characters, else raise InputError."""
    if len(text) > MAX_TEXT_CHARS:
        raise InputError(
            f"{what} is {len(text)} characters long; at most {MAX_TEXT_CHARS} are allowed"
        )
    return text


def check_seed(seed: object, what: str = "seed") -> int:
    """A seed: an integer in 0..MAX_SEED (the same rule for turns, params and files)."""
    if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed <= MAX_SEED:
        raise InputError(f"{what} must be an integer between 0 and 2**63-1, got {seed!r}")
    return seed


@dataclass(frozen=True)
class GenerationParams(SamplerParams):
    """Everything one generated turn depends on: the sampler's knobs (defaults: the
    official app's text-to-image values; `GenerationParams.edit()` its edit values) plus
    size, seed and the text-generation settings.

    height/width None: the size of the last image in the session, else the largest square
    the model allows up to 1024. max_think_tokens bounds replies and thinking.
    """

    height: int | None = None
    width: int | None = None
    seed: int = 0
    max_think_tokens: int = 1023
    do_sample: bool = False
    temperature: float = 0.3

    def __post_init__(self) -> None:
        super().__post_init__()
        if (self.height is None) != (self.width is None):
            raise InputError("height and width must be given together")
        for name in ("height", "width"):  # the model checks the exact sizes it takes
            value = getattr(self, name)
            if value is not None and not (_positive_int(value) and value <= MAX_SIDE):
                raise InputError(
                    f"{name} must be an integer between 1 and {MAX_SIDE}, got {value!r}"
                )
        check_seed(self.seed)
        if not _positive_int(self.max_think_tokens) or self.max_think_tokens > MAX_THINK_TOKENS:
            raise InputError(
                f"max_think_tokens must be an integer between 1 and {MAX_THINK_TOKENS}, "
                f"got {self.max_think_tokens!r}"
            )
        if not isinstance(self.do_sample, bool):
            raise InputError(f"do_sample must be true or false, got {self.do_sample!r}")
        temperature = self.temperature
        if isinstance(temperature, bool) or not isinstance(temperature, int | float):
            raise InputError(f"temperature must be a number, got {temperature!r}")
        if not math.isfinite(temperature):
            raise InputError(f"temperature must be finite, got {temperature!r}")
        if self.do_sample and not self.temperature >= MIN_TEMPERATURE:
            raise InputError(
                f"temperature must be >= {MIN_TEMPERATURE} when sampling (lower: set "
                f"do_sample false for greedy replies), got {self.temperature!r}"
            )

    def sampler(self) -> SamplerParams:
        return SamplerParams(**{f.name: getattr(self, f.name) for f in fields(SamplerParams)})

    def generator(self) -> torch.Generator:
        """A fresh CPU generator for this turn: noise and sampling repeat per seed."""
        return torch.Generator().manual_seed(self.seed)


POLICIES = ("refuse", "drop_vit", "keep_last_images")


@dataclass(frozen=True)
class ContextLimit:
    """A token budget for a session's main context, and what to do when a turn would
    pass it (docs/context-limits.md).

    max_tokens: cached tokens the main context may hold after a turn; None: no budget
        (only the model's position limit applies).
    policy: "refuse" the turn; "drop_vit": first remove the ViT tokens of the oldest
        images until it fits; "keep_last_images": before every turn, remove the VAE and
        ViT tokens of images older than the last `keep_images` (then refuse if the turn
        still does not fit).
    """

    max_tokens: int | None = None
    policy: str = "refuse"
    keep_images: int | None = None

    def __post_init__(self) -> None:
        if self.max_tokens is not None and not _positive_int(self.max_tokens):
            raise InputError(f"max_tokens must be a positive integer, got {self.max_tokens!r}")
        if self.policy not in POLICIES:
            raise InputError(f"policy must be one of {POLICIES}, got {self.policy!r}")
        if self.policy == "drop_vit" and self.max_tokens is None:
            raise InputError("policy 'drop_vit' needs max_tokens (it drops only to fit it)")
        if (self.policy == "keep_last_images") != (self.keep_images is not None):
            raise InputError("keep_images is set with policy 'keep_last_images', and only then")
        if self.keep_images is not None and not _positive_int(self.keep_images):
            raise InputError(f"keep_images must be a positive integer, got {self.keep_images!r}")


def _positive_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0
