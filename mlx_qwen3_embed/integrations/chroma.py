"""Chroma: `MLXEmbeddingFunction`, an `EmbeddingFunction` over a local Qwen3-Embedding model (extra: `chroma`)."""

from typing import Any, Optional, Union

from chromadb.api.types import Documents, EmbeddingFunction, Embeddings

from ..contracts import EmbeddingModel
from . import embedder_of


class MLXEmbeddingFunction(EmbeddingFunction[Documents]):
    """`MLXEmbeddingFunction("Qwen/Qwen3-Embedding-0.6B")`: documents through __call__, queries through
    embed_query (with `instruction`, else the checkpoint's query prompt); (dim,) float32 arrays."""

    def __init__(self, model: Union[str, EmbeddingModel], *, instruction: Optional[str] = None, dim: Optional[int] = None,
                 **load_options):
        self.embedder = embedder_of(model, **load_options)
        self.instruction, self.dim = instruction, dim

    def __call__(self, input: Documents) -> Embeddings:
        return list(self.embedder.embed_document(list(input), dim=self.dim))

    def embed_query(self, input: Documents) -> Embeddings:
        return list(self.embedder.embed_query(list(input), self.instruction, dim=self.dim))

    @staticmethod
    def name() -> str:
        return "mlx-qwen3-embed"

    def default_space(self) -> str:
        return "cosine"  # unit vectors: cosine is the similarity the model was trained for

    def get_config(self) -> dict[str, Any]:
        # a collection stores this and rebuilds the function from it when reopened
        return {"model": self.embedder.name, "instruction": self.instruction, "dim": self.dim}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> "MLXEmbeddingFunction":
        return MLXEmbeddingFunction(config["model"], instruction=config.get("instruction"), dim=config.get("dim"))

