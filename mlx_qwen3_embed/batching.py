"""Sort by length, pack under a token budget, right-pad; the caller restores the input order."""

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
