"""The server's model worker: one thread owns the embedding model (and the reranker, if served) and packs queued
requests into shared forward passes; one model call holds jobs of one kind. It sees the models only through
their contracts (contracts.py): `embed_prepared` and `score_prepared`.

Requests arrive already prepared (the HTTP handler counts and checks their tokens), so the worker only schedules
and packs. Each model call holds at most `batch_tokens` tokens, taken round-robin from the requests in service:
many small requests share one forward pass (as in TEI), and a big request is cut into budget-sized chunks, so a
small request that arrives behind it waits about one chunk, not the big request's whole time, and no request is
starved by a stream of others. A request whose client hung up (its future cancelled) loses its queued and remaining chunks. `embed_prepared` sorts by length and
right-pads, so a text's vector does not depend on its neighbours or on how its request was cut.
"""

import collections
import itertools
import queue
import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Optional

import mlx.core as mx
import numpy as np

from ..batching import MIN_SHARED, check_finite, common_prefix
from ..checks import check_int
from ..contracts import EmbeddingModel, RerankModel
from ..device import check_batch_tokens, release_memory
from ..pooling import normalize
from .metrics import Metrics


CACHE_KEEP = 256 * 2**20
_arrivals = itertools.count()


class QueueFull(Exception):
    """The worker's queue holds `max_queue` requests already: the server answers 429."""


