"""The Ollama dialect: `POST /api/embed`, the legacy `POST /api/embeddings`, `GET /api/tags`, `GET /api/version`
and `POST /api/show`, so an app written for Ollama switches by changing its base URL.

As Ollama does, /api/embed truncates over-long input by default (truncate=true) and answers unit vectors; the cut
is not silent: the answer's X-Truncated-Inputs header names the inputs cut (serve/schema.py), and /metrics counts
them (mlx_embed_truncated_inputs_total{api="ollama"}).
"""

import time
from datetime import datetime, timezone
from typing import Any, Optional, Union

from fastapi import FastAPI, Response
from pydantic import BaseModel, StrictBool, StrictInt, StrictStr

from ..contracts import EmbeddingModel
from . import jobs, schema
from .models import Served
from .schema import Answer
from .worker import BatchWorker

EMBED_PATHS = ("/api/embed", "/api/embeddings")
PATHS = EMBED_PATHS + ("/api/tags", "/api/version", "/api/show")
# the Ollama API level these routes follow; clients compare it to decide which routes exist (/api/embed: 0.3.0+)
OLLAMA_VERSION = "0.12.0"


class OllamaEmbedRequest(BaseModel):
    """Ollama's /api/embed body; keep_alive and options mean nothing here (the model stays loaded) but are accepted."""
    model: Optional[StrictStr] = None
    input: Union[StrictStr, list[StrictStr]] = ""
    truncate: StrictBool = True
    dimensions: Optional[StrictInt] = None
    keep_alive: Any = None
    options: Optional[dict] = None


class EmbeddingsRequest(BaseModel):
    """The legacy /api/embeddings body: one `prompt`."""
    model: Optional[StrictStr] = None
    prompt: StrictStr = ""
    keep_alive: Any = None
    options: Optional[dict] = None


class ShowRequest(BaseModel):
    model: Optional[StrictStr] = None
    name: Optional[StrictStr] = None  # older clients send `name`


class EmbedResponse(Answer):
    model: str
    embeddings: list[list[float]]
    total_duration: int  # nanoseconds
    load_duration: int
    prompt_eval_count: int


class EmbeddingsResponse(Answer):
    embedding: list[float]


class Details(Answer):
    parent_model: str
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class Tag(Answer):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: Details


class Tags(Answer):
    models: list[Tag]


class Version(Answer):
    version: str


class Show(Answer):
    modified_at: str
    details: Details
    modelfile: str
    parameters: str
    template: str
    capabilities: list[str]
    model_info: dict[str, Any]  # general.architecture, <family>.embedding_length, .context_length, .block_count


def add_routes(app: FastAPI, served: Served, metrics, *, max_inputs: int, started: int,
               max_chars: Optional[int] = None):
    """Register the Ollama routes on `app` for the `served` models."""

    async def embed_texts(embedder: EmbeddingModel, worker: BatchWorker, texts: list[str], truncate: bool, dim: int,
                          normalize: bool):
        """-> (vectors, tokens, the indices of the texts cut)."""
        jobs.check_count(len(texts), max_inputs)
        sequences, cut = await jobs.prepare_off_loop(embedder, texts, truncate=truncate,
                                                         max_chars=max_chars) if texts else ([], [])
        vectors = await jobs.run(worker, sequences, dim, normalize) if sequences else []
        tokens = sum(len(s) for s in sequences)
        metrics.embedded(len(sequences), tokens)
        metrics.truncated.labels("ollama").inc(len(cut))
        return vectors, tokens, cut

    @app.post("/api/embed", responses=schema.responses("/api/embed", EmbedResponse, schema.EMBED_ERRORS, embeds=True))
    async def embed(body: OllamaEmbedRequest, response: Response):
        embedder, worker, model_id = served.pick(body.model)
        start = time.perf_counter_ns()
        dim = jobs.check_dimensions(body.dimensions, embedder.dim)
        # Ollama skips an empty string given alone (a request that only loads the model) and answers no vectors
        texts = body.input if isinstance(body.input, list) else [body.input] if body.input else []
        vectors, tokens, cut = await embed_texts(embedder, worker, texts, body.truncate, dim, normalize=True)
        response.headers.update(schema.said(model_id, embedder.pooling, dim, cut))
        return {"model": model_id, "embeddings": [v.tolist() for v in vectors],
                "total_duration": time.perf_counter_ns() - start, "load_duration": 0, "prompt_eval_count": tokens}

    @app.post("/api/embeddings", responses=schema.responses("/api/embeddings", EmbeddingsResponse, schema.EMBED_ERRORS,
                                                            embeds=True))
    async def embeddings(body: EmbeddingsRequest, response: Response):
        embedder, worker, model_id = served.pick(body.model)
        # the legacy route answers the raw pooled state, not a unit vector, as Ollama's does; an empty prompt, none
        texts = [body.prompt] if body.prompt else []
        vectors, _, cut = await embed_texts(embedder, worker, texts, True, embedder.dim, normalize=False)
        response.headers.update(schema.said(model_id, embedder.pooling, embedder.dim, cut, normalized=False))
        return {"embedding": vectors[0].tolist() if texts else []}

    @app.get("/api/tags", responses=schema.responses("/api/tags", Tags))
    async def tags():
        return {"models": [_describe(model, name, started) for name, model in served.embedders.items()]}

    @app.get("/api/version", responses=schema.responses("/api/version", Version))
    async def version():
        return {"version": OLLAMA_VERSION}

    @app.post("/api/show", responses=schema.responses("/api/show", Show, schema.BODY_ERRORS))
    async def show(body: ShowRequest):
        embedder, _, model_id = served.pick(body.model or body.name)
        model, summary = _describe(embedder, model_id, started), embedder.describe()
        family = summary["family"]
        return {"modified_at": model["modified_at"], "details": model["details"], "modelfile": "", "parameters": "",
                "template": "", "capabilities": ["embedding"],
                "model_info": {"general.architecture": family, f"{family}.embedding_length": embedder.dim,
                               f"{family}.context_length": embedder.max_length,
                               f"{family}.block_count": summary["layers"]}}


def _describe(embedder: EmbeddingModel, model_id: str, started: int) -> dict:
    """The model as Ollama's /api/tags lists it."""
    summary = embedder.describe()
    quantization = summary["quantization"] or {}
    level = f"Q{quantization['bits']}" if "bits" in quantization else str(embedder.device.dtype).split(".")[-1].upper()
    return {"name": model_id, "model": model_id,
            "modified_at": datetime.fromtimestamp(started, timezone.utc).isoformat(), "size": 0, "digest": "",
            "details": {"parent_model": "", "format": "safetensors", "family": summary["family"],
                        "families": [summary["family"]], "parameter_size": "", "quantization_level": level}}
