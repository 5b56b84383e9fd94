"""The TaylorSeer feature cache of the official sampler (`enable_taylorseer=True`).

On a "full" step the decoder runs; its output is kept together with finite-difference
estimates of its derivatives along the step axis. On the steps between, the decoder is
skipped and its output is the Taylor polynomial of those factors at the distance from the
last full step. The official schedule, per guidance branch and counting that branch's
own forwards: steps 0-4 run fully, then one full step every 3 (7, 10, 13, ...);
differences are taken from step 4 on, one order more at each full step, up to order 6.

Official code keeps these factors for every decoder layer, but on a skipped step every
layer returns its own polynomial and ignores its input, so only the last layer's factors
reach the output. This cache therefore holds the decoder stack's output (before the
final norm) only: the same values, 1/28th of the memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import Tensor

FEATURE_CACHES = ("none", "taylorseer")
FIRST_FULL_STEPS = 5  # official `first_enhance`
MAX_ORDER = 6  # official `max_order`
DEFAULT_INTERVAL = 3  # official `fresh_threshold`


def is_full_step(step: int, interval: int = DEFAULT_INTERVAL) -> bool:
    """Whether a branch's `step`-th forward runs the decoder (else: extrapolated)."""
    if step < FIRST_FULL_STEPS:
        return True
    return (step - (FIRST_FULL_STEPS - 1)) % interval == 0


@dataclass
class TaylorCache:
    """The feature cache of one guidance branch over one sampling run.

    Call `full_step()` to learn whether the decoder must run at the branch's next
    forward; then either `update(feature)` with its output, or `predict()`.
    """

    interval: int = DEFAULT_INTERVAL
    step: int = 0  # forwards of this branch so far
    last_full: int = 0
    factors: list[Tensor] = field(default_factory=list)  # value, Δ, Δ², … at last_full

    def full_step(self) -> bool:
        return is_full_step(self.step, self.interval)

    def update(self, feature: Tensor) -> None:
        """Record the decoder output of a full step: new factor i+1 is (new factor i −
        old factor i) / (steps since the last full step), from step 4 on."""
        distance = self.step - self.last_full
        factors = [feature]
        if self.step >= FIRST_FULL_STEPS - 1:
            for old in self.factors[:MAX_ORDER]:
                factors.append((factors[-1] - old) / distance)
        self.factors, self.last_full = factors, self.step
        self.step += 1

    def predict(self) -> Tensor:
        """Σ_i factor_i · x^i / i! at x = steps since the last full step."""
        x = self.step - self.last_full
        out = 0
        for i, factor in enumerate(self.factors):
            out = out + (1 / math.factorial(i)) * factor * (x**i)
        self.step += 1
        return out
