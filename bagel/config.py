"""Configuration read from a checkpoint folder's json files.

The official release ships `llm_config.json` (Qwen2) and `vit_config.json` (SigLIP);
the official loader then patches both (spec §1.4). That patching lives in exactly one
function here, `apply_official_overrides`. Two optional files extend the layout for
checkpoints made by this project: `ae_config.json` (autoencoder hyper-parameters,
absent = FLUX values) and `bagel_config.json` (BAGEL-level sizes, absent = the
official values).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bagel import safejson
from bagel.errors import CheckpointError

MAX_CONFIG_BYTES = 4 * 1024 * 1024  # the release's config files are about 1 KB
LLM_CONFIG = "llm_config.json"
VIT_CONFIG = "vit_config.json"
AE_CONFIG = "ae_config.json"
BAGEL_CONFIG = "bagel_config.json"


@dataclass(frozen=True)
class LLMConfig:
    """The Qwen2 decoder, turned into a Mixture-of-Transformers by BAGEL."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    hidden_act: str = "silu"
    qk_norm: bool = True
    tie_word_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    def __post_init__(self) -> None:
        _require(
            self.hidden_size % self.num_attention_heads == 0,
            LLM_CONFIG,
            "hidden_size must be a multiple of num_attention_heads",
        )
        _require(
            self.num_attention_heads % self.num_key_value_heads == 0,
            LLM_CONFIG,
            "num_attention_heads must be a multiple of num_key_value_heads",
        )
        _require(self.head_dim % 2 == 0, LLM_CONFIG, "head_dim must be even for RoPE")
        _require(self.num_hidden_layers >= 1, LLM_CONFIG, "needs at least one layer")
        _require(
            self.hidden_act == "silu",
            LLM_CONFIG,
            f"hidden_act {self.hidden_act!r} is not supported; expected 'silu'",
        )


