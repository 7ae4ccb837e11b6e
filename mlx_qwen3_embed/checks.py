"""The rules every edge applies the same way, written once: an int parameter, a named prompt, top_n and the order
of scores, the sigmoid of a rerank logit, messages without heap addresses. (The guard against non-finite results
is batching.check_finite.)"""

import re
from typing import Mapping, Optional

import numpy as np


def check_int(name: str, value, least: int = 1, most: Optional[int] = None, *, note: str = "",
              wanted: Optional[str] = None) -> int:
    """`value` as an int in least..most, else ValueError naming `name` and what it must be (`wanted`, default
    "a positive int" / "an int of at least N" / "an int between N and M"); bools are not ints here."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < least \
            or (most is not None and value > most):
        wanted = wanted or (f"an int between {least} and {most}" if most is not None else "a positive int"
                            if least == 1 else f"an int of at least {least}")
        raise ValueError(f"{name} must be {wanted}{note}, got {value!r}")
    return int(value)


def check_prompt_name(prompt_name: str, prompts: Mapping[str, str]) -> str:
    """The prompt `prompt_name` names, else ValueError listing the model's prompts."""
    if prompt_name not in prompts:
        have = ", ".join(sorted(prompts)) or "none"
        raise ValueError(f"unknown prompt_name {prompt_name!r}: this model has {have}")
    return prompts[prompt_name]


def check_top_n(top_n) -> Optional[int]:
    """None (all) or an int >= 1."""
    return None if top_n is None else check_int("top_n", top_n, wanted="an int of at least 1")


def best_first(scores: np.ndarray, top_n: Optional[int] = None) -> list[int]:
    """Indices of `scores`, highest first (ties keep input order), at most top_n."""
    order = np.argsort(-scores, kind="stable")
    return [int(i) for i in order[:top_n]]


def ranked(scores: np.ndarray, documents, top_n: Optional[int] = None) -> list[dict]:
    """rerank's answer: [{"index", "score", "document"}] best first, at most top_n."""
    return [{"index": i, "score": float(scores[i]), "document": documents[i]} for i in best_first(scores, top_n)]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """P("yes") from the logit yes - no: the softmax over (no, yes) is the sigmoid of their difference."""
    return (1 / (1 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


def without_addresses(message: str) -> str:
    """`message` without the object reprs libraries put in their messages ("<_io.BytesIO object at 0x7f...>"):
    a heap address tells a reader nothing, and tells an attacker where the heap is."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", message).strip()
