"""An LRU cache of recent vectors, keyed by the exact token ids and the options that shape a vector."""

from collections import OrderedDict
from typing import Callable, Hashable

import numpy as np

from .checks import check_int


class VectorCache:
    """Up to `size` vectors; `hits` and `misses` count lookups (the server's /metrics shows them).

    A text's vector does not depend on what it is batched with, so a cached vector equals a fresh one.
    """

    def __init__(self, size: int):
        self.size, self.hits, self.misses = check_int("cache_size", size, note=" (vectors kept)"), 0, 0
        self._vectors: OrderedDict = OrderedDict()

    def embed(self, sequences: list[list[int]], options: Hashable,
              compute: Callable[[list[list[int]]], np.ndarray]) -> np.ndarray:
        """(N,) id lists -> (N, dim) vectors: cached rows copied, the rest from compute(missing) and then kept."""
        keys = [(np.asarray(ids, dtype=np.int32).tobytes(), options) for ids in sequences]
        found = [self._vectors.get(k) for k in keys]
        missing = [i for i, v in enumerate(found) if v is None]
        self.hits += len(keys) - len(missing)
        self.misses += len(missing)
        fresh = compute([sequences[i] for i in missing]) if missing else None
        for row, i in enumerate(missing):
            found[i] = fresh[row].copy()  # a row of its own: the batch array is not kept alive
        for k, v in zip(keys, found):
            self._vectors[k] = v
            self._vectors.move_to_end(k)
        while len(self._vectors) > self.size:
            self._vectors.popitem(last=False)
        return np.stack(found)
