"""The OpenAI dialect: `POST /v1/embeddings` (also `/embeddings`) and `GET /v1/models` (every model served).

Handlers check and tokenize each request (so `usage.prompt_tokens` is real and over-long input is refused before it
queues), then hand the ids to the BatchWorker of the model the request names (models.py).
"""

import base64
import json
from typing import Any, Literal, Optional, Union

import numpy as np
from fastapi import FastAPI
from fastapi.responses import Response
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool

from ..contracts import EmbeddingModel
from . import jobs, quantized, schema
from .errors import ApiError
from .items import VideoLimits, read_media
from .models import Served
from .schema import Answer

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
EMBEDDING_PATHS = ("/v1/embeddings", "/embeddings")
# LangChain's OpenAIEmbeddings (check_embedding_ctx_length=True by default) sends tiktoken ids, not Qwen ids
FOREIGN_IDS_FIX = ("token ids from another tokenizer (LangChain's OpenAIEmbeddings sends tiktoken ids by default) "
                   "give wrong vectors: send text instead (OpenAIEmbeddings(..., check_embedding_ctx_length=False))")


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus `instruction`, `prompt_name`, `truncate`, `precision` and `ranges` (OpenAI's
    schema lacks them)."""
    input: Any = Field(..., description="a string, a list of strings, a list of token ids, or a list of such lists "
                                        "(a Qwen3-VL model: also items {text, image, video} or a list of them)",
                       json_schema_extra={"anyOf": [
                           {"type": "string"}, {"type": "array", "items": {"type": "string"}},
                           {"type": "array", "items": {"type": "integer"}},
                           {"type": "array", "items": {"type": "array", "items": {"type": "integer"}}},
                           {"type": "object"}, {"type": "array", "items": {"anyOf": [{"type": "string"},
                                                                                    {"type": "object"}]}}]})
    model: Optional[StrictStr] = None
    dimensions: Optional[StrictInt] = Field(None, description="Matryoshka size: first values, re-normalised")
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[StrictStr] = None
    instruction: Optional[StrictStr] = Field(None, description='query task: "Instruct: {instruction}\\nQuery:{text}"')
    prompt_name: Optional[StrictStr] = Field(None, description='a named prompt of the checkpoint, e.g. "query"')
    truncate: StrictBool = Field(False, description="cut over-long input to max_length instead of answering 400")
    precision: Optional[StrictStr] = Field(None, description="float32|float16|int8|uint8|binary|ubinary "
                                                             "(sentence-transformers' quantize_embeddings)")
    ranges: Optional[list[list[float]]] = Field(None, description="int8/uint8: [[min...], [max...]] per dimension")


class Embedding(Answer):
    object: Literal["embedding"]
    index: int
    embedding: Union[list[float], str] = Field(..., description="the vector; base64: its little-endian float32 "
                                                                "bytes; int8..ubinary: integers")


class Usage(Answer):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(Answer):
    """/v1/embeddings' answer (`precision` and `ranges` only when the request gave a precision)."""
    object: Literal["list"]
    data: list[Embedding]
    model: str
    usage: Usage
    precision: Optional[str] = None
    ranges: Optional[list[list[float]]] = Field(None, description="int8/uint8: the [[min...], [max...]] used")


class ModelEntry(Answer):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str
    type: Literal["embedding", "reranker"]
    dimensions: Optional[int] = None  # embedders only
    max_length: int


class ModelList(Answer):
    object: Literal["list"]
    data: list[ModelEntry]


def add_routes(app: FastAPI, served: Served, metrics, *, max_inputs: int, max_chars: Optional[int] = None,
               allow_remote_images: bool = False,
               video_limits: VideoLimits = VideoLimits()):
    """Register the OpenAI routes on `app` for the `served` models; `metrics` counts inputs and tokens.
    allow_remote_images: items may carry http(s) image URLs, downloaded by the server (serve/items.py).
    video_limits: what decoding one request's videos may cost (serve/items.py)."""

    async def embeddings(body: EmbeddingRequest):
        embedder, worker, model_id = served.pick(body.model)
        dim = jobs.check_dimensions(body.dimensions, embedder.dim)
        # tokenizing and image decoding never run on the event loop
        prepared, cut = await run_in_threadpool(_prepare, embedder, body, max_inputs, allow_remote_images,
                                                video_limits, max_chars)
        bounds = quantized.check(body.precision, body.ranges, dim, len(prepared))
        vectors = await jobs.run(worker, prepared, dim)
        tokens = sum(len(s) for s in prepared)
        metrics.embedded(len(prepared), tokens)
        metrics.truncated.labels("openai").inc(len(cut))
        codes, bounds = quantized.quantize(vectors, body.precision, bounds)
        extra = {} if body.precision is None else {"precision": body.precision}
        extra |= {} if bounds is None else {"ranges": bounds.tolist()}
        return Response(_encode(codes, body.encoding_format, model_id, tokens, extra), media_type="application/json",
                        headers=schema.said(model_id, embedder.pooling, dim, cut))

    for path in EMBEDDING_PATHS:  # a raw Response, so the 200 is only declared: no re-validating big vectors
        app.post(path, responses=schema.responses(path, EmbeddingResponse, schema.EMBED_ERRORS, embeds=True))(
            embeddings)


