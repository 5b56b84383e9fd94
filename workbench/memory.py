"""Tokens and K/V bytes per session (branch) and in total, shared blocks counted once."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from bagel.kv import allocated_bytes

if TYPE_CHECKING:
    from workbench.session import Session


@dataclass(frozen=True)
class Memory:
    """Tokens and K/V bytes of one session (branch)."""

    main_tokens: int
    text_dropped_tokens: int
    image_dropped_tokens: int
    read_bytes: int  # the rows its contexts attend to (text-dropped rows are main's rows)
    allocated_bytes: int  # blocks it keeps alive (contexts, undo of drops), each once
    exclusive_bytes: int  # of those, blocks no other session of the report keeps alive


@dataclass(frozen=True)
class MemoryReport:
    branches: tuple[Memory, ...]  # one per session, in the order given
    total_bytes: int  # blocks any of the sessions keeps alive, shared ones counted once


def memory_report(*sessions: Session) -> MemoryReport:
    """Tokens and bytes per session and in total, shared KV blocks counted once."""
    kept = [s.kept_contexts() for s in sessions]
    everything = [ctx for contexts in kept for ctx in contexts]
    total = allocated_bytes(*everything)
    branches = []
    for i, s in enumerate(sessions):
        others = [ctx for j, contexts in enumerate(kept) if j != i for ctx in contexts]
        branches.append(
            Memory(
                s.main.length,
                s.text_mark.length,
                s.image_dropped.length,
                s.main.nbytes_used + s.image_dropped.nbytes_used,
                allocated_bytes(*kept[i]),
                total - allocated_bytes(*others),
            )
        )
    return MemoryReport(tuple(branches), total)
