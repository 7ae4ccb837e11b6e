"""Compact vectors with sentence-transformers' `precision` semantics: float32, float16, int8, uint8, binary, ubinary.

int8/uint8 map each dimension's [min, max] range onto 256 buckets; the ranges come from a representative set of
vectors and must be kept with the output, so that later vectors (a resumed job, another machine, a query) land in
the same buckets. binary/ubinary keep only the sign: bit set where the value is > 0, packed 8 per byte.
"""

from typing import Optional

import numpy as np

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def check(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    return precision


def ranges(vectors: np.ndarray) -> np.ndarray:
    """(N, dim) float vectors -> (2, dim) float32 per-dimension [min; max], the int8/uint8 buckets' bounds."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise ValueError(f"int8/uint8 ranges need at least 2 vectors of shape (N, dim), got shape {vectors.shape}: "
                         "pass ranges computed from a representative set")
    return np.vstack((vectors.min(axis=0), vectors.max(axis=0)))


def quantize(vectors: np.ndarray, precision: str, bounds: Optional[np.ndarray] = None) -> np.ndarray:
    """(..., dim) float32 -> the same rows at `precision`; int8/uint8 use `bounds` ((2, dim), else from `vectors`).

    Output dtypes and widths as sentence-transformers' quantize_embeddings: float16; int8 / uint8 (dim);
    binary (int8, dim/8, offset by -128) / ubinary (uint8, dim/8).
    """
    check(precision)
    vectors = np.asarray(vectors, dtype=np.float32)
    if precision == "float32":
        return vectors
    if precision == "float16":
        return vectors.astype(np.float16)
    if precision in ("binary", "ubinary"):
        packed = np.packbits(vectors > 0, axis=-1)
        return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)
    bounds = ranges(vectors) if bounds is None else np.asarray(bounds, dtype=np.float32)
    if bounds.shape != (2, vectors.shape[-1]):
        raise ValueError(f"ranges must have shape (2, {vectors.shape[-1]}), got {bounds.shape}")
    starts = bounds[0]
    steps = (bounds[1] - starts) / 255
    steps = np.where(steps == 0, 1, steps)  # a constant dimension: one bucket
    buckets = np.clip(np.floor((vectors - starts) / steps), 0, 255)
    return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)


def dequantize(codes: np.ndarray, precision: str, bounds: Optional[np.ndarray] = None) -> np.ndarray:
    """int8/uint8 codes -> float32 bucket starts (within one step of the original); floats pass through."""
    check(precision)
    if precision in ("float32", "float16"):
        return np.asarray(codes, dtype=np.float32)
    if precision in ("binary", "ubinary"):
        raise ValueError(f"{precision} keeps only signs: it cannot be turned back into float vectors")
    if bounds is None:
        raise ValueError(f"dequantizing {precision} needs the ranges it was quantized with")
    bounds = np.asarray(bounds, dtype=np.float32)
    steps = (bounds[1] - bounds[0]) / 255
    steps = np.where(steps == 0, 1, steps)
    buckets = codes.astype(np.float32) + (128 if precision == "int8" else 0)
    return bounds[0] + buckets * steps
