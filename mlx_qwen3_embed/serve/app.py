"""The server app: create_app wires the batching worker, auth, error shapes and metrics; each API dialect adds
its routes (openai.py today).

Every client mistake is a 4xx in the API's error shape: the SDKs retry 5xx, so a 5xx means our fault only.
"""

import hmac
import time
from contextlib import asynccontextmanager
from typing import Optional

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..embedder import Embedder
from . import openai
from .errors import ApiError, error_response
from .openai import EMBEDDING_PATHS, MAX_INPUTS
from .worker import BatchWorker, Histogram

KNOWN_PATHS = EMBEDDING_PATHS + ("/v1/models", "/health", "/metrics")


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
        return error_response(request.url.path, e.status, e.message, e.param, e.code, e.kind, headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        return error_response(request.url.path, 500, f"internal error: {type(e).__name__}: {e}", code="internal_error",
                              kind="server_error")

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, e: StarletteHTTPException):
        # unknown paths (404) and wrong methods (405) also answer in OpenAI's shape
        message = f"{request.method} {request.url.path}: {e.detail}"
        return error_response(request.url.path, e.status_code, message, code=str(e.detail).lower().replace(" ", "_"),
                              headers=getattr(e, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, e: RequestValidationError):
        # FastAPI's own 422 body is not OpenAI's shape; clients parse error.message
        first = e.errors()[0] if e.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        code = {"json_invalid": "invalid_json", "missing": "missing_field"}.get(first.get("type"), "invalid_value")
        return error_response(request.url.path, 400, f"{param or 'body'}: {first['msg']}", param, code)

    openai.add_routes(app, embedder, worker, metrics, model_id=model_id, max_inputs=max_inputs, started=started)

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
                response = error_response(path, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                          code="invalid_api_key")
                await response(scope, receive, send_and_count)
            else:
                await self.app(scope, receive, send_and_count)
        finally:
            self.metrics.count(path if path in KNOWN_PATHS else "other", status)
            if path in EMBEDDING_PATHS:
                self.metrics.latency.observe(time.perf_counter() - start)


def _key_matches(header: str, api_key: str) -> bool:
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())



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
    cache = worker.embedder.cache  # load(..., cache_size=N): the vector cache's lookups
    if cache is not None:
        for kind, n, said in (("hits", cache.hits, "had"), ("misses", cache.misses, "lacked")):
            lines += [f"# HELP mlx_embed_cache_{kind}_total Inputs whose vector the cache {said}.",
                      f"# TYPE mlx_embed_cache_{kind}_total counter", f"mlx_embed_cache_{kind}_total {n}"]
    return "\n".join(lines) + "\n"
