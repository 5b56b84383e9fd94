"""Generation settings shared by the session, the CLI, scenario files and the UI."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from bagel.errors import InputError
from bagel.flow import SamplerParams


@dataclass(frozen=True)
class GenerationParams:
    """Everything one generated turn depends on. Defaults: the official app's T2I values.

    height/width None: the size of the last image in the session, else the largest square
    the model allows up to 1024. max_think_tokens bounds replies and thinking.
    """

    num_timesteps: int = 50
    timestep_shift: float = 3.0
    cfg_text_scale: float = 4.0
    cfg_img_scale: float = 1.5
    cfg_interval: tuple[float, float] = (0.4, 1.0)
    cfg_renorm_type: str = "global"
    cfg_renorm_min: float = 0.0
    height: int | None = None
    width: int | None = None
    seed: int = 0
    max_think_tokens: int = 1023
    do_sample: bool = False
    temperature: float = 0.3

    def __post_init__(self) -> None:
        object.__setattr__(self, "cfg_interval", tuple(self.cfg_interval))
        self.sampler()  # validates the sampler fields
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
        fields = SamplerParams.__dataclass_fields__
        return SamplerParams(**{k: v for k, v in asdict(self).items() if k in fields})

    def generator(self) -> torch.Generator:
        """A fresh CPU generator for this turn: noise and sampling repeat per seed."""
        return torch.Generator().manual_seed(self.seed)

    @classmethod
    def edit(cls, **overrides) -> GenerationParams:
        """The official app's image-edit values."""
        base = dict(cfg_img_scale=2.0, cfg_interval=(0.0, 1.0), cfg_renorm_type="text_channel")
        return cls(**{**base, **overrides})
