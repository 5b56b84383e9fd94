"""The tiny model's outputs, pinned bit for bit.

Understanding, text-to-image, edit, think-then-generate, a TaylorSeer-cached image, a
diffusion-forcing window and constrained scoring each run on the tiny checkpoint (seed 0,
float32, CPU, one torch thread, fixed generator seeds), and the sha256 of their token ids
and of their latents' float32 bytes must equal the recorded ones. A change of layout in
bagel/ must leave these exactly as they are; a change anywhere in the math moves them.
The hashes hold for one machine's float arithmetic: a CPU whose kernels round otherwise
needs them recorded again (print `outputs(pipe)` on the unchanged code).
"""

from __future__ import annotations

import hashlib
import struct

import pytest
import torch
from PIL import Image

from bagel.flow import SamplerParams
from bagel.interleave import build_contexts

PINNED = {
    "understanding.ids": "9a95030561bc7d05bbc5dbd49824d69d7fc201bf32ad48b37385fd70e422236d",
    "understanding.scores": "b9906d8e26d087934b71590fa8c34dd42ddadb8b3a091305a854ae2db16ec4b4",
    "understanding.choice": "04800a737fa26504990e824ae0a8c4cd6e5794877062b53eda03d9721f26fc42",
    "t2i.latent": "dfa73c5532692e45457c9e9dd6de9e1d394120883274bb7da613eda3a4b8335c",
    "edit.latent": "9a5b0bdf8f790d60439fe2db3283e9436447b777927172cfb5a2c46621c83ce6",
    "think.ids": "3bcc5a1381eb37eb28966c98340311b26fb82bb85e2598245b195ebf2f8213ef",
    "think.latent": "4cce7d50de74d88ddfbc61320328edfb7f716e9512468db320c0f9d47bbe112b",
    "taylorseer.latent": "a90e1249f9181d270906ea4489f172dba827e8d44d9aac46077bd8dc983d8911",
    "forcing.latents": "a821d3dcf740b29bae0571406d0cd0405a7afe1e1c010c3c0986ef8a76de315a",
    "forcing.after_ids": "116d9ae2af4131607689e7990d5ccaa07b727e199523839465fc217ce6b09edf",
}


@pytest.fixture
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def picture(width: int, height: int) -> Image.Image:
    """A fixed image with structure in both directions and every channel."""
    data = bytes(
        ((x * 37 + y * 11) % 256, (x * 5 + y * 29) % 256, (x * y) % 256)[c]
        for y in range(height)
        for x in range(width)
        for c in range(3)
    )
    return Image.frombytes("RGB", (width, height), data)


def ids_hash(ids: list[int]) -> str:
    return hashlib.sha256(torch.tensor(ids, dtype=torch.int64).numpy().tobytes()).hexdigest()


def tensor_hash(*tensors: torch.Tensor) -> str:
    digest = hashlib.sha256()
    for t in tensors:
        assert t.dtype == torch.float32 and t.device.type == "cpu"
        digest.update(t.contiguous().numpy().tobytes())
    return digest.hexdigest()


def floats_hash(values: list[float]) -> str:
    return hashlib.sha256(struct.pack(f"<{len(values)}d", *values)).hexdigest()


def outputs(pipe) -> dict[str, str]:
    """Every pinned output's hash, by name."""
    out = {}
    steps = SamplerParams(num_timesteps=6)

    # understanding: an image (ViT only) and a question, greedy reply with its logits
    ctx, _ = build_contexts(pipe, [picture(64, 48), "what is it?"], understanding=True, think=True)
    reply = pipe.generate_text(ctx.main, 16, output_scores=True)
    out["understanding.ids"] = ids_hash(reply.token_ids)
    out["understanding.scores"] = tensor_hash(reply.scores)
    out["understanding.choice"] = floats_hash(
        pipe.score_continuations(ctx.main, ["a red square", "blue", "nothing at all"])
    )

    # text to image, the three guidance branches
    g = torch.Generator().manual_seed(1)
    ctx, _ = build_contexts(pipe, ["a lighthouse on a cliff"], understanding=False, think=False)
    image = pipe.generate_image(
        ctx.main,
        64,
        48,
        steps,
        cfg_text_ctx=ctx.text_dropped,
        cfg_img_ctx=ctx.image_dropped,
        generator=g,
    )
    out["t2i.latent"] = tensor_hash(image.latent)

    # edit: the input image as VAE (posterior sampled from g) + ViT tokens
    g = torch.Generator().manual_seed(2)
    ctx, size = build_contexts(
        pipe, [picture(48, 64), "make it night"], understanding=False, think=False, generator=g
    )
    image = pipe.generate_image(
        ctx.main,
        *size,
        SamplerParams.edit(num_timesteps=6),
        cfg_text_ctx=ctx.text_dropped,
        cfg_img_ctx=ctx.image_dropped,
        generator=g,
    )
    out["edit.latent"] = tensor_hash(image.latent)

    # think, then generate: a sampled thought enters the main context, then the image
    g = torch.Generator().manual_seed(3)
    ctx, _ = build_contexts(pipe, ["a red bicycle"], understanding=False, think=True)
    thought = pipe.generate_text(ctx.main, 12, do_sample=True, temperature=0.3, generator=g)
    pipe.append_text(ctx.main, thought.text)
    image = pipe.generate_image(
        ctx.main,
        32,
        32,
        steps,
        cfg_text_ctx=ctx.text_dropped,
        cfg_img_ctx=ctx.image_dropped,
        generator=g,
    )
    out["think.ids"] = ids_hash(thought.token_ids)
    out["think.latent"] = tensor_hash(image.latent)

    # the TaylorSeer feature cache: full steps and extrapolated ones
    g = torch.Generator().manual_seed(4)
    ctx, _ = build_contexts(pipe, ["a harbour at dawn"], understanding=False, think=False)
    cached = SamplerParams(num_timesteps=12, feature_cache="taylorseer", feature_cache_interval=2)
    image = pipe.generate_image(
        ctx.main,
        32,
        32,
        cached,
        cfg_text_ctx=ctx.text_dropped,
        cfg_img_ctx=ctx.image_dropped,
        generator=g,
    )
    out["taylorseer.latent"] = tensor_hash(image.latent)

    # a diffusion-forcing window: three frames, two under way at once, default commit
    g = torch.Generator().manual_seed(5)
    ctx, _ = build_contexts(
        pipe, [picture(32, 32), "the next frames"], understanding=False, think=False, generator=g
    )
    frames = pipe.predict_frames(
        ctx.main,
        3,
        32,
        32,
        steps,
        window=2,
        schedule="pyramid",
        cfg_text_ctx=ctx.text_dropped,
        cfg_img_ctx=ctx.image_dropped,
        generator=g,
    )
    out["forcing.latents"] = tensor_hash(*(f.latent for f in frames))
    after = pipe.generate_text(ctx.main, 8)  # what the committed frames left in the context
    out["forcing.after_ids"] = ids_hash(after.token_ids)
    return out


def test_outputs_are_the_pinned_ones(pipe, one_thread):
    assert outputs(pipe) == PINNED
