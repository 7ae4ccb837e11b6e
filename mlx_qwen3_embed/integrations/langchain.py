"""LangChain: `MLXEmbeddings`, an `Embeddings` over a local Qwen3-Embedding model (extra: `langchain`)."""

from typing import Optional, Union

from langchain_core.embeddings import Embeddings

from ..embedder import Embedder
from . import embedder_of


class MLXEmbeddings(Embeddings):
    """`MLXEmbeddings("Qwen/Qwen3-Embedding-0.6B")`: embed_documents (N texts -> N lists of dim floats) and
    embed_query (one text -> dim floats, with `instruction` or the checkpoint's query prompt)."""

    def __init__(self, model: Union[str, Embedder], *, instruction: Optional[str] = None, dim: Optional[int] = None,
                 **load_options):
        self.embedder = embedder_of(model, **load_options)
        self.instruction, self.dim = instruction, dim

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return self.embedder.embed_document(list(texts), dim=self.dim).tolist()

    def embed_query(self, text: str) -> list[float]:
        return self.embedder.embed_query(text, self.instruction, dim=self.dim).tolist()
