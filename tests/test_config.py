"""Configuration: the 7B key/shape audit (spec §1.5, Appendix B item 1), the official
overrides (§1.4), reading a checkpoint folder's json files, and the errors for bad ones."""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from bagel.config import (
    AE_CONFIG,
    BAGEL_CONFIG,
    LLM_CONFIG,
    VIT_CONFIG,
    AEConfig,
    BagelConfig,
    apply_official_overrides,
)
from bagel.errors import CheckpointError
from bagel.model import Bagel

# -- the spec's table, transcribed (not derived from the model) ------------------------

# §1.2 / §1.3 / §1.4 numbers, written out as the spec states them.
H, INTER, KV, HEAD, VOCAB, LLM_LAYERS = 3584, 18944, 512, 128, 152064, 28
VD, VINTER, VIT_LAYERS, PATCH_IN, VIT_POS = 1152, 4304, 26, 588, 4900
LATENT, TIME_FREQ, LATENT_POS = 64, 256, 4096


def spec_7b_keys() -> dict[str, tuple[int, ...]]:
    """Every `ema.safetensors` key with its shape, as listed in spec §1.5."""
    keys: dict[str, tuple[int, ...]] = {}

    def linear(name: str, out: int, inp: int, bias: bool = True) -> None:
        keys[f"{name}.weight"] = (out, inp)
        if bias:
            keys[f"{name}.bias"] = (out,)

    # Decoder (language_model.*)
    keys["language_model.model.embed_tokens.weight"] = (VOCAB, H)
    for i in range(LLM_LAYERS):
        layer = f"language_model.model.layers.{i}"
        for suffix in ("", "_moe_gen"):
            attn = f"{layer}.self_attn"
            linear(f"{attn}.q_proj{suffix}", H, H)
            linear(f"{attn}.k_proj{suffix}", KV, H)
            linear(f"{attn}.v_proj{suffix}", KV, H)
            linear(f"{attn}.o_proj{suffix}", H, H, bias=False)
            keys[f"{attn}.q_norm{suffix}.weight"] = (HEAD,)
            keys[f"{attn}.k_norm{suffix}.weight"] = (HEAD,)
            mlp = f"{layer}.mlp{suffix}"
            linear(f"{mlp}.gate_proj", INTER, H, bias=False)
            linear(f"{mlp}.up_proj", INTER, H, bias=False)
            linear(f"{mlp}.down_proj", H, INTER, bias=False)
            keys[f"{layer}.input_layernorm{suffix}.weight"] = (H,)
            keys[f"{layer}.post_attention_layernorm{suffix}.weight"] = (H,)
    keys["language_model.model.norm.weight"] = (H,)
    keys["language_model.model.norm_moe_gen.weight"] = (H,)
    keys["language_model.lm_head.weight"] = (VOCAB, H)

    # Vision encoder (vit_model.vision_model.*)
    vm = "vit_model.vision_model"
    linear(f"{vm}.embeddings.patch_embedding", VD, PATCH_IN)
    keys[f"{vm}.embeddings.position_embedding.weight"] = (VIT_POS, VD)
    for j in range(VIT_LAYERS):
        layer = f"{vm}.encoder.layers.{j}"
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            linear(f"{layer}.self_attn.{proj}", VD, VD)
        for norm in ("layer_norm1", "layer_norm2"):
            keys[f"{layer}.{norm}.weight"] = (VD,)
            keys[f"{layer}.{norm}.bias"] = (VD,)
        linear(f"{layer}.mlp.fc1", VINTER, VD)
        linear(f"{layer}.mlp.fc2", VD, VINTER)
    keys[f"{vm}.post_layernorm.weight"] = (VD,)
    keys[f"{vm}.post_layernorm.bias"] = (VD,)

    # Bridges and generation heads
    linear("connector.fc1", H, VD)
    linear("connector.fc2", H, H)
    keys["vit_pos_embed.pos_embed"] = (VIT_POS, H)
    linear("vae2llm", H, LATENT)
    linear("llm2vae", LATENT, H)
    linear("time_embedder.mlp.0", H, TIME_FREQ)
    linear("time_embedder.mlp.2", H, H)
    keys["latent_pos_embed.pos_embed"] = (LATENT_POS, H)
    return keys


