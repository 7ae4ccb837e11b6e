"""The server's model worker: one thread owns the Embedder and packs queued requests into shared forward passes.

Requests arrive already tokenized (the HTTP handler counts and checks their tokens), so the worker only packs:
it takes queued requests in arrival order until their tokens fill the budget, runs them as one
`Embedder.embed_ids` call (which sorts by length and right-pads, so a text's vector does not depend on its
neighbours), then cuts each request's rows back out. Many small requests thus share one forward pass, as in TEI.
"""

import queue
import threading
from concurrent.futures import Future, InvalidStateError
from dataclasses import dataclass, field
from typing import Optional

import mlx.core as mx
import numpy as np

from ..device import check_batch_tokens
from ..embedder import Embedder
from ..pooling import normalize
from .metrics import Metrics


CACHE_KEEP = 256 * 2**20


class QueueFull(Exception):
    """The worker's queue holds `max_queue` requests already: the server answers 429."""


@dataclass
class Job:
    """One HTTP request's work: finished token ids (N sequences), the Matryoshka size it asked for, and whether
    its vectors are L2-normalised (TEI's normalize=false and Ollama's legacy route want them raw)."""
    sequences: list[list[int]]
    dim: int
    normalize: bool = True
    future: Future = field(default_factory=Future)

    @property
    def tokens(self) -> int:
        return sum(len(s) for s in self.sequences)


class BatchWorker:
    """Owns the Embedder; `submit` jobs from any thread, each job's future gets its (N, dim) float32 vectors.

    batch_tokens: token budget of one packed call (also the padded-token budget of each forward pass inside it);
    a single request larger than the budget still runs, alone.
    max_batch_requests: at most this many requests per packed call (1 = no cross-request batching).
    max_queue: requests waiting beyond this are refused with QueueFull.
    cache_keep: bytes of freed buffers MLX may keep for the next call; past that its cache is released, so memory
    stays flat (releasing it after every call costs ~10% of a small batch on CPU: fresh buffers fault their pages).
    metrics: where packed calls are counted (the app's; a private one by default).
    """

    def __init__(self, embedder: Embedder, *, batch_tokens: Optional[int] = None, max_batch_requests: int = 256,
                 max_queue: int = 1024, cache_keep: int = CACHE_KEEP, metrics: Optional[Metrics] = None):
        for name, value in (("max_batch_requests", max_batch_requests), ("max_queue", max_queue)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if isinstance(cache_keep, bool) or not isinstance(cache_keep, int) or cache_keep < 0:
            raise ValueError(f"cache_keep must be an int >= 0, got {cache_keep!r}")
        self.cache_keep = cache_keep
        self.embedder = embedder
        self.batch_tokens = check_batch_tokens(batch_tokens) or embedder.device.batch_tokens
        self.max_batch_requests = max_batch_requests
        self.queue: queue.Queue[Job] = queue.Queue(maxsize=max_queue)
        self._carry: Optional[Job] = None  # taken from the queue but did not fit the last batch
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self.batches = 0
        self.metrics = metrics or Metrics()
        self.metrics.watch_queue(self.queue.qsize)

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
        """Finish the batch in flight, then fail what is still queued so no caller waits forever."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        pending = [self._carry] if self._carry else []
        self._carry = None
        while not self.queue.empty():
            pending.append(self.queue.get_nowait())
        for job in pending:
            try:
                job.future.set_exception(RuntimeError("the server is shutting down"))
            except InvalidStateError:  # cancelled by a client that hung up
                pass

    def _loop(self):
        while not self._stop.is_set():
            jobs = self._take()
            if jobs:
                self._run(jobs)

    def _take(self) -> list[Job]:
        """Requests in arrival order until the next would pass batch_tokens or max_batch_requests."""
        first = self._carry
        self._carry = None
        if first is None:
            try:
                first = self.queue.get(timeout=0.1)  # wakes up to notice stop()
            except queue.Empty:
                return []
        jobs, tokens = [first], first.tokens
        while len(jobs) < self.max_batch_requests:
            try:
                job = self.queue.get_nowait()
            except queue.Empty:
                break
            if tokens + job.tokens > self.batch_tokens:
                self._carry = job
                break
            jobs.append(job)
            tokens += job.tokens
        return jobs

    def _run(self, jobs: list[Job]):
        jobs = [j for j in jobs if j.future.set_running_or_notify_cancel()]
        if not jobs:
            return
        try:
            try:
                self._embed(jobs)
            except Exception as e:
                if len(jobs) == 1:
                    jobs[0].future.set_exception(e)
                    return
                # one bad request (say, a non-finite vector) must not fail those it was packed with: retry alone
                for job in jobs:
                    try:
                        self._embed([job])
                    except Exception as alone:
                        job.future.set_exception(alone)
        finally:
            # MLX keeps freed buffers for reuse; past cache_keep release them (after failed batches too)
            if mx.get_cache_memory() > self.cache_keep:
                mx.clear_cache()

    def _embed(self, jobs: list[Job]):
        sequences = [s for job in jobs for s in job.sequences]
        raw = self.embedder.embed_ids(sequences, normalize=False, batch_tokens=self.batch_tokens)
        self.batches += 1
        self.metrics.batch(len(jobs), len(sequences), sum(job.tokens for job in jobs))
        start = 0
        for job in jobs:
            rows = raw[start: start + len(job.sequences), : job.dim]
            start += len(job.sequences)
            # the library's rule: a zero row stays zero
            vectors = np.array(normalize(mx.array(rows))) if job.normalize else np.array(rows)
            if not np.isfinite(vectors).all():
                job.future.set_exception(FloatingPointError(
                    f"{self.embedder.name} produced non-finite vectors: load it with dtype='float32'"))
            else:
                job.future.set_result(vectors)

