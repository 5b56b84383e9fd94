"""What a replay found: per frame and per text, the verdict, and its JSON form.

replay_report.json is standard JSON (RFC 8259): no NaN or Infinity. An identical
frame's PSNR, infinite in theory, is written as null with `psnr_note` saying why.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass


@dataclass(frozen=True)
class FrameDiff:
    turn: int
    max_abs_diff: int
    psnr: float  # inf when identical


@dataclass(frozen=True)
class ReplayReport:
    frames: list[FrameDiff]  # in session order: frame k of the replay is frames[k - 1]
    texts_equal: list[tuple[int, bool]]  # (turn, equal) per reply, thinking or choice
    seconds: float

    @property
    def identical(self) -> bool:
        return not self.frames_differing and not self.texts_differing

    @property
    def frames_differing(self) -> list[int]:
        """Frame numbers (from 1) whose pixels differ."""
        return [k for k, f in enumerate(self.frames, 1) if f.max_abs_diff]

    @property
    def texts_differing(self) -> list[int]:
        """Turns whose text differs."""
        return [turn for turn, same in self.texts_equal if not same]

    @property
    def worst(self) -> tuple[int, FrameDiff] | None:
        """(frame number, its diff) of the largest pixel difference; None without frames."""
        if not self.frames:
            return None
        k = max(range(len(self.frames)), key=lambda i: self.frames[i].max_abs_diff)
        return k + 1, self.frames[k]

    def verdict(self) -> str:
        """One line: identical or not, what was replayed, and the worst frame."""
        done = (
            f"replayed {len(self.frames)} frame(s) and {len(self.texts_equal)} text(s) "
            f"in {self.seconds:.1f} s"
        )
        if self.identical:
            return f"identical ({done})"
        line = (
            f"different: {len(self.frames_differing)} frame(s) and "
            f"{len(self.texts_differing)} text(s) differ ({done})"
        )
        worst = self.worst
        if worst is not None and worst[1].max_abs_diff:
            k, f = worst
            line += f"; worst: frame {k} (turn {f.turn}), max abs diff {f.max_abs_diff}/255"
        return line

    def to_dict(self) -> dict:
        worst = self.worst
        return {
            "identical": self.identical,
            "frames_compared": len(self.frames),
            "frames_differing": len(self.frames_differing),
            "texts_compared": len(self.texts_equal),
            "texts_differing": len(self.texts_differing),
            "worst": None if worst is None else _frame(*worst),
            "seconds": round(self.seconds, 3),
            "frames": [_frame(k, f) for k, f in enumerate(self.frames, 1)],
            "texts": [{"turn": turn, "equal": same} for turn, same in self.texts_equal],
        }

    def to_json(self, **header: object) -> str:
        """The report's JSON, `header` fields first (the file's format, the session)."""
        return json.dumps({**header, **self.to_dict()}, indent=2, allow_nan=False) + "\n"


def _frame(k: int, f: FrameDiff) -> dict:
    out: dict = {"frame": k, "turn": f.turn, "max_abs_diff": f.max_abs_diff}
    if math.isinf(f.psnr):
        out |= {"psnr": None, "psnr_note": "identical frames: the PSNR is infinite"}
    elif math.isnan(f.psnr):
        out |= {"psnr": None, "psnr_note": "not defined"}
    else:
        out["psnr"] = f.psnr
    return out
