"""Multi-GPU placement is planned on the meta device, so it can be checked without GPUs."""

from __future__ import annotations

import warnings

import torch

from bagel.checkpoint import CO_LOCATED, _placed, plan_device_map
from bagel.config import BagelConfig
from bagel.model import Bagel


def test_7b_plan_keeps_layers_whole_and_bridges_with_the_embedding():
    with torch.device("meta"):
        net = Bagel(BagelConfig.official_7b())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # accelerate warns that the GPUs are not visible here
        plan = plan_device_map(net, torch.bfloat16, max_memory={0: "20GiB", 1: "20GiB"})
    keys = list(net.state_dict())
    devices = {k: _placed(k, plan) for k in keys}
    assert set(devices.values()) == {torch.device("cuda", 0), torch.device("cuda", 1)}
    for i in range(28):  # each decoder layer, both experts, on one device
        prefix = f"language_model.model.layers.{i}."
        assert len({d for k, d in devices.items() if k.startswith(prefix)}) == 1
    assert len({d for k, d in devices.items() if k.startswith("vit_model.")}) == 1
    home = devices["language_model.model.embed_tokens.weight"]
    for name in CO_LOCATED:
        assert all(d == home for k, d in devices.items() if k.startswith(name + "."))
