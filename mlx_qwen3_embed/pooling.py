"""Pooling of hidden states, Matryoshka truncation and L2 normalisation: pure array functions."""

import mlx.core as mx
import numpy as np

POOLINGS = ("last", "mean", "first", "max")


def check(method: str) -> str:
    """Raise ValueError unless `method` is one of POOLINGS; return it."""
    if method not in POOLINGS:
        raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}, got {method!r}")
    return method


def pool(hidden: mx.array, lengths: mx.array, method: str = "last") -> mx.array:
    """hidden (B, L, D) right-padded, lengths (B,) -> (B, D).

    "last" takes each text's own final token: a causal model has read the whole text only there, and the
    padding is on the right, so that is position lengths-1 (pad == eos, so never search for the pad id).
    """
    B, L, D = hidden.shape
    check(method)
    if method == "last":
        return mx.take_along_axis(hidden, (lengths - 1).reshape(B, 1, 1), axis=1).squeeze(1)
    if method == "first":
        return hidden[:, 0]
    real = (mx.arange(L)[None, :] < lengths[:, None])[..., None]
    if method == "mean":
        return (hidden * real).sum(axis=1) / lengths[:, None].astype(hidden.dtype)
    return mx.where(real, hidden, mx.array(-mx.inf, hidden.dtype)).max(axis=1)  # "max"


def check_dim(dim, full: int, name: str = "dim") -> int:
    """A Matryoshka width: None -> `full`; else an int in 1..full, or ValueError naming it (as `name`)."""
    if dim is None:
        return full
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or not 1 <= dim <= full:
        raise ValueError(f"{name} must be between 1 and {full}, got {dim!r}")
    return int(dim)


def truncate(vectors: mx.array, dim: int) -> mx.array:
    """Matryoshka: keep the first `dim` values (normalise afterwards)."""
    return vectors[:, :dim]


def normalize(vectors: mx.array) -> mx.array:
    """Rows to unit L2 norm; a zero row stays zero instead of becoming NaN."""
    norms = mx.linalg.norm(vectors, axis=-1, keepdims=True)
    return vectors / mx.maximum(norms, 1e-12)
