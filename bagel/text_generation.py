"""Text after a context: a decoded reply, and the log-probability of given replies.

Both run on forks of the context, which is left unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from bagel.contexts import prefill
from bagel.errors import InputError
from bagel.inputs import ProgressFn, check_options, check_positions
from bagel.kv import KVContext
from bagel.llm import Routing
from bagel.model import Bagel
from bagel.tokenizer import BagelTokenizer


@dataclass(frozen=True)
class TextOutput:
    text: str
    token_ids: list[int]  # generated tokens, without the start token and the stop token
    scores: Tensor | None = None  # [steps, vocab] float32 logits, when asked for


def next_token(
    logits: Tensor, do_sample: bool, temperature: float, generator: torch.Generator | None
) -> int:
    """Greedy (argmax), or a draw from softmax(logits / temperature): no top-k or top-p."""
    if not do_sample:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if generator is not None:
        probs = probs.to(generator.device)
    return int(torch.multinomial(probs, 1, generator=generator))


class TextGenerator:
    """Replies decoded after a context, and replies scored against it."""

    def __init__(self, net: Bagel, tokenizer: BagelTokenizer, backend: str):
        self.net, self.tokenizer, self.backend = net, tokenizer, backend

    def generate_text(
        self,
        ctx: KVContext,
        max_new_tokens: int = 500,
        do_sample: bool = False,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        output_scores: bool = False,
        progress: ProgressFn | None = None,
    ) -> TextOutput:
        """Decode a reply after the context: feed `<|im_start|>`, stop at `<|im_end|>`.

        Runs on a fork of `ctx` (the official code deep-copies the context instead).
        progress: called with (tokens decoded, max_new_tokens) after every token; an
        exception it raises stops decoding (`ctx` is untouched either way).
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        if do_sample and not temperature > 0:
            raise InputError(f"temperature must be > 0 when sampling, got {temperature!r}")
        check_positions(
            self.net.config, ctx, max_new_tokens, f"a reply of up to {max_new_tokens} tokens"
        )
        scratch, token = ctx.fork(), self.tokenizer.bos_id
        out: list[int] = []
        scores: list[Tensor] = []
        lm_head = self.net.language_model.lm_head
        for _ in range(max_new_tokens):
            hidden = prefill(
                self.net,
                self.backend,
                scratch,
                self.net.embed_tokens(torch.tensor([token])),
                torch.tensor([scratch.rope]),
                Routing.text(1),
                causal=True,
                rope_advance=1,
            )
            with torch.inference_mode():
                logits = lm_head(hidden[0, -1].to(lm_head.weight.device)).float()
            if output_scores:
                scores.append(logits.cpu())
            token = next_token(logits, do_sample, temperature, generator)
            if token == self.tokenizer.eos_id:
                break
            out.append(token)
            if progress is not None:
                progress(len(out), max_new_tokens)
        text = self.tokenizer.reply_text([self.tokenizer.bos_id, *out])
        return TextOutput(text, out, torch.stack(scores) if output_scores else None)

    def score_continuations(self, ctx: KVContext, options: list[str]) -> list[float]:
        """Total log-probability of each option as the model's whole reply after `ctx`:
        log p(BPE(option), `<|im_end|>` | ctx, `<|im_start|>`), each on its own fork,
        log-softmax over the full logits row (padded vocabulary rows included)."""
        option_ids = check_options(self.tokenizer, options)
        longest = max(len(ids) for ids in option_ids)
        check_positions(self.net.config, ctx, longest, f"an answer of {longest} tokens")
        lm_head = self.net.language_model.lm_head
        scores = []
        for ids in option_ids:
            inputs = [self.tokenizer.bos_id, *ids[:-1]]  # token i predicts ids[i]
            n = len(inputs)
            hidden = prefill(
                self.net,
                self.backend,
                ctx.fork(),
                self.net.embed_tokens(torch.tensor(inputs)),
                ctx.rope + torch.arange(n),
                Routing.text(n),
                causal=True,
                rope_advance=n,
            )
            with torch.inference_mode():
                logits = lm_head(hidden[0].to(lm_head.weight.device)).float()  # [n, vocab]
            logp = torch.log_softmax(logits, dim=-1)
            scores.append(float(logp[torch.arange(n), torch.tensor(ids)].sum()))
        return scores
