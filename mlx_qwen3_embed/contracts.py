"""The two contracts every wing (CLI, corpus jobs, server dialects, adapters, bench, verify) is written against:
what any embedding model and any reranker offer. embedder.Embedder (Qwen3 text) and vision.embedder.VLEmbedder
(Qwen3-VL) are EmbeddingModels; reranker.Reranker is a RerankModel. A new model kind implements these; the wings
do not change.

Work goes in two steps so that callers can check, count and schedule before computing: `prepare_inputs` and
`prepare_pairs` validate the inputs (errors name the input's index) and turn each into what the model reads
(token ids, or a Qwen3-VL item with its pixels); `len()` of a prepared input is its token count.
`embed_prepared` / `score_prepared` compute; a result never depends on what else was in the batch.
"""

from typing import Any, Mapping, Optional, Protocol, Sequence, Sized, runtime_checkable

import numpy as np

from .device import DevicePlan


@runtime_checkable
class EmbeddingModel(Protocol):
    """Inputs -> float32 vectors (N, dim)."""

    name: str                    # what it was loaded as: a hub id or a folder
    max_length: int              # tokens an input may hold
    pooling: str                 # "last" (the models'), "mean", "first" or "max"
    device: DevicePlan           # compute dtype, kernels, token budget per forward pass
    prompts: Mapping[str, str]   # named prompts (prompt_name=...), e.g. {"query": "Instruct: ...", "document": ""}
    cache: Any                   # a cache.VectorCache of recent vectors, or None

    @property
    def dim(self) -> int:
        """The full vector size."""

    def describe(self) -> dict:
        """{"family": "qwen3" | "qwen3_vl", "layers": int, "quantization": {"bits", "group_size"} | None,
        "decoder": models.args.ModelArgs (the text decoder's shape: what a text input costs)}."""

    def prepare_inputs(self, inputs: Sequence[Any], *, instruction: Optional[str] = None,
                       prompt_name: Optional[str] = None, prompt: Optional[str] = None,
                       max_length: Optional[int] = None, truncate: bool = True,
                       direction: str = "right") -> list[Sized]:
        """Inputs (str for every kind; item dicts for Qwen3-VL) -> prepared inputs, len() = tokens.

        instruction: the query task; prompt_name: one of `prompts`; prompt: a raw prefix (ValueError for a model
        whose prompt is not a prefix: Qwen3-VL).

        truncate: cut an over-long input to max_length from `direction` ("right" keeps the start, "left" the
        end), else raise ValueError naming it; an input that cannot be cut (a Qwen3-VL image) always raises.
        """

    def prepare_ids(self, sequences: Sequence[Sequence[int]], *, max_length: Optional[int] = None,
                    truncate: bool = True, own: bool = False) -> list[Sized]:
        """Pre-tokenized input (lists of this model's token ids) -> prepared inputs; TypeError for a model that
        does not read bare token ids (Qwen3-VL: its ids carry pixels). own: refuse (ValueError) ids that are not
        this tokenizer's tokenization of any text (another tokenizer's ids)."""

    def tokens(self, text: str, *, prompt_name: Optional[str] = None, add_special_tokens: bool = True,
               max_length: Optional[int] = None) -> list[dict]:
        """What the model reads for one text: [{"id", "text", "special", "start", "stop"}] (TEI's /tokenize);
        start/stop are character offsets into the text, None for the tokens the model adds around it. More than
        max_length tokens (default: the model's) is a ValueError, refused by the characters when surely so."""

    def embed_prepared(self, prepared: list, *, dim: Optional[int] = None, normalize: bool = True,
                       precision: str = "float32", ranges: Optional[np.ndarray] = None,
                       batch_tokens: Optional[int] = None) -> np.ndarray:
        """Prepared inputs -> (N, dim) float32 (or `precision` rows, as precision.quantize makes them)."""

    def embed(self, inputs: Any, **options) -> np.ndarray:
        """prepare_inputs + embed_prepared: one input gives (dim,), a list of N gives (N, dim)."""

    def embed_query(self, inputs: Any, instruction: Optional[str] = None, **options) -> np.ndarray:
        """Queries, with `instruction` (default: the model's query prompt or instruction)."""

    def embed_document(self, inputs: Any, **options) -> np.ndarray:
        """Documents, as the model embeds them for search."""


@runtime_checkable
class RerankModel(Protocol):
    """(query, document) pairs -> relevance P("yes"), float32 (N,)."""

    name: str
    max_length: int
    device: DevicePlan

    def prepare_pairs(self, pairs: Sequence[tuple[Any, Any]], *, instruction: Optional[str] = None,
                      max_length: Optional[int] = None, truncate: bool = True) -> list[Sized]:
        """(query, document) pairs -> prepared pairs, len() = tokens; errors name `pairs[i]`."""

    def score_prepared(self, prepared: list, *, batch_tokens: Optional[int] = None,
                       raw: bool = False) -> np.ndarray:
        """Prepared pairs -> float32 (N,): P("yes"), or with `raw` the logit yes - no."""

    def heads(self, prepared: list) -> Optional[list]:
        """What each prepared pair may share with others (score_prepared runs a shared start once), or None when
        nothing is shared."""

    def score(self, query: Any, documents: Sequence[Any], *, instruction: Optional[str] = None,
              batch_tokens: Optional[int] = None) -> np.ndarray:
        """Each document against one query -> P("yes") (N,), in the documents' order."""

    def score_pairs(self, pairs: Sequence[tuple[Any, Any]], *, instruction: Optional[str] = None,
                    batch_tokens: Optional[int] = None) -> np.ndarray:
        """(query, document) pairs, queries free to differ -> P("yes") (N,)."""

    def rerank(self, query: Any, documents: Sequence[Any], *, instruction: Optional[str] = None,
               top_n: Optional[int] = None, batch_tokens: Optional[int] = None) -> list[dict]:
        """Documents best first: [{"index", "score", "document"}], at most `top_n`."""
