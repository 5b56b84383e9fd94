"""A persistent multimodal session: each turn costs only its own tokens.

The session keeps the three contexts of the official recipe (spec §7.8) up to date turn
by turn instead of rebuilding them per call:

- main: every turn (texts, input and generated images as VAE + ViT tokens, replies);
- text-dropped: main as it stood before the last text turn or after the last image,
  kept as a (length, rope) mark into main, never a copy;
- image-dropped: a second, text-only context holding the user texts and think prompts
  (no images, no model replies, no thinking).

Every verb validates its input before it changes anything, so a failing turn leaves the
session exactly as it was.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from PIL import Image

from bagel.errors import InputError
from bagel.kv import KVContext, allocated_bytes
from bagel.pipeline import BagelPipeline, ProgressFn
from bagel.tokenizer import GEN_THINK_PROMPT
from workbench.params import GenerationParams


@dataclass(frozen=True)
class Mark:
    """Where a context stood: its token count and next RoPE position."""

    length: int
    rope: int

    @classmethod
    def of(cls, ctx: KVContext) -> Mark:
        return cls(ctx.length, ctx.rope)


@dataclass(frozen=True)
class Turn:
    """One entry of the transcript, with where the contexts stood before it."""

    role: str  # "user" or "model"
    kind: str  # "text", "image", "thinking" or "choice" (a constrained answer)
    text: str | None = None
    image: Image.Image | None = None
    params: GenerationParams | None = None
    seed: int = 0  # the VAE posterior sample of an image turn
    seconds: float = 0.0
    before: tuple[Mark, Mark, Mark] | None = None  # main, text-dropped, image-dropped
    options: tuple[str, ...] | None = None  # a choice turn: the allowed answers ...
    scores: tuple[float, ...] | None = None  # ... and their log-probabilities


@dataclass(frozen=True)
class Memory:
    """Tokens and bytes of a session's KV storage."""

    main_tokens: int
    text_dropped_tokens: int
    image_dropped_tokens: int
    allocated_bytes: int  # every block this session reads, shared blocks counted once


