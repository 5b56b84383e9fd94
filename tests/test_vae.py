"""The FLUX autoencoder (spec §1.8): structure, key names, scaling and determinism."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from bagel.config import AEConfig
from bagel.errors import InputError
from bagel.vae import AttnBlock, AutoEncoder, Downsample, Upsample

TINY = AEConfig(ch=32, ch_mult=(1, 1, 2, 2), num_res_blocks=1)


@pytest.fixture(scope="module")
def flux_meta() -> AutoEncoder:
    with torch.device("meta"):
        return AutoEncoder(AEConfig())


@pytest.fixture(scope="module")
def tiny() -> AutoEncoder:
    torch.manual_seed(0)
    return AutoEncoder(TINY).eval()


@pytest.fixture(scope="module")
def pixels() -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return torch.rand(1, 3, 64, 64, generator=g) * 2 - 1


# -- structure of the full-size model ------------------------------------------------


def test_flux_param_count(flux_meta: AutoEncoder) -> None:
    assert sum(p.numel() for p in flux_meta.parameters()) == 83_819_683


def test_flux_nin_shortcut_locations(flux_meta: AutoEncoder) -> None:
    prefixes = {
        k.rsplit(".nin_shortcut.", 1)[0] for k in flux_meta.state_dict() if ".nin_shortcut." in k
    }
    assert prefixes == {
        "encoder.down.1.block.0",
        "encoder.down.2.block.0",
        "decoder.up.1.block.0",
        "decoder.up.0.block.0",
    }


def test_flux_key_shapes(flux_meta: AutoEncoder) -> None:
    sd = flux_meta.state_dict()
    assert sd["encoder.conv_out.weight"].shape == (32, 512, 3, 3)
    assert sd["decoder.conv_in.weight"].shape == (512, 16, 3, 3)
    assert sd["decoder.up.0.block.0.nin_shortcut.weight"].shape == (128, 256, 1, 1)
    assert sd["encoder.conv_in.weight"].shape == (128, 3, 3, 3)
    assert sd["decoder.conv_out.weight"].shape == (3, 128, 3, 3)
    assert sd["decoder.norm_out.weight"].shape == (128,)
    assert sd["encoder.down.1.downsample.conv.weight"].shape == (256, 256, 3, 3)
    assert sd["encoder.down.2.downsample.conv.weight"].shape == (512, 512, 3, 3)
    assert sd["decoder.up.3.upsample.conv.weight"].shape == (512, 512, 3, 3)


def test_flux_key_layout(flux_meta: AutoEncoder) -> None:
    keys = set(flux_meta.state_dict())
    for level in range(4):
        assert {f"encoder.down.{level}.block.{k}.conv1.weight" for k in range(2)} <= keys
        assert f"encoder.down.{level}.block.2.conv1.weight" not in keys
        assert {f"decoder.up.{level}.block.{k}.conv2.weight" for k in range(3)} <= keys
        assert f"decoder.up.{level}.block.3.conv2.weight" not in keys
    assert "encoder.down.3.downsample.conv.weight" not in keys
    assert "decoder.up.0.upsample.conv.weight" not in keys
    for part in ("encoder", "decoder"):
        for sub in ("norm", "q", "k", "v", "proj_out"):
            assert f"{part}.mid.attn_1.{sub}.weight" in keys
        for block in ("block_1", "block_2"):
            assert f"{part}.mid.{block}.norm1.weight" in keys
    assert all(k.startswith(("encoder.", "decoder.")) for k in keys)


# -- behaviour of a small model ------------------------------------------------------


def test_shapes(tiny: AutoEncoder, pixels: torch.Tensor) -> None:
    with torch.no_grad():
        mean, logvar = tiny.encode_moments(pixels)
        z = tiny.encode(pixels, generator=torch.Generator().manual_seed(0))
        out = tiny.decode(z)
    assert mean.shape == logvar.shape == (1, 16, 8, 8)
    assert z.shape == (1, 16, 8, 8)
    assert out.shape == (1, 3, 64, 64)
    assert out.dtype == torch.float32


def test_sampling_is_seeded(tiny: AutoEncoder, pixels: torch.Tensor) -> None:
    with torch.no_grad():
        a = tiny.encode(pixels, generator=torch.Generator().manual_seed(7))
        b = tiny.encode(pixels, generator=torch.Generator().manual_seed(7))
        c = tiny.encode(pixels, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_sample_uses_logvar(tiny: AutoEncoder, pixels: torch.Tensor) -> None:
    cfg = tiny.config
    with torch.no_grad():
        mean, logvar = tiny.encode_moments(pixels)
        z = tiny.encode(pixels, generator=torch.Generator().manual_seed(3))
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3))
    expected = cfg.scale_factor * (mean + torch.exp(0.5 * logvar) * eps - cfg.shift_factor)
    torch.testing.assert_close(z, expected)


def test_mean_mode(tiny: AutoEncoder, pixels: torch.Tensor) -> None:
    cfg = tiny.config
    with torch.no_grad():
        a = tiny.encode(pixels, sample=False)
        b = tiny.encode(pixels, generator=torch.Generator().manual_seed(5), sample=False)
        mean, _ = tiny.encode_moments(pixels)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, cfg.scale_factor * (mean - cfg.shift_factor))


def test_decode_inverts_scaling(tiny: AutoEncoder) -> None:
    cfg = tiny.config
    z = torch.randn(1, 16, 4, 6, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out = tiny.decode(z)
        direct = tiny.decoder(z / cfg.scale_factor + cfg.shift_factor)
    assert out.shape == (1, 3, 32, 48)
    torch.testing.assert_close(out, direct)


def test_input_cast_to_weight_dtype(tiny: AutoEncoder, pixels: torch.Tensor) -> None:
    with torch.no_grad():
        a = tiny.encode(pixels.double(), sample=False)
        b = tiny.encode(pixels, sample=False)
    assert a.dtype == torch.float32
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("shape", [(1, 3, 60, 64), (1, 3, 64, 12), (1, 4, 64, 64), (3, 64, 64)])
def test_bad_pixels(tiny: AutoEncoder, shape: tuple[int, ...]) -> None:
    with pytest.raises(InputError, match=re.escape(str(shape))):
        tiny.encode(torch.zeros(shape))


def test_bad_latents(tiny: AutoEncoder) -> None:
    with pytest.raises(InputError, match=r"\(1, 8, 4, 4\)"):
        tiny.decode(torch.zeros(1, 8, 4, 4))


# -- building blocks -----------------------------------------------------------------


def test_downsample_pads_right_and_bottom() -> None:
    torch.manual_seed(0)
    down = Downsample(32)
    x = torch.randn(1, 32, 6, 6)
    with torch.no_grad():
        out = down(x)
        padded = torch.zeros(1, 32, 7, 7)
        padded[:, :, :6, :6] = x  # zeros appended on the right and the bottom only
        expected = F.conv2d(padded, down.conv.weight, down.conv.bias, stride=2)
        symmetric = F.conv2d(x, down.conv.weight, down.conv.bias, stride=2, padding=1)
    assert out.shape == (1, 32, 3, 3)
    torch.testing.assert_close(out, expected)
    assert not torch.allclose(out, symmetric)


def test_upsample_is_nearest() -> None:
    torch.manual_seed(0)
    up = Upsample(32)
    x = torch.randn(1, 32, 3, 4)
    with torch.no_grad():
        out = up(x)
        repeated = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        expected = F.conv2d(repeated, up.conv.weight, up.conv.bias, padding=1)
    torch.testing.assert_close(out, expected)


def test_attention_matches_explicit_softmax() -> None:
    torch.manual_seed(0)
    attn = AttnBlock(64)
    x = torch.randn(2, 64, 3, 5)
    with torch.no_grad():
        out = attn(x)
        n = attn.norm(x)
        q, k, v = (m(n).flatten(2) for m in (attn.q, attn.k, attn.v))  # [B, C, HW]
        weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(64), dim=-1)  # [B, HW, HW]
        mixed = (v @ weights.transpose(1, 2)).reshape(2, 64, 3, 5)
        expected = x + attn.proj_out(mixed)
    torch.testing.assert_close(out, expected)
