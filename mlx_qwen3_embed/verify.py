"""The model card's own check: embed its two instructed queries and two documents and compare the 2x2 cosine
matrix with the values the card prints. For users with real weights, the one test of an install end to end.

Tolerance: a sound 4-bit conversion stays within ~0.02 of the card (DWQ closer); a broken pipeline (no final
<|endoftext|>, wrong pooled token, missing instruction, fp16 overflow) moves entries by 0.1 or more.
"""

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .contracts import EmbeddingModel
from .tokenizer import DEFAULT_INSTRUCTION

QUERIES = ["What is the capital of China?", "Explain gravity"]
DOCUMENTS = ["The capital of China is Beijing.",
             "Gravity is a force that attracts two bodies towards each other. It gives weight to physical objects and "
             "is responsible for the movement of planets around the sun."]
# the cards' printed similarity matrices, by embedding size (which tells the three models apart)
CARD_SCORES = {1024: ("Qwen3-Embedding-0.6B", [[0.7646, 0.1414], [0.1355, 0.6000]]),
               2560: ("Qwen3-Embedding-4B", [[0.7534, 0.1147], [0.0320, 0.6258]]),
               4096: ("Qwen3-Embedding-8B", [[0.7493, 0.0751], [0.0880, 0.6318]])}
TOLERANCE = 0.03


@dataclass
class Verdict:
    """scores: (2, 2) query x document cosines; expected: the card's; passed when every entry is within tolerance."""
    card: str
    scores: np.ndarray
    expected: np.ndarray
    tolerance: float

    @property
    def max_error(self) -> float:
        return float(np.abs(self.scores - self.expected).max())

    @property
    def passed(self) -> bool:
        return self.max_error <= self.tolerance


def verify(embedder: EmbeddingModel, *, tolerance: float = TOLERANCE,
           expected: Optional[Sequence[Sequence[float]]] = None) -> Verdict:
    """Embed the card's example and compare with its matrix (or `expected`, a 2x2 list, for other checkpoints)."""
    check_tolerance(tolerance)
    if expected is None:
        if embedder.dim not in CARD_SCORES:
            sizes = ", ".join(f"{n} ({d})" for d, (n, _) in CARD_SCORES.items())
            raise ValueError(f"{embedder.name} embeds in {embedder.dim} dimensions; the cards cover {sizes}: pass "
                             "the expected 2x2 matrix yourself (mlx-embed verify --expected, or expected=)")
        card, expected = CARD_SCORES[embedder.dim]
    else:
        card = "given"
    expected = check_expected(expected)
    queries = embedder.embed(QUERIES, instruction=DEFAULT_INSTRUCTION)
    documents = embedder.embed(DOCUMENTS)
    return Verdict(card, (queries @ documents.T).astype(np.float64), expected, float(tolerance))


def check_tolerance(tolerance, name: str = "tolerance") -> float:
    """A number strictly between 0 and 1, else ValueError naming `name`."""
    if isinstance(tolerance, bool) or not isinstance(tolerance, (int, float)) or not 0 < tolerance < 1:
        raise ValueError(f"{name} must be a number between 0 and 1, got {tolerance!r}")
    return float(tolerance)


def check_expected(expected, name: str = "expected") -> np.ndarray:
    """A 2x2 matrix of numbers (queries x documents) as float64, else ValueError naming `name` and the value."""
    wanted = f"{name} must be a 2x2 matrix of numbers (queries x documents), like [[0.76, 0.14], [0.13, 0.60]]"
    try:
        matrix = np.asarray(expected, dtype=np.float64)
    except (ValueError, TypeError):  # rows of different lengths, or not numbers
        raise ValueError(f"{wanted}, got {expected!r}") from None
    if matrix.shape != (2, 2):
        raise ValueError(f"{wanted}, got shape {matrix.shape}: {expected!r}")
    return matrix
