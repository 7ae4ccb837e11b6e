"""The server app: create_app wires the batching worker, auth, error shapes and metrics; each API dialect adds
its routes (openai.py; rerank.py when a reranker is served).

Every client mistake is a 4xx in the API's error shape: the SDKs retry 5xx, so a 5xx means our fault only.
"""

import asyncio
import hmac
import time
from collections.abc import Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Optional, Union

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.middleware.cors import CORSMiddleware
from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..checks import check_int
from ..contracts import EmbeddingModel, RerankModel
from ..vision import remote
from . import ollama, openai, rerank, schema, tei
from .errors import ApiError, error_response, internal_error
from .items import MAX_VIDEO_FRAMES, MAX_VIDEO_PIXELS, VIDEO_TIMEOUT, VideoLimits
from .limits import RequestLimits, Utf8JsonRoute
from .metrics import CONTENT_TYPE, Metrics
from .models import Served
from .openai import EMBEDDING_PATHS, MAX_INPUTS
from .rerank import RERANK_PATHS

KNOWN_PATHS = EMBEDDING_PATHS + RERANK_PATHS + ("/v1/models", "/health", "/metrics") + ollama.PATHS + tei.PATHS
# embedding and rerank routes: timed in the latency histogram
TIMED_PATHS = EMBEDDING_PATHS + RERANK_PATHS + ollama.EMBED_PATHS + tei.EMBED_PATHS
BYTES_PER_TOKEN = 4  # the default body cap allows max_inputs texts of max_length tokens at ~4 bytes a token
BODY_TIMEOUT = 30.0  # seconds for a whole request body to arrive


