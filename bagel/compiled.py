"""The compiled decoder path: torch.compile (inductor) of each decoder layer's element-wise
work — the float32 RMSNorms (input, post-attention, QK-norm) and the SwiGLU MLPs of both
experts — so that a norm or silu·up is one fused kernel instead of five.

Attention, the KV context and the expert routing stay eager: they change shape with the
context and would recompile at every turn. Shapes are marked dynamic, so a new image size
or context length does not recompile either. Opt-in (`bagel.load(..., compile=True)`):
the first forwards pay the compilation; eager stays the default.
"""

from __future__ import annotations

from torch import nn

from bagel.llm import MLP, RMSNorm, layer_device


def compile_decoder(layers: nn.ModuleList) -> int:
    """Compile the norms and MLPs of every decoder layer in place; returns how many."""
    compiled = 0
    for layer in layers:
        if layer_device(layer) != layer.input_layernorm.weight.device:
            continue  # a layer streamed from CPU memory: its weights move at each forward
        for module in layer.modules():
            if isinstance(module, RMSNorm | MLP):
                module.compile(dynamic=True)
                compiled += 1
    return compiled
