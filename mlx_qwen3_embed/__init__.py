"""Qwen3-Embedding vectors natively in MLX: `load` a checkpoint, then `embed` texts."""

from .embedder import Embedder, load
from .tokenizer import DEFAULT_INSTRUCTION

__version__ = "0.1.0"
__all__ = ["load", "Embedder", "DEFAULT_INSTRUCTION", "__version__"]
