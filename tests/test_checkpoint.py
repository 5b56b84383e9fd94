"""Loading a checkpoint folder (spec §1.1, §1.5, §1.7) with the tiny random checkpoint:
exact names and shapes, the dropped ViT layer, dtypes, devices, bad input, identity."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from bagel import checkpoint
from bagel.checkpoint import (
    AE_WEIGHTS,
    EMA_WEIGHTS,
    checkpoint_identity,
    load,
    read_header,
)
from bagel.config import LLM_CONFIG, BagelConfig
from bagel.errors import CheckpointError
from bagel.tiny import make_tiny

TINY_FILES = sorted(
    [
        "llm_config.json",
        "vit_config.json",
        "ae_config.json",
        "bagel_config.json",
        "ema.safetensors",
        "ae.safetensors",
        "vocab.json",
        "merges.txt",
        "tokenizer_config.json",
    ]
)


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny(tmp_path_factory.mktemp("tiny") / "ckpt", seed=0)


@pytest.fixture(scope="module")
def pipe(tiny_dir: Path):
    return load(tiny_dir, device="cpu", dtype=None)


@pytest.fixture
def copy(tiny_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the tiny checkpoint, free to corrupt."""
    return Path(shutil.copytree(tiny_dir, tmp_path / "ckpt"))


def _rewrite(file: Path, change) -> None:
    tensors = load_file(file)
    change(tensors)
    save_file(tensors, file, metadata={"format": "pt"})


def _load_error(folder: Path | str, **kwargs) -> str:
    with pytest.raises(CheckpointError) as info:
        load(folder, **kwargs)
    return str(info.value)


def _section(message: str, title: str) -> str:
    """The lines of a check_names_and_shapes message under '<n> <title>:'."""
    lines = message.splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip().endswith(f" {title}:"))
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        body.append(line.strip())
    return "\n".join(body)


# -- a good checkpoint -----------------------------------------------------------------


def test_tiny_folder_layout(tiny_dir: Path) -> None:
    assert sorted(p.name for p in tiny_dir.iterdir()) == TINY_FILES


def test_loads_with_exactly_the_file_keys(tiny_dir: Path, pipe) -> None:
    assert set(pipe.net.state_dict()) == set(read_header(tiny_dir / EMA_WEIGHTS))
    assert set(pipe.ae.state_dict()) == set(read_header(tiny_dir / AE_WEIGHTS))
    shapes = {k: tuple(v.shape) for k, v in pipe.net.state_dict().items()}
    assert shapes == read_header(tiny_dir / EMA_WEIGHTS)


def test_weights_equal_the_files(tiny_dir: Path, pipe) -> None:
    for module, name in ((pipe.net, EMA_WEIGHTS), (pipe.ae, AE_WEIGHTS)):
        state = module.state_dict()
        file = load_file(tiny_dir / name)
        for key, value in file.items():
            assert state[key].dtype == torch.float32
            assert torch.equal(state[key], value), key
    # a few by name, so a silent key mix-up would show
    file = load_file(tiny_dir / EMA_WEIGHTS)
    for key in (
        "language_model.model.embed_tokens.weight",
        "language_model.model.layers.1.self_attn.q_proj_moe_gen.bias",
        "vit_model.vision_model.embeddings.patch_embedding.weight",
        "vae2llm.weight",
        "latent_pos_embed.pos_embed",
    ):
        assert torch.equal(pipe.net.get_parameter(key), file[key])


def test_loaded_model_is_frozen_eval_cpu(pipe) -> None:
    for module in (pipe.net, pipe.ae):
        assert not module.training
        for p in module.parameters():
            assert p.device.type == "cpu"
            assert not p.requires_grad
            assert not p.is_meta


def test_bfloat16_for_the_net_float32_for_the_ae(tiny_dir: Path) -> None:
    p = load(tiny_dir, dtype="bfloat16")
    assert {t.dtype for t in p.net.state_dict().values()} == {torch.bfloat16}
    assert {t.dtype for t in p.ae.state_dict().values()} == {torch.float32}
    assert p.net.dtype == torch.bfloat16
    file = load_file(tiny_dir / EMA_WEIGHTS)
    key = "language_model.model.layers.0.mlp.up_proj.weight"
    assert torch.equal(p.net.get_parameter(key), file[key].to(torch.bfloat16))
    # a torch.dtype is accepted as well
    assert load(tiny_dir, dtype=torch.bfloat16).net.dtype == torch.bfloat16


# -- make_tiny -------------------------------------------------------------------------