@dataclass(frozen=True)
class ViTConfig:
    """The SigLIP NaViT encoder (already reduced to the layers BAGEL uses)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    patch_size: int = 14
    image_size: int = 980
    num_channels: int = 3
    hidden_act: str = "gelu_pytorch_tanh"
    layer_norm_eps: float = 1e-6

    @property
    def max_patches_per_side(self) -> int:
        return self.image_size // self.patch_size

    def __post_init__(self) -> None:
        _require(
            self.hidden_size % self.num_attention_heads == 0,
            VIT_CONFIG,
            "hidden_size must be a multiple of num_attention_heads",
        )
        _require(self.num_channels == 3, VIT_CONFIG, "num_channels must be 3")
        _require(
            self.hidden_act in ("gelu_pytorch_tanh", "gelu"),
            VIT_CONFIG,
            f"hidden_act {self.hidden_act!r} is not supported",
        )
        _require(self.num_hidden_layers >= 1, VIT_CONFIG, "needs at least one layer")
        _require(
            self.image_size >= self.patch_size,
            VIT_CONFIG,
            f"image_size {self.image_size} is smaller than patch_size {self.patch_size}",
        )


@dataclass(frozen=True)
class AEConfig:
    """The FLUX autoencoder; defaults are the values the official loader hard-codes."""

    resolution: int = 256
    in_channels: int = 3
    downsample: int = 8
    ch: int = 128
    out_ch: int = 3
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 16
    scale_factor: float = 0.3611
    shift_factor: float = 0.1159

    def __post_init__(self) -> None:
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        _require(
            self.downsample == 2 ** (len(self.ch_mult) - 1),
            AE_CONFIG,
            f"downsample {self.downsample} does not match ch_mult {list(self.ch_mult)} "
            f"(expected 2**(len(ch_mult)-1) = {2 ** (len(self.ch_mult) - 1)})",
        )
        widths = [self.ch * m for m in self.ch_mult]
        _require(
            all(w % 32 == 0 for w in widths),
            AE_CONFIG,
            f"channel widths {widths} must be multiples of 32 (GroupNorm uses 32 groups)",
        )


@dataclass(frozen=True)
class BagelConfig:
    """The whole model: decoder, ViT, autoencoder and the BAGEL-level sizes."""

    llm: LLMConfig
    vit: ViTConfig
    ae: AEConfig = field(default_factory=AEConfig)
    latent_patch_size: int = 2
    max_latent_size: int = 64  # latent position table side; the class default upstream is 32
    vae_min_side: int = 512  # resize rule of the VAE transform (max side is derived)
    vit_min_side: int = 224  # resize rule of the ViT transform
    connector_act: str = "gelu_pytorch_tanh"
    timestep_freq_dim: int = 256

    @property
    def latent_channels(self) -> int:
        return self.ae.z_channels

    @property
    def latent_downsample(self) -> int:
        """Pixels per latent token side (8 × 2 = 16 for the release)."""
        return self.ae.downsample * self.latent_patch_size

    @property
    def patch_latent_dim(self) -> int:
        return self.latent_patch_size**2 * self.latent_channels

    @property
    def vae_max_side(self) -> int:
        return self.max_latent_size * self.latent_downsample

    @property
    def vit_max_side(self) -> int:
        return self.vit.max_patches_per_side * self.vit.patch_size

    # -- construction -------------------------------------------------------------

    @classmethod
    def from_checkpoint(cls, path: str | Path) -> BagelConfig:
        """Read the config files of a checkpoint folder and apply the official overrides."""
        path = Path(path)
        llm_raw = _read_json(path / LLM_CONFIG)
        vit_raw = _read_json(path / VIT_CONFIG)
        ae_raw = _read_json(path / AE_CONFIG) if (path / AE_CONFIG).exists() else {}
        bagel_raw = _read_json(path / BAGEL_CONFIG) if (path / BAGEL_CONFIG).exists() else {}
        try:
            return cls.from_dicts(llm_raw, vit_raw, ae_raw, bagel_raw)
        except CheckpointError as err:  # name the folder too: "ckpt/vit_config.json: ..."
            raise CheckpointError(f"{path}/{err}") from err

    @classmethod
    def from_dicts(
        cls, llm_raw: dict, vit_raw: dict, ae_raw: dict | None = None, bagel_raw: dict | None = None
    ) -> BagelConfig:
        """Build from the raw json contents (as found in the files, before overrides)."""
        llm_raw, vit_raw = apply_official_overrides(llm_raw, vit_raw)
        _check_rope_scaling(llm_raw)
        return cls(
            llm=_pick(LLMConfig, llm_raw, LLM_CONFIG),
            vit=_pick(ViTConfig, vit_raw, VIT_CONFIG),
            ae=_pick(AEConfig, ae_raw or {}, AE_CONFIG),
            **_pick_fields(cls, bagel_raw or {}, BAGEL_CONFIG, exclude=("llm", "vit", "ae")),
        )

    def to_files(self, path: str | Path) -> None:
        """Write the four json files in the layout `from_checkpoint` reads.

        The ViT file gets one more layer than is built, as in the release (the official
        loader drops the last one).
        """
        path = Path(path)
        llm = {
            "architectures": ["Qwen2ForCausalLM"],
            "model_type": "qwen2",
            **dataclasses.asdict(self.llm),
            "rope_scaling": None,
        }
        vit = {"model_type": "siglip_vision_model", **dataclasses.asdict(self.vit)}
        vit["num_hidden_layers"] += 1
        ae = dataclasses.asdict(self.ae)
        ae["ch_mult"] = list(ae["ch_mult"])
        bagel = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if f.name not in ("llm", "vit", "ae")
        }
        for name, content in [
            (LLM_CONFIG, llm),
            (VIT_CONFIG, vit),
            (AE_CONFIG, ae),
            (BAGEL_CONFIG, bagel),
        ]:
            (path / name).write_text(json.dumps(content, indent=2) + "\n")

    @classmethod
    def official_7b(cls) -> BagelConfig:
        """BAGEL-7B-MoT as the release's json files describe it (overrides applied)."""
        llm = dict(
            hidden_size=3584,
            intermediate_size=18944,
            num_hidden_layers=28,
            num_attention_heads=28,
            num_key_value_heads=4,
            vocab_size=152064,
            rms_norm_eps=1e-6,
            rope_theta=1_000_000.0,
            max_position_embeddings=32768,
            hidden_act="silu",
            tie_word_embeddings=False,
            rope_scaling=None,
        )
        vit = dict(
            hidden_size=1152,
            intermediate_size=4304,
            num_hidden_layers=27,
            num_attention_heads=16,
            patch_size=14,
            image_size=980,
            num_channels=3,
            hidden_act="gelu_pytorch_tanh",
            layer_norm_eps=1e-6,
        )
        return cls.from_dicts(llm, vit)

    @classmethod
    def tiny(cls, vocab_size: int = 512) -> BagelConfig:
        """A few-hundred-thousand-parameter model with every structural feature of the
        real one (GQA, two experts, 2×2 latent patches, 14-px ViT patches), sized so that
        a 64×64 image costs 16 latent tokens and 16 ViT tokens."""
        llm = dict(
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            vocab_size=vocab_size,
            max_position_embeddings=4096,
        )
        vit = dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=3,
            num_attention_heads=2,
            patch_size=14,
            image_size=14 * 10,
        )
        ae = dict(ch=32, ch_mult=[1, 1, 2, 2], num_res_blocks=1)
        bagel = dict(max_latent_size=8, vae_min_side=32, vit_min_side=28)
        return cls.from_dicts(llm, vit, ae, bagel)