@pytest.fixture(scope="module")
def meta_7b() -> Bagel:
    with torch.device("meta"):
        return Bagel(BagelConfig.official_7b())


def test_spec_table_has_the_counts_the_spec_states() -> None:
    table = spec_7b_keys()
    llm = [k for k in table if k.startswith("language_model.")]
    vit = [k for k in table if k.startswith("vit_model.")]
    assert (len(llm), len(vit), len(table) - len(llm) - len(vit)) == (788, 421, 14)
    assert len(table) == 1223


def test_7b_state_dict_matches_spec_table(meta_7b: Bagel) -> None:
    found = {k: tuple(v.shape) for k, v in meta_7b.state_dict().items()}
    expected = spec_7b_keys()
    assert len(found) == 1223
    assert sorted(found.keys() - expected.keys()) == []
    assert sorted(expected.keys() - found.keys()) == []
    wrong = {k: (found[k], expected[k]) for k in expected if found[k] != expected[k]}
    assert wrong == {}
    # rotary inv_freq is a non-persistent buffer and is not in the file (§1.5 notes)
    assert not any("rotary" in k or "inv_freq" in k for k in found)


def test_7b_parameter_count(meta_7b: Bagel) -> None:
    from_table = sum(torch.Size(s).numel() for s in spec_7b_keys().values())
    from_model = sum(p.numel() for p in meta_7b.parameters())
    assert from_model == from_table == sum(v.numel() for v in meta_7b.state_dict().values())
    # 14,607,260,128 parameters: "14.6 B" to 3 significant digits (spec §1.6 says ≈14.60 B;
    # its SigLIP sub-total 396.9 M leaves out the 5.6 M learned position table).
    assert from_model == 14_607_260_128
    assert float(f"{from_model:.3g}") == 14.6e9
    assert abs(from_model / 1e9 - 14.60) < 0.01
    # one expert of one decoder layer: 233.06 M (§1.6)
    layer0 = [k for k in spec_7b_keys() if k.startswith("language_model.model.layers.0.")]
    one_expert = sum(torch.Size(spec_7b_keys()[k]).numel() for k in layer0 if "moe_gen" not in k)
    assert round(one_expert / 1e6, 2) == 233.06


# -- overrides -------------------------------------------------------------------------


def test_apply_official_overrides() -> None:
    llm_raw = {"hidden_size": 64, "qk_norm": False, "tie_word_embeddings": True}
    vit_raw = {"hidden_size": 32, "num_hidden_layers": 27}
    llm_before, vit_before = copy.deepcopy(llm_raw), copy.deepcopy(vit_raw)
    llm, vit = apply_official_overrides(llm_raw, vit_raw)
    assert llm["qk_norm"] is True
    assert llm["tie_word_embeddings"] is False
    assert llm["hidden_size"] == 64
    assert vit["num_hidden_layers"] == 26
    assert vit["hidden_size"] == 32
    # inputs untouched
    assert llm_raw == llm_before and vit_raw == vit_before


def test_apply_official_overrides_without_llm_flags() -> None:
    llm, vit = apply_official_overrides({}, {"num_hidden_layers": 4})
    assert llm == {"qk_norm": True, "tie_word_embeddings": False}
    assert vit == {"num_hidden_layers": 3}


def test_official_7b_derived_values() -> None:
    c = BagelConfig.official_7b()
    assert c.vit.num_hidden_layers == 26
    assert c.llm.qk_norm is True and c.llm.tie_word_embeddings is False
    assert c.llm.head_dim == 128
    assert c.vae_max_side == 1024
    assert c.vit_max_side == 980
    assert c.vit.max_patches_per_side == 70
    assert c.latent_downsample == 16
    assert c.latent_channels == 16
    assert c.patch_latent_dim == 64
    assert c.max_latent_size == 64
    assert (c.vae_min_side, c.vit_min_side) == (512, 224)
    assert c.connector_act == "gelu_pytorch_tanh"
    assert c.timestep_freq_dim == 256
    assert c.ae == AEConfig()