def test_make_tiny_is_deterministic(tiny_dir: Path, tmp_path: Path) -> None:
    again = make_tiny(tmp_path / "again", seed=0)
    assert sorted(p.name for p in again.iterdir()) == TINY_FILES
    for name in TINY_FILES:
        assert (again / name).read_bytes() == (tiny_dir / name).read_bytes(), name
    other = make_tiny(tmp_path / "other", seed=1)
    assert (other / EMA_WEIGHTS).read_bytes() != (tiny_dir / EMA_WEIGHTS).read_bytes()
    assert (other / AE_WEIGHTS).read_bytes() != (tiny_dir / AE_WEIGHTS).read_bytes()
    # same structure: only values differ
    assert read_header(other / EMA_WEIGHTS) == read_header(tiny_dir / EMA_WEIGHTS)
    assert (other / LLM_CONFIG).read_bytes() == (tiny_dir / LLM_CONFIG).read_bytes()


# -- the ViT layer the official loader drops -------------------------------------------


def test_extra_vit_layer_in_file_is_ignored(copy: Path) -> None:
    built = BagelConfig.from_checkpoint(copy).vit.num_hidden_layers
    last = f"vit_model.vision_model.encoder.layers.{built - 1}."
    extra = f"vit_model.vision_model.encoder.layers.{built}."

    def add_layer(tensors: dict) -> None:
        for key in [k for k in tensors if k.startswith(last)]:
            tensors[extra + key[len(last) :]] = tensors[key].clone() + 1

    _rewrite(copy / EMA_WEIGHTS, add_layer)
    assert any(k.startswith(extra) for k in read_header(copy / EMA_WEIGHTS))
    p = load(copy)
    assert len(p.net.vit_model.vision_model.encoder.layers) == built
    assert not any(k.startswith(extra) for k in p.net.state_dict())


@pytest.fixture
def built_vit_layers(tiny_dir: Path) -> int:
    return BagelConfig.from_checkpoint(tiny_dir).vit.num_hidden_layers


@pytest.mark.parametrize(
    "key",
    [
        "vit_model.vision_model.encoder.layers.{n_plus_1}.mlp.fc1.bias",  # one past the drop
        "vit_model.vision_model.encoder.layers.{n}0.mlp.fc1.bias",  # prefix look-alike
        "vit_model.vision_model.head.probe",
        "language_model.model.layers.0.self_attn.rotary_emb.inv_freq",
        "extra_head.weight",
    ],
)
def test_other_unexpected_key_is_refused(copy: Path, built_vit_layers: int, key: str) -> None:
    key = key.format(n=built_vit_layers, n_plus_1=built_vit_layers + 1)
    _rewrite(copy / EMA_WEIGHTS, lambda t: t.update({key: torch.zeros(4)}))
    message = _load_error(copy)
    assert str(copy / EMA_WEIGHTS) in message
    assert _section(message, "unexpected") == key
    assert "missing" not in message


# -- bad input -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["ema.safetensors", "ae.safetensors", "llm_config.json"])
def test_missing_required_file(copy: Path, name: str) -> None:
    (copy / name).unlink()
    message = _load_error(copy)
    assert "missing checkpoint file" in message and name in message


def test_missing_vocab(copy: Path) -> None:
    (copy / "vocab.json").unlink()
    message = _load_error(copy)
    assert "vocab.json" in message


def test_nonexistent_local_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # "no/such/dir" has two slashes: not a hub id ("owner/name"), so no download is tried
    monkeypatch.chdir(tmp_path)
    message = _load_error("no/such/dir")
    assert "no/such/dir" in message and "no such checkpoint folder" in message


