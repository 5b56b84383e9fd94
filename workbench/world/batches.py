"""The rendered batches of each training step, as pure functions of the step's key, and a
pool of worker processes that renders the coming steps' batches while the model trains.

A key is (seed, autoencoder step, decoder step[, 1 for the autoencoder-decoder's own
draw]): the batch, and the seed of the step's torch generator, depend on nothing else, so
a resumed run, and a run with or without workers, draws the same batches. Rendering is
numpy on one core (about a quarter of a decoder step on the 2-core machine); the workers
overlap it with the step before.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from workbench.world.data import (
    Episode,
    agent_views,
    future,
    navigation,
    navigation_batch,
    turntable,
)

Key = tuple[int, ...]


@dataclass(frozen=True)
class ModelBatch:
    """One decoder-model step: navigation next frames, a future-frame window after its
    context, caption views and agent views with the question and the expert's answers."""

    gen_seed: int
    navigation: list[Episode]
    window: int
    future: list[Episode]
    captions: list[Episode]
    agent: list[Episode]
    agent_question: str
    agent_answers: list[str]


@dataclass(frozen=True)
class ViewsBatch:
    """Single views for an autoencoder step: frames [n, 64, 64, 3] uint8."""

    gen_seed: int
    frames: np.ndarray


def model_batch(key: Key, batch: int) -> ModelBatch:
    rng = np.random.default_rng(list(key))
    gen_seed = int(rng.integers(2**62))
    nav = navigation_batch(rng, batch, int(rng.integers(1, 5)))
    window, context = int(rng.choice([1, 2, 3])), int(rng.integers(1, 3))
    fut = [future(rng, context + window) for _ in range(batch)]
    captions = [navigation(rng, []) for _ in range(batch // 2)]
    agent, question, answers = agent_views(rng, batch // 2)
    return ModelBatch(gen_seed, nav, window, fut, captions, agent, question, answers)


def views_batch(key: Key, n: int) -> ViewsBatch:
    """n single views: half navigation, a quarter each turntable and future-frame scenes."""
    rng = np.random.default_rng(list(key))
    gen_seed = int(rng.integers(2**62))
    episodes = [navigation(rng, []) for _ in range(n - n // 4 - n // 4)]
    episodes += [turntable(rng, 45, 0) for _ in range(n // 4)]
    episodes += [future(rng, 1) for _ in range(n // 4)]
    return ViewsBatch(gen_seed, np.stack([f for e in episodes for f in e.frames]))


class Prefetch:
    """fn(key, size) for the keys coming next, rendered by `workers` processes (0: in
    this process, when asked). `get` returns the result for its key and queues the
    upcoming ones; a result nobody asks for is dropped at `close`."""

    def __init__(self, workers: int):
        self._pool = None
        if workers > 0:
            # fork where there is one: a spawned worker re-imports the parent's __main__,
            # which need not be importable (an app's script, a test runner). The workers
            # run numpy only, never this process's torch threads.
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            context = multiprocessing.get_context(method)
            self._pool = ProcessPoolExecutor(workers, mp_context=context)
            self._pool.submit(int).result()  # all start now, before the training's threads
        self._pending: dict[tuple[Callable, Key, int], Future] = {}

    def get(self, fn: Callable, key: Key, size: int, upcoming: list[Key]):
        if self._pool is None:
            return fn(key, size)
        for k in (key, *upcoming):
            if (fn, k, size) not in self._pending:
                self._pending[(fn, k, size)] = self._pool.submit(fn, k, size)
        return self._pending.pop((fn, key, size)).result()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._pending.clear()
