"""The files of a training run that resuming needs: tensors and optimizer states as
safetensors (written atomically), and the loss log trimmed back to the saved state."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from workbench.files import write_atomic


def trim_log(log: Path, state: dict) -> None:
    """Drop the records of steps after the saved state (a resumed run does them again)."""
    if not log.exists():
        return
    lines = log.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        record = json.loads(line)
        if record["ae_step"] <= state["ae_step"] and record["step"] <= state["step"]:
            kept.append(line)
    if len(kept) < len(lines):
        write_atomic(log, lambda tmp: tmp.write_text("".join(kept), encoding="utf-8"))


def save_tensors(tensors: dict[str, Tensor], path: Path) -> None:
    data = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    write_atomic(path, lambda tmp: save_file(data, str(tmp), metadata={"format": "pt"}))


def optimizer_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, Tensor], list]:
    """An optimizer's state as flat tensors `index.name` plus its JSON-able groups."""
    state = optimizer.state_dict()
    tensors = {
        f"{index}.{name}": value
        for index, entries in state["state"].items()
        for name, value in entries.items()
    }
    return tensors, state["param_groups"]


def load_optimizer(optimizer: torch.optim.Optimizer, tensors: dict[str, Tensor], groups) -> None:
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": groups})
