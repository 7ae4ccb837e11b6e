"""LlamaIndex: `MLXEmbedding`, a `BaseEmbedding` over a local Qwen3-Embedding model, and `MLXRerank`, a node
postprocessor over a local Qwen3-Reranker (extra: `llama-index`)."""

from typing import Any, Optional, Union

from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import MetadataMode, NodeWithScore, QueryBundle
from pydantic import PrivateAttr

from ..contracts import EmbeddingModel, RerankModel
from ..reranker import load_reranker
from . import embedder_of


class MLXEmbedding(BaseEmbedding):
    """`MLXEmbedding(model="Qwen/Qwen3-Embedding-0.6B")`: queries get `instruction` (else the checkpoint's query
    prompt), texts are embedded as they are; vectors as lists of floats."""

    instruction: Optional[str] = None
    dim: Optional[int] = None
    _embedder: EmbeddingModel = PrivateAttr()

    def __init__(self, model: Union[str, EmbeddingModel], *, instruction: Optional[str] = None, dim: Optional[int] = None,
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


class MLXRerank(BaseNodePostprocessor):
    """`MLXRerank(model="Qwen/Qwen3-Reranker-0.6B", top_n=2)`: the `top_n` nodes that best answer the query, best
    first, each scored P("yes")."""

    top_n: Optional[int] = 2
    instruction: Optional[str] = None
    _reranker: RerankModel = PrivateAttr()

    def __init__(self, model: Union[str, RerankModel], **kwargs: Any):
        super().__init__(**kwargs)
        self._reranker = model if isinstance(model, RerankModel) else load_reranker(model)

    @classmethod
    def class_name(cls) -> str:
        return "MLXRerank"

    def _postprocess_nodes(self, nodes: list[NodeWithScore],
                           query_bundle: Optional[QueryBundle] = None) -> list[NodeWithScore]:
        if query_bundle is None:
            raise ValueError("MLXRerank needs the query: pass query_str or query_bundle")
        if not nodes:
            return []
        texts = [n.node.get_content(metadata_mode=MetadataMode.EMBED) for n in nodes]
        ranked = self._reranker.rerank(query_bundle.query_str, texts, instruction=self.instruction, top_n=self.top_n)
        return [NodeWithScore(node=nodes[r["index"]].node, score=r["score"]) for r in ranked]
