"""Memory profiles on the tiny checkpoint: selection, refusals before loading, int8 / nf4
closeness to fp32, layer streaming, and the weight bytes `info` reports."""

from __future__ import annotations

import importlib.util
import json
import math

import bitsandbytes as bnb
import pytest
import torch

from bagel.checkpoint import load, read_header
from bagel.config import BagelConfig
from bagel.errors import CheckpointError
from bagel.flow import SamplerParams
from bagel.llm import Routing
from bagel.profiles import (
    Profile,
    check_runnable,
    device_bytes,
    parse_profile,
    plan_offload,
    profile_dtype,
    profile_memory,
    stream_layers,
    weight_bytes,
)
from workbench.cli.main import main

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
PARAMS = SamplerParams(
    num_timesteps=9, cfg_text_scale=4.0, cfg_img_scale=1.0, cfg_interval=(0.0, 1.0)
)


def first_velocity(pipe) -> torch.Tensor:
    """The velocity of a fixed noise at t = 1 after a short text, [1, 16, 64]."""
    ctx = pipe.new_context()
    pipe.append_text(ctx, "a red cat on a wall")
    noise = torch.randn(16, 64, generator=torch.Generator().manual_seed(1))
    routing = Routing.latent_spans(18, [(1, 17)])
    return pipe.velocity(noise, torch.tensor(1.0), (4, 4), [ctx], routing)


def sample(pipe) -> tuple[torch.Tensor, torch.Tensor]:
    """(first-step velocity, 8-step latent) after a short text, fixed noise."""
    ctx, dropped = pipe.new_context(), pipe.new_context()
    pipe.append_text(ctx, "a red cat on a wall")
    noise = torch.randn(16, 8, 8, generator=torch.Generator().manual_seed(1))
    out = pipe.generate_image(ctx, 64, 64, PARAMS, cfg_text_ctx=dropped, noise=noise)
    return first_velocity(pipe), out.latent


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def reference(pipe):
    return sample(pipe)


# -- selection and refusals -----------------------------------------------------------


def test_default_profiles_and_names():
    assert parse_profile(None, CPU) == Profile("fp32")
    assert parse_profile(None, CUDA) == Profile("bf16")
    assert parse_profile("offload", CUDA) == Profile("bf16", offload=True)
    assert parse_profile("INT8+offload", CUDA) == Profile("int8", offload=True)
    assert parse_profile("int8+offload", CUDA).name == "int8+offload"
    assert parse_profile("offload", CUDA).name == "offload"
    with pytest.raises(CheckpointError, match="unknown profile 'int4'; expected one of"):
        parse_profile("int4", CPU)


def test_profile_dtypes():
    assert profile_dtype(Profile("bf16"), None, CPU) == torch.bfloat16
    assert profile_dtype(Profile("int8"), None, CPU) == torch.float32
    assert profile_dtype(Profile("nf4"), None, CUDA) == torch.bfloat16
    assert profile_dtype(Profile("int8"), torch.bfloat16, CPU) == torch.bfloat16
    with pytest.raises(CheckpointError, match="profile 'fp32' stores its weights in torch.float32"):
        profile_dtype(Profile("fp32"), torch.bfloat16, CPU)


@pytest.mark.parametrize(
    "name, message",
    [
        ("offload", "streams CPU-held weights onto a GPU; on cpu every weight"),
        ("int8+offload", "streams CPU-held weights onto a GPU"),
        ("df11", "decompresses its weights with a CUDA kernel; not on cpu"),
    ],
)
def test_profiles_this_cpu_cannot_run_are_refused_before_loading(tiny_dir, name, message):
    with pytest.raises(CheckpointError, match=message):
        load(tiny_dir, device="cpu", profile=name)
    with pytest.raises(CheckpointError, match=message):
        load(tiny_dir / "no-such-folder", device="cpu", profile=name)  # before the folder


def test_nf4_offload_is_refused_with_its_reason():
    with pytest.raises(CheckpointError, match="'nf4\\+offload' is not supported"):
        check_runnable(parse_profile("nf4+offload", CUDA), CUDA)


def test_missing_packages_are_named(monkeypatch, tmp_path):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "bitsandbytes" else real(n, *a)
    )
    with pytest.raises(CheckpointError, match="profile 'nf4' needs the bitsandbytes package"):
        check_runnable(Profile("nf4"), CPU)
    with pytest.raises(CheckpointError, match="needs the dfloat11 package"):
        check_runnable(Profile("df11"), CUDA)
    monkeypatch.setattr(importlib.util, "find_spec", lambda n, *a: object())
    with pytest.raises(CheckpointError, match="needs a DFloat11 checkpoint folder"):
        check_runnable(Profile("df11"), CUDA, tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"dfloat11_config": {}}))
    check_runnable(Profile("df11"), CUDA, tmp_path)  # the folder is accepted