def create_app(embedder: Union[EmbeddingModel, Mapping[str, EmbeddingModel], None], *,
               reranker: Optional[RerankModel] = None,
               api_key: Optional[str] = None, served_model_name: Optional[str] = None,
               batch_tokens: Optional[int] = None, max_batch_requests: int = 256, max_queue: int = 1024,
               max_inputs: int = MAX_INPUTS, max_request_bytes: Optional[int] = None,
               body_timeout: float = BODY_TIMEOUT, cors_origins: tuple[str, ...] = (),
               public_metrics: bool = False, allow_remote_images: bool = False,
               max_video_frames: int = MAX_VIDEO_FRAMES, max_video_pixels: int = MAX_VIDEO_PIXELS,
               video_timeout: float = VIDEO_TIMEOUT, image_cache_bytes: int = remote.CACHE_BYTES) -> FastAPI:
    """The FastAPI app serving `embedder` and/or `reranker`; its BatchWorkers start and stop with the app's lifespan.

    embedder: one model, or several by the name clients call them (models.py: the first is the default, each has
    its own BatchWorker and a request's `model` field picks one).
    reranker: adds Cohere's /v1/rerank and /v2/rerank and TEI's /rerank (rerank.py); either model may be None.
    api_key: when set, every path but /health (and /metrics with public_metrics) needs
    `Authorization: Bearer <api_key>` (401 otherwise), and /health tells unauthenticated callers only its status.
    batch_tokens, max_batch_requests, max_queue: see BatchWorker. max_inputs: inputs per request.
    max_request_bytes: body cap, 413 past it (default: max_inputs x max_length x BYTES_PER_TOKEN).
    body_timeout: seconds for the whole body to arrive, 408 after. cors_origins: origins browsers may call from.
    allow_remote_images: a Qwen3-VL model's /v1/embeddings items may give http(s) image URLs, which the server
    downloads (remote.py's time, byte and redirect limits) into the image cache; off, they are a 400.
    image_cache_bytes: what that cache may hold, least recently used images evicted past it (0: keep none).
    max_video_frames, max_video_pixels, video_timeout: what decoding a request's videos may cost (items.py):
    frames a video, decoded RGB pixels and seconds for all of them; past any, a 400 naming the video.
    """
    if embedder is None and reranker is None:
        raise ValueError("give an embedder, a reranker or both to serve")
    if isinstance(embedder, Mapping):
        if len(embedder) > 1 and served_model_name is not None:
            raise ValueError("served_model_name names one model: give several models their names as the keys")
        embedders = {served_model_name or name: model for name, model in embedder.items()}
    else:
        embedders = {} if embedder is None else {served_model_name or model_name(embedder.name): embedder}
    if max_request_bytes is None and isinstance(max_inputs, int):
        longest = max(m.max_length for m in (*embedders.values(), reranker) if m is not None)
        max_request_bytes = max_inputs * longest * BYTES_PER_TOKEN
    check_int("max_inputs", max_inputs)
    check_int("max_request_bytes", max_request_bytes)
    check_int("max_video_frames", max_video_frames)
    check_int("max_video_pixels", max_video_pixels)
    check_int("image_cache_bytes", image_cache_bytes, 0)
    # stands where True would: it allows URLs and carries the cache's cap down to items.py
    remote_images = remote.RemoteImages(image_cache_bytes) if allow_remote_images else False
    for name, seconds in (("body_timeout", body_timeout), ("video_timeout", video_timeout)):
        if not seconds > 0:
            raise ValueError(f"{name} must be a positive number of seconds, got {seconds!r}")
    video_limits = VideoLimits(max_video_frames, max_video_pixels, video_timeout)
    metrics = Metrics()
    served = Served(embedders, reranker=reranker, metrics=metrics, batch_tokens=batch_tokens,
                    max_batch_requests=max_batch_requests, max_queue=max_queue)
    worker = served.worker  # the default model's, and the reranker's
    embedder = next(iter(embedders.values()), None)  # the default
    model_id = served.names[0] if embedders else served_model_name or model_name(reranker.name)
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        served.start()
        yield
        served.stop()

    # redirect_slashes=False: RequestLimits serves /path/ as /path; a redirect would drop a POST's body
    app = FastAPI(title="mlx-embed", version="0.1.0", lifespan=lifespan, redirect_slashes=False)
    app.router.route_class = Utf8JsonRoute  # before any route: every JSON body is read as UTF-8 only
    app.state.worker, app.state.metrics, app.state.embedder, app.state.served = worker, metrics, embedder, served

    @app.exception_handler(ApiError)
    async def client_error(request: Request, e: ApiError):
        if e.status == 500:  # a model failure (jobs.run): its text stays in the log
            return internal_error(request.url.path, request.method, e.__cause__ or e)
        headers = {"Retry-After": "1"} if e.status == 429 else None
        return error_response(request.url.path, e.status, e.message, e.param, e.code, e.kind, headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, e: Exception):
        return internal_error(request.url.path, request.method, e)

    @app.exception_handler(UnicodeError)
    async def unencodable_text(request: Request, e: UnicodeError):
        # a lone UTF-16 surrogate in the JSON ("\\ud800") reaches the tokenizer as text it cannot encode
        return error_response(request.url.path, 400, str(e), "input", "invalid_text")

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
        message = first["msg"]
        if code == "invalid_json":  # its loc is a character offset, not a field; ctx says what is wrong
            param = None
            message += f": {first['ctx']['error']}" if first.get("ctx", {}).get("error") else ""
        return error_response(request.url.path, 400, f"{param or 'body'}: {message}", param, code)

    if embedder is not None:
        openai.add_routes(app, served, metrics, max_inputs=max_inputs, max_chars=max_request_bytes,
                          allow_remote_images=remote_images,
                          video_limits=video_limits)
        ollama.add_routes(app, served, metrics, max_inputs=max_inputs, started=started, max_chars=max_request_bytes)
        tei.add_routes(app, served, metrics, max_inputs=max_inputs, max_chars=max_request_bytes)
    # served_model_name names the embedder when both are served; the reranker keeps its own name then
    rerank_id = model_id if embedder is None or reranker is None else model_name(reranker.name)
    listed = [openai.model_entry(name, started, model.max_length, model.dim) for name, model in embedders.items()]
    listed += [] if reranker is None else [openai.model_entry(rerank_id, started, reranker.max_length)]
    openai.add_models_route(app, listed)
    rerank.add_routes(app, reranker, worker, metrics, model_id=rerank_id, max_inputs=max_inputs,
                      max_chars=max_request_bytes,
                      allow_remote_images=remote_images, video_limits=video_limits)

    @app.get("/health", responses={200: {"model": Health}, 503: {"model": Health, "description": "the worker stopped"}})
    async def health(request: Request):
        alive = served.alive
        body = {"status": "ok" if alive else "worker stopped"}
        if not api_key or _key_matches(request.headers.get("authorization", ""), api_key):
            # the model id may be a local path: only for callers holding the key
            body |= {"model": model_id, "queue": served.queued, "max_queue": worker.queue.maxsize}
            body |= {"models": served.names} if len(served.names) > 1 else {}
        return JSONResponse(body, status_code=200 if alive else 503)

    @app.get("/metrics", response_class=Response,
             responses=schema.responses("/metrics", None, media_type=CONTENT_TYPE.split(";")[0]))
    async def prometheus():
        return Response(metrics.exposition(), media_type=CONTENT_TYPE)

    # outermost last: RequestLimits sees every request first, CORS answers preflights before the key is asked
    if cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(cors_origins), allow_methods=["GET", "POST", "HEAD"],
                           allow_headers=["Authorization", "Content-Type"], expose_headers=list(schema.EXPOSED),
                           max_age=600)
    public = ("/health", "/metrics") if public_metrics else ("/health",)
    app.add_middleware(AuthorizeAndCount, api_key=api_key, metrics=metrics, public=public)
    app.add_middleware(RequestLimits, max_request_bytes=max_request_bytes, body_timeout=body_timeout,
                       count=lambda path, status: metrics.count(path if path in KNOWN_PATHS else "other", status))
    return app


