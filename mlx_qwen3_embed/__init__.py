"""Qwen3-Embedding vectors natively in MLX: `load` a checkpoint, then `embed` texts (or, with Qwen3-VL, images
and video); `load_reranker` a Qwen3-Reranker, then `rerank` documents. What any loaded model offers is the
contract it implements (contracts.py): EmbeddingModel, RerankModel."""

from .contracts import EmbeddingModel, RerankModel
from .embedder import Embedder, load
from .reranker import Reranker, load_reranker
from .tokenizer import DEFAULT_INSTRUCTION

__version__ = "0.1.0"
__all__ = ["load", "load_reranker", "EmbeddingModel", "RerankModel", "Embedder", "Reranker", "DEFAULT_INSTRUCTION",
           "__version__"]
