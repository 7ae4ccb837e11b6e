"""What every dialect does between parsing and answering: texts -> token ids (with the dialect's truncation rule),
and ids -> vectors through the one BatchWorker, with its refusals turned into ApiErrors."""

import asyncio
from typing import Optional

import numpy as np

from ..embedder import Embedder
from ..pooling import check_dim
from .errors import ApiError
from .worker import BatchWorker, Job, QueueFull

UNLIMITED = 2**62  # tokenize whole, then cut here: the dialects need to know what was cut and from which side


def tokenize(embedder: Embedder, texts: list[str], *, prompt_name: Optional[str] = None, truncate: bool,
             direction: str = "right") -> tuple[list[list[int]], int]:
    """Texts -> (finished token ids, how many were cut to max_length). Over-long without truncate: ApiError 400.

    direction "left" keeps the last tokens (TEI's truncation_direction); the final <|endoftext|> is always kept.
    """
    if prompt_name is not None and prompt_name not in embedder.prompts:
        raise ApiError(f"unknown prompt_name {prompt_name!r}: this model has {', '.join(sorted(embedder.prompts))}",
                       "prompt_name", "invalid_value")
    whole = embedder.tokenize(texts, prompt_name=prompt_name, max_length=UNLIMITED)
    limit, cut = embedder.max_length, 0
    for i, ids in enumerate(whole):
        if len(ids) > limit:
            if not truncate:
                raise ApiError(f"input {i} has {len(ids)} tokens, more than max_length {limit}: shorten it or "
                               "send truncate=true", "input", "context_length_exceeded")
            body = ids[:-1]
            whole[i] = (body[: limit - 1] if direction == "right" else body[len(body) - limit + 1:]) + ids[-1:]
            cut += 1
    return whole, cut


def check_dimensions(dimensions: Optional[int], full: int) -> int:
    """A request's `dimensions` (pooling.check_dim) -> the width, or an ApiError on the `dimensions` field."""
    try:
        return check_dim(dimensions, full, "dimensions")
    except ValueError as e:
        raise ApiError(str(e), "dimensions", "invalid_value") from None


async def run(worker: BatchWorker, sequences: list[list[int]], dim: int, normalize: bool = True) -> np.ndarray:
    """Queue the ids on the worker and wait: (N, dim) float32. A full queue is a 429, a model failure a 500."""
    try:
        future = worker.submit(Job(sequences, dim, normalize))
    except QueueFull as e:
        raise ApiError(f"server busy: {e}; retry shortly", code="queue_full", status=429,
                       kind="rate_limit_error") from None
    try:
        return await asyncio.wrap_future(future)
    except Exception as e:  # the model's fault, not the client's
        raise ApiError(f"embedding failed: {e}", code="internal_error", status=500, kind="server_error") from e
