"""In-process adapters for the frameworks people already use; each imports its framework, so each sits behind an
optional extra: `pip install mlx-qwen3-embed[langchain]`, `[llama-index]`, `[chroma]`.

LangChain and LlamaIndex also get the reranker (MLXReranker, MLXRerank: P("yes") scores, best first).
All three embedding adapters embed queries with an instruction (the given one, else the checkpoint's "query" prompt) and documents
without, as Qwen3-Embedding was trained; vectors are the library's, unchanged.
"""

from typing import Union

from ..contracts import EmbeddingModel
from ..embedder import load


def embedder_of(model: Union[str, EmbeddingModel], **load_options) -> EmbeddingModel:
    """An EmbeddingModel given, or one loaded from a folder or hub id with `load_options` (device, dtype, ...)."""
    return model if isinstance(model, EmbeddingModel) else load(model, **load_options)

