"""The Hugging Face TEI dialect: `POST /embed` (also `POST /`, where huggingface_hub's
`InferenceClient(model=<url>).feature_extraction()` posts), `POST /tokenize` and `GET /info`.

TEI's rules, kept: truncate defaults to false and an over-long input is a 413 Validation error; normalize defaults
to true; errors are {"error", "error_type"} (serve/errors.py renders them). TEI serves one model; here an optional
`model` field (this server's extension) picks one of several (models.py), and /info lists them all in `models`.
"""

from typing import Literal, Optional, Union

from fastapi import FastAPI, Response
from pydantic import BaseModel, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from .. import __version__
from . import jobs, quantized, schema
from .errors import ApiError
from .models import Served
from .schema import Answer

EMBED_PATHS = ("/", "/embed")
PATHS = EMBED_PATHS + ("/tokenize", "/info")


class TeiEmbedRequest(BaseModel):
    """TEI's /embed body."""
    inputs: Union[StrictStr, list[StrictStr]]
    normalize: StrictBool = True
    truncate: StrictBool = False
    truncation_direction: Literal["Right", "Left", "right", "left"] = "Right"
    prompt_name: Optional[StrictStr] = None
    dimensions: Optional[StrictInt] = None
    precision: Optional[StrictStr] = None  # this server's extension (serve/quantized.py), as on /v1/embeddings
    ranges: Optional[list[list[float]]] = None
    model: Optional[StrictStr] = None  # this server's extension: one of several served models (models.py)


class TokenizeRequest(BaseModel):
    inputs: Union[StrictStr, list[StrictStr]]
    add_special_tokens: StrictBool = True
    prompt_name: Optional[StrictStr] = None
    model: Optional[StrictStr] = None


class Token(Answer):
    id: int
    text: str
    special: bool
    start: Optional[int]  # character offsets in the prompted text; None for the special token
    stop: Optional[int]


class EmbeddingModelType(Answer):
    pooling: str


class ModelType(Answer):
    embedding: EmbeddingModelType


class Info(Answer):
    """TEI's /info, plus `models`: every model served (the fields describe the default, the first)."""
    model_id: str
    model_sha: Optional[str]
    model_dtype: str
    model_type: ModelType
    max_concurrent_requests: int
    max_input_length: int
    max_batch_tokens: int
    max_batch_requests: int
    max_client_batch_size: int
    auto_truncate: bool
    tokenization_workers: int
    version: str
    models: list[str]


def add_routes(app: FastAPI, served: Served, metrics, *, max_inputs: int, max_chars: Optional[int] = None):
    """Register the TEI routes on `app` for the `served` models."""

    async def embed(body: TeiEmbedRequest, response: Response) -> list[list[Union[float, int]]]:  # ints: precisions
        embedder, worker, model_id = served.pick(body.model)
        texts = _texts(body.inputs, max_inputs)
        dim = _dimensions(body.dimensions, embedder.dim)
        bounds = quantized.check(body.precision, body.ranges, dim, len(texts))
        try:
            sequences, cut = await jobs.prepare_off_loop(embedder, texts, prompt_name=body.prompt_name,
                                                         truncate=body.truncate, max_chars=max_chars,
                                                         direction=body.truncation_direction.lower())
        except ApiError as e:
            raise ApiError(f"Input validation error: {e.message}", e.param, e.code, status=413) from None
        vectors = await jobs.run(worker, sequences, dim, body.normalize)
        metrics.embedded(len(sequences), sum(len(s) for s in sequences))
        metrics.truncated.labels("tei").inc(len(cut))
        response.headers.update(schema.said(model_id, embedder.pooling, dim, cut, body.normalize))
        return quantized.quantize(vectors, body.precision, bounds)[0].tolist()  # ints for int8..ubinary

    for path in EMBED_PATHS:
        app.post(path, responses=schema.responses(path, None, schema.EMBED_ERRORS, embeds=True))(embed)

    @app.post("/tokenize", responses=schema.responses("/tokenize", list[list[Token]], schema.BODY_ERRORS))
    async def tokenize(body: TokenizeRequest):
        embedder, _, _ = served.pick(body.model)
        texts = _texts(body.inputs, max_inputs)
        try:
            jobs.check_prompt(body.prompt_name, embedder)
        except ApiError as e:
            raise ApiError(f"Input validation error: {e.message}", code="invalid_value", status=413) from None

        def tokens() -> list:
            out = []
            for i, text in enumerate(texts):
                try:
                    out.append(embedder.tokens(text, prompt_name=body.prompt_name,
                                               add_special_tokens=body.add_special_tokens))
                except ValueError as e:  # over max_length: TEI refuses what it would not embed
                    raise ApiError(f"Input validation error: inputs[{i}]: {e}", "inputs",
                                   "context_length_exceeded", status=413) from None
            return out

        # a token a dict: never on the event loop
        return await run_in_threadpool(tokens)

    @app.get("/info", responses=schema.responses("/info", Info))
    async def info():
        embedder, worker, model_id = served.pick(None)  # TEI's fields describe the default model
        return {"model_id": model_id, "model_sha": None, "model_dtype": str(embedder.device.dtype).split(".")[-1],
                "model_type": {"embedding": {"pooling": embedder.pooling}},
                "max_concurrent_requests": worker.queue.maxsize, "max_input_length": embedder.max_length,
                "max_batch_tokens": worker.batch_tokens, "max_batch_requests": worker.max_batch_requests,
                "max_client_batch_size": max_inputs, "auto_truncate": False, "tokenization_workers": 1,
                "version": __version__, "models": served.names}


def _texts(inputs: Union[str, list[str]], max_inputs: int) -> list[str]:
    texts = [inputs] if isinstance(inputs, str) else inputs
    if not texts:
        raise ApiError("`inputs` cannot be empty", "inputs", "empty_input")
    jobs.check_count(len(texts), max_inputs, "inputs", status=413)
    return texts


def _dimensions(dimensions: Optional[int], full: int) -> int:
    try:
        return jobs.check_dimensions(dimensions, full)
    except ApiError as e:
        raise ApiError(f"Input validation error: {e.message}", e.param, e.code, status=413) from None
