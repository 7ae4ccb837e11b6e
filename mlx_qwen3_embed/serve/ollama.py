"""The Ollama dialect: `POST /api/embed`, the legacy `POST /api/embeddings`, `GET /api/tags`, `GET /api/version`
and `POST /api/show`, so an app written for Ollama switches by changing its base URL.

As Ollama does, /api/embed truncates over-long input by default (truncate=true) and answers unit vectors; every
input it cuts is counted in /metrics (mlx_embed_truncated_inputs_total{api="ollama"}), so the cut is not silent.
"""

import time
from datetime import datetime, timezone
from typing import Any, Optional, Union

from fastapi import FastAPI
from pydantic import BaseModel, StrictBool, StrictInt, StrictStr

from ..contracts import EmbeddingModel
from . import jobs
from .models import Served
from .worker import BatchWorker

EMBED_PATHS = ("/api/embed", "/api/embeddings")
PATHS = EMBED_PATHS + ("/api/tags", "/api/version", "/api/show")
# the Ollama API level these routes follow; clients compare it to decide which routes exist (/api/embed: 0.3.0+)
OLLAMA_VERSION = "0.12.0"


class EmbedRequest(BaseModel):
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


def add_routes(app: FastAPI, served: Served, metrics, *, max_inputs: int, started: int,
               max_chars: Optional[int] = None):
    """Register the Ollama routes on `app` for the `served` models."""

    async def embed_texts(embedder: EmbeddingModel, worker: BatchWorker, texts: list[str], truncate: bool, dim: int,
                          normalize: bool):
        jobs.check_count(len(texts), max_inputs)
        sequences, cut = await jobs.prepare_off_loop(embedder, texts, truncate=truncate,
                                                         max_chars=max_chars) if texts else ([], 0)
        vectors = await jobs.run(worker, sequences, dim, normalize) if sequences else []
        tokens = sum(len(s) for s in sequences)
        metrics.embedded(len(sequences), tokens)
        metrics.truncated.labels("ollama").inc(cut)
        return vectors, tokens

    @app.post("/api/embed")
    async def embed(body: EmbedRequest):
        embedder, worker, model_id = served.pick(body.model)
        start = time.perf_counter_ns()
        dim = jobs.check_dimensions(body.dimensions, embedder.dim)
        # Ollama skips an empty string given alone (a request that only loads the model) and answers no vectors
        texts = body.input if isinstance(body.input, list) else [body.input] if body.input else []
        vectors, tokens = await embed_texts(embedder, worker, texts, body.truncate, dim, normalize=True)
        return {"model": model_id, "embeddings": [v.tolist() for v in vectors],
                "total_duration": time.perf_counter_ns() - start, "load_duration": 0, "prompt_eval_count": tokens}

    @app.post("/api/embeddings")
    async def embeddings(body: EmbeddingsRequest):
        embedder, worker, _ = served.pick(body.model)
        if not body.prompt:
            return {"embedding": []}
        # the legacy route answers the raw pooled state, not a unit vector, as Ollama's does
        vectors, _ = await embed_texts(embedder, worker, [body.prompt], True, embedder.dim, normalize=False)
        return {"embedding": vectors[0].tolist()}

    @app.get("/api/tags")
    async def tags():
        return {"models": [_describe(model, name, started) for name, model in served.embedders.items()]}

    @app.get("/api/version")
    async def version():
        return {"version": OLLAMA_VERSION}

    @app.post("/api/show")
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
