"""Diffusion forcing: which frames a window holds, and at which timestep, per iteration.

Every frame takes the same num_timesteps − 1 Euler steps of the shifted schedule
(`flow_timesteps`), in order: at step i it is evaluated at t_i and moved to t_{i+1}.
A schedule only decides when each frame takes its first step:

- "autoregressive": one frame at a time (window 1); frame f starts when f − 1 is done;
- "pyramid": frame f lags frame f − 1 by ceil(steps / window) steps, so at most
  `window` frames are under way and later frames are noisier;
- "uniform": frames go in groups of `window` that share t, the next group starts when
  the previous one is done.

With window 1 the three schedules coincide. A frame that has not taken a step yet is
pure noise that no earlier frame can see, so it joins the window only at its first
step; a frame leaves the window after its last step (t = 0), head first.
"""

from __future__ import annotations

from bagel.errors import InputError

SCHEDULES = ("autoregressive", "pyramid", "uniform")

# A committed frame takes two positions (its VAE block, then its ViT block), so frame j of
# a window sits at rope + 2j: the position it would get after the frames before it commit.
FRAME_ROPE_STRIDE = 2

Plan = list[list[tuple[int, int]]]  # per iteration: (frame, step index), head first


def check_forcing(schedule: str, window: int, n_frames: int) -> None:
    """Raise InputError naming a bad schedule, window or frame count."""
    for name, value in (("window", window), ("n_frames", n_frames)):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"{name} must be a positive integer, got {value!r}")
    if schedule not in SCHEDULES:
        raise InputError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if schedule == "autoregressive" and window != 1:
        raise InputError(
            f"the autoregressive schedule denoises one frame at a time (window 1), "
            f"got window {window}"
        )


def frame_starts(schedule: str, n_frames: int, window: int, steps: int) -> list[int]:
    """The iteration at which each frame takes its first of `steps` Euler steps."""
    if schedule == "uniform":
        return [f // window * steps for f in range(n_frames)]
    lag = steps if schedule == "autoregressive" else -(-steps // window)  # ceil
    return [f * lag for f in range(n_frames)]


def forcing_plan(schedule: str, n_frames: int, window: int, num_timesteps: int) -> Plan:
    """For every iteration, the frames in the window with their step index i (evaluated
    at t_i, moved to t_{i+1}); a frame whose i is num_timesteps − 2 ends at t = 0.

    Args:
        schedule: one of SCHEDULES; window: the most frames denoised together;
        n_frames: frames to make; num_timesteps: length of the shifted schedule (≥ 2).
    """
    check_forcing(schedule, window, n_frames)
    steps = num_timesteps - 1
    starts = frame_starts(schedule, n_frames, window, steps)
    return [
        [(f, s - start) for f, start in enumerate(starts) if start <= s < start + steps]
        for s in range(starts[-1] + steps)
    ]
