"""OpenAI-compatible embedding server: `POST /v1/embeddings`, `GET /v1/models`, `/health`, `/metrics`.

Handlers check and tokenize each request (so `usage.prompt_tokens` is real and over-long input is refused before it
queues), then hand the ids to the one BatchWorker, which packs concurrent requests into shared forward passes.
Every client mistake is a 4xx in OpenAI's error shape: the openai SDK retries 5xx, so a 5xx means our fault only.
"""

import asyncio
import base64
import hmac
import json
import time
from contextlib import asynccontextmanager
from typing import Any, Literal, Optional

import numpy as np
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, Field, StrictBool, StrictInt, StrictStr
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from .embedder import Embedder
from .worker import BatchWorker, Histogram, Job, QueueFull

MAX_INPUTS = 2048  # OpenAI's limit on inputs per request
EMBEDDING_PATHS = ("/v1/embeddings", "/embeddings")
KNOWN_PATHS = EMBEDDING_PATHS + ("/v1/models", "/health", "/metrics")
INLINE_CHARS = 20_000  # requests with more characters than this are tokenized in a worker thread


class EmbeddingRequest(BaseModel):
    """OpenAI's embeddings request, plus `instruction`, `prompt_name` and `truncate` (OpenAI's schema lacks them)."""
    input: Any = Field(..., description="a string, a list of strings, a list of token ids, or a list of such lists")
    model: Optional[StrictStr] = None
    dimensions: Optional[StrictInt] = Field(None, description="Matryoshka size: first values, re-normalised")
    encoding_format: Literal["float", "base64"] = "float"
    user: Optional[StrictStr] = None
    instruction: Optional[StrictStr] = Field(None, description='query task: "Instruct: {instruction}\\nQuery:{text}"')
    prompt_name: Optional[StrictStr] = Field(None, description='a named prompt of the checkpoint, e.g. "query"')
    truncate: StrictBool = Field(False, description="cut over-long input to max_length instead of answering 400")