class Health(schema.Answer):
    """/health: its status for anyone; the rest only for callers holding the key (`models`: several served)."""
    status: str
    model: Optional[str] = None
    queue: Optional[int] = None
    max_queue: Optional[int] = None
    models: Optional[list[str]] = None


class AuthorizeAndCount:
    """ASGI middleware: 401 without the API key on every path but `public` and CORS preflights; counts answers
    (499: the client hung up first) and times embeddings.

    Plain ASGI rather than @app.middleware("http"), which costs a task and a stream copy per request.
    """

    def __init__(self, app, api_key: Optional[str], metrics: Metrics, public: tuple[str, ...] = ("/health",)):
        self.app, self.api_key, self.metrics, self.public = app, api_key, metrics, public

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

        headers = Headers(scope=scope)
        preflight = scope["method"] == "OPTIONS" and "access-control-request-method" in headers
        try:
            if self.api_key and path not in self.public and not preflight and not _key_matches(
                    headers.get("authorization", ""), self.api_key):
                response = error_response(path, 401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                                          code="invalid_api_key")
                await response(scope, receive, send_and_count)
            else:
                await self.app(scope, receive, send_and_count)
        except asyncio.CancelledError:
            status = 499  # nginx's "client closed request": RequestLimits cancelled it when the client left
            raise
        finally:
            self.metrics.count(path if path in KNOWN_PATHS else "other", status)
            if path in TIMED_PATHS:
                self.metrics.latency.observe(time.perf_counter() - start)


def model_name(name: str) -> str:
    """What clients see as a model's id: a hub id as it is, a folder by its name (never the server's paths)."""
    path = Path(name).expanduser()
    return path.resolve().name if path.is_dir() else name


def _key_matches(header: str, api_key: str) -> bool:
    scheme, _, token = header.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), api_key.encode())
