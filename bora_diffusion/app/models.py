"""The pipelines the app works on: one for training, a small pool for generation.

Training injects and trains adapters in its pipeline's UNet, and composing concepts loads (and may fuse) them into
a UNet, so a request never shares a pipeline with another one in flight. The pool holds `workers` pipelines; a
generate request borrows one, composes, generates, then ejects every adapter (bit-identical base weights again)
and gives it back. The pool's size is therefore the number of generations served at once, and a training job
runs beside them on its own pipeline.
"""

from __future__ import annotations

import contextlib
import queue
import threading
from collections.abc import Iterator

from ..inject import eject
from ..pipeline import base_name, load_base
from ..threads import use_threads


class Pipelines:
    """Loads the base lazily (the first request pays for it) and hands pipelines out one request at a time."""

    def __init__(self, base: str | None, *, workers: int = 2) -> None:
        self.base = base
        self.name = base_name(base)  # also validates the base string before the server starts
        self.workers = workers
        self._lock = threading.Lock()
        self._train = None
        self._pool: queue.Queue = queue.Queue()
        self._made = 0

    def train_pipe(self):
        """The training pipeline (only the single training worker uses it)."""
        with self._lock:
            if self._train is None:
                self._train = load_base(self.base)
                use_threads(self._train.unet)  # the CPU threads for its size (bora_diffusion.threads)
            return self._train

    @contextlib.contextmanager
    def borrow(self) -> Iterator:
        """A generation pipeline for the duration of the block, left without adapters afterwards.

        A concept with a trained token embedding adds its token to the tokenizer and text encoder, which eject
        does not undo; such a pipeline is dropped and the pool builds a fresh one on the next request.
        """
        pipe = self._take()
        vocabulary = len(pipe.tokenizer)
        try:
            yield pipe
        finally:
            eject(pipe.unet)
            if len(pipe.tokenizer) == vocabulary:
                self._pool.put(pipe)
            else:
                with self._lock:
                    self._made -= 1

    def drop_train_pipe_if_changed(self, vocabulary: int) -> None:
        """Forget the training pipeline when a job added tokens to it (see `borrow`)."""
        with self._lock:
            if self._train is not None and len(self._train.tokenizer) != vocabulary:
                self._train = None

    def _take(self):
        with self._lock:
            build = self._pool.empty() and self._made < self.workers
            if build:
                self._made += 1
        if not build:
            return self._pool.get()
        try:
            pipe = load_base(self.base)
            use_threads(pipe.unet)  # the CPU threads for its size (bora_diffusion.threads)
            return pipe
        except BaseException:
            with self._lock:
                self._made -= 1
            raise
