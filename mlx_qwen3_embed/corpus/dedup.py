"""Identical inputs across a whole corpus job: each text's (or Qwen3-VL item's) 16-byte digest -> the row of its
first occurrence, kept in two sorted numpy arrays so a duplicate anywhere in the job copies that row instead of
being embedded again.

Memory: 24 bytes per distinct text (a 16-byte blake2b digest + an int64 row), so 24 MB at 1M distinct texts and
240 MB at 10M, plus a transient copy of the same size while a window's new digests are merged in; the vectors
themselves stay on disk in the job's parts. Collisions: 128-bit digests, about 1e-27 odds of one among 1M texts.
The key is the text alone, or an item's JSON with sorted keys (its image paths as written, not the pixels): the
prompt (instruction) is one per job, part of the options a resumed job must repeat.
"""

import hashlib
import json
from typing import Iterable, Union

import numpy as np

DIGEST = np.dtype("S16")  # fixed-width bytes sort and search lexicographically; all 16 bytes are kept


def digests(inputs: Iterable[Union[str, dict]]) -> np.ndarray:
    """Texts or items -> (N,) S16 blake2b digests of their exact UTF-8 bytes (a lone surrogate is hashed, not
    refused: the tokenizer's own error about it comes later); an item hashes its sorted-keys JSON under its own
    `person`, so it never shares a key with a text that happens to read like its JSON."""
    return np.array([_digest(value) for value in inputs], dtype=DIGEST)


def _digest(value: Union[str, dict]) -> bytes:
    if isinstance(value, str):
        return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=16).digest()
    key = json.dumps(value, sort_keys=True, ensure_ascii=False).encode("utf-8", "surrogatepass")
    return hashlib.blake2b(key, digest_size=16, person=b"item").digest()


class Seen:
    """Digests of the texts a job has already written -> the row (in input order) of each one's first occurrence.

    Built the same way on every rank (from the same input and window sizes), so ranks agree on what is new; after a
    resume it is rebuilt from the input's finished records, so it always matches the parts on disk.
    """

    def __init__(self):
        self.keys = np.zeros(0, DIGEST)   # sorted
        self.rows = np.zeros(0, np.int64)  # rows[i] is keys[i]'s first row

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, keys: np.ndarray) -> np.ndarray:
        """(N,) S16 digests -> (N,) int64 first rows, -1 where not seen."""
        at = np.searchsorted(self.keys, keys)
        inside = at < len(self.keys)
        found = np.zeros(len(keys), bool)
        found[inside] = self.keys[at[inside]] == keys[inside]
        return np.where(found, self.rows[np.minimum(at, len(self.rows) - 1)] if len(self.rows) else -1, -1)

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Record digests not seen before (distinct among themselves) at their first rows."""
        order = np.argsort(keys, kind="stable")
        keys, rows = keys[order], np.asarray(rows, np.int64)[order]
        at = np.searchsorted(self.keys, keys)
        self.keys, self.rows = np.insert(self.keys, at, keys), np.insert(self.rows, at, rows)

    def add_records(self, keys: np.ndarray, start: int) -> None:
        """Record a finished stretch of the input (rows start.. in order): first occurrences only."""
        unique, first = np.unique(keys, return_index=True)
        new = self.find(unique) < 0
        self.add(unique[new], start + first[new])
