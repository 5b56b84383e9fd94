"""Generation settings shared by the session, the CLI, scenario files and the UI."""

from __future__ import annotations

from dataclasses import dataclass, fields

import torch

from bagel.errors import InputError
from bagel.flow import SamplerParams


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
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise InputError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.max_think_tokens, int) or self.max_think_tokens < 1:
            raise InputError(
                f"max_think_tokens must be a positive integer, got {self.max_think_tokens!r}"
            )
        if self.do_sample and not self.temperature > 0:
            raise InputError(f"temperature must be > 0 when sampling, got {self.temperature!r}")

    def sampler(self) -> SamplerParams:
        return SamplerParams(**{f.name: getattr(self, f.name) for f in fields(SamplerParams)})

    def generator(self) -> torch.Generator:
        """A fresh CPU generator for this turn: noise and sampling repeat per seed."""
        return torch.Generator().manual_seed(self.seed)