@dataclass
class Session:
    pipe: BagelPipeline
    main: KVContext | None = None
    image_dropped: KVContext | None = None
    text_mark: Mark = Mark(0, 0)  # the text-dropped context: a prefix of main
    turns: list[Turn] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.main = self.main or self.pipe.new_context()
        self.image_dropped = self.image_dropped or self.pipe.new_context()

    # -- user turns ---------------------------------------------------------------

    def add_text(self, text: str) -> None:
        """A user text: main and the image-dropped context; the text-dropped mark stays
        before it."""
        self._check_text(text)
        before = self._marks()
        self._append_prompt(text)
        self.turns.append(Turn("user", "text", text=text, before=before))

    def add_image(self, image: Image.Image | str | bytes, seed: int = 0) -> Image.Image:
        """A user image as VAE + ViT tokens; returns the prepared (resized RGB) image."""
        prepared = self.pipe.prepare_image(image)
        before = self._marks()
        self._append_image(prepared, seed)
        self.turns.append(Turn("user", "image", image=prepared, seed=seed, before=before))
        return prepared

    # -- model turns --------------------------------------------------------------

    def generate_image(
        self, params: GenerationParams | None = None, progress: ProgressFn | None = None
    ) -> Image.Image:
        """Sample an image after the whole session; it then re-enters the context as an
        input image would (clean VAE tokens at the rope it was generated at, then ViT)."""
        params = params or GenerationParams()
        height, width = self._size(params)
        before, started = self._marks(), time.perf_counter()
        out = self.pipe.generate_image(
            self.main,
            height,
            width,
            params.sampler(),
            cfg_text_ctx=self.main.prefix(self.text_mark.length, self.text_mark.rope),
            cfg_img_ctx=self.image_dropped,
            generator=params.generator(),
            progress=progress,
        )
        self._append_image(out.image, params.seed)
        self.turns.append(
            Turn(
                "model",
                "image",
                image=out.image,
                params=params,
                seed=params.seed,
                seconds=time.perf_counter() - started,
                before=before,
            )
        )
        return out.image

    def ask(self, question: str, params: GenerationParams | None = None) -> str:
        """Understanding: the question as a user text, then the model's reply, which
        stays in the main context (not in the guidance contexts)."""
        params = params or GenerationParams()
        self._check_text(question)
        self._check_room(params.max_think_tokens)
        self.add_text(question)
        return self._reply("text", params)

    def choose(self, question: str, options: list[str]) -> tuple[str, list[float]]:
        """Constrained understanding: the question as a user text, then the option whose
        tokens the model finds most likely as its whole reply (the first on a tie), which
        stays in the main context like a reply. Returns (answer, every option's score).

        Scores are total log-probabilities (`BagelPipeline.score_continuations`); no text
        is sampled, so the answer is always one of the options and replays exactly.
        """
        self._check_text(question)
        option_ids = self.pipe.check_options(options)
        question_tokens = len(self.pipe.tokenizer.frame(question))
        self._check_room(question_tokens + max(len(ids) + 1 for ids in option_ids))
        self.add_text(question)
        return self._answer(list(options))

    def think_then_generate(
        self,
        prompt: str,
        params: GenerationParams | None = None,
        progress: ProgressFn | None = None,
    ) -> tuple[str, Image.Image]:
        """Self-CoT: the planning system prompt and the prompt, the model's thinking (main
        context only, as upstream), then the image."""
        params = params or GenerationParams()
        self._check_text(prompt)
        self._size(params)
        self._check_room(params.max_think_tokens)
        before = self._marks()
        self._append_prompt(GEN_THINK_PROMPT)
        self.turns.append(Turn("user", "text", text=GEN_THINK_PROMPT, before=before))
        self.add_text(prompt)
        thought = self._reply("thinking", params)
        return thought, self.generate_image(params, progress)

    # -- branches -----------------------------------------------------------------

    def fork(self) -> Session:
        """A branch sharing this session's past (no KV copied); the two then diverge."""
        return Session(
            self.pipe, self.main.fork(), self.image_dropped.fork(), self.text_mark, list(self.turns)
        )

    def rewind(self, n: int = 1) -> None:
        """Drop the last n turns: the contexts are cut back to where they stood."""
        if not isinstance(n, int) or not 0 <= n <= len(self.turns):
            raise InputError(f"cannot rewind {n!r} turns; the session has {len(self.turns)}")
        if n == 0:
            return
        main, text, image = self.turns[-n].before
        self.main.truncate(main.length, main.rope)
        self.image_dropped.truncate(image.length, image.rope)
        self.text_mark = text
        del self.turns[-n:]

    def memory(self) -> Memory:
        return Memory(
            self.main.length,
            self.text_mark.length,
            self.image_dropped.length,
            allocated_bytes(self.main, self.image_dropped),
        )

    # -- internals ----------------------------------------------------------------

    def _marks(self) -> tuple[Mark, Mark, Mark]:
        return Mark.of(self.main), self.text_mark, Mark.of(self.image_dropped)

    def _append_prompt(self, text: str) -> None:
        self.text_mark = Mark.of(self.main)  # the text-dropped context stops before a text
        self.pipe.append_text(self.main, text)
        self.pipe.append_text(self.image_dropped, text)

    def _append_image(self, image: Image.Image, seed: int) -> None:
        generator = torch.Generator().manual_seed(seed)  # the VAE posterior sample
        self.pipe.append_image(self.main, image, generator=generator)
        self.text_mark = Mark.of(self.main)  # ... and resumes after an image

    def _reply(self, kind: str, params: GenerationParams) -> str:
        before, started = self._marks(), time.perf_counter()
        reply = self.pipe.generate_text(
            self.main,
            params.max_think_tokens,
            params.do_sample,
            params.temperature,
            params.generator(),
        )
        self.pipe.append_text(self.main, reply.text)
        self.turns.append(
            Turn(
                "model",
                kind,
                text=reply.text,
                params=params,
                seconds=time.perf_counter() - started,
                before=before,
            )
        )
        return reply.text

    def _answer(self, options: list[str]) -> tuple[str, list[float]]:
        before, started = self._marks(), time.perf_counter()
        scores = self.pipe.score_continuations(self.main, options)
        answer = options[max(range(len(options)), key=scores.__getitem__)]
        self.pipe.append_text(self.main, answer)
        self.turns.append(
            Turn(
                "model",
                "choice",
                text=answer,
                seconds=time.perf_counter() - started,
                before=before,
                options=tuple(options),
                scores=tuple(scores),
            )
        )
        return answer, scores

    def _size(self, params: GenerationParams) -> tuple[int, int]:
        if params.height is not None:
            self.pipe.check_image_size(params.height, params.width)
            return params.height, params.width
        last = next((t.image for t in reversed(self.turns) if t.image is not None), None)
        if last is not None:
            return last.height, last.width
        side = min(1024, self.pipe.config.vae_max_side)
        return side, side

    def _check_text(self, text: str) -> None:
        if not isinstance(text, str):
            raise InputError(f"text must be a str, got {type(text).__name__}")
        n = len(self.pipe.tokenizer.frame(text))
        self._check_room(n)

    def _check_room(self, tokens: int) -> None:
        limit = self.pipe.config.llm.max_position_embeddings
        if self.main.rope + tokens > limit:
            raise InputError(
                f"{tokens} more tokens do not fit: the session is at position "
                f"{self.main.rope} of the model's limit {limit}"
            )