def test_hub_id_offline_fails_quickly(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import huggingface_hub.constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    # huggingface_hub reads the variable at import time; it is imported by now
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    start = time.monotonic()
    message = _load_error("no-such-owner/no-such-repo")
    assert time.monotonic() - start < 10
    assert "no-such-owner/no-such-repo" in message
    assert "downloading it from the hub failed" in message


def test_truncated_weights(copy: Path) -> None:
    data = (copy / EMA_WEIGHTS).read_bytes()
    (copy / EMA_WEIGHTS).write_bytes(data[:-100])
    message = _load_error(copy)
    assert str(copy / EMA_WEIGHTS) in message
    assert "not a readable safetensors file" in message


@pytest.mark.parametrize(
    "garbage", [b"\xff" * 4096, b"", b"\x10\x00\x00\x00\x00\x00\x00\x00not json!!!!!!!!"]
)
def test_garbage_ae_weights(copy: Path, garbage: bytes) -> None:
    (copy / AE_WEIGHTS).write_bytes(garbage)
    message = _load_error(copy)
    assert str(copy / AE_WEIGHTS) in message


def test_wrong_shape_tensor(copy: Path) -> None:
    # vae2llm.weight is square (64×64) in the tiny model, so use a non-square tensor
    key = "connector.fc1.weight"
    shape = read_header(copy / EMA_WEIGHTS)[key]
    assert shape[0] != shape[1]
    _rewrite(copy / EMA_WEIGHTS, lambda t: t.update({key: t[key].t().contiguous()}))
    message = _load_error(copy)
    line = _section(message, "wrong shape")
    assert line == f"{key}: expected {list(shape)}, found {list(shape[::-1])}"
    assert "missing" not in message and "unexpected" not in message


def test_missing_tensor(copy: Path) -> None:
    key = "language_model.model.layers.1.mlp_moe_gen.down_proj.weight"
    _rewrite(copy / EMA_WEIGHTS, lambda t: t.pop(key))
    message = _load_error(copy)
    assert _section(message, "missing") == key
    assert "unexpected" not in message


def test_missing_ae_tensor(copy: Path) -> None:
    key = next(iter(read_header(copy / AE_WEIGHTS)))
    _rewrite(copy / AE_WEIGHTS, lambda t: t.pop(key))
    message = _load_error(copy)
    assert str(copy / AE_WEIGHTS) in message and _section(message, "missing") == key


def test_many_problems_are_summarised(copy: Path) -> None:
    _rewrite(
        copy / EMA_WEIGHTS, lambda t: t.update({f"junk.{i}": torch.zeros(1) for i in range(15)})
    )
    message = _load_error(copy)
    assert "15 unexpected" in message and "and 5 more" in message


@pytest.mark.parametrize("dtype", ["float8", "int8", torch.float8_e4m3fn, torch.int64, 3])
def test_unknown_dtype(tiny_dir: Path, dtype) -> None:
    message = _load_error(tiny_dir, dtype=dtype)
    assert "unknown dtype" in message and repr(dtype) in message
    for choice in ("bfloat16", "float16", "float32"):
        assert choice in message


@pytest.mark.parametrize("device", ["tpu", "banana", "meta", ""])
def test_unknown_device(tiny_dir: Path, device: str) -> None:
    message = _load_error(tiny_dir, device=device)
    assert repr(device) in message and "cpu" in message


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("device", ["cuda", "cuda:1"])
def test_cuda_without_cuda(tiny_dir: Path, device: str) -> None:
    message = _load_error(tiny_dir, device=device)
    assert repr(device) in message and "CUDA is not available" in message


def test_tokenizer_larger_than_vocab_fails_before_shapes(
    copy: Path, pipe, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = json.loads((copy / LLM_CONFIG).read_text())
    config["vocab_size"] = 300
    (copy / LLM_CONFIG).write_text(json.dumps(config))

    def no_weights(*args, **kwargs):
        raise AssertionError("weights were read before the tokenizer size was checked")

    monkeypatch.setattr(checkpoint, "load_weights", no_weights)
    message = _load_error(copy)
    assert f"tokenizer has {pipe.tokenizer.vocab_len} tokens" in message
    assert "vocab_size 300" in message and LLM_CONFIG in message


def test_config_error_propagates_from_load(copy: Path) -> None:
    config = json.loads((copy / LLM_CONFIG).read_text())
    config["hidden_act"] = "gelu"
    (copy / LLM_CONFIG).write_text(json.dumps(config))
    assert "hidden_act" in _load_error(copy)


# -- checkpoint_identity ---------------------------------------------------------------


def test_identity_stable_and_equal_for_copies(tiny_dir: Path, copy: Path) -> None:
    first = checkpoint_identity(tiny_dir)
    assert len(first) == 64 and int(first, 16) >= 0
    assert checkpoint_identity(tiny_dir) == first
    assert checkpoint_identity(str(tiny_dir)) == first
    assert checkpoint_identity(copy) == first


def test_identity_changes_with_config(tiny_dir: Path, copy: Path) -> None:
    config = json.loads((copy / LLM_CONFIG).read_text())
    config["rms_norm_eps"] = 1e-5
    (copy / LLM_CONFIG).write_text(json.dumps(config))
    assert checkpoint_identity(copy) != checkpoint_identity(tiny_dir)


@pytest.mark.parametrize(
    "change",
    [
        lambda t: t.update({"vae2llm.bias": t["vae2llm.bias"][:-1].clone()}),  # shape
        lambda t: t.update({"vae2llm.bias": t["vae2llm.bias"].to(torch.float16)}),  # dtype
        lambda t: t.update({"renamed.bias": t.pop("vae2llm.bias")}),  # name
    ],
    ids=["shape", "dtype", "name"],
)
def test_identity_changes_with_tensor_structure(tiny_dir: Path, copy: Path, change) -> None:
    _rewrite(copy / EMA_WEIGHTS, change)
    assert checkpoint_identity(copy) != checkpoint_identity(tiny_dir)


def test_identity_ignores_data_only_changes(tiny_dir: Path, copy: Path) -> None:
    """Documents a limitation: the identity hashes the config files and the safetensors
    *headers* only (cheap for a 29 GB file), so a same-name, same-shape, same-dtype value
    change is not detected. Flip this test if the identity ever hashes tensor data."""
    _rewrite(copy / EMA_WEIGHTS, lambda t: t["vae2llm.bias"].add_(1.0))
    assert (copy / EMA_WEIGHTS).read_bytes() != (tiny_dir / EMA_WEIGHTS).read_bytes()
    assert checkpoint_identity(copy) == checkpoint_identity(tiny_dir)


def test_identity_of_bad_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="missing checkpoint file"):
        checkpoint_identity(tmp_path)