def apply_official_overrides(llm_raw: dict, vit_raw: dict) -> tuple[dict, dict]:
    """The patches the official loader applies after reading the json files (spec §1.4).

    - decoder: per-head QK-norm on, untied LM head (MoT layers are the only kind built);
    - ViT: learned absolute positions (no 2-D RoPE), and the last layer dropped
      (features are taken from the second-to-last layer, as in training).
    """
    llm = {**llm_raw, "qk_norm": True, "tie_word_embeddings": False}
    vit = {**vit_raw}
    if "num_hidden_layers" not in vit:
        raise CheckpointError(f"{VIT_CONFIG}: missing field 'num_hidden_layers'")
    layers = vit["num_hidden_layers"]
    if not isinstance(layers, int) or isinstance(layers, bool):
        raise CheckpointError(
            f"{VIT_CONFIG}: field 'num_hidden_layers' must be int, found {layers!r}"
        )
    vit["num_hidden_layers"] = layers - 1
    return llm, vit


def _check_rope_scaling(llm_raw: dict) -> None:
    scaling = llm_raw.get("rope_scaling")
    if scaling not in (None, {}) and (
        not isinstance(scaling, dict) or scaling.get("rope_type", scaling.get("type")) != "default"
    ):
        raise CheckpointError(
            f"{LLM_CONFIG}: rope_scaling {scaling!r} is not supported; BAGEL uses the default RoPE"
        )


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path}: file not found")
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise CheckpointError(f"{path}: {size} bytes, more than the {MAX_CONFIG_BYTES} allowed")
    try:
        content = safejson.loads(path.read_text(encoding="utf-8"))
    except (safejson.JSONLimitError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path}: not valid JSON ({err})") from err
    if not isinstance(content, dict):
        raise CheckpointError(f"{path}: expected a JSON object, found {type(content).__name__}")
    return content


def _pick_fields(cls: type, raw: dict, source: str, exclude: tuple[str, ...] = ()) -> dict:
    """The fields of dataclass `cls` found in `raw`, type-checked; other keys are ignored
    (the release's files carry many Qwen2/SigLIP fields BAGEL does not use)."""
    picked: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in exclude or f.name not in raw:
            continue
        value = raw[f.name]
        expected = _field_type(f)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if expected is tuple and isinstance(value, list):
            value = tuple(value)
        if not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
            raise CheckpointError(
                f"{source}: field {f.name!r} must be {expected.__name__}, found {value!r}"
            )
        _check_range(f.name, value, source)
        picked[f.name] = value
    return picked


# float fields that may be zero or negative; every other number must be > 0
_SIGNED = ("shift_factor",)


def _check_range(name: str, value: Any, source: str) -> None:
    """Every int field is a size or a count (>= 1); every float is finite, and > 0 unless
    listed in _SIGNED (eps, theta and scale divide or multiply)."""
    if isinstance(value, tuple) and not all(
        isinstance(n, int) and not isinstance(n, bool) for n in value
    ):
        raise CheckpointError(
            f"{source}: field {name!r} must be a list of integers, found {value!r}"
        )
    numbers = value if isinstance(value, tuple) else (value,)
    for number in numbers:
        if isinstance(number, bool) or not isinstance(number, int | float):
            continue
        if not math.isfinite(number):
            raise CheckpointError(f"{source}: field {name!r} must be finite, found {value!r}")
        # a ViT's layer count is checked after the official override takes one off
        if name not in _SIGNED and (number < 0 or number == 0 and name != "num_hidden_layers"):
            raise CheckpointError(f"{source}: field {name!r} must be > 0, found {value!r}")


def _pick(cls: type, raw: dict, source: str) -> Any:
    missing = [
        f.name
        for f in dataclasses.fields(cls)
        if f.name not in raw
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING
    ]
    if missing:
        raise CheckpointError(f"{source}: missing field(s) {', '.join(map(repr, missing))}")
    return cls(**_pick_fields(cls, raw, source))


def _field_type(f: dataclasses.Field) -> type:
    name = f.type if isinstance(f.type, str) else f.type.__name__
    return {"int": int, "float": float, "str": str, "bool": bool}.get(
        name, tuple if name.startswith("tuple") else object
    )


def _require(ok: bool, source: str, message: str) -> None:
    if not ok:
        raise CheckpointError(f"{source}: {message}")
