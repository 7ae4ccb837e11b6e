"""`mlx-embed serve`: the HTTP server over a batching worker per model (`--model` repeated, or `--models FILE`)."""

from pathlib import Path

import typer

from .options import DEVICE_HELP, DTYPE_HELP, MODEL_HELP, default_model, friendly_errors


@friendly_errors
def serve(
    model: list[str] = typer.Option([], "--model", "-m", help=MODEL_HELP + " Not loaded when only --reranker "
                                    "is given. Repeat it to serve several, [NAME=]MODEL each: requests pick one by "
                                    "their `model` field (the first when they name none)."),
    models: Path | None = typer.Option(None, "--models", help="A file of models to serve besides --model's, one "
                                                              "[NAME=]MODEL a line ('#' starts a comment)."),
    reranker: str | None = typer.Option(None, help="A Qwen3-Reranker hub id or folder: adds POST /v1/rerank, "
                                                   "/v2/rerank (Cohere, Jina) and /rerank (TEI)."),
    host: str = typer.Option("127.0.0.1", help="Address to bind; loopback by default, so only this machine can call."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str | None = typer.Option(None, envvar="MLX_EMBED_API_KEY",
                                       help="Require 'Authorization: Bearer <key>' (401 otherwise)."),
    served_model_name: str | None = typer.Option(None, help="Model id in responses and /v1/models (default: "
                                                            "--model's name: a hub id, or the folder's name); "
                                                            "several models: --model NAME=MODEL."),
    batch_tokens: int | None = typer.Option(None, help="Tokens packed into one model call (default: the device's)."),
    max_batch_requests: int = typer.Option(256, help="Requests packed into one model call; 1 turns batching off."),
    max_queue: int = typer.Option(1024, help="Requests waiting beyond this are answered 429."),
    max_inputs: int = typer.Option(2048, help="Inputs allowed in one request."),
    max_length: int | None = typer.Option(None, help="Tokens per input (default: the checkpoint's max_seq_length)."),
    device: str | None = typer.Option(None, help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, help=DTYPE_HELP),
    log_level: str = typer.Option("info", help="uvicorn's log level."),
    # limits against careless or hostile clients (README: "A server bad clients cannot hurt")
    max_request_bytes: int | None = typer.Option(
        None, help="Body cap, 413 past it (default: --max-inputs x max_length x 4 bytes)."),
    max_connections: int | None = typer.Option(None, help="Open connections beyond this are answered 503."),
    # the defaults live in serve/ (not imported here: it would slow every command); None = that default
    header_timeout: float | None = typer.Option(None, help="Seconds for a request's headers, 408 after [10]."),
    body_timeout: float | None = typer.Option(None, help="Seconds for a request's whole body, 408 after [30]."),
    keep_alive_timeout: float | None = typer.Option(None, help="Seconds an idle connection stays open [5]."),
    shutdown_timeout: float | None = typer.Option(
        None, help="On SIGTERM/SIGINT, seconds to answer requests in flight, then exit 0 [30]."),
    cors_origin: list[str] = typer.Option([], help="Origin browsers may call from (repeatable; none by default)."),
    public_metrics: bool = typer.Option(False, help="Serve /metrics without the API key."),
    cache_size: int = typer.Option(0, help="Keep the vectors of the last N distinct inputs (0: no cache)."),
    allow_remote_images: bool = typer.Option(
        False, "--allow-remote-images", help="Qwen3-VL: let /v1/embeddings items give http(s) image URLs, which "
                                             "the server downloads into the image cache (10 s, 20 MB caps)."),
    image_cache_bytes: int | None = typer.Option(
        None, help="With --allow-remote-images: bytes the image cache may hold; the least recently used images "
                   "are evicted past it (0: keep none) [1 GiB: 1,073,741,824]."),
    max_video_frames: int | None = typer.Option(
        None, help="Qwen3-VL: frames a request's video may have (a frame list's, a file's sample) [64]."),
    max_video_pixels: int | None = typer.Option(
        None, help="Qwen3-VL: decoded RGB pixels of all of a request's videos [64 full-HD frames: 132,710,400]."),
    video_timeout: float | None = typer.Option(
        None, help="Qwen3-VL: seconds to decode a request's videos, 400 after [30]."),
):
    """Serve OpenAI-compatible POST /v1/embeddings (+ /v1/models, /health, /metrics), batching across requests;
    with --reranker also Cohere/Jina /v1/rerank, /v2/rerank and TEI /rerank."""
    from .. import load, load_reranker
    from ..checkpoint.together import plan_together
    from ..device import memory_left, plan
    from ..serve import create_app
    from ..serve.app import model_name
    from ..serve.listen import bind, run

    # the flags' own names in their errors, and before the model loads
    check_flags(port=port, batch_tokens=batch_tokens, max_batch_requests=max_batch_requests, max_queue=max_queue,
                max_inputs=max_inputs, max_length=max_length, max_request_bytes=max_request_bytes,
                max_connections=max_connections, cache_size=cache_size, header_timeout=header_timeout,
                body_timeout=body_timeout, keep_alive_timeout=keep_alive_timeout, shutdown_timeout=shutdown_timeout,
                max_video_frames=max_video_frames, max_video_pixels=max_video_pixels, video_timeout=video_timeout,
                image_cache_bytes=image_cache_bytes)
    specs = model_specs(model, models) or ([] if reranker else [(None, default_model())])
    named = [name for name, _ in specs if name is not None]
    if served_model_name is not None and (len(specs) > 1 or named):
        raise ValueError("--served-model-name names one model: with several give each --model NAME=MODEL")
    # clients see a model's name (a hub id, or the folder's name), not its path
    names = [name or model_name(ref) for name, ref in specs]
    twice = next((name for i, name in enumerate(names) if name in names[:i]), None)
    if twice is not None:
        raise ValueError(f"two models would be served as {twice!r}: name them with --model NAME=MODEL")
    sock = bind(host, port)  # a busy port is one error line, not a model load and then uvicorn's traceback
    try:
        refs = [ref for _, ref in specs] + ([reranker] if reranker else [])
        # several models: their memory planned together before any loads, each load then plans with its share
        budgets = plan_together(refs, plan(device, dtype, None, batch_tokens)) if len(refs) > 1 else [None]
        embedders, scorer = {}, None
        for name, (_, ref), budget in zip(names, specs, budgets):
            with memory_left(budget):
                embedders[name] = load(ref, device=device, dtype=dtype, batch_tokens=batch_tokens,
                                       max_length=max_length, cache_size=cache_size)
        if reranker:
            with memory_left(budgets[-1]):
                scorer = load_reranker(reranker, device=device, dtype=dtype, batch_tokens=batch_tokens)
        application = create_app(embedders or None, reranker=scorer, api_key=api_key,
                                 served_model_name=served_model_name,
                                 batch_tokens=batch_tokens, max_batch_requests=max_batch_requests,
                                 max_queue=max_queue, max_inputs=max_inputs, max_request_bytes=max_request_bytes,
                                 cors_origins=tuple(cors_origin), public_metrics=public_metrics,
                                 allow_remote_images=allow_remote_images,
                                 **_given(body_timeout=body_timeout, max_video_frames=max_video_frames,
                                          max_video_pixels=max_video_pixels, video_timeout=video_timeout,
                                          image_cache_bytes=image_cache_bytes))
        if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
            typer.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
        address = f"[{host}]" if ":" in host else host
        served = " and ".join([ref for _, ref in specs] + ([f"reranker {reranker}"] if reranker else []))
        typer.echo(f"serving {served} on http://{address}:{sock.getsockname()[1]}", err=True)
        run(application, sock, max_connections=max_connections, log_level=log_level,
            **_given(header_timeout=header_timeout, keep_alive_timeout=keep_alive_timeout,
                     shutdown_timeout=shutdown_timeout))
    finally:
        sock.close()


def model_specs(flags: list[str], file: Path | None) -> list[tuple[str | None, str]]:
    """--model's values, then --models FILE's lines -> (served name or None, hub id or folder) each. NAME=MODEL
    names one, unless the whole of it is a folder, or NAME holds a "/" (a hub id or a path with "=" in it)."""
    given = list(flags)
    if file is not None:
        lines = [line.split("#", 1)[0].strip() for line in file.read_text().splitlines()]
        given += [line for line in lines if line]
        if not any(lines):
            raise ValueError(f"--models {file} names no model: write one [NAME=]MODEL a line")
    specs = []
    for spec in given:
        name, sep, ref = (part.strip() for part in spec.partition("="))
        if not sep or "/" in name or Path(spec).expanduser().exists():
            name, ref = None, spec
        if name == "" or not ref:
            raise ValueError(f"--model {spec!r}: give MODEL or NAME=MODEL")
        specs.append((name, ref))
    return specs


def check_flags(*, port, cache_size, image_cache_bytes=None, **flags) -> None:
    """Every numeric flag of `serve`, its error naming the flag (`--max-inputs`), not the library's parameter."""
    from ..checks import check_int

    check_int("--port", port, 0, 65535)
    check_int("--cache-size", cache_size, 0)
    if image_cache_bytes is not None:
        check_int("--image-cache-bytes", image_cache_bytes, 0)
    for key, value in flags.items():
        flag = "--" + key.replace("_", "-")
        if value is None:
            continue
        if key.endswith("_timeout"):
            if not value > 0:
                raise ValueError(f"{flag} must be a positive number of seconds, got {value!r}")
        else:
            check_int(flag, value)


def _given(**options) -> dict:
    return {k: v for k, v in options.items() if v is not None}