class ApiError(Exception):
    """An answer other than 200: `status` with OpenAI's error body (4xx for the client's mistakes)."""

    def __init__(self, message: str, param: Optional[str] = None, code: Optional[str] = None, status: int = 400,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.message, self.param, self.code, self.status, self.kind = message, param, code, status, kind


def error_response(status: int, message: str, param: Optional[str] = None, code: Optional[str] = None,
                   kind: str = "invalid_request_error", headers: Optional[dict] = None) -> JSONResponse:
    """OpenAI's error body: {"error": {"message", "type", "param", "code"}}."""
    body = {"error": {"message": message, "type": kind, "param": param, "code": code}}
    return JSONResponse(body, status_code=status, headers=headers)


class Metrics:
    """Counters the /metrics endpoint prints in Prometheus' text format."""

    def __init__(self):
        self.requests: dict[tuple[str, int], int] = {}
        self.inputs = 0
        self.prompt_tokens = 0
        self.latency = Histogram((0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60))

    def count(self, path: str, status: int):
        self.requests[(path, status)] = self.requests.get((path, status), 0) + 1


def create_app(embedder: Embedder, *, api_key: Optional[str] = None, served_model_name: Optional[str] = None,
               batch_tokens: Optional[int] = None, max_batch_requests: int = 256, max_queue: int = 1024,
               max_inputs: int = MAX_INPUTS) -> FastAPI:
    """The FastAPI app serving `embedder`; its BatchWorker starts and stops with the app's lifespan.

    api_key: when set, /v1/* and /embeddings need `Authorization: Bearer <api_key>` (401 otherwise).
    batch_tokens, max_batch_requests, max_queue: see BatchWorker. max_inputs: inputs per request.
    """
    if isinstance(max_inputs, bool) or not isinstance(max_inputs, int) or max_inputs < 1:
        raise ValueError(f"max_inputs must be a positive int, got {max_inputs!r}")
    worker = BatchWorker(embedder, batch_tokens=batch_tokens, max_batch_requests=max_batch_requests,
                         max_queue=max_queue)
    metrics = Metrics()
    model_id = served_model_name or embedder.name
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        worker.start()
        yield
        worker.stop()

    app = FastAPI(title="mlx-embed", version="0.1.0", lifespan=lifespan)
    app.state.worker, app.state.metrics, app.state.embedder = worker, metrics, embedder

    @app.exception_handler(ApiError)
    async def client_error(request: Request, e: ApiError):
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return error_response(e.status, e.message, e.param, e.code, e.kind, headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        return error_response(500, f"internal error: {type(e).__name__}: {e}", code="internal_error",
                              kind="server_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        # unknown paths (404) and wrong methods (405) also answer in OpenAI's shape
        message = f"{request.method} {request.url.path}: {e.detail}"
        return error_response(e.status_code, message, code=str(e.detail).lower().replace(" ", "_"),
                              headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        # FastAPI's own 422 body is not OpenAI's shape; clients parse error.message
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        code = {"json_invalid": "invalid_json", "missing": "missing_field"}.get(first.get("type"), "invalid_value")
        return error_response(400, f"{param or 'body'}: {first['msg']}", param, code)

    async def embeddings(body: EmbeddingRequest):
        dim = _check_dimensions(body.dimensions, embedder.dim)
        # a few short texts tokenize in microseconds; only a big request is worth a thread hop off the event loop
        if _size(body.input) > INLINE_CHARS:
            sequences = await run_in_threadpool(_tokenize, embedder, body, max_inputs)
        else:
            sequences = _tokenize(embedder, body, max_inputs)
        try:
            future = worker.submit(Job(sequences, dim))
        except QueueFull as e:
            raise ApiError(f"server busy: {e}; retry shortly", code="queue_full", status=429,
                           kind="rate_limit_error") from None
        try:
            vectors = await asyncio.wrap_future(future)
        except Exception as e:  # the model's fault, not the client's
            raise ApiError(f"embedding failed: {e}", code="internal_error", status=500, kind="server_error") from e
        tokens = sum(len(s) for s in sequences)
        metrics.inputs += len(sequences)
        metrics.prompt_tokens += tokens
        return Response(_encode(vectors, body.encoding_format, model_id, tokens), media_type="application/json")

    for path in EMBEDDING_PATHS:
        app.post(path)(embeddings)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_id, "object": "model", "created": started,
                                            "owned_by": "mlx-embed", "dimensions": embedder.dim,
                                            "max_length": embedder.max_length}]}

    @app.get("/health")
    async def health():
        alive = worker.alive
        body = {"status": "ok" if alive else "worker stopped", "model": model_id,
                "queue": worker.queue.qsize(), "max_queue": worker.queue.maxsize}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics")
    async def prometheus():
        return PlainTextResponse(_prometheus(metrics, worker), media_type="text/plain; version=0.0.4")

    app.add_middleware(AuthorizeAndCount, api_key=api_key, metrics=metrics)
    return app


class AuthorizeAndCount:
    """ASGI middleware: 401 without the API key on /v1/* and /embeddings; counts answers and times embeddings.

    Plain ASGI rather than @app.middleware("http"), which costs a task and a stream copy per request.
    """

    def __init__(self, app, api_key: Optional[str], metrics: Metrics):
        self.app, self.api_key, self.metrics = app, api_key, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start = time.perf_counter()
        path = scope["path"]
        status = 500

        async def send_and_count(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.api_key and (path.startswith("/v1/") or path in EMBEDDING_PATHS) and not _key_matches(
                    Headers(scope=scope).get("authorization", ""), self.api_key):
                response = error_response(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                          code="invalid_api_key")
                await response(scope, receive, send_and_count)
            else:
                await self.app(scope, receive, send_and_count)
        finally:
            self.metrics.count(path if path in KNOWN_PATHS else "other", status)
            if path in EMBEDDING_PATHS:
                self.metrics.latency.observe(time.perf_counter() - start)


def _size(given: Any) -> int:
    """Characters (or token ids) in `input`, to decide where to tokenize; a wrong shape counts as small."""
    if isinstance(given, str):
        return len(given)
    if isinstance(given, list):
        return sum(len(x) if isinstance(x, (str, list)) else 1 for x in given)
    return 0


def _key_matches(header: str, api_key: str) -> bool:
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())


def _check_dimensions(dimensions: Optional[int], full: int) -> int:
    if dimensions is None:
        return full
    if not 1 <= dimensions <= full:
        raise ApiError(f"dimensions must be between 1 and {full}, got {dimensions}", "dimensions",
                       "invalid_value")
    return dimensions


def _tokenize(embedder: Embedder, body: EmbeddingRequest, max_inputs: int) -> list[list[int]]:
    """The request's `input` -> finished token ids (each ends in one <|endoftext|>), or an ApiError."""
    given = body.input
    if isinstance(given, str) or (isinstance(given, list) and given and _is_ids(given)):
        data = [given]  # one string, or one list of token ids, is one input
    elif isinstance(given, list):
        data = given
    else:
        raise ApiError(f"input must be a string, a list of strings or a list of token-id lists, got "
                       f"{type(given).__name__}", "input", "invalid_type")
    if not data:
        raise ApiError("input is empty: send at least one string or token list", "input", "empty_input")
    if len(data) > max_inputs:
        raise ApiError(f"input has {len(data)} items, more than the limit of {max_inputs}: split the request",
                       "input", "too_many_inputs")
    if all(isinstance(x, str) for x in data):
        return _tokenize_texts(embedder, body, data)
    if all(_is_ids(x) for x in data):
        return _finish_ids(embedder, body, data)
    # the first item unlike the first one: a wrong type, or a string among token lists (or the reverse)
    kind = isinstance(data[0], str)
    bad = next(i for i, x in enumerate(data) if not (isinstance(x, str) or _is_ids(x)) or isinstance(x, str) != kind)
    raise ApiError(f"input[{bad}] is {json.dumps(data[bad])[:40]}: every item must be a string, or every item "
                   "a list of token ids (ints), not a mix", "input", "invalid_type")


def _is_ids(x: Any) -> bool:
    return isinstance(x, list) and all(isinstance(t, int) and not isinstance(t, bool) for t in x)


def _tokenize_texts(embedder: Embedder, body: EmbeddingRequest, texts: list[str]) -> list[list[int]]:
    empty = next((i for i, t in enumerate(texts) if not t), None)
    if empty is not None:
        raise ApiError(f"input[{empty}] is an empty string: send text", "input", "empty_input")
    if body.instruction is not None and body.prompt_name is not None:
        raise ApiError("give instruction or prompt_name, not both", "prompt_name", "invalid_value")
    if body.prompt_name is not None and body.prompt_name not in embedder.prompts:
        raise ApiError(f"unknown prompt_name {body.prompt_name!r}: this model has "
                       f"{', '.join(sorted(embedder.prompts))}", "prompt_name", "invalid_value")
    try:
        return embedder.tokenize(texts, instruction=body.instruction, prompt_name=body.prompt_name,
                                 truncate=body.truncate)
    except ValueError as e:  # the only ValueError left is an over-long input without truncate
        raise _too_long(e) from None


def _finish_ids(embedder: Embedder, body: EmbeddingRequest, sequences: list[list[int]]) -> list[list[int]]:
    if body.instruction is not None or body.prompt_name is not None:
        param = "instruction" if body.instruction is not None else "prompt_name"
        raise ApiError(f"{param} applies to text input only: put the prompt's tokens in the ids yourself",
                       param, "invalid_value")
    vocab = embedder.args.vocab_size
    finished = []
    for i, ids in enumerate(sequences):
        if not ids:
            raise ApiError(f"input[{i}] is an empty token list", "input", "empty_input")
        bad = next((t for t in ids if not 0 <= t < vocab), None)
        if bad is not None:
            raise ApiError(f"input[{i}] holds {bad}, not a token id in 0..{vocab - 1}", "input", "invalid_value")
        try:
            finished.append(embedder.tokenizer.finish(ids, embedder.max_length, body.truncate, i))
        except ValueError as e:
            raise _too_long(e) from None
    return finished


def _too_long(e: ValueError) -> ApiError:
    return ApiError(f"{e} (send \"truncate\": true to cut it)", "input", "context_length_exceeded")


def _encode(vectors: np.ndarray, encoding_format: str, model_id: str, tokens: int) -> bytes:
    """(N, dim) float32 -> OpenAI's response JSON; base64 is the little-endian float32 bytes of each row."""
    if encoding_format == "base64":
        rows = [base64.b64encode(np.ascontiguousarray(v, dtype="<f4").tobytes()).decode() for v in vectors]
    else:
        rows = vectors.tolist()
    data = [{"object": "embedding", "index": i, "embedding": row} for i, row in enumerate(rows)]
    body = {"object": "list", "data": data, "model": model_id,
            "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}
    return json.dumps(body, allow_nan=False, separators=(",", ":")).encode()  # allow_nan=False: no NaN leaves


def _prometheus(metrics: Metrics, worker: BatchWorker) -> str:
    lines = ["# HELP mlx_embed_requests_total HTTP requests by path and status code.",
             "# TYPE mlx_embed_requests_total counter"]
    for (path, code), n in sorted(metrics.requests.items()):
        lines.append(f'mlx_embed_requests_total{{path="{path}",code="{code}"}} {n}')
    lines += ["# HELP mlx_embed_inputs_total Inputs (texts or token lists) embedded.",
              "# TYPE mlx_embed_inputs_total counter", f"mlx_embed_inputs_total {metrics.inputs}",
              "# HELP mlx_embed_prompt_tokens_total Tokens embedded (usage.prompt_tokens summed).",
              "# TYPE mlx_embed_prompt_tokens_total counter", f"mlx_embed_prompt_tokens_total {metrics.prompt_tokens}",
              "# HELP mlx_embed_batches_total Packed model calls made by the worker.",
              "# TYPE mlx_embed_batches_total counter", f"mlx_embed_batches_total {worker.batches}",
              "# HELP mlx_embed_queue_depth Requests waiting for the worker.",
              "# TYPE mlx_embed_queue_depth gauge", f"mlx_embed_queue_depth {worker.queue.qsize()}"]
    for name, help_text, histogram in (
            ("mlx_embed_batch_requests", "Requests packed into one model call.", worker.batch_requests),
            ("mlx_embed_batch_inputs", "Inputs packed into one model call.", worker.batch_inputs),
            ("mlx_embed_batch_tokens", "Tokens packed into one model call.", worker.batch_tokens_used),
            ("mlx_embed_request_duration_seconds", "Embedding request latency, arrival to answer.",
             metrics.latency)):
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} histogram", *histogram.lines(name)]
    return "\n".join(lines) + "\n"