def test_release_style_json_files_give_official_7b(tmp_path: Path) -> None:
    """The release's files (Qwen2/SigLIP extras, 27 ViT layers, no BAGEL files)."""
    llm = {
        "architectures": ["Qwen2ForCausalLM"],
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "hidden_act": "silu",
        "rms_norm_eps": 1e-06,
        "rope_theta": 1000000.0,
        "rope_scaling": None,
        "max_position_embeddings": 32768,
        "vocab_size": 152064,
        "tie_word_embeddings": False,
        "bos_token_id": 151643,
        "eos_token_id": 151645,
        "use_sliding_window": False,
        "sliding_window": 131072,
        "max_window_layers": 28,
        "torch_dtype": "bfloat16",
    }
    vit = {
        "model_type": "siglip_vision_model",
        "hidden_size": 1152,
        "intermediate_size": 4304,
        "num_hidden_layers": 27,
        "num_attention_heads": 16,
        "patch_size": 14,
        "image_size": 980,
        "num_channels": 3,
        "attention_dropout": 0.0,
    }
    (tmp_path / LLM_CONFIG).write_text(json.dumps(llm))
    (tmp_path / VIT_CONFIG).write_text(json.dumps(vit))
    assert BagelConfig.from_checkpoint(tmp_path) == BagelConfig.official_7b()


# -- from_checkpoint -------------------------------------------------------------------


def test_to_files_round_trip(tmp_path: Path) -> None:
    tiny = BagelConfig.tiny()
    tiny.to_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [LLM_CONFIG, VIT_CONFIG, AE_CONFIG, BAGEL_CONFIG]
    )
    # the file carries one ViT layer more than is built, as in the release
    written = json.loads((tmp_path / VIT_CONFIG).read_text())["num_hidden_layers"]
    assert written == tiny.vit.num_hidden_layers + 1
    assert BagelConfig.from_checkpoint(tmp_path) == tiny


def test_absent_ae_config_means_flux_defaults(tmp_path: Path) -> None:
    BagelConfig.tiny().to_files(tmp_path)
    (tmp_path / AE_CONFIG).unlink()
    c = BagelConfig.from_checkpoint(tmp_path)
    assert c.ae == AEConfig()
    assert (c.ae.downsample, c.ae.z_channels, c.ae.ch_mult) == (8, 16, (1, 2, 4, 4))
    assert (c.ae.scale_factor, c.ae.shift_factor) == (0.3611, 0.1159)


def test_absent_bagel_config_means_official_sizes(tmp_path: Path) -> None:
    BagelConfig.tiny().to_files(tmp_path)
    (tmp_path / BAGEL_CONFIG).unlink()
    c = BagelConfig.from_checkpoint(tmp_path)
    assert c.max_latent_size == 64
    assert c.vae_min_side == 512
    assert c.vit_min_side == 224
    assert c.latent_patch_size == 2
    assert c.llm == BagelConfig.tiny().llm  # the rest still comes from the files


def test_default_rope_scaling_is_accepted(tmp_path: Path) -> None:
    BagelConfig.tiny().to_files(tmp_path)
    for scaling in ({"rope_type": "default"}, {"type": "default"}, {}):
        _edit(tmp_path / LLM_CONFIG, lambda d, s=scaling: d.update(rope_scaling=s))
        assert BagelConfig.from_checkpoint(tmp_path) == BagelConfig.tiny()


# -- errors ----------------------------------------------------------------------------


def _edit(file: Path, change: Any) -> None:
    content = json.loads(file.read_text())
    change(content)
    file.write_text(json.dumps(content))


def _expect_error(folder: Path, *fragments: str) -> str:
    with pytest.raises(CheckpointError) as info:
        BagelConfig.from_checkpoint(folder)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


@pytest.fixture
def cfg_dir(tmp_path: Path) -> Path:
    BagelConfig.tiny().to_files(tmp_path)
    return tmp_path


def test_missing_required_field(cfg_dir: Path) -> None:
    _edit(cfg_dir / LLM_CONFIG, lambda d: d.pop("hidden_size"))
    _expect_error(cfg_dir, LLM_CONFIG, "missing", "'hidden_size'")


def test_missing_vit_layer_count(cfg_dir: Path) -> None:
    _edit(cfg_dir / VIT_CONFIG, lambda d: d.pop("num_hidden_layers"))
    _expect_error(cfg_dir, VIT_CONFIG, "missing", "'num_hidden_layers'")


