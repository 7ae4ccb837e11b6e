"""Sort by length, pack under a token budget, right-pad, run the batches and put their rows back in input order."""

from typing import Callable, Optional, Sequence

import mlx.core as mx
import numpy as np


def plan_batches(lengths: list[int], batch_tokens: int) -> list[list[int]]:
    """Indices of texts grouped into batches whose padded size (count x longest) stays within `batch_tokens`.

    Longest first, so a batch holds texts of similar length and little padding; a text longer than the
    budget goes alone.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        # sorted descending: the first text of the batch is its longest
        if current and (len(current) + 1) * lengths[current[0]] > batch_tokens:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def pad_right(sequences: list[list[int]], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(B,) lists of ids -> input_ids (B, L) int32 padded on the right, lengths (B,) int32."""
    lengths = np.array([len(s) for s in sequences], dtype=np.int32)
    input_ids = np.full((len(sequences), int(lengths.max())), pad_id, dtype=np.int32)
    for row, s in enumerate(sequences):
        input_ids[row, : len(s)] = s
    return input_ids, lengths


def padded(forward: Callable[[mx.array, mx.array], mx.array], pad_id: int) -> Callable[[list], mx.array]:
    """forward(input_ids (B, L), lengths (B,)) -> a forward over a list of B id lists, right-padded with pad_id."""
    def run(batch: list[list[int]]) -> mx.array:
        input_ids, lengths = pad_right(batch, pad_id)
        return forward(mx.array(input_ids), mx.array(lengths))
    return run


def check_finite(values: np.ndarray, name: str, what: str = "vectors", note: str = "") -> np.ndarray:
    """Raise FloatingPointError naming the model unless every value is finite (bf16/fp16 overflow)."""
    if not np.isfinite(values).all():
        raise FloatingPointError(f"{name} produced non-finite {what}{note}: load it with dtype='float32'")
    return values


def run_batches(sequences: Sequence, forward: Callable[[list], mx.array], out: np.ndarray, device, *,
                batch_tokens: Optional[int] = None, name: str, what: str = "vectors") -> np.ndarray:
    """Fill `out` (N, ...) with each sequence's rows: `forward` turns one batch (a list of sequences, longest
    first) into its (B, ...) rows as a lazy graph, and `out[batch's indices]` receives them.

    Batches come from plan_batches under batch_tokens (default: device.batch_tokens) and run on device.stream.
    Each batch is started (mx.async_eval) before the previous one is copied out, so the host's copying and the
    next batch's padding overlap the compute. Non-finite rows raise FloatingPointError naming `name` and `what`.
    """
    pending = None
    for batch in plan_batches([len(s) for s in sequences], batch_tokens or device.batch_tokens):
        with mx.stream(device.stream):
            rows = forward([sequences[i] for i in batch])
        mx.async_eval(rows)
        if pending is not None:
            out[pending[0]] = np.array(pending[1])
        pending = (batch, rows)
    if pending is not None:
        out[pending[0]] = np.array(pending[1])
    return check_finite(out, name, what, f" (dtype {device.dtype})")
