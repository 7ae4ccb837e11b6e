"""Qwen3-Embedding vectors natively in MLX: `load` a checkpoint, then `embed` texts; `load_reranker` a
Qwen3-Reranker, then `rerank` documents."""

from .embedder import Embedder, load
from .reranker import Reranker, load_reranker
from .tokenizer import DEFAULT_INSTRUCTION

__version__ = "0.1.0"
__all__ = ["load", "Embedder", "load_reranker", "Reranker", "DEFAULT_INSTRUCTION", "__version__"]
