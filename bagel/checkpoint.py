"""Loading a checkpoint folder in the official layout (or a hub id) into a pipeline.

The model is built on the meta device, every tensor name and shape in the safetensors
headers is checked against it before any weight is read, and the weights are then
assigned straight from the memory-mapped files in the requested dtype. Only JSON and
safetensors are read: never pickles.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from bagel.compiled import compile_decoder
from bagel.config import AE_CONFIG, BAGEL_CONFIG, LLM_CONFIG, VIT_CONFIG, BagelConfig
from bagel.errors import CheckpointError
from bagel.model import Bagel
from bagel.pipeline import BagelPipeline
from bagel.profiles import (
    DF11_CONFIG,
    Profile,
    check_runnable,
    parse_profile,
    plan_offload,
    profile_dtype,
    quantised_weight,
    stream_layers,
    swap_quantised_linears,
    weight_bytes,
)
from bagel.tokenizer import BagelTokenizer
from bagel.vae import AutoEncoder

EMA_WEIGHTS = "ema.safetensors"
AE_WEIGHTS = "ae.safetensors"
REQUIRED_FILES = (LLM_CONFIG, VIT_CONFIG, EMA_WEIGHTS, AE_WEIGHTS)
HUB_PATTERNS = ["*.json", "*.safetensors", "*.txt"]
DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Outputs of these are summed with token embeddings in one packed tensor: they must sit on
# the device of embed_tokens (spec §10.2). Decoder layers (both experts) and the ViT stay whole.
CO_LOCATED = (
    "time_embedder",
    "latent_pos_embed",
    "vae2llm",
    "llm2vae",
    "connector",
    "vit_pos_embed",
)
NO_SPLIT = ["MoTDecoderLayer", "SiglipVisionModel"]


def load(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
    attn_backend: str | None = None,
    max_memory: dict[int | str, int | str] | None = None,
    profile: str | None = None,
    compile: bool = False,
) -> BagelPipeline:
    """Load a BAGEL checkpoint folder (or hub id, when online) for inference.

    Args:
        path: folder with llm_config.json, vit_config.json, ema.safetensors,
            ae.safetensors and the tokenizer files; or a hub id such as
            "ByteDance-Seed/BAGEL-7B-MoT".
        device: "cpu", "cuda", "cuda:1", … or "auto": decoder layers spread over every
            visible GPU (accelerate's device map, bounded by `max_memory`).
        dtype: weights and activations of the BAGEL model ("float32", "bfloat16", …);
            default float32 on CPU, bfloat16 on CUDA. The autoencoder stays float32.
        attn_backend: "flash", "sdpa" or "math"; default: the best for the device.
        max_memory: with device "auto", accelerate's per-device budget; with an offload
            profile, the GPU budget as {0: bytes or "20GiB"} (default: 90% of the GPU).
        profile: how the weights are held (bagel/profiles.py, docs/profiles.md): "fp32",
            "bf16", "int8", "nf4", "offload", "int8+offload", "nf4+offload", "df11";
            default fp32 on CPU, bf16 on CUDA. Refused before loading if this machine
            cannot run it.
        compile: compile the decoder layers' norms and MLPs with torch.compile
            (bagel/compiled.py); off by default.
    """
    auto = device == "auto"
    device = parse_device(
        "cuda" if auto and torch.cuda.is_available() else "cpu" if auto else device
    )
    explicit = None if dtype is None else parse_dtype(dtype, device)
    chosen = parse_profile(profile, device, explicit)
    dtype = profile_dtype(chosen, explicit, device)
    check_runnable(chosen, device)
    if chosen.offload and auto:
        raise CheckpointError("an offload profile runs on one GPU: pass device='cuda'")
    folder = resolve_folder(path, df11=chosen.weights == "df11")
    check_runnable(chosen, device, folder)
    config = BagelConfig.from_checkpoint(folder)
    tokenizer = BagelTokenizer.from_folder(folder)
    if tokenizer.vocab_len > config.llm.vocab_size:
        raise CheckpointError(
            f"{folder}: the tokenizer has {tokenizer.vocab_len} tokens but "
            f"{LLM_CONFIG} has vocab_size {config.llm.vocab_size}"
        )
    with torch.device("meta"):
        net, ae = Bagel(config), AutoEncoder(config.ae)
    placement = plan_device_map(net, dtype, max_memory) if auto and device.type == "cuda" else {}
    if chosen.weights == "df11":
        _load_df11(net, folder, device)
    else:
        streamed = _offloaded_layers(folder, chosen, dtype, device, max_memory)
        placement = placement or {
            f"language_model.model.layers.{i}": torch.device("cpu") for i in streamed
        }
        load_weights(
            net,
            folder / EMA_WEIGHTS,
            device,
            dtype,
            ignore=_dropped_vit_layer(config),
            placement=placement,
            quantise=chosen.weights if chosen.quantised else None,
        )
        stream_layers([net.language_model.model.layers[i] for i in streamed], device)
    load_weights(ae, folder / AE_WEIGHTS, placement.get("vae2llm", device), torch.float32)
    check_finite(net, folder / EMA_WEIGHTS)
    check_finite(ae, folder / AE_WEIGHTS)
    if compile:
        compile_decoder(net.language_model.model.layers)
    pipe = BagelPipeline(net, ae, tokenizer, attn_backend)
    pipe.identity = checkpoint_identity(folder)
    pipe.profile = chosen.name
    return pipe


def _offloaded_layers(
    folder: Path,
    profile: Profile,
    dtype: torch.dtype,
    device: torch.device,
    max_memory: dict[int | str, int | str] | None,
) -> list[int]:
    """The decoder layers an offload profile keeps in CPU memory (none otherwise)."""
    if not profile.offload:
        return []
    budget = _gpu_budget(device, max_memory)
    other, layers = weight_bytes(read_header(folder / EMA_WEIGHTS), profile.weights, dtype)
    return [i for i, resident in enumerate(plan_offload(other, layers, budget)) if not resident]


def _gpu_budget(device: torch.device, max_memory: dict[int | str, int | str] | None) -> int:
    from accelerate.utils import convert_file_size_to_int

    index = device.index or 0
    for key in (index, str(index), str(device), f"cuda:{index}"):
        if max_memory and key in max_memory:
            return convert_file_size_to_int(max_memory[key])
    return int(0.9 * torch.cuda.get_device_properties(index).total_memory)


def _load_df11(net: nn.Module, folder: Path, device: torch.device) -> None:
    """The DFloat11 weights of `folder` into `net` (on meta), decompressed on `device`."""
    from dfloat11 import DFloat11Model

    DFloat11Model.from_pretrained(str(folder), device=str(device), bfloat16_model=net)
    net.eval().requires_grad_(False)


def resolve_folder(path: str | Path, df11: bool = False) -> Path:
    """A local folder with every required file, downloading a hub id when needed.

    A DFloat11 folder (`df11`) holds its own weight files in place of ema.safetensors.
    """
    folder = Path(path).expanduser()
    if not folder.exists() and _HUB_ID.match(str(path)):
        folder = _download(str(path))
    if not folder.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint folder")
    required = (LLM_CONFIG, VIT_CONFIG, AE_WEIGHTS, DF11_CONFIG) if df11 else REQUIRED_FILES
    folders = [name for name in required if (folder / name).is_dir()]
    if folders:
        raise CheckpointError(
            f"{folder}: {', '.join(folders)} {'is a folder' if len(folders) == 1 else 'are folders'}"
            ", not a file"
        )
    missing = [name for name in required if not (folder / name).is_file()]
    if missing:
        raise CheckpointError(f"{folder}: missing checkpoint file(s): {', '.join(missing)}")
    return folder


def load_weights(
    module: nn.Module,
    file: Path,
    device: torch.device,
    dtype: torch.dtype,
    ignore: tuple[str, ...] = (),
    placement: dict[str, torch.device] | None = None,
    quantise: str | None = None,
) -> None:
    """Check `file`'s names and shapes against `module` (built on meta), then assign them.

    `placement` maps module names to devices (a device map); other tensors go to `device`.
    `quantise` ("int8" or "nf4"): the decoder's linear weights are quantised one by one
    as they are read, so the full-precision model never sits in memory.
    """
    expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
    found = read_header(file)
    found = {k: s for k, s in found.items() if not k.startswith(ignore)} if ignore else found
    check_names_and_shapes(expected, found, file)
    swapped = swap_quantised_linears(module, quantise, dtype) if quantise else set()
    state = {}
    try:
        # with a device map, read on the CPU and move each tensor once, to its own GPU
        with safe_open(str(file), framework="pt", device="cpu" if placement else str(device)) as f:
            for key in expected:
                target = _placed(key, placement, device) if placement else device
                owner, _, leaf = key.rpartition(".")
                if owner not in swapped:
                    state[key] = f.get_tensor(key).to(target, dtype)
                elif leaf == "weight":
                    weight = quantised_weight(f.get_tensor(key).to(dtype), quantise, target)
                    module.get_submodule(owner).weight = weight
                else:
                    value = nn.Parameter(f.get_tensor(key).to(target, dtype), requires_grad=False)
                    module.get_submodule(owner).bias = value
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: cannot read tensor data ({err})") from err
    module.load_state_dict(state, strict=not swapped, assign=True)
    module.eval().requires_grad_(False)


def check_finite(module: nn.Module, file: Path) -> None:
    """Refuse weights holding NaN or infinity, naming the first such tensor: a broken file
    would otherwise give NaN images with no error. One read of every weight where it lies
    (docs/checkpoint.md has its cost on the 7B model)."""
    for name, tensor in module.state_dict().items():
        if has_nonfinite(tensor):
            raise CheckpointError(f"{file}: tensor {name} holds NaN or infinite values")


def has_nonfinite(tensor: torch.Tensor, chunk: int = 1 << 24) -> bool:
    """Whether a floating-point tensor holds NaN or ±inf: per chunk, its minimum and
    maximum (one fast reduction, no mask; both propagate NaN, and an infinity is one of
    them)."""
    if not tensor.is_floating_point() or tensor.numel() == 0:
        return False
    flat = tensor.detach().reshape(-1)
    for part in flat.split(chunk):
        low, high = torch.aminmax(part)
        if not (torch.isfinite(low) and torch.isfinite(high)):
            return True
    return False


def check_checkpoint(path: str | Path, scan_weights: bool = True) -> list[str]:
    """Every problem `load` would refuse a checkpoint folder for: missing files, configs,
    tokenizer, each weight file's names and shapes against the model the configs build,
    and (scan_weights) non-finite weights, read from the files one tensor at a time.
    Empty when the folder loads."""
    try:
        folder = resolve_folder(path)
    except CheckpointError as err:
        return [str(err)]
    problems: list[str] = []
    try:
        config = BagelConfig.from_checkpoint(folder)
    except CheckpointError as err:
        problems.append(str(err))
        config = None
    try:
        tokenizer = BagelTokenizer.from_folder(folder)
        if config is not None and tokenizer.vocab_len > config.llm.vocab_size:
            problems.append(
                f"{folder}: the tokenizer has {tokenizer.vocab_len} tokens but "
                f"{LLM_CONFIG} has vocab_size {config.llm.vocab_size}"
            )
    except CheckpointError as err:
        problems.append(str(err))
    if config is None:
        return problems
    with torch.device("meta"):
        modules = ((Bagel(config), EMA_WEIGHTS), (AutoEncoder(config.ae), AE_WEIGHTS))
    ignore = _dropped_vit_layer(config)
    for module, name in modules:
        expected = {k: tuple(v.shape) for k, v in module.state_dict().items()}
        try:
            found = read_header(folder / name)
            found = {k: s for k, s in found.items() if not k.startswith(ignore)}
            check_names_and_shapes(expected, found, folder / name)
            if scan_weights:
                _check_finite_file(folder / name)
        except CheckpointError as err:
            problems.append(str(err))
    return problems


def _check_finite_file(file: Path) -> None:
    try:
        with safe_open(str(file), framework="pt", device="cpu") as f:
            bad = next((k for k in f.keys() if has_nonfinite(f.get_tensor(k))), None)
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: cannot read tensor data ({err})") from err
    if bad is not None:
        raise CheckpointError(f"{file}: tensor {bad} holds NaN or infinite values")


def plan_device_map(
    net: nn.Module, dtype: torch.dtype, max_memory: dict[int | str, int | str] | None = None
) -> dict[str, torch.device]:
    """Spread `net` (on meta) over the GPUs with accelerate: each decoder layer whole, the
    ViT whole, and the CO_LOCATED modules on the device of the token embedding."""
    from accelerate import infer_auto_device_map

    plan = infer_auto_device_map(
        net, max_memory=max_memory, no_split_module_classes=NO_SPLIT, dtype=dtype
    )
    if "disk" in plan.values() or "cpu" in plan.values():
        raise CheckpointError(
            "the model does not fit the GPUs' memory (the device map spills to CPU/disk); "
            "pass a larger max_memory or use fewer, larger devices"
        )
    devices = {
        name: torch.device("cuda", d) if isinstance(d, int) else torch.device(d)
        for name, d in plan.items()
    }
    home = _placed("language_model.model.embed_tokens.weight", devices)
    devices.update({name: home for name in CO_LOCATED})
    return devices


def _placed(
    key: str, placement: dict[str, torch.device], default: torch.device | None = None
) -> torch.device:
    """The device of the longest module name in `placement` that `key` belongs to."""
    parts = key.split(".")
    for cut in range(len(parts), -1, -1):
        name = ".".join(parts[:cut])
        if name in placement:
            return placement[name]
    if default is not None:
        return default
    raise CheckpointError(f"device map has no place for tensor {key!r}")


def read_header(file: Path) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes from a safetensors header (no data is read)."""
    try:
        with safe_open(str(file), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{file}: not a readable safetensors file ({err})") from err


def check_names_and_shapes(
    expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]], file: Path
) -> None:
    """Refuse a weight file whose tensors do not match the model exactly, naming them."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    misshaped = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    if not (missing or unexpected or misshaped):
        return
    lines = [f"{file}: weights do not match the model built from the config files"]
    for title, keys, describe in (
        ("missing", missing, lambda k: k),
        ("unexpected", unexpected, lambda k: k),
        (
            "wrong shape",
            misshaped,
            lambda k: f"{k}: expected {list(expected[k])}, found {list(found[k])}",
        ),
    ):
        if keys:
            shown = "\n    ".join(describe(k) for k in keys[:10])
            more = f"\n    … and {len(keys) - 10} more" if len(keys) > 10 else ""
            lines.append(f"  {len(keys)} {title}:\n    {shown}{more}")
    raise CheckpointError("\n".join(lines))


def checkpoint_identity(path: str | Path) -> str:
    """SHA-256 over the config files and the safetensors headers: cheap, and it changes
    whenever a config, a tensor name, shape, dtype or data offset changes."""
    folder = resolve_folder(path)
    digest = hashlib.sha256()
    for name in (LLM_CONFIG, VIT_CONFIG, AE_CONFIG, BAGEL_CONFIG, EMA_WEIGHTS, AE_WEIGHTS):
        file = folder / name
        if not file.is_file():
            continue
        digest.update(name.encode())
        digest.update(
            _safetensors_header(file) if name.endswith(".safetensors") else file.read_bytes()
        )
    return digest.hexdigest()


def parse_device(device: str | torch.device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise CheckpointError(f"unknown device {device!r} (expected e.g. 'cpu' or 'cuda')") from err
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CheckpointError(f"device {str(device)!r} requested but CUDA is not available")
    if device.type not in ("cpu", "cuda"):
        raise CheckpointError(f"device type {device.type!r} is not supported (cpu or cuda)")
    return device


def parse_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.lower() in DTYPES:
        return DTYPES[dtype.lower()]
    raise CheckpointError(f"unknown dtype {dtype!r}; expected one of {sorted(set(DTYPES))}")


def _dropped_vit_layer(config: BagelConfig) -> tuple[str, ...]:
    """The ViT layer the official loader drops, should the file carry it."""
    return (f"vit_model.vision_model.encoder.layers.{config.vit.num_hidden_layers}.",)


def _safetensors_header(file: Path) -> bytes:
    with file.open("rb") as f:
        size = int.from_bytes(f.read(8), "little")
        if size > 100_000_000:
            raise CheckpointError(f"{file}: safetensors header of {size} bytes is implausible")
        return f.read(size)


def _download(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # offline, unknown repo, no permission: all end here
        raise CheckpointError(
            f"{repo_id}: not a local folder, and downloading it from the hub "
            f"failed ({type(err).__name__}: {err})"
        ) from err
