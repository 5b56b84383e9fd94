"""What a request will cost, checked before it is queued: its turns against the RoPE
positions the model has left for the session.

A session refuses a turn that passes the model's position limit, but only once its job
runs, and a chain only at the turn that passes it, after the turns before it were made.
Here the request is refused at once (a 422 naming the limit): first by its frames alone
(each takes FRAME_ROPE_STRIDE positions, so a request for a million frames is refused
without counting anything), then counted as a scenario's steps are
(`workbench.scenario.positions`). The session's own check stays the last word: the
count is an upper bound for agent and edit loops that stop early, and a job queued
ahead may use positions meanwhile.
"""

from __future__ import annotations

from typing import Any

from bagel.errors import BagelError
from bagel.forcing import FRAME_ROPE_STRIDE
from workbench import chains
from workbench.params import GenerationParams
from workbench.scenario.positions import chain_positions
from workbench.server.schemas import FieldError
from workbench.session import Session


def check_frames(session: Session, field: str, frames: int) -> None:
    """Refuse `frames` images that cannot fit the positions the session has left."""
    _check(session, field, frames * FRAME_ROPE_STRIDE, f"{frames} frame(s) need at least")


def check_chain(
    session: Session,
    field: str,
    frames: int,
    chain: str,
    args: dict[str, Any],
    params: GenerationParams,
) -> None:
    """Refuse a chain whose turns cannot fit: `frames`, the most frames it makes (named
    by `field`), first; then its counted turns."""
    check_frames(session, field, frames)
    if chain == "story":  # the counter takes beats as a chain's Beats
        args = {**args, "beats": [chains.Beat(text) for text in args["beats"]]}
    try:
        need = chain_positions(session.pipe, chain, args, params)
    except (BagelError, LookupError, TypeError, ValueError):
        return  # an argument the chain itself refuses, with its own message, when it runs
    _check(session, field, need, f"this {chain} chain ({frames} frame(s)) needs up to")


def _check(session: Session, field: str, positions: int, what: str) -> None:
    limit = session.pipe.config.llm.max_position_embeddings
    at = session.main.rope
    if at + positions > limit:
        raise FieldError(
            field,
            f"{what} {positions} positions, but the model's limit is {limit} positions and "
            f"the session is at position {at}",
        )
