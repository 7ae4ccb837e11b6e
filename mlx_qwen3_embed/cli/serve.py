"""`mlx-embed serve`: the HTTP server over one batching worker."""

import typer

from . import DEVICE_HELP, DTYPE_HELP, MODEL_HELP, app, default_model, friendly_errors


@app.command()
@friendly_errors
def serve(
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    host: str = typer.Option("127.0.0.1", help="Address to bind; loopback by default, so only this machine can call."),
    port: int = typer.Option(8000, help="TCP port."),
    api_key: str | None = typer.Option(None, envvar="MLX_EMBED_API_KEY",
                                       help="Require 'Authorization: Bearer <key>' (401 otherwise)."),
    served_model_name: str | None = typer.Option(None, help="Model id in responses and /v1/models (default: --model)."),
    batch_tokens: int | None = typer.Option(None, help="Tokens packed into one model call (default: the device's)."),
    max_batch_requests: int = typer.Option(256, help="Requests packed into one model call; 1 turns batching off."),
    max_queue: int = typer.Option(1024, help="Requests waiting beyond this are answered 429."),
    max_inputs: int = typer.Option(2048, help="Inputs allowed in one request."),
    max_length: int | None = typer.Option(None, help="Tokens per input (default: the checkpoint's max_seq_length)."),
    device: str | None = typer.Option(None, help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, help=DTYPE_HELP),
    log_level: str = typer.Option("info", help="uvicorn's log level."),
    cache_size: int = typer.Option(0, help="Keep the vectors of the last N distinct inputs (0: no cache)."),
):
    """Serve OpenAI-compatible POST /v1/embeddings (+ /v1/models, /health, /metrics), batching across requests."""
    import uvicorn

    from .. import load
    from ..serve import create_app

    name = model or default_model()
    embedder = load(name, device=device, dtype=dtype, batch_tokens=batch_tokens, max_length=max_length,
                    cache_size=cache_size)
    application = create_app(embedder, api_key=api_key, served_model_name=served_model_name or name,
                             batch_tokens=batch_tokens, max_batch_requests=max_batch_requests, max_queue=max_queue,
                             max_inputs=max_inputs)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
    uvicorn.run(application, host=host, port=port, log_level=log_level)