def test_a_missing_kernel_is_refused(monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("no native library")

    monkeypatch.setattr(bnb.functional, "quantize_4bit", broken)
    with pytest.raises(CheckpointError, match="bitsandbytes has no working nf4 kernel for cpu"):
        check_runnable(Profile("nf4"), CPU)


def test_a_dtype_against_the_profile_is_refused(tiny_dir):
    with pytest.raises(CheckpointError, match="cannot run in torch.bfloat16"):
        load(tiny_dir, device="cpu", dtype="bfloat16", profile="fp32")


# -- quantised profiles on the tiny model ----------------------------------------------


@pytest.mark.parametrize("name, bound", [("int8", 0.02), ("nf4", 0.15)])
def test_quantised_profiles_track_fp32(tiny_dir, reference, name, bound):
    pipe = load(tiny_dir, device="cpu", profile=name)
    layer = pipe.net.language_model.model.layers[0]
    kind = bnb.nn.Linear8bitLt if name == "int8" else bnb.nn.Linear4bit
    assert isinstance(layer.self_attn.q_proj_moe_gen, kind)
    assert isinstance(layer.mlp.down_proj, kind)
    assert isinstance(layer.mlp_moe_gen.up_proj, kind)
    quantised = [m for m in pipe.net.modules() if isinstance(m, kind)]
    assert len(quantised) == 14 * len(pipe.net.language_model.model.layers)
    assert layer.mlp.down_proj.weight.dtype == (torch.int8 if name == "int8" else torch.uint8)
    for kept in (pipe.net.language_model.lm_head, pipe.net.vae2llm, pipe.net.connector.fc1):
        assert kept.weight.dtype == torch.float32  # full precision outside the decoder
    assert pipe.profile == name
    v, latent = sample(pipe)
    v_ref, latent_ref = reference
    # a wrong scale or a transposed weight gives errors of order 1
    assert 0 < rel(v, v_ref) < bound
    assert 0 < rel(latent, latent_ref) < bound


def test_streamed_layers_give_the_same_output(tiny_dir):
    """The offload mechanism (accelerate's hooks) with the CPU as the execution device."""
    for name in ("fp32", "int8"):
        pipe = load(tiny_dir, device="cpu", profile=name)
        before = first_velocity(pipe)
        layer = pipe.net.language_model.model.layers[1]
        stream_layers([layer], CPU)
        assert layer.mlp.down_proj.weight.device.type == "meta"  # held by the hook only
        assert torch.equal(first_velocity(pipe), before)


def test_offload_plan_keeps_layers_in_order_while_they_fit():
    assert plan_offload(10, [5, 5, 5, 5], 22) == [True, True, False, False]
    assert plan_offload(10, [5, 5], 100) == [True, True]
    with pytest.raises(CheckpointError, match="outside the decoder layers take"):
        plan_offload(10, [5], 5)


# -- weight bytes from the headers -------------------------------------------------------


def loaded_bytes(pipe) -> int:
    """Bytes of every tensor the loaded model holds (bitsandbytes' scales included)."""
    total = 0
    for module in pipe.net.modules():
        for t in [*module.parameters(recurse=False), *module.buffers(recurse=False)]:
            total += t.numel() * t.element_size()
        state = getattr(getattr(module, "weight", None), "quant_state", None)
        if state is not None:
            nested = state.state2
            for t in (state.absmax, state.code, nested.absmax, nested.code):
                total += t.numel() * t.element_size()
        scale = getattr(getattr(module, "weight", None), "SCB", None)
        if scale is not None:
            total += scale.numel() * scale.element_size()
    return total


@pytest.mark.parametrize("name", ["fp32", "int8", "nf4"])
def test_weight_bytes_equal_what_loading_holds(tiny_dir, name):
    pipe = load(tiny_dir, device="cpu", profile=name)
    other, layers = weight_bytes(
        read_header(tiny_dir / "ema.safetensors"), name, profile_dtype(Profile(name), None, CPU)
    )
    assert other + sum(layers) == loaded_bytes(pipe)


def test_int8_layer_bytes_against_a_hand_count():
    llm = BagelConfig.tiny().llm
    h, i, d = llm.hidden_size, llm.intermediate_size, llm.head_dim
    kv = llm.num_key_value_heads * d
    shapes = {}
    for expert in ("", "_moe_gen"):
        for proj, out in (("q_proj", h), ("k_proj", kv), ("v_proj", kv), ("o_proj", h)):
            shapes[f"language_model.model.layers.0.self_attn.{proj}{expert}.weight"] = (out, h)
        for proj in ("q_proj", "k_proj", "v_proj"):
            out = h if proj == "q_proj" else kv
            shapes[f"language_model.model.layers.0.self_attn.{proj}{expert}.bias"] = (out,)
        for proj, shape in (("gate_proj", (i, h)), ("up_proj", (i, h)), ("down_proj", (h, i))):
            shapes[f"language_model.model.layers.0.mlp{expert}.{proj}.weight"] = shape
    shapes["language_model.model.embed_tokens.weight"] = (llm.vocab_size, h)
    # per expert: int8 weights + a float32 scale per output row; biases and the
    # embedding in float32
    attn = (h * h + 4 * h) * 2 + (kv * h + 4 * kv) * 2
    mlp = 3 * h * i + 4 * (i + i + h)
    biases = 4 * (h + kv + kv)
    other, layers = weight_bytes(shapes, "int8", torch.float32)
    assert layers == [2 * (attn + mlp + biases)]
    assert other == 4 * llm.vocab_size * h


def test_device_bytes_split_for_offload():
    shapes = {
        "vae2llm.weight": (8, 8),
        "language_model.model.layers.0.input_layernorm.weight": (64,),
        "language_model.model.layers.1.input_layernorm.weight": (64,),
    }
    ae = {"decoder.conv.weight": (4,)}
    split = device_bytes(shapes, ae, Profile("bf16", offload=True), torch.bfloat16, CUDA, 300)
    assert split == {"cuda": 128 + 128 + 16, "cpu": 128}
    whole = device_bytes(shapes, ae, Profile("fp32"), torch.float32, CPU)
    assert whole == {"cpu": 4 * (64 + 128) + 16}


def test_profile_memory_counts_each_device_from_the_shapes_alone():
    linear = "language_model.model.layers.0.mlp.up_proj.weight"  # quantised by int8
    shapes, ae = {linear: (8, 4), "vit.norm.weight": (3,)}, {"decoder.conv.weight": (2, 2)}
    fp32 = profile_memory(shapes, ae, Profile("fp32"), CPU)
    assert fp32["bytes"] == {"cpu": 4 * (32 + 3) + 4 * 4}
    int8 = profile_memory(shapes, ae, Profile("int8"), CPU)  # values + a scale per row
    assert int8 == {
        "profile": "int8",
        "bytes": {"cpu": (32 + 4 * 8) + 4 * 3 + 4 * 4},
        "GiB": {"cpu": 0.0},
    }
    offload = profile_memory(shapes, ae, Profile("bf16", offload=True), CUDA, 2 * 3 + 16)
    assert offload["bytes"] == {"cuda": 2 * 3 + 16, "cpu": 2 * 32}  # the layer did not fit


def test_info_prints_the_bytes_per_device(tiny_dir, capsys):
    assert main(["info", str(tiny_dir), "--profile", "int8"]) == 0
    memory = json.loads(capsys.readouterr().out)["memory"]
    other, layers = weight_bytes(read_header(tiny_dir / "ema.safetensors"), "int8", torch.float32)
    ae = sum(4 * math.prod(s) for s in read_header(tiny_dir / "ae.safetensors").values())
    assert memory["profile"] == "int8"
    assert memory["bytes"] == {"cpu": other + sum(layers) + ae}
    args = ["info", str(tiny_dir), "--profile", "offload", "--device", "cuda"]
    other, layers = weight_bytes(read_header(tiny_dir / "ema.safetensors"), "bf16", torch.bfloat16)
    assert main([*args, "--gpu-memory", str(other + layers[0])]) == 0  # one layer fits
    split = json.loads(capsys.readouterr().out)["memory"]["bytes"]
    assert split == {"cuda": other + layers[0] + ae, "cpu": sum(layers[1:])}
    assert main(args) == 2
    assert "pass --gpu-memory" in capsys.readouterr().err


def test_a_scenario_runs_in_its_profile_and_replays_in_it(tmp_path, tiny_dir, capsys):
    import shutil
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    shutil.copy(root / "scenarios" / "images" / "street.png", tmp_path / "street.png")
    (tmp_path / "walk.yaml").write_text(
        "profile: nf4\nseed: 1\ndefaults:\n  num_timesteps: 3\n  feature_cache: taylorseer\n"
        "start:\n  image: street.png\nsteps:\n  - navigate: {actions: [forward]}\n"
    )
    out = tmp_path / "runs"
    args = ["run", str(tmp_path / "walk.yaml"), "--model", str(tiny_dir), "--out", str(out)]
    assert main(args) == 0
    assert "(nf4)" in capsys.readouterr().out
    session = out / "walk" / "session"
    assert json.loads((session / "session.json").read_text())["profile"] == "nf4"
    assert main(["replay", str(session), "--model", str(tiny_dir)]) == 0  # nf4 again
    assert "(nf4)" in capsys.readouterr().out
