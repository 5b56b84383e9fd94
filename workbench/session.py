"""A persistent multimodal session: each turn costs only its own tokens.

The session keeps the three contexts of the official recipe (spec §7.8) up to date turn
by turn instead of rebuilding them per call:

- main: every turn (texts, input and generated images as VAE + ViT tokens, replies);
- text-dropped: main as it stood before the last text turn or after the last image,
  kept as a (length, rope) mark into main, never a copy;
- image-dropped: a second, text-only context holding the user texts and think prompts
  (no images, no model replies, no thinking).

A `ContextLimit` bounds the main context's tokens: a turn that would pass it is refused,
or old images' tokens are first dropped from main (and from the text-dropped context, a
prefix of it) as a "drop" turn of the transcript. Dropped rows stay in their KV blocks,
so rewinding across a drop restores exactly the earlier context.

Every verb validates its input and checks the limits before it changes anything, and a
verb that fails half-way (e.g. a cancelled generation) is undone, so a failing turn
leaves the session exactly as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch
from PIL import Image

from bagel.embeddings import unpatchify_latent
from bagel.errors import ImageError, InputError
from bagel.forcing import FRAME_ROPE_STRIDE, check_forcing
from bagel.inputs import ProgressFn
from bagel.kv import KVContext
from bagel.pipeline import BagelPipeline
from bagel.sampling import ImageOutput
from bagel.tokenizer import GEN_THINK_PROMPT, check_text
from workbench.files import check_regular_file
from workbench.memory import Memory, memory_report
from workbench.params import ContextLimit, GenerationParams, check_seed, check_text_length
from workbench.transcript import Forcing, ImagePart, Mark, Turn, image_rows


@dataclass
class Session:
    pipe: BagelPipeline
    main: KVContext | None = None
    image_dropped: KVContext | None = None
    text_mark: Mark = Mark(0, 0)  # the text-dropped context: a prefix of main
    turns: list[Turn] = field(default_factory=list)
    limit: ContextLimit = field(default_factory=ContextLimit)

    def __post_init__(self) -> None:
        self.main = self.main or self.pipe.new_context()
        self.image_dropped = self.image_dropped or self.pipe.new_context()

    # -- user turns ---------------------------------------------------------------

    def add_text(self, text: str) -> None:
        """A user text: main and the image-dropped context; the text-dropped mark stays
        before it. It may be blank: a framed empty text is how the official recipe asks for
        an image from no prompt (a question, an instruction or an option may not)."""
        n = self._text_tokens(text, blank_ok=True)
        with self._transaction(n, n):
            self._user_text(text)

    def add_image(self, image: Image.Image | str | bytes, seed: int = 0) -> Image.Image:
        """A user image as VAE + ViT tokens; returns the prepared (resized RGB) image.

        A path must name a regular file (no link, FIFO or device: workbench.files)."""
        check_seed(seed)
        if isinstance(image, str | Path):
            check_regular_file(Path(image))
        try:
            prepared = self.pipe.prepare_image(image)
        except ImageError as err:  # e.g. its aspect ratio: say which file
            named = isinstance(image, str | Path) and str(image) not in str(err)
            raise ImageError(f"{image}: {err}" if named else str(err)) from err
        with self._transaction(sum(self.pipe.image_token_counts(*prepared.size)), 2):
            before = self._marks()
            rows = self._append_image(prepared, seed)
            self._record(Turn("user", "image", image=prepared, seed=seed, before=before, rows=rows))
        return prepared

    # -- model turns --------------------------------------------------------------

    def generate_image(
        self, params: GenerationParams | None = None, progress: ProgressFn | None = None
    ) -> Image.Image:
        """Sample an image after the whole session; it then re-enters the context as an
        input image would (clean VAE tokens at the rope it was generated at, then ViT)."""
        params = params or GenerationParams()
        height, width = self.image_size(params)
        with self._transaction(sum(self.pipe.image_token_counts(width, height)), 2):
            return self._generated_image(params, height, width, progress)

    def predict_frames(
        self,
        frames: int,
        params: GenerationParams | None = None,
        window: int = 1,
        schedule: str = "autoregressive",
        progress: ProgressFn | None = None,
    ) -> list[Image.Image]:
        """The next `frames` frames by diffusion forcing (`BagelPipeline.predict_frames`):
        up to `window` frames denoised together, each at its own noise level. Frame k uses
        seed params.seed + k for its noise and VAE sample, so with window 1 it equals the
        k-th of `frames` generate_image calls with those seeds. Each finished frame
        re-enters the context as an image turn; a failure undoes the whole run."""
        params = params or GenerationParams()
        check_forcing(schedule, window, frames)
        height, width = self.image_size(params)
        per_frame = sum(self.pipe.image_token_counts(width, height))

        def commit(k: int, frame: ImageOutput) -> tuple[KVContext, KVContext, KVContext]:
            before, seed = self._marks(), params.seed + k
            rows = self._append_image(frame.image, seed)
            self._record(
                Turn(
                    "model",
                    "image",
                    image=frame.image,
                    params=replace(params, seed=seed),
                    seed=seed,
                    before=before,
                    forcing=Forcing(frames, window, schedule, k),
                    rows=rows,
                )
            )
            text = self.main.prefix(self.text_mark.length, self.text_mark.rope)
            return self.main, text, self.image_dropped

        with self._transaction(frames * per_frame, FRAME_ROPE_STRIDE * frames):
            # drawn once the run is known to fit (a run too long is refused without it)
            noise = torch.stack(
                [self._noise(params.seed + k, height, width) for k in range(frames)]
            )
            out = self.pipe.predict_frames(
                self.main,
                frames,
                height,
                width,
                params.sampler(),
                window=window,
                schedule=schedule,
                cfg_text_ctx=self.main.prefix(self.text_mark.length, self.text_mark.rope),
                cfg_img_ctx=self.image_dropped,
                noise=noise,
                commit=commit,
                progress=progress,
            )
        return [frame.image for frame in out]

    def ask(
        self,
        question: str,
        params: GenerationParams | None = None,
        progress: ProgressFn | None = None,
    ) -> str:
        """Understanding: the question as a user text, then the model's reply, which
        stays in the main context (not in the guidance contexts). progress: (tokens
        decoded, most tokens) after every token; an exception it raises stops the reply
        and leaves the session as it was."""
        params = params or GenerationParams()
        n = self._text_tokens(question) + self._reply_bound(params)
        with self._transaction(n, n):
            self._user_text(question)
            return self._reply("text", params, progress)

    def choose(self, question: str, options: list[str]) -> tuple[str, list[float]]:
        """Constrained understanding: the question as a user text, then the option whose
        tokens the model finds most likely as its whole reply (the first on a tie), which
        stays in the main context like a reply. Returns (answer, every option's score).

        Scores are total log-probabilities (`BagelPipeline.score_continuations`); no text
        is sampled, so the answer is always one of the options and replays exactly.
        """
        option_ids = self._option_ids(options)
        n = self._text_tokens(question) + max(len(ids) + 1 for ids in option_ids)
        with self._transaction(n, n):
            self._user_text(question)
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
        texts = self._text_tokens(GEN_THINK_PROMPT) + self._text_tokens(prompt)
        texts += self._reply_bound(params)
        height, width = self.image_size(params)
        image = sum(self.pipe.image_token_counts(width, height))
        with self._transaction(texts + image, texts + 2):
            self._user_text(GEN_THINK_PROMPT)
            self._user_text(prompt)
            # during the thinking no denoising step is done yet: (0, steps) per token
            steps = params.num_timesteps - 1
            thought = self._reply(
                "thinking", params, None if progress is None else lambda *_: progress(0, steps)
            )
            return thought, self._generated_image(params, height, width, progress)

    # -- branches -----------------------------------------------------------------

    def fork(self) -> Session:
        """A branch sharing this session's past (no KV copied); the two then diverge."""
        return Session(
            self.pipe,
            self.main.fork(),
            self.image_dropped.fork(),
            self.text_mark,
            list(self.turns),
            self.limit,
        )

    def rewind(self, n: int = 1) -> None:
        """Remove the last n turns: the contexts go back to where they stood, also across
        drops (the dropped rows were never overwritten)."""
        if not isinstance(n, int) or not 0 <= n <= len(self.turns):
            raise InputError(f"cannot rewind {n!r} turns; the session has {len(self.turns)}")
        if n == 0:
            return
        removed = self.turns[-n:]
        drop = next((t for t in removed if t.kind == "drop"), None)  # the earliest
        if drop is not None and drop.undo is None:
            raise InputError("cannot rewind across a drop whose tokens were not kept")
        main, text, image = removed[0].before
        if drop is None:
            self.main.truncate(main.length, main.rope)
        else:  # only appends happened between the target and the drop
            self.main = drop.undo.prefix(main.length, main.rope)
        self.image_dropped.truncate(image.length, image.rope)
        self.text_mark = text
        del self.turns[-n:]

    def memory(self) -> Memory:
        """Tokens per context and K/V bytes of this session (see `memory_report` for
        several branches with their shared storage counted once)."""
        return memory_report(self).branches[0]

    def answer(self, options: list[str]) -> tuple[str, list[float]]:
        """The model's pick among `options` as its reply to the question already in the
        context (`choose` asks it first); recorded as a "choice" turn."""
        option_ids = self._option_ids(options)
        n = max(len(ids) + 1 for ids in option_ids)
        with self._transaction(n, n):
            return self._answer(list(options))

    def image_size(self, params: GenerationParams) -> tuple[int, int]:
        """(height, width) of the next generated image: the params' size (checked against
        the model), else the last image's, else the largest square up to 1024."""
        if params.height is not None:
            self.pipe.check_image_size(params.height, params.width)
            return params.height, params.width
        last = next((t.image for t in reversed(self.turns) if t.image is not None), None)
        if last is not None:
            return last.height, last.width
        side = min(1024, self.pipe.config.vae_max_side)
        return side, side

    def restore(self, turn: Turn) -> None:
        """Append a recorded turn (a saved session's) as it happened, generating nothing:
        its text or image goes into the contexts it went into then; a drop is redone."""
        if turn.kind == "drop":
            self._drop(turn.dropped)
            return
        before, rows = self._marks(), None
        if turn.role == "user" and turn.kind == "text":
            self._append_prompt(turn.text)
        elif turn.kind == "image":
            rows = self._append_image(turn.image, turn.seed)
        else:  # a model reply, thinking or choice: main context only
            self.pipe.append_text(self.main, turn.text)
        self.turns.append(replace(turn, before=before, rows=rows))

    # -- internals ----------------------------------------------------------------

    def _marks(self) -> tuple[Mark, Mark, Mark]:
        return Mark.of(self.main), self.text_mark, Mark.of(self.image_dropped)

    def kept_contexts(self) -> list[KVContext]:
        """Every context whose blocks this session keeps alive."""
        undo = [t.undo for t in self.turns if t.undo is not None]
        return [self.main, self.image_dropped, *undo]

    @contextmanager
    def _transaction(self, tokens: int, positions: int) -> Iterator[None]:
        """Check that a verb adding up to `tokens` cached tokens and `positions` RoPE
        positions fits (dropping image parts first if the policy says so), then run it;
        if it fails half-way, undo everything it did."""
        drops = self._plan(tokens, positions)
        count, (_, text, image), main = len(self.turns), self._marks(), self.main.fork()
        try:
            if drops:
                self._drop(drops)
            yield
        except BaseException:
            del self.turns[count:]
            self.main, self.text_mark = main, text
            self.image_dropped.truncate(image.length, image.rope)
            raise

    def _plan(self, tokens: int, positions: int) -> tuple[ImagePart, ...]:
        """The image parts to drop before a turn so that it fits; raises if it cannot."""
        rope, limit = self.main.rope, self.pipe.config.llm.max_position_embeddings
        where = f"position {rope} of the model's limit {limit}"
        if rope + positions > limit:
            raise InputError(
                f"{positions} more positions do not fit: the session is at {where} "
                "(dropping tokens does not help: kept tokens keep their positions)"
            )
        live, policy, budget = image_rows(self.turns), self.limit.policy, self.limit.max_tokens
        drops: list[ImagePart] = []
        if policy == "keep_last_images":
            images = list(dict.fromkeys(index for index, _ in live))  # oldest first
            old = set(images[: -self.limit.keep_images])
            drops = [part for part in live if part[0] in old]

        def length_after() -> int:
            freed = sum(live[part][1] - live[part][0] for part in drops)
            return self.main.length - freed + tokens

        if budget is not None and policy == "drop_vit":
            for part in live:
                if length_after() <= budget:
                    break
                if part[1] == "vit":
                    drops.append(part)
        if budget is not None and length_after() > budget:
            how = {
                "refuse": "policy 'refuse'",
                "drop_vit": "even without the ViT tokens of every earlier image",
                "keep_last_images": f"even keeping only the last {self.limit.keep_images} images",
            }[policy]
            raise InputError(
                f"this turn needs {tokens} tokens and does not fit the session's budget of "
                f"{budget} tokens: the main context holds {self.main.length} ({how}); the "
                f"session is at {where}"
            )
        return tuple(drops)

    def _drop(self, parts: tuple[ImagePart, ...]) -> None:
        """Remove image parts from main (and the text-dropped prefix) as a "drop" turn."""
        live = image_rows(self.turns)
        missing = [part for part in parts if part not in live]
        if missing or len(set(parts)) != len(parts) or not parts:
            raise InputError(f"cannot drop {list(parts)}: the image parts in main are {[*live]}")
        cut = [live[part] for part in parts]
        before, undo = self._marks(), self.main.fork()
        self.main.drop(cut)
        text = self.text_mark.length
        text -= sum(max(0, min(stop, text) - start) for start, stop in cut)
        self.text_mark = Mark(text, self.text_mark.rope)
        self._record(Turn("session", "drop", before=before, dropped=parts, undo=undo))

    def _record(self, turn: Turn) -> None:
        """Append a turn made here, with the CPU thread count it ran with: a CPU's sums
        (and so the frames) depend on it, and replay runs each turn with its own."""
        threads = torch.get_num_threads() if self.pipe.device.type == "cpu" else None
        self.turns.append(replace(turn, threads=threads))

    def _user_text(self, text: str) -> None:
        before = self._marks()
        self._append_prompt(text)
        self._record(Turn("user", "text", text=text, before=before))

    def _append_prompt(self, text: str) -> None:
        self.text_mark = Mark.of(self.main)  # the text-dropped context stops before a text
        self.pipe.append_text(self.main, text)
        self.pipe.append_text(self.image_dropped, text)

    def _append_image(
        self, image: Image.Image, seed: int
    ) -> tuple[tuple[int, int], tuple[int, int]]:
        """`pipe.append_image` in its two halves, to learn the rows of each; returns them."""
        prepared = self.pipe.prepare_image(image)
        generator = torch.Generator().manual_seed(seed)  # the VAE posterior sample
        latent = self.pipe.encode_latent(prepared, generator)
        start = self.main.length
        vae = start + self.pipe.append_latent(self.main, latent)
        vit = vae + self.pipe.append_vit(self.main, prepared)
        self.text_mark = Mark.of(self.main)  # ... and resumes after an image
        return (start, vae), (vae, vit)

    def _generated_image(
        self, params: GenerationParams, height: int, width: int, progress: ProgressFn | None
    ) -> Image.Image:
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
        rows = self._append_image(out.image, params.seed)
        self._record(
            Turn(
                "model",
                "image",
                image=out.image,
                params=params,
                seed=params.seed,
                seconds=time.perf_counter() - started,
                before=before,
                rows=rows,
            )
        )
        return out.image

    def _reply(
        self, kind: str, params: GenerationParams, progress: ProgressFn | None = None
    ) -> str:
        before, started = self._marks(), time.perf_counter()
        reply = self.pipe.generate_text(
            self.main,
            params.max_think_tokens,
            params.do_sample,
            params.temperature,
            params.generator(),
            progress=progress,
        )
        self.pipe.append_text(self.main, reply.text)
        self._record(
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
        self._record(
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

    def _noise(self, seed: int, height: int, width: int) -> torch.Tensor:
        """The initial latent generate_image draws for this seed, as [C, H/8, W/8]."""
        cfg = self.pipe.config
        p, (h, w) = cfg.latent_patch_size, self.pipe.check_image_size(height, width)
        generator = torch.Generator().manual_seed(seed)
        x = torch.randn(h * w, cfg.patch_latent_dim, generator=generator, dtype=torch.float32)
        return unpatchify_latent(x, h, w, cfg.latent_channels, p)

    def _text_tokens(self, text: str, blank_ok: bool = False) -> int:
        """Tokens of a user text, which must hold a non-space character unless `blank_ok`
        (bagel.tokenizer check_text: the one rule for prompts, questions, instructions and
        scenario texts) and be at most MAX_TEXT_CHARS long, checked before the tokenizer
        sees it."""
        check_text_length(check_text(text, blank_ok=blank_ok))
        return len(self.pipe.tokenizer.frame(text))

    def _option_ids(self, options: list[str]) -> list[list[int]]:
        """The options' token ids (`pipe.check_options`), each bounded in length first."""
        if isinstance(options, list | tuple):
            for i, option in enumerate(options):
                if isinstance(option, str):
                    check_text_length(option, f"option {i + 1}")
        return self.pipe.check_options(options)

    @staticmethod
    def _reply_bound(params: GenerationParams) -> int:
        """Most tokens a reply adds: the generated ones, re-framed by the two markers."""
        return params.max_think_tokens + 2
