"""The `precision` request extension of /v1/embeddings and TEI's /embed: float32 vectors -> sentence-transformers'
compact rows (float16, int8, uint8, binary, ubinary; precision.py does the work), with its client mistakes as 400s.

int8/uint8 need per-dimension ranges. A request may send `ranges` ([[min...], [max...]], e.g. the ones a corpus job
kept in its metadata, so queries land in the documents' buckets); without them the request's own vectors give the
ranges, as sentence-transformers' quantize_embeddings does without calibration embeddings, and, as there, a single
vector cannot (400). Per-request ranges make codes of different requests incomparable: send `ranges` for search.
"""

from typing import Optional

import numpy as np

from .. import precision as _precision
from .errors import ApiError

RANGED = ("int8", "uint8")


def check(precision: Optional[str], ranges: Optional[list], dim: int, count: int) -> Optional[np.ndarray]:
    """Refuse a bad `precision` or `ranges` before any work: returns the (2, dim) float32 ranges (or None)."""
    if precision is None:
        if ranges is not None:
            raise ApiError("ranges applies to precision int8 or uint8: send \"precision\" too", "ranges",
                           "invalid_value")
        return None
    if precision not in _precision.PRECISIONS:
        raise ApiError(f"precision must be one of {', '.join(_precision.PRECISIONS)}, got {precision!r}",
                       "precision", "invalid_value")
    if ranges is None:
        if precision in RANGED and count < 2:
            raise ApiError(f"precision {precision} needs per-dimension ranges: send \"ranges\": [[min x {dim}], "
                           f"[max x {dim}]] (from a representative set of vectors, e.g. a corpus job's metadata), "
                           "or at least 2 inputs to take them from", "ranges", "missing_ranges")
        return None
    if precision not in RANGED:
        raise ApiError(f"ranges applies to precision int8 or uint8, not {precision}", "ranges", "invalid_value")
    try:
        bounds = np.asarray(ranges, dtype=np.float32)
    except ValueError:  # ragged lists
        bounds = None
    if bounds is None or bounds.shape != (2, dim):
        raise ApiError(f"ranges must be 2 lists of {dim} numbers ([[min...], [max...]], one per dimension), got "
                       f"{'ragged lists' if bounds is None else f'shape {bounds.shape}'}", "ranges", "invalid_value")
    if not np.isfinite(bounds).all() or (bounds[0] > bounds[1]).any():
        raise ApiError("ranges must be finite with every min <= its max", "ranges", "invalid_value")
    return bounds


def quantize(vectors: np.ndarray, precision: Optional[str],
             bounds: Optional[np.ndarray]) -> tuple[np.ndarray, Optional[np.ndarray]]:
    """(N, dim) float32 -> (rows at `precision`, the int8/uint8 ranges used: the given ones or the request's own)."""
    if precision is None:
        return vectors, None
    if precision in RANGED and bounds is None:
        bounds = _precision.ranges(vectors)
    return _precision.quantize(vectors, precision, bounds), bounds if precision in RANGED else None
