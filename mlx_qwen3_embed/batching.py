"""Sort by length, pack under a token budget, right-pad, run the batches and put their rows back in input order;
group sequences that start with the same tokens (a reranker's pairs of one query)."""

from typing import Callable, Optional, Sequence

import mlx.core as mx
import numpy as np

# the fewest tokens a group of sequences must share to run from one prefix (a reranker's template alone is ~40)
MIN_SHARED = 16


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


def shared_prefixes(heads: Sequence[Sequence[int]], least: int = MIN_SHARED) -> list[tuple[int, list[int]]]:
    """Groups of sequences that start alike: [(P, indices)], each group's members all beginning with the same P
    tokens, P >= least. heads[i]: the part of sequence i that may be shared (e.g. all but its last token); a
    sequence in no group shares nothing worth it.

    Sorted, the sequences sharing P tokens are neighbours, and such runs nest (a run sharing P holds the runs
    sharing more): a tree, walked once. A run's group is its members that no sub-run keeps; a sub-run keeps its
    own groups when that saves at least `least` tokens more than joining (a group saves (members - 1) x P: its
    prefix runs once). So 20 queries x 100 documents give 20 groups, one per query, rather than one of all 2,000
    sharing the template; but a few pairs per query, or one query's documents that happen to start alike, join
    the group that shares less: another group would cost more than its few tokens (one more pass, one more batch).
    """
    order = sorted(range(len(heads)), key=lambda i: list(heads[i]))
    stack = [[0, 0, []]]  # open runs, outermost first: [tokens shared, first sorted position, closed sub-runs]
    for k in range(1, len(order) + 1):
        shared = common_prefix(heads[order[k - 1]], heads[order[k]]) if k < len(order) else 0
        first, closed = k - 1, (0, [], [k - 1], 0, k - 1, k)  # sequence k - 1 alone, as a run of one
        while shared < stack[-1][0]:  # runs sharing more than `shared` end at sequence k - 1
            stack[-1][2].append(closed)
            run_shared, first, runs = stack.pop()
            closed = _close(run_shared, runs, least, first, k)
        if shared > stack[-1][0]:  # a run sharing more starts at `first`, holding the one just closed
            stack.append([shared, first, [closed]])
        else:
            stack[-1][2].append(closed)
    _, groups, _, _, _, _ = _close(0, stack[0][2], least, 0, len(order))
    return [(shared, [order[k] for k in members]) for shared, members in groups]


def by_shared_prefix(items: Sequence, heads: Optional[Sequence], grouped: Callable[[list, int], np.ndarray],
                     whole: Callable[[list], np.ndarray]) -> np.ndarray:
    """(N,) float32 results of `items` in their order: grouped(members, P) for each group of
    shared_prefixes(heads) (none when heads is None), whole(others) for the items in no group."""
    out = np.empty(len(items), dtype=np.float32)
    alone = np.ones(len(items), dtype=bool)
    for shared, members in shared_prefixes(heads) if heads is not None else []:
        alone[members] = False
        out[members] = grouped([items[i] for i in members], shared)
    if alone.any():
        rest = np.flatnonzero(alone)
        out[rest] = whole([items[i] for i in rest])
    return out


def _close(shared: int, runs: list, least: int, first: int, end: int) -> tuple:
    """A run of sorted positions first..end-1 sharing `shared` tokens, holding `runs` (closed sub-runs) ->
    (tokens saved, groups [(P, positions)], positions left for an enclosing run's group, shared, first, end)."""
    saving, groups, free = 0, [], []
    for run_saving, run_groups, run_free, run_shared, run_first, run_end in runs:
        alone = run_saving + len(run_free) * shared  # the sub-run keeps its groups, its rest joins this group
        if shared < least or alone - (run_end - run_first) * shared >= least:
            saving += run_saving
            groups += run_groups
            free += run_free
        else:  # it dissolves into this run's group
            free += range(run_first, run_end)
    if shared >= least and len(free) > 1:
        saving += (len(free) - 1) * shared
        groups.append((shared, free))
        free = []
    return saving, groups, free, shared, first, end


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """How many leading tokens a and b share."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


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
                batch_tokens: Optional[int] = None, name: str, what: str = "vectors",
                sizes: Optional[list[int]] = None) -> np.ndarray:
    """Fill `out` (N, ...) with each sequence's rows: `forward` turns one batch (a list of sequences, longest
    first) into its (B, ...) rows as a lazy graph, and `out[batch's indices]` receives them.

    Batches come from plan_batches under batch_tokens (default: device.batch_tokens), each sequence counting its
    length (or sizes[i]), and run on device.stream.
    Each batch is started (mx.async_eval) before the previous one is copied out, so the host's copying and the
    next batch's padding overlap the compute. Non-finite rows raise FloatingPointError naming `name` and `what`.
    """
    pending = None
    for batch in plan_batches(sizes or [len(s) for s in sequences], batch_tokens or device.batch_tokens):
        with mx.stream(device.stream):
            rows = forward([sequences[i] for i in batch])
        mx.async_eval(rows)
        if pending is not None:
            out[pending[0]] = np.array(pending[1])
        pending = (batch, rows)
    if pending is not None:
        out[pending[0]] = np.array(pending[1])
    return check_finite(out, name, what, f" (dtype {device.dtype})")
