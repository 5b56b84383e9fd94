"""Memory profiles: how BAGEL's weights are stored, and what each one costs.

    fp32, bf16   every weight in that dtype (fp32: the CPU default, bf16: the CUDA one)
    int8, nf4    the linear layers of both experts of every decoder layer quantised at load
                 time with bitsandbytes (weight-only: LLM.int8 rows / NF4 blocks of 64);
                 embeddings, norms, LM head, ViT, connector and autoencoder stay at full
                 precision, and activations run in the model dtype
    +offload     decoder layers that do not fit the GPU's budget stay in CPU memory and
                 are streamed in per forward (accelerate's hooks); "offload" alone is bf16;
                 with int8 ("int8+offload"), not with nf4 (refused: see check_runnable)
    df11         the lossless DFloat11 format (its own package and checkpoint; CUDA only)

Everything a profile needs is checked before any weight is read (`check_runnable`), and
the bytes each device will hold follow from the safetensors shapes alone (`weight_bytes`).
"""

from __future__ import annotations

import importlib.util
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from bagel.errors import CheckpointError

WEIGHT_KINDS = ("fp32", "bf16", "fp16", "int8", "nf4", "df11")  # fp16: only by dtype=
QUANTISED = ("int8", "nf4")
PROFILES = ("fp32", "bf16", "int8", "nf4", "offload", "int8+offload", "nf4+offload", "df11")
# nf4+offload is named so that it is refused with its reason, not as unknown
NF4_BLOCK = 64  # bitsandbytes' default block: one absmax per 64 weights
NF4_NESTED_BLOCK = 256  # absmax values are themselves quantised to int8 in blocks of 256
NF4_TABLES = 16 * 4 + 256 * 4  # the NF4 code table and the nested int8 code table (float32)
DF11_CONFIG = "config.json"  # a DFloat11 folder's config, with a "dfloat11_config" entry
# the decoder's linear layers, both experts: `language_model.model.layers.N.<suffix>`
LINEAR_SUFFIXES = (
    *(f"self_attn.{p}{e}" for e in ("", "_moe_gen") for p in ("q_proj", "k_proj", "v_proj")),
    *(f"self_attn.o_proj{e}" for e in ("", "_moe_gen")),
    *(f"{m}.{p}" for m in ("mlp", "mlp_moe_gen") for p in ("gate_proj", "up_proj", "down_proj")),
)


@dataclass(frozen=True)
class Profile:
    weights: str  # one of WEIGHT_KINDS
    offload: bool = False

    @property
    def name(self) -> str:
        if self.offload:
            return "offload" if self.weights == "bf16" else f"{self.weights}+offload"
        return self.weights

    @property
    def quantised(self) -> bool:
        return self.weights in QUANTISED


FULL_PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def parse_profile(
    name: str | None, device: torch.device, dtype: torch.dtype | None = None
) -> Profile:
    """A profile by name; None is every weight in `dtype`, else fp32 on the CPU and bf16
    on CUDA."""
    if name is None and dtype is not None:
        return Profile(FULL_PRECISION[dtype])
    if name is None:
        return Profile("bf16" if device.type == "cuda" else "fp32")
    if not isinstance(name, str) or name.lower() not in PROFILES:
        raise CheckpointError(f"unknown profile {name!r}; expected one of {list(PROFILES)}")
    name = name.lower()
    if name == "offload":
        return Profile("bf16", offload=True)
    weights, _, offload = name.partition("+")
    return Profile(weights, offload=bool(offload))


def profile_dtype(profile: Profile, dtype: torch.dtype | None, device: torch.device) -> torch.dtype:
    """The dtype of the unquantised weights and the activations: the profile's own for
    fp32 / bf16 / df11 (a different explicit dtype is refused), else `dtype`, else the
    device default."""
    own = {v: k for k, v in FULL_PRECISION.items()} | {"df11": torch.bfloat16}
    own = own.get(profile.weights)
    if own is not None and dtype is not None and dtype != own:
        raise CheckpointError(
            f"profile {profile.name!r} stores its weights in {own}; it cannot run in {dtype} "
            "(leave dtype out, or pick int8 / nf4, whose other weights follow dtype)"
        )
    if own is not None:
        return own
    return dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)