class Turns:
    """The device, taken in turns by the workers of a server that serves several models: one model call at a
    time (their memory was planned so: checkpoint/together.py), handed over first come, first served, so a
    worker with a stream of calls cannot starve another (threading.Lock promises no order)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting: collections.deque[threading.Event] = collections.deque()
        self._held = False

    def __enter__(self):
        with self._lock:
            if not self._held:
                self._held = True
                return self
            turn = threading.Event()
            self._waiting.append(turn)
        turn.wait()  # the holder hands the turn over: _held stays True
        return self

    def __exit__(self, *exc):
        with self._lock:
            if self._waiting:
                self._waiting.popleft().set()
            else:
                self._held = False


@dataclass(eq=False)  # identity: a job is one request, whatever it holds
class Job:
    """One HTTP request's work: N prepared inputs (len() = tokens), the Matryoshka size it asked for, and whether
    its vectors are L2-normalised (TEI's normalize=false and Ollama's legacy route want them raw); or, with
    kind "rerank", prepared (query, document) pairs whose result is (N, 1) yes - no logits.

    The future stays pending until the last chunk is done, so a client that hangs up can still cancel it.
    """
    sequences: list  # prepared inputs
    dim: int
    normalize: bool = True
    future: Future = field(default_factory=Future)
    next: int = 0        # sequences handed to model calls so far
    arrival: int = field(default_factory=lambda: next(_arrivals))
    vectors: Optional[np.ndarray] = None  # (N, dim), filled chunk by chunk
    kind: str = "embed"  # or "rerank"
    shared: Optional[list[int]] = None  # rerank: tokens each pair shares with the one before it (shared_starts)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)

    def cost(self, i: int, first: int) -> int:
        """Tokens sequence i adds to a model call whose part of this job starts at sequence `first`: all of them,
        less what it shares with the pair before it in the call (a shared prefix runs once per call)."""
        return len(self.sequences[i]) - (self.shared[i] if self.shared is not None and i > first else 0)


@dataclass(eq=False)
class Chunk:
    """Sequences [start, stop) of one job, run in one model call."""
    job: Job
    start: int
    stop: int

    @property
    def sequences(self) -> list[list[int]]:
        return self.job.sequences[self.start: self.stop]

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


class BatchWorker:
    """Owns the models; `submit` jobs from any thread, each job's future gets its (N, dim) float32 vectors.

    batch_tokens: token budget of one model call (also the padded-token budget of each forward pass inside it);
    a big request is cut into chunks of this size; a single sequence larger than the budget still runs, alone. A
    rerank request's pairs count the prefix they share (template, instruction, query) once per call, as it runs
    once: a call holds as many of one query's documents as their own tokens allow.
    max_batch_requests: at most this many requests per model call and in service at once (1 = no batching).
    max_queue: requests waiting beyond this are refused with QueueFull.
    cache_keep: bytes of freed buffers MLX may keep for the next call; past that its cache is released, so memory
    stays flat (releasing it after every call costs ~10% of a small batch on CPU: fresh buffers fault their pages).
    metrics: where packed calls are counted (the app's; a private one by default).
    turns: shared with the other models' workers, so model calls never overlap (a private one by default).
    """

    def __init__(self, embedder: Optional[EmbeddingModel], *, batch_tokens: Optional[int] = None,
                 max_batch_requests: int = 256, max_queue: int = 1024, cache_keep: int = CACHE_KEEP,
                 reranker: Optional[RerankModel] = None, metrics: Optional[Metrics] = None,
                 turns: Optional[Turns] = None):
        check_int("max_batch_requests", max_batch_requests)
        check_int("max_queue", max_queue)
        self.cache_keep = check_int("cache_keep", cache_keep, 0)
        if embedder is None and reranker is None:
            raise ValueError("give an embedder, a reranker or both to serve")
        self.embedder, self.reranker = embedder, reranker
        self.batch_tokens = check_batch_tokens(batch_tokens) or (embedder or reranker).device.batch_tokens
        self.max_batch_requests = max_batch_requests
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._active: list[Job] = []  # in service, in arrival order; only the worker thread touches it
        self._turn = 0  # index in _active of the job that goes first in the next call (round-robin)
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.batches = 0
        self.cancelled = 0         # requests dropped because their client hung up
        self.dropped_inputs = 0    # their inputs that were never run
        self.turns = turns or Turns()
        self.metrics = metrics or Metrics()
        self.metrics.watch_queue(self.queue.qsize)
        if embedder is not None and embedder.cache is not None:
            self.metrics.watch_cache(embedder.cache)

    def submit(self, job: Job) -> Future:
        """Queue `job` without waiting; raises QueueFull when the queue is at max_queue."""
        try:
            self.queue.put_nowait(job)
        except queue.Full:
            raise QueueFull(f"{self.queue.maxsize} requests are waiting already") from None
        return job.future

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self):
        if self._thread is None or not self._thread.is_alive():
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name="mlx-embed-worker", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0):
        """Finish the call in flight, then fail what is still queued or part-done so no caller waits forever."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        pending, self._active = self._active, []
        while not self.queue.empty():
            pending.append(self.queue.get_nowait())
        for job in pending:
            _fail(job, RuntimeError("the server is shutting down"))

    def _loop(self):
        worked = False
        while not self._stop.is_set():
            chunks = self._take()
            if chunks:
                with self.turns:
                    self._run(chunks)
                worked = True
            elif worked and self.queue.empty():
                # idle: what the last requests took goes back to the system (MLX's cache stays up to cache_keep)
                release_memory(mlx_cache=False)
                worked = False

    def _admit(self):
        """Move queued jobs into service (up to max_batch_requests), waiting briefly when there is nothing to do."""
        while len(self._active) < self.max_batch_requests:
            try:
                job = self.queue.get(timeout=0.1) if not self._active else self.queue.get_nowait()
            except queue.Empty:
                return
            self._active.append(job)

    def _take(self) -> list[Chunk]:
        """One model call's chunks: jobs in turn from `_turn`, each giving its next sequences until batch_tokens.

        Filling stops at the first sequence that does not fit; a job that got nothing goes first next time, so
        nobody is skipped.
        """
        self._admit()
        for job in [j for j in self._active if j.future.cancelled()]:
            self._remove(job)
            self.cancelled += 1
            self.dropped_inputs += len(job.sequences) - job.next
            self.metrics.dropped(len(job.sequences) - job.next)
        if not self._active:
            return []
        n, first = len(self._active), self._turn % len(self._active)
        chunks, tokens = [], 0
        for k in range(min(n, self.max_batch_requests)):
            i = (first + k) % n
            job = self._active[i]
            if chunks and job.kind != chunks[0].job.kind:  # one model per call: it goes first next call
                self._turn = i
                break
            stop = job.next
            while stop < len(job.sequences) and (tokens + job.cost(stop, job.next) <= self.batch_tokens
                                                 or not tokens):  # an over-budget sequence runs alone
                tokens += job.cost(stop, job.next)
                stop += 1
            if stop == job.next:  # its next sequence did not fit: it goes first next call
                self._turn = i
                break
            chunks.append(Chunk(job, job.next, stop))
            job.next = stop
            self._turn = i + 1
            if stop < len(job.sequences):  # the budget is spent
                break
        return chunks

    def _remove(self, job: Job):
        i = self._active.index(job)
        del self._active[i]
        if i < self._turn:
            self._turn -= 1

    def _run(self, chunks: list[Chunk]):
        try:
            try:
                self._embed(chunks)
            except Exception as e:
                if len(chunks) == 1:
                    self._finish(chunks[0].job, error=e)
                    return
                # one bad request (say, a non-finite vector) must not fail those it was packed with: retry alone
                for chunk in chunks:
                    try:
                        self._embed([chunk])
                    except Exception as alone:
                        self._finish(chunk.job, error=alone)
        finally:
            # MLX keeps freed buffers for reuse; past cache_keep release them (after failed batches too)
            if mx.get_cache_memory() > self.cache_keep:
                release_memory()

    def _embed(self, chunks: list[Chunk]):
        sequences = [s for chunk in chunks for s in chunk.sequences]
        if chunks[0].job.kind == "rerank":
            raw = self.reranker.score_prepared(sequences, batch_tokens=self.batch_tokens, raw=True)[:, None]
        else:
            raw = self.embedder.embed_prepared(sequences, normalize=False, batch_tokens=self.batch_tokens)
        self.batches += 1
        self.metrics.batch(len(chunks), len(sequences), sum(chunk.tokens for chunk in chunks))
        start = 0
        for chunk in chunks:
            job, n = chunk.job, chunk.stop - chunk.start
            rows = raw[start: start + n, : job.dim]
            start += n
            # the library's rule: a zero row stays zero; logits stay as they are
            if job.kind == "rerank" or not job.normalize:
                vectors = np.array(rows)
            else:
                vectors = np.array(normalize(mx.array(rows)))
            try:
                check_finite(vectors, (self.reranker if job.kind == "rerank" else self.embedder).name,
                             "scores" if job.kind == "rerank" else "vectors")
            except FloatingPointError as e:
                self._finish(job, error=e)
                continue
            if job.vectors is None:
                job.vectors = np.empty((len(job.sequences), job.dim), np.float32)
            job.vectors[chunk.start: chunk.stop] = vectors
            if chunk.stop == len(job.sequences):
                self._finish(job)

    def _finish(self, job: Job, error: Optional[Exception] = None):
        """Answer `job` (its vectors, or `error`) and take it out of service."""
        if job in self._active:
            self._remove(job)
        if error is not None:
            _fail(job, error)
            return
        try:
            job.future.set_result(job.vectors)
        except InvalidStateError:  # its client hung up during the last chunk
            pass


def shared_starts(heads: Optional[list]) -> Optional[list[int]]:
    """Per pair, the tokens of `heads` (RerankModel.heads) it shares with the pair before it, when that is enough
    to run once (batching.MIN_SHARED); None when nothing is shared."""
    if heads is None:
        return None
    shared = [common_prefix(a, b) for a, b in zip(heads, heads[1:])]
    return [0] + [n if n >= MIN_SHARED else 0 for n in shared]


def _fail(job: Job, error: Exception):
    try:
        job.future.set_exception(error)
    except InvalidStateError:  # cancelled by a client that hung up, or answered already
        pass
