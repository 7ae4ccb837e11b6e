"""LangChain: `MLXEmbeddings`, an `Embeddings` over a local Qwen3-Embedding model, and `MLXReranker`, a document
compressor over a local Qwen3-Reranker (extra: `langchain`)."""

from typing import Any, Optional, Sequence, Union

from langchain_core.documents import BaseDocumentCompressor, Document
from langchain_core.embeddings import Embeddings
from pydantic import ConfigDict

from ..contracts import EmbeddingModel, RerankModel
from ..reranker import load_reranker
from . import embedder_of


class MLXEmbeddings(Embeddings):
    """`MLXEmbeddings("Qwen/Qwen3-Embedding-0.6B")`: embed_documents (N texts -> N lists of dim floats) and
    embed_query (one text -> dim floats, with `instruction` or the checkpoint's query prompt)."""

    def __init__(self, model: Union[str, EmbeddingModel], *, instruction: Optional[str] = None, dim: Optional[int] = None,
                 **load_options):
        self.embedder = embedder_of(model, **load_options)
        self.instruction, self.dim = instruction, dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed_document(list(texts), dim=self.dim).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text, self.instruction, dim=self.dim).tolist()


class MLXReranker(BaseDocumentCompressor):
    """`MLXReranker("Qwen/Qwen3-Reranker-0.6B", top_n=3)`: the `top_n` documents that best answer the query, best
    first, each with metadata["relevance_score"] = P("yes") (for a ContextualCompressionRetriever)."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    reranker: RerankModel
    top_n: Optional[int] = 3
    instruction: Optional[str] = None

    def __init__(self, model: Union[str, RerankModel, None] = None, **kwargs: Any):
        if model is not None:
            kwargs["reranker"] = model if isinstance(model, RerankModel) else load_reranker(model)
        super().__init__(**kwargs)

    def compress_documents(self, documents: Sequence[Document], query: str, callbacks: Any = None) -> list[Document]:
        if not documents:
            return []
        ranked = self.reranker.rerank(query, [d.page_content for d in documents], instruction=self.instruction,
                                      top_n=self.top_n)
        return [Document(page_content=documents[r["index"]].page_content, id=documents[r["index"]].id,
                         metadata={**documents[r["index"]].metadata, "relevance_score": r["score"]})
                for r in ranked]