def check_runnable(profile: Profile, device: torch.device, folder: Path | None = None) -> None:
    """Refuse, before anything is loaded, a profile this machine cannot run, saying why."""
    if profile.offload and device.type != "cuda":
        raise CheckpointError(
            f"profile {profile.name!r} streams CPU-held weights onto a GPU; on {device.type} "
            "every weight is in CPU memory already (use fp32, int8 or nf4)"
        )
    if profile.offload and profile.weights == "nf4":
        raise CheckpointError(
            "profile 'nf4+offload' is not supported: accelerate's offload hooks cannot move "
            "bitsandbytes NF4 weights back in (nf4 alone holds the 7B weights in about "
            "8 GiB; use int8+offload to go lower than int8)"
        )
    if profile.quantised:
        if importlib.util.find_spec("bitsandbytes") is None:
            raise CheckpointError(
                f"profile {profile.name!r} needs the bitsandbytes package "
                "(pip install 'bagel-workbench[quant]')"
            )
        _check_kernel(profile.weights, device)
    if profile.weights == "df11":
        _check_df11(device, folder)


def _check_kernel(kind: str, device: torch.device) -> None:
    """Quantise one small block on `device`: refuses a build without that kernel."""
    import bitsandbytes.functional as bnbf

    probe = torch.ones(NF4_BLOCK, NF4_BLOCK, device=device, dtype=torch.float32)
    try:
        if kind == "nf4":
            bnbf.quantize_4bit(probe, quant_type="nf4")
        else:
            bnbf.int8_vectorwise_quant(probe.half() if device.type == "cuda" else probe)
    except Exception as err:  # a missing or broken native library surfaces in many ways
        raise CheckpointError(
            f"profile {kind!r}: bitsandbytes has no working {kind} kernel for {device} ({err})"
        ) from err


def _check_df11(device: torch.device, folder: Path | None) -> None:
    if device.type != "cuda":
        raise CheckpointError(
            f"profile 'df11' decompresses its weights with a CUDA kernel; not on {device.type}"
        )
    if importlib.util.find_spec("dfloat11") is None:
        raise CheckpointError("profile 'df11' needs the dfloat11 package (pip install dfloat11)")
    if folder is not None and not _is_df11_folder(folder):
        raise CheckpointError(
            f"{folder}: profile 'df11' needs a DFloat11 checkpoint folder ({DF11_CONFIG} with "
            "a dfloat11_config entry, e.g. DFloat11/BAGEL-7B-MoT-DF11)"
        )


def _is_df11_folder(folder: Path) -> bool:
    import json

    try:
        return "dfloat11_config" in json.loads((folder / DF11_CONFIG).read_text())
    except (OSError, ValueError, TypeError):
        return False


# -- quantisation -----------------------------------------------------------------------


def is_quantised_linear(module_name: str) -> bool:
    """Whether the module of this name (in `Bagel`) is quantised by int8 / nf4."""
    prefix = "language_model.model.layers."
    return module_name.startswith(prefix) and module_name.endswith(LINEAR_SUFFIXES)


def swap_quantised_linears(net: nn.Module, kind: str, dtype: torch.dtype) -> set[str]:
    """Replace the decoder's nn.Linear modules (on meta) by empty bitsandbytes ones;
    returns their names. Weights are given later with `quantised_weight`."""
    import bitsandbytes as bnb

    # its int8 matmul casts each float32 / bfloat16 input to float16 and logs so per call
    logging.getLogger("bitsandbytes.autograd._functions").setLevel(logging.ERROR)
    names = {n for n, m in net.named_modules() if isinstance(m, nn.Linear)}
    names = {n for n in names if is_quantised_linear(n)}
    for name in names:
        old = net.get_submodule(name)
        args = (old.in_features, old.out_features, old.bias is not None)
        with torch.device("meta"):
            if kind == "int8":
                new = bnb.nn.Linear8bitLt(*args, has_fp16_weights=False)
            else:
                new = bnb.nn.Linear4bit(*args, compute_dtype=dtype, quant_type="nf4")
        parent, _, child = name.rpartition(".")
        setattr(net.get_submodule(parent), child, new.eval())
    return names


def quantised_weight(weight: torch.Tensor, kind: str, device: torch.device) -> nn.Parameter:
    """A full-precision [out, in] weight quantised on `device` (the move quantises)."""
    import bitsandbytes as bnb

    # bitsandbytes quantises while moving a parameter from the CPU (an int8 parameter
    # created on the GPU would stay unquantised), so the weight starts on the CPU
    weight = weight.cpu()

    if kind == "int8":
        param = bnb.nn.Int8Params(weight, requires_grad=False, has_fp16_weights=False)
    else:
        param = bnb.nn.Params4bit(
            weight, requires_grad=False, quant_type="nf4", blocksize=NF4_BLOCK
        )
    return param.to(device)