def add_models_route(app: FastAPI, entries: list[dict]):
    """`GET /v1/models`: every model the server holds (model_entry: the embedder and the reranker)."""
    @app.get("/v1/models", responses=schema.responses("/v1/models", ModelList))
    async def models():
        return {"object": "list", "data": entries}


def model_entry(model_id: str, started: int, max_length: int, dimensions: Optional[int] = None) -> dict:
    """One model as /v1/models lists it: an embedder with its `dimensions`, a reranker (dimensions None) typed so."""
    entry = {"id": model_id, "object": "model", "created": started, "owned_by": "mlx-embed"}
    if dimensions is None:
        return entry | {"type": "reranker", "max_length": max_length}
    return entry | {"type": "embedding", "dimensions": dimensions, "max_length": max_length}


def _prepare(model: EmbeddingModel, body: EmbeddingRequest, max_inputs: int, allow_remote: bool,
             video_limits: VideoLimits, max_chars: Optional[int] = None) -> tuple[list, list[int]]:
    """The request's `input` -> (prepared inputs (texts, token-id lists, or Qwen3-VL items), the indices of those
    cut), or an ApiError."""
    given = body.input
    if isinstance(given, (str, dict)) or (isinstance(given, list) and given and _is_ids(given)):
        data = [given]  # one string, one item, or one list of token ids, is one input
    elif isinstance(given, list):
        data = given
    else:
        raise ApiError(f"input must be a string, a list of strings or a list of token-id lists, got "
                       f"{type(given).__name__}", "input", "invalid_type")
    if not data:
        raise ApiError("input is empty: send at least one string or token list", "input", "empty_input")
    jobs.check_count(len(data), max_inputs)
    if all(_is_ids(x) for x in data):
        return _prepare_ids(model, body, data)
    bad = next((i for i, x in enumerate(data) if not isinstance(x, (str, dict))), None)
    if bad is not None:  # a wrong type, or token lists among strings
        raise ApiError(f"input[{bad}] is {json.dumps(data[bad])[:40]}: every item must be a string (or, for a "
                       "Qwen3-VL model, an item object), or every item a list of token ids (ints), not a mix",
                       "input", "invalid_type")
    empty = next((i for i, x in enumerate(data) if x == ""), None)
    if empty is not None:
        raise ApiError(f"input[{empty}] is an empty string: send text", "input", "empty_input")
    if max_chars is not None:  # before any image is read
        jobs.check_prompt(body.prompt_name, model)
        jobs.check_work(data, jobs.prompt_text(model, body.instruction, body.prompt_name), max_chars)
    budget = video_limits.budget()  # shared by all the request's videos
    inputs = [read_media(x, i, allow_remote, "input", budget) if isinstance(x, dict) else x
              for i, x in enumerate(data)]
    return jobs.prepare(model, inputs, truncate=body.truncate, instruction=body.instruction,
                        prompt_name=body.prompt_name)


def _is_ids(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _prepare_ids(model: EmbeddingModel, body: EmbeddingRequest, sequences: list[list[int]]) -> tuple[list, list[int]]:
    if body.instruction is not None or body.prompt_name is not None:
        param = "instruction" if body.instruction is not None else "prompt_name"
        raise ApiError(f"{param} applies to text input only: put the prompt's tokens in the ids yourself",
                       param, "invalid_value")
    empty = next((i for i, ids in enumerate(sequences) if not ids), None)
    if empty is not None:
        raise ApiError(f"input[{empty}] is an empty token list", "input", "empty_input")
    try:
        return jobs.fit(lambda xs, **kw: model.prepare_ids(xs, own=True, **kw), sequences, model.max_length,
                        truncate=body.truncate)
    except ApiError as e:
        if "not a token id" in e.message:
            raise ApiError(f"{e.message}; {FOREIGN_IDS_FIX}", "input", "invalid_value") from None
        if "not this model's token ids" in e.message:
            raise ApiError(f"{e.message}; {FOREIGN_IDS_FIX}", "input", "foreign_token_ids") from None
        raise


def _encode(vectors: np.ndarray, encoding_format: str, model_id: str, tokens: int, extra: dict) -> bytes:
    """(N, width) rows -> OpenAI's response JSON (+ `extra` top-level fields). base64 is always OpenAI's: the
    little-endian float32 bytes of each row, also for compact `precision` rows (their values as float32): the
    openai SDK asks for base64 by default and decodes float32, so raw int8/float16 bytes would decode to wrong
    numbers without an error."""
    if encoding_format == "base64":
        rows = [base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    else:
        rows = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    body = {"object": "list", "data": data, "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}, **extra}
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()  # allow_nan=False: no NaN leaves