@pytest.mark.parametrize(
    ("file", "field", "value"),
    [
        (LLM_CONFIG, "hidden_size", "big"),
        (LLM_CONFIG, "num_hidden_layers", True),  # a bool is not an int here
        (LLM_CONFIG, "rms_norm_eps", "small"),
        (VIT_CONFIG, "num_hidden_layers", "big"),  # read by the override before the rest
        (VIT_CONFIG, "num_hidden_layers", 4.5),
        (VIT_CONFIG, "patch_size", None),
        (AE_CONFIG, "ch_mult", "1,2,4,4"),
        (BAGEL_CONFIG, "max_latent_size", "8"),
    ],
)
def test_wrong_type_names_field_and_value(cfg_dir: Path, file: str, field: str, value) -> None:
    _edit(cfg_dir / file, lambda d: d.update({field: value}))
    _expect_error(cfg_dir, file, repr(field), repr(value))


def test_missing_config_file(cfg_dir: Path) -> None:
    (cfg_dir / VIT_CONFIG).unlink()
    _expect_error(cfg_dir, str(cfg_dir / VIT_CONFIG), "not found")


@pytest.mark.parametrize("file", [LLM_CONFIG, VIT_CONFIG, AE_CONFIG, BAGEL_CONFIG])
def test_invalid_json_names_the_file(cfg_dir: Path, file: str) -> None:
    (cfg_dir / file).write_text('{"hidden_size": 64,')
    _expect_error(cfg_dir, str(cfg_dir / file), "not valid JSON")


def test_undecodable_bytes_name_the_file(cfg_dir: Path) -> None:
    (cfg_dir / LLM_CONFIG).write_bytes(b"\xff\xfe\x00garbage")
    _expect_error(cfg_dir, str(cfg_dir / LLM_CONFIG), "not valid JSON")


@pytest.mark.parametrize(("text", "kind"), [("[1, 2]", "list"), ('"x"', "str"), ("3", "int")])
def test_non_object_json(cfg_dir: Path, text: str, kind: str) -> None:
    (cfg_dir / LLM_CONFIG).write_text(text)
    _expect_error(cfg_dir, str(cfg_dir / LLM_CONFIG), "JSON object", kind)


@pytest.mark.parametrize(
    "scaling",
    [{"type": "yarn", "factor": 4}, {"rope_type": "linear", "factor": 2.0}, "yarn", [1]],
)
def test_unsupported_rope_scaling(cfg_dir: Path, scaling) -> None:
    _edit(cfg_dir / LLM_CONFIG, lambda d: d.update(rope_scaling=scaling))
    _expect_error(cfg_dir, LLM_CONFIG, "rope_scaling", "not supported", repr(scaling))


def test_llm_gelu_is_refused(cfg_dir: Path) -> None:
    _edit(cfg_dir / LLM_CONFIG, lambda d: d.update(hidden_act="gelu"))
    _expect_error(cfg_dir, LLM_CONFIG, "hidden_act", "'gelu'", "silu")


def test_ae_downsample_must_match_ch_mult(cfg_dir: Path) -> None:
    _edit(cfg_dir / AE_CONFIG, lambda d: d.update(downsample=16))
    _expect_error(cfg_dir, AE_CONFIG, "downsample 16", "ch_mult [1, 1, 2, 2]", "= 8")


def test_hidden_size_not_divisible_by_heads(cfg_dir: Path) -> None:
    _edit(cfg_dir / LLM_CONFIG, lambda d: d.update(hidden_size=66))
    _expect_error(cfg_dir, LLM_CONFIG, "hidden_size", "num_attention_heads")


def test_heads_not_divisible_by_kv_heads(cfg_dir: Path) -> None:
    _edit(cfg_dir / LLM_CONFIG, lambda d: d.update(num_key_value_heads=3))
    _expect_error(cfg_dir, LLM_CONFIG, "num_key_value_heads")


def test_vit_hidden_size_not_divisible_by_heads(cfg_dir: Path) -> None:
    _edit(cfg_dir / VIT_CONFIG, lambda d: d.update(hidden_size=33))
    _expect_error(cfg_dir, VIT_CONFIG, "hidden_size", "num_attention_heads")


def test_configs_are_frozen() -> None:
    c = BagelConfig.tiny()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.max_latent_size = 32  # type: ignore[misc]
