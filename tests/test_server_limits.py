"""A server that bad clients cannot hurt: fair chunked scheduling and cancellation in the worker, then (through
real sockets to a loopback uvicorn) body caps, timeouts, hang-ups, lone surrogates, CORS, HEAD, auth leaks, the
port check and graceful shutdown of the `mlx-embed serve` process."""

import threading

import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.serve.worker import BatchWorker, Job

ATOL = 1e-6


@pytest.fixture(scope="module")
def embedder(hub_model):
    return mqe.load(str(hub_model))


@pytest.fixture(scope="module")
def long_texts(texts) -> list[str]:
    """12 texts of a few dozen tokens each, all different."""
    return [f"{i}: " + " ".join(t for t in texts if t) for i in range(12)]


class HeldWorker:
    """A BatchWorker whose model calls are recorded and can be held: `entered` is set inside each call, which
    then waits for `release`."""

    def __init__(self, embedder, **kwargs):
        self.worker = BatchWorker(embedder, **kwargs)
        self.calls: list[list[tuple[int, int, int]]] = []  # per call: (job arrival, start, stop) of each chunk
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()
        real = self.worker._embed

        def held(chunks):
            self.calls.append([(c.job.arrival, c.start, c.stop) for c in chunks])
            self.entered.set()
            assert self.release.wait(30)
            real(chunks)

        self.worker._embed = held


def test_big_request_is_cut_into_budget_chunks_equal_to_library(embedder, long_texts):
    sequences = embedder.tokenize(long_texts)
    budget = 2 * max(len(s) for s in sequences)
    held = HeldWorker(embedder, batch_tokens=budget)
    future = held.worker.submit(Job(sequences, embedder.dim))
    held.worker.start()
    try:
        got = future.result(timeout=60)
    finally:
        held.worker.stop()
    sizes = [sum(len(s) for s in sequences[start:stop]) for call in held.calls for _, start, stop in call]
    assert len(held.calls) >= len(long_texts) // 2 and max(sizes) <= budget
    np.testing.assert_allclose(got, embedder.embed(long_texts), atol=ATOL)


def test_small_request_runs_in_the_next_call_after_a_big_one_started(embedder, long_texts):
    """The big request's first chunk is in flight when the small one arrives: the very next call serves it."""
    big = Job(embedder.tokenize(long_texts), embedder.dim)
    held = HeldWorker(embedder, batch_tokens=max(len(s) for s in big.sequences))  # one text per call
    held.release.clear()
    held.worker.submit(big)
    held.worker.start()
    try:
        assert held.entered.wait(30)
        small = Job(embedder.tokenize(["a small query"]), embedder.dim)
        held.worker.submit(small)
        held.release.set()
        got = small.future.result(timeout=60)
        big.future.result(timeout=60)
    finally:
        held.worker.stop()
    assert [arrival for arrival, _, _ in held.calls[1]] == [small.arrival]
    assert len(held.calls) == len(long_texts) + 1
    np.testing.assert_allclose(got, embedder.embed(["a small query"]), atol=ATOL)


def test_cancelled_request_loses_its_remaining_chunks(embedder, long_texts):
    big = Job(embedder.tokenize(long_texts), embedder.dim)
    held = HeldWorker(embedder, batch_tokens=max(len(s) for s in big.sequences))
    held.release.clear()
    held.worker.submit(big)
    held.worker.start()
    try:
        assert held.entered.wait(30)
        assert big.future.cancel()  # what asyncio does to it when the client hangs up
        held.release.set()
        after = held.worker.submit(Job(embedder.tokenize(["next"]), embedder.dim))
        after.result(timeout=60)
    finally:
        held.worker.stop()
    assert len(held.calls) == 2  # the chunk in flight, then the next request: nothing more of the big one
    assert (held.worker.cancelled, held.worker.dropped_inputs) == (1, len(long_texts) - 1)
