"""LlamaIndex: `MLXEmbedding`, a `BaseEmbedding` over a local Qwen3-Embedding model (extra: `llama-index`)."""

from typing import Any, Optional, Union

from llama_index.core.base.embeddings.base import BaseEmbedding
from pydantic import PrivateAttr

from ..embedder import Embedder
from . import embedder_of


class MLXEmbedding(BaseEmbedding):
    """`MLXEmbedding(model="Qwen/Qwen3-Embedding-0.6B")`: queries get `instruction` (else the checkpoint's query
    prompt), texts are embedded as they are; vectors as lists of floats."""

    instruction: Optional[str] = None
    dim: Optional[int] = None
    _embedder: Embedder = PrivateAttr()

    def __init__(self, model: Union[str, Embedder], *, instruction: Optional[str] = None, dim: Optional[int] = None,
                 load_options: Optional[dict] = None, **kwargs: Any):
        embedder = embedder_of(model, **(load_options or {}))
        super().__init__(model_name=embedder.name, instruction=instruction, dim=dim, **kwargs)
        self._embedder = embedder

    @classmethod
    def class_name(cls) -> str:
        return "MLXEmbedding"

    def _get_query_embedding(self, query: str) -> list[float]:
        return self._embedder.embed_query(query, self.instruction, dim=self.dim).tolist()

    def _get_text_embedding(self, text: str) -> list[float]:
        return self._embedder.embed_document(text, dim=self.dim).tolist()

    def _get_text_embeddings(self, texts: list[str]) -> list[list[float]]:
        return self._embedder.embed_document(list(texts), dim=self.dim).tolist()

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return self._get_query_embedding(query)

    async def _aget_text_embedding(self, text: str) -> list[float]:
        return self._get_text_embedding(text)