# -- memory accounting ------------------------------------------------------------------


def tensor_bytes(name: str, shape: tuple[int, ...], kind: str, dtype: torch.dtype) -> int:
    """Bytes that tensor `name` of ema.safetensors takes once loaded in weight `kind`."""
    numel = math.prod(shape)
    module, _, leaf = name.rpartition(".")
    if kind in QUANTISED and leaf == "weight" and is_quantised_linear(module):
        if kind == "int8":
            return numel + 4 * shape[0]  # int8 values + one float32 scale per output row
        blocks = math.ceil(numel / NF4_BLOCK)
        nested = math.ceil(blocks / NF4_NESTED_BLOCK)
        return math.ceil(numel / 2) + blocks + 4 * nested + NF4_TABLES
    if kind == "df11":
        raise CheckpointError("profile 'df11': sizes come from the DFloat11 checkpoint itself")
    size = torch.finfo(dtype).bits // 8
    return numel * size


def layer_of(name: str) -> int | None:
    """The decoder layer a tensor belongs to, or None."""
    prefix = "language_model.model.layers."
    if not name.startswith(prefix):
        return None
    return int(name[len(prefix) :].split(".", 1)[0])


def weight_bytes(
    shapes: dict[str, tuple[int, ...]], kind: str, dtype: torch.dtype
) -> tuple[int, list[int]]:
    """(bytes outside the decoder layers, bytes of each decoder layer) for ema.safetensors'
    tensors in weight `kind`."""
    layers: dict[int, int] = {}
    other = 0
    for name, shape in shapes.items():
        size = tensor_bytes(name, shape, kind, dtype)
        index = layer_of(name)
        if index is None:
            other += size
        else:
            layers[index] = layers.get(index, 0) + size
    return other, [layers[i] for i in sorted(layers)]


def plan_offload(other: int, layers: list[int], budget: int) -> list[bool]:
    """Which decoder layers stay on the GPU: everything outside the layers does, then
    layers in order while they fit `budget` bytes; the rest are streamed from CPU."""
    left = budget - other
    if left < 0:
        raise CheckpointError(
            f"the weights outside the decoder layers take {other / 2**30:.2f} GiB, more than "
            f"the GPU budget of {budget / 2**30:.2f} GiB"
        )
    resident = []
    for size in layers:
        fits = size <= left and all(resident)
        left -= size if fits else 0
        resident.append(fits)
    return resident


def stream_layers(layers: list[nn.Module], device: torch.device) -> None:
    """Keep these (CPU-resident) decoder layers in CPU memory and move their weights to
    `device` for each forward only, with accelerate's offload hooks."""
    from accelerate import cpu_offload

    for layer in layers:
        cpu_offload(layer, execution_device=device)
        layer.execution_device = device  # read by bagel.llm.layer_device


def device_bytes(
    shapes: dict[str, tuple[int, ...]],
    ae_shapes: dict[str, tuple[int, ...]],
    profile: Profile,
    dtype: torch.dtype,
    device: torch.device,
    gpu_budget: int | None = None,
) -> dict[str, int]:
    """Bytes of weights each device holds once `load` has run with this profile: the
    model (`shapes`, from ema.safetensors) and the float32 autoencoder (`ae_shapes`)."""
    other, layers = weight_bytes(shapes, profile.weights, dtype)
    ae = sum(4 * math.prod(s) for s in ae_shapes.values())
    here = str(device)
    if not profile.offload:
        return {here: other + sum(layers) + ae}
    if gpu_budget is None:
        raise CheckpointError(f"profile {profile.name!r}: the GPU budget is needed to plan")
    resident = plan_offload(other, layers, gpu_budget)
    kept = sum(size for size, on_gpu in zip(layers, resident, strict=True) if on_gpu)
    return {here: other + kept + ae, "cpu": sum(layers) - kept}


def profile_memory(
    shapes: dict[str, tuple[int, ...]],
    ae_shapes: dict[str, tuple[int, ...]],
    profile: Profile,
    device: torch.device,
    gpu_budget: int | None = None,
) -> dict[str, object]:
    """The weight bytes each device holds under `profile`, from the safetensors shapes
    alone (`shapes`: ema.safetensors, `ae_shapes`: ae.safetensors), also in GiB."""
    dtype = profile_dtype(profile, None, device)
    sizes = device_bytes(shapes, ae_shapes, profile, dtype, device, gpu_budget)
    return {
        "profile": profile.name,
        "bytes": sizes,
        "GiB": {k: round(v / 2**30, 3) for k, v in sizes.items()},
    }
