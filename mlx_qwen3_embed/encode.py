"""sentence-transformers' `encode` / `encode_query` / `encode_document` over an Embedder, so code written for
`SentenceTransformer` (MTEB's evaluation among it) runs unchanged and gets the same vectors.

Its order of operations is kept: the checkpoint's modules (Normalize when modules.json lists it) give the full
vector, `truncate_dim` then cuts it (no re-normalising), `normalize_embeddings=True` normalises what is left, and
`precision` quantizes the batch with ranges taken from the batch itself.
"""

import json
from typing import Any, Optional, Sequence, Union

import mlx.core as mx
import numpy as np

from . import precision as _precision
from .checks import check_int
from .pooling import check_dim as _check_dim, normalize as _normalize


def encode(embedder, inputs: Union[str, Sequence[str]], prompt_name: Optional[str] = None,
           prompt: Optional[str] = None, batch_size: int = 32, show_progress_bar: Optional[bool] = None,
           output_value: Optional[str] = "sentence_embedding", precision: str = "float32",
           convert_to_numpy: bool = True, convert_to_tensor: bool = False, device: Any = None,
           normalize_embeddings: bool = False, truncate_dim: Optional[int] = None, pool: Any = None,
           chunk_size: Optional[int] = None, **kwargs):
    """Texts -> vectors as SentenceTransformer.encode: a str gives (dim,), N texts give (N, dim) (numpy), or a list
    of N (dim,) arrays with convert_to_numpy=False, or an mx.array with convert_to_tensor=True (MLX's tensor).

    show_progress_bar is accepted and ignored (the library never prints); batch_size is checked but the vectors do
    not depend on it (batches are packed by tokens); device and pool must stay None (the device is chosen at load).
    """
    if "sentences" in kwargs:  # the name of the first argument before sentence-transformers 5
        inputs = kwargs.pop("sentences")
    unused = set(kwargs) - {"task"}
    if unused:
        raise TypeError(f"encode() got unexpected keyword arguments {sorted(unused)}")
    if output_value != "sentence_embedding":
        raise ValueError(f"output_value must be 'sentence_embedding', got {output_value!r}: only pooled vectors here")
    check_int("batch_size", batch_size)
    if device is not None or pool is not None or chunk_size is not None:
        raise ValueError("device, pool and chunk_size must be None: the device is chosen at load(device=...)")
    _precision.check(precision)
    if truncate_dim is not None:
        _check_dim(truncate_dim, embedder.dim)
    if prompt is None and prompt_name is None:
        prompt_name = _default_prompt_name(embedder)
    if prompt is not None:
        prompt_name = None  # sentence-transformers: an explicit prompt wins over prompt_name
    single = isinstance(inputs, str)
    texts = [inputs] if single else list(inputs.tolist() if isinstance(inputs, np.ndarray) else inputs)
    vectors = embedder.embed(texts, prompt_name=prompt_name, prompt=prompt, normalize=_has_normalize(embedder))
    if truncate_dim is not None:
        vectors = vectors[:, :truncate_dim]
    if normalize_embeddings:
        vectors = np.array(_normalize(mx.array(vectors)))
    if len(vectors) and precision != "float32":
        vectors = _precision.quantize(vectors, precision)
    if convert_to_tensor:
        result = mx.array(vectors)
    elif convert_to_numpy:
        result = vectors
    else:
        result = list(vectors)
    return result[0] if single else result


def encode_query(embedder, inputs, prompt_name: Optional[str] = None, prompt: Optional[str] = None, **kwargs):
    """encode with the checkpoint's "query" prompt unless another prompt is given."""
    if prompt_name is None and prompt is None and "query" in embedder.prompts:
        prompt_name = "query"
    return encode(embedder, inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)


def encode_document(embedder, inputs, prompt_name: Optional[str] = None, prompt: Optional[str] = None, **kwargs):
    """encode with the checkpoint's "document" (or "passage", "corpus") prompt unless another prompt is given."""
    if prompt_name is None and prompt is None:
        prompt_name = next((n for n in ("document", "passage", "corpus") if n in embedder.prompts), None)
    return encode(embedder, inputs, prompt_name=prompt_name, prompt=prompt, **kwargs)


def _has_normalize(embedder) -> bool:
    """Whether the checkpoint's sentence-transformers pipeline ends in Normalize (Qwen3-Embedding's does)."""
    path = embedder.folder / "modules.json"
    if not path.is_file():
        return True  # no pipeline file: Qwen3-Embedding's own rule, unit vectors
    return any(m.get("type", "").endswith("Normalize") for m in json.loads(path.read_text()))


def _default_prompt_name(embedder) -> Optional[str]:
    path = embedder.folder / "config_sentence_transformers.json"
    return json.loads(path.read_text()).get("default_prompt_name") if path.is_file() else None
