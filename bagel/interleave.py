"""One call of the official inferencer: inputs in, one image or one text out (spec §7.8).

Three contexts are built from the inputs: the main one; the text-dropped one (main as it
stood before the last text, or after the last image); and the image-dropped one (every
input text and the system prompt, no images, no thinking). The text-dropped context is
a prefix view of the main one rather than a copy.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from bagel.errors import InputError
from bagel.flow import SamplerParams
from bagel.inputs import ProgressFn
from bagel.kv import KVContext
from bagel.pipeline import BagelPipeline
from bagel.tokenizer import GEN_THINK_PROMPT, VLM_THINK_PROMPT


@dataclass
class CFGContexts:
    """The main context and its two guidance contexts for the next generated image."""

    main: KVContext
    text_dropped: KVContext
    image_dropped: KVContext


@dataclass(frozen=True)
class InterleaveOutput:
    image: Image.Image | None = None
    text: str | None = None  # the reply (understanding) or the thinking (generation)


def build_contexts(
    pipe: BagelPipeline,
    inputs: list[str | Image.Image],
    understanding: bool,
    think: bool,
    generator: torch.Generator | None = None,
) -> tuple[CFGContexts, tuple[int, int] | None]:
    """Feed inputs the official way; returns the contexts and the last image's (H, W)."""
    if not inputs:
        raise InputError("inputs must hold at least one text or image")
    for i, item in enumerate(inputs):
        if not isinstance(item, str | Image.Image):
            raise InputError(f"inputs[{i}] must be a str or a PIL image, got {type(item).__name__}")
    main, image_dropped = pipe.new_context(), pipe.new_context()
    text_dropped = main.prefix(0, 0)
    if think:
        system = VLM_THINK_PROMPT if understanding else GEN_THINK_PROMPT
        pipe.append_text(main, system)
        pipe.append_text(image_dropped, system)
    size = None
    for item in inputs:
        if isinstance(item, str):
            text_dropped = main.prefix(main.length, main.rope)  # before this text
            pipe.append_text(main, item)
            pipe.append_text(image_dropped, item)
        else:
            prepared = pipe.append_image(
                main, item, vae=not understanding, vit=True, generator=generator
            )
            size = (prepared.height, prepared.width)
            text_dropped = main.prefix(main.length, main.rope)  # after this image
    return CFGContexts(main, text_dropped, image_dropped), size


def interleave_inference(
    pipe: BagelPipeline,
    inputs: list[str | Image.Image],
    *,
    understanding: bool = False,
    think: bool = False,
    params: SamplerParams | None = None,
    image_size: tuple[int, int] | None = None,
    max_think_tokens: int = 1000,
    do_sample: bool = False,
    temperature: float = 0.3,
    generator: torch.Generator | None = None,
    progress: ProgressFn | None = None,
) -> InterleaveOutput:
    """The official single call: understanding → text; otherwise (think →) image.

    image_size is (H, W); default: the last input image's size, else 1024×1024 capped
    to the model's largest side. The official `max_think_token_n=L` is
    `max_think_tokens=L-1` here (the reference discards its last prediction).
    """
    params = params or SamplerParams()
    ctx, last_size = build_contexts(pipe, inputs, understanding, think, generator)
    text_args = dict(do_sample=do_sample, temperature=temperature, generator=generator)
    if understanding:
        return InterleaveOutput(
            text=pipe.generate_text(ctx.main, max_think_tokens, **text_args).text
        )
    thought = None
    if think:
        thought = pipe.generate_text(ctx.main, max_think_tokens, **text_args).text
        pipe.append_text(ctx.main, thought)  # the main context only, as upstream
    side = min(1024, pipe.config.vae_max_side)
    height, width = image_size or last_size or (side, side)
    out = pipe.generate_image(
        ctx.main,
        height,
        width,
        params,
        cfg_text_ctx=ctx.text_dropped,
        cfg_img_ctx=ctx.image_dropped,
        generator=generator,
        progress=progress,
    )
    return InterleaveOutput(image=out.image, text=thought)
