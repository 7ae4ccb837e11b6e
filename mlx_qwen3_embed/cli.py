"""The `mlx-embed` command: thin Typer commands over the library.

Errors the library raises for bad input (built-in exceptions) become one line on stderr and exit code 1;
set MLX_EMBED_DEBUG=1 to see the traceback instead.
"""

import functools
import json
import os
import sys
import warnings
from pathlib import Path

import typer

app = typer.Typer(help="Qwen3-Embedding vectors in MLX: embed, convert, info, serve, bench.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

DEFAULT_MODEL = "mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ"
MODEL_ENV = "MLX_EMBED_MODEL"
USER_ERRORS = (ValueError, TypeError, FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
               NotADirectoryError, UnicodeDecodeError, KeyError, OSError)


def default_model() -> str:
    return os.environ.get(MODEL_ENV) or DEFAULT_MODEL


def friendly_errors(command):
    """Turn the library's exceptions into one line on stderr and exit code 1 (traceback with MLX_EMBED_DEBUG)."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except USER_ERRORS as e:
            if os.environ.get("MLX_EMBED_DEBUG"):
                raise
            message = str(e) if not isinstance(e, KeyError) else f"missing key {e}"
            typer.echo(f"error: {message}", err=True)
            raise typer.Exit(1)
    return wrapper


@app.callback()
def main():
    """Qwen3-Embedding vectors in MLX."""
    # Linux: re-run once with an installed OpenBLAS preloaded (50x faster CPU matmuls than the wheel's BLAS);
    # only when started as the `mlx-embed` program, never inside a host process (tests, notebooks)
    from .blas import reexec_env

    # the library's warnings (e.g. the slow-BLAS one) as one line each, like the errors
    warnings.formatwarning = lambda message, *args, **kwargs: f"warning: {message}\n"
    if Path(sys.argv[0]).name == "mlx-embed":
        env = reexec_env()
        if env is not None:
            os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)


# Commands are registered below, one function each: embed, info, convert (issue 3), serve (issue 4), bench (issue 5).

MODEL_HELP = "Hub id or folder (default: $MLX_EMBED_MODEL, else mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ)."
DEVICE_HELP = "cpu or gpu (default: MLX's default device)."
DTYPE_HELP = "float32, bfloat16 or float16 (default per device)."


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
):
    """Serve OpenAI-compatible POST /v1/embeddings (+ /v1/models, /health, /metrics), batching across requests."""
    import uvicorn

    from . import load
    from .server import create_app

    name = model or default_model()
    embedder = load(name, device=device, dtype=dtype, batch_tokens=batch_tokens, max_length=max_length)
    application = create_app(embedder, api_key=api_key, served_model_name=served_model_name or name,
                             batch_tokens=batch_tokens, max_batch_requests=max_batch_requests, max_queue=max_queue,
                             max_inputs=max_inputs)
    if host not in ("127.0.0.1", "localhost", "::1") and not api_key:
        typer.echo(f"warning: serving on {host} without --api-key: anyone who can reach it can use it", err=True)
    uvicorn.run(application, host=host, port=port, log_level=log_level)


# --- embed, info, convert (issue 3) ---------------------------------------------------------------------------

PROGRESS_CHUNK = 256  # texts per call when a progress bar is shown; vectors do not depend on the chunking


@app.command()
@friendly_errors
def embed(
    texts: list[str] | None = typer.Argument(None, help="Texts to embed; '-' (or none, with a pipe) reads stdin."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    file: str | None = typer.Option(None, "--file", "-f",
                                    help="Read texts from F: one per line, or JSON Lines with a 'text' field "
                                         "(.jsonl/.ndjson, or --jsonl); '-' is stdin."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Input is JSON Lines with a 'text' field (any file, stdin)."),
    output: str | None = typer.Option(None, "--output", "-o",
                                      help="Write x.npy (float32 (N, dim)) or x.jsonl instead of stdout."),
    format: str | None = typer.Option(None, "--format",
                                      help="jsonl or npy (default: from --output's suffix, else jsonl)."),
    instruction: str | None = typer.Option(None, help="Task for queries: 'Instruct: {instruction}\\nQuery:{text}'."),
    prompt_name: str | None = typer.Option(None, help="A named prompt of the checkpoint: query or document."),
    prompt: str | None = typer.Option(None, help="A raw prefix put before every text."),
    dim: int | None = typer.Option(None, help="Matryoshka size: the first DIM values, renormalised."),
    normalize: bool = typer.Option(True, "--normalize/--no-normalize", help="L2-normalise the vectors."),
    truncate: bool = typer.Option(True, "--truncate/--no-truncate",
                                  help="Cut over-long texts to --max-length (--no-truncate: refuse them)."),
    max_length: int | None = typer.Option(None, help="Tokens per text (default: the checkpoint's max_seq_length)."),
    batch_tokens: int | None = typer.Option(None, help="Padded tokens per forward pass (default: the device's)."),
    pooling: str = typer.Option("last", help="last (the model's), mean, first or max."),
    device: str | None = typer.Option(None, help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, help=DTYPE_HELP),
):
    """Embed texts; print one JSON line per text: {"index", "embedding", "tokens"}."""
    import numpy as np

    from . import load

    texts = read_texts(texts or [], file, jsonl)
    format = output_format(format, output)
    embedder = load(model or default_model(), device=device, dtype=dtype, max_length=max_length, pooling=pooling)
    # tokenize all first: an over-long text (--no-truncate) fails before any output is written
    sequences = embedder.tokenize(texts, instruction=instruction, prompt_name=prompt_name, prompt=prompt,
                                  truncate=truncate)
    tokens = [len(ids) for ids in sequences]
    chunk = PROGRESS_CHUNK if len(texts) > PROGRESS_CHUNK else len(texts)
    out = sys.stdout if output is None else None
    vectors = []
    with typer.progressbar(length=len(texts), label="embedding", file=sys.stderr,
                           hidden=len(texts) <= PROGRESS_CHUNK) as bar:
        for start in range(0, len(texts), chunk):
            part = embedder.embed_ids(sequences[start:start + chunk], dim=dim, normalize=normalize,
                                      batch_tokens=batch_tokens)
            if out is not None:  # stream to stdout as chunks finish
                write_jsonl(out, part, tokens[start:start + chunk], start)
                out.flush()
            else:
                vectors.append(part)
            bar.update(len(part))
    if out is None:
        write_output(np.concatenate(vectors), tokens, output, format)


@app.command()
@friendly_errors
def info(
    model: str | None = typer.Argument(None, help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str | None = typer.Option(None, help="Show the plan for cpu or gpu (default: MLX's default)."),
    dtype: str | None = typer.Option(None, help="Show the plan with this compute dtype."),
):
    """Architecture, dims, quantization, size on disk, max length and the compute plan of a checkpoint."""
    from .blas import blas
    from .device import plan
    from .embedder import _default_max_length
    from .quantize import hub_summary, summary
    from .weights import has_weights, read_config, resolve

    name = model or default_model()
    folder = resolve(name, weights=False)  # a hub model's weights are not downloaded just to describe them
    disk = summary(folder) if Path(name).expanduser().is_dir() or has_weights(folder) else hub_summary(name, folder)
    args, config = read_config(folder), json.loads((folder / "config.json").read_text())
    quantization = args.quantization or {}
    compute = plan(device, dtype)
    facts = {
        "model": name, "folder": str(folder), "architecture": (config.get("architectures") or ["?"])[0],
        "model_type": config.get("model_type"), "dim": args.hidden_size, "layers": args.num_hidden_layers,
        "heads": args.num_attention_heads, "kv_heads": args.num_key_value_heads, "head_dim": args.head_dim,
        "intermediate_size": args.intermediate_size, "vocab_size": args.vocab_size,
        "max_length": _default_max_length(folder, args), "max_position_embeddings": args.max_position_embeddings,
        "parameters": disk["parameters"], "size_bytes": disk["size_bytes"],
        "bits_per_weight": round(disk["bits_per_weight"], 3),
        "quantization": {k: v for k, v in quantization.items() if not isinstance(v, (dict, bool))} or None,
        "quantization_overrides": {k: v for k, v in quantization.items() if isinstance(v, (dict, bool))},
        "compute": {"device": compute.device, "dtype": str(compute.dtype).removeprefix("mlx.core."),
                    "dequantize": compute.dequantize, "batch_tokens": compute.batch_tokens,
                    "kernels": compute.kernels.describe()},
        "blas": blas() if compute.device == "cpu" else "n/a (Metal)",
    }
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        if key == "size_bytes":
            value = f"{value / 2**20:.1f} MiB"
        elif key == "quantization_overrides":  # often dozens: count them per bits, --json lists them
            bits = [v.get("bits") if isinstance(v, dict) else "float" for v in value.values()]
            value = ", ".join(f"{bits.count(b)} modules at {b} bits" for b in sorted(set(bits), key=str)) or "none"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        typer.echo(f"{key}: {'float (not quantized)' if value is None and key == 'quantization' else value}")


@app.command()
@friendly_errors
def convert(
    src: str = typer.Argument(..., help="Original float weights: a hub id (Qwen/Qwen3-Embedding-0.6B) or a folder."),
    dst: str = typer.Argument(..., help="New folder for the mlx-community layout; must not exist."),
    bits: int | None = typer.Option(None, help="Bits per weight: 4, 6 or 8 (also 2, 3, 5); default 4."),
    group_size: int = typer.Option(64, help="Weights sharing one scale and bias: 32, 64 or 128."),
    recipe: str | None = typer.Option(None, help="Mixed precision instead of --bits: mixed_4_6 or mixed_4_8."),
    dtype: str | None = typer.Option(None, help="bfloat16, float16 or float32 for scales and norms "
                                                "(default: the source's)."),
    dwq: bool = typer.Option(False, "--dwq", help="Embedding-distilled quantization: tune scales and biases so "
                                                  "the vectors match the float model's on calibration texts."),
    calibration: str | None = typer.Option(None, help="--dwq texts: JSON Lines {text, kind: query|document} "
                                                      "(default: convert/calibration/calibration.jsonl)."),
    steps: int = typer.Option(300, help="--dwq training steps."),
    lr: float = typer.Option(1e-3, help="--dwq learning rate, in units of each layer's quantization step."),
    batch_tokens: int = typer.Option(2048, help="--dwq padded tokens per training step."),
    checkpoint: bool = typer.Option(False, help="--dwq: recompute blocks in the backward pass (less memory: 4B/8B)."),
):
    """Quantize original Qwen3-Embedding weights into a folder that mlx-lm and this package load."""
    from . import quantize

    def progress(step: int, loss: float):
        if step % 10 == 0 or step == steps:
            typer.echo(f"dwq step {step}/{steps}: loss {loss:.5f}", err=True)

    result = quantize.convert(src, dst, bits=bits, group_size=group_size, recipe=recipe, dtype=dtype, dwq=dwq,
                              calibration=calibration, steps=steps, lr=lr, batch_tokens=batch_tokens,
                              checkpoint=checkpoint, callback=progress if dwq else None)
    overrides = sum(isinstance(v, dict) for v in result["quantization"].values())
    typer.echo(f"wrote {result['path']}: {result['size_bytes'] / 2**20:.1f} MiB, "
               f"{result['bits_per_weight']:.3f} bits per weight ({result['quantization']['bits']}-bit, "
               f"group size {result['quantization']['group_size']}, {overrides} modules at other bits)")
    if "dwq" in result:
        typer.echo(result["dwq"].summary())


def read_texts(arguments: list[str], file: str | None, jsonl: bool) -> list[str]:
    """Texts from the arguments, a file or stdin ('-', or a pipe when nothing else is given)."""
    if arguments and file is not None:
        raise ValueError("give texts as arguments or --file, not both")
    if arguments == ["-"]:
        file = "-"
    elif arguments:
        return list(arguments)
    if file is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise ValueError("no texts: give them as arguments, with --file F, or pipe them on stdin")
        file = "-"
    if file == "-":
        content, name = sys.stdin.read(), "stdin"
    else:
        try:
            with open(file, encoding="utf-8") as f:
                content, name = f.read(), file
        except UnicodeDecodeError:
            raise ValueError(f"cannot read {file}: it is not UTF-8 text; give a text file, one text per line, "
                             "or JSON Lines with a 'text' field") from None
        except OSError as e:
            raise FileNotFoundError(f"cannot read {file}: {e.strerror}; give a readable text file (one text per "
                                    "line, or JSON Lines with a 'text' field) or '-' for stdin") from None
    if jsonl or name.endswith((".jsonl", ".ndjson")):
        return parse_jsonl(content, name)
    lines = content.split("\n")
    if lines and lines[-1] == "":  # the file's final newline ends the last text, it starts none
        lines.pop()
    texts = [line.removesuffix("\r") for line in lines]
    if not texts:
        raise ValueError(f"no texts in {name}: it is empty")
    return texts


def parse_jsonl(content: str, name: str) -> list[str]:
    from .textio import jsonl_records

    texts = [record["text"] for _, record in jsonl_records(content, name)]
    if not texts:
        raise ValueError(f"no texts in {name}: it is empty")
    return texts


def output_format(format: str | None, output: str | None) -> str:
    if format is None:
        format = "npy" if output and output.endswith(".npy") else "jsonl"
    if format not in ("jsonl", "npy"):
        raise ValueError(f"--format must be jsonl or npy, got {format!r}")
    if format == "npy" and output is None:
        raise ValueError("--format npy needs --output x.npy: binary arrays do not go to the terminal")
    if output is not None and not Path(output).expanduser().parent.is_dir():  # before minutes of embedding
        raise FileNotFoundError(f"cannot write {output}: folder {Path(output).expanduser().parent} does not exist")
    return format


def write_jsonl(out, vectors, tokens: list[int], start: int = 0) -> None:
    for i, (vector, n) in enumerate(zip(vectors, tokens)):
        out.write(json.dumps({"index": start + i, "embedding": vector.tolist(), "tokens": n}) + "\n")


def write_output(vectors, tokens: list[int], output: str, format: str) -> None:
    """Write to a temporary file next to `output`, then rename: a failed run leaves no half-written file."""
    import tempfile

    import numpy as np

    path = Path(output).expanduser()
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb" if format == "npy" else "w", encoding=None if format == "npy" else "utf-8") as f:
            if format == "npy":
                np.save(f, vectors.astype(np.float32))
            else:
                write_jsonl(f, vectors, tokens)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


# --- bench (issue 5) -------------------------------------------------------------------------------------------


@app.command()
@friendly_errors
def bench(
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    texts: str | None = typer.Option(None, "--texts", "-t",
                                     help="Corpus: one text per line, or .jsonl with a 'text' field "
                                          "(default: COUNT generated RAG-like passages of 32-256 tokens)."),
    count: int = typer.Option(64, help="Generated passages when no --texts is given."),
    rounds: int = typer.Option(3, help="Timed passes over the corpus; the median is reported."),
    query_repeats: int = typer.Option(3, help="Times each of the 8 single queries is timed (latency p50/p95)."),
    batch_tokens: int | None = typer.Option(None, help="Padded tokens per forward pass (default: the device's)."),
    device: str | None = typer.Option(None, help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, help=DTYPE_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
):
    """Tokens/s and texts/s over a corpus, single-query latency, load time, peak memory and % of GEMM roofline."""
    import time

    from . import bench as measurement
    from . import load

    if count < 1 or rounds < 1 or query_repeats < 1:
        raise ValueError(f"--count, --rounds and --query-repeats must be at least 1, "
                         f"got {count}, {rounds}, {query_repeats}")
    start = time.perf_counter()
    embedder = load(model or default_model(), device=device, dtype=dtype, batch_tokens=batch_tokens)
    load_seconds = time.perf_counter() - start
    if texts is None:
        corpus = measurement.sample_passages(count, count_tokens=lambda text: len(embedder.tokenize(text)[0]))
    else:
        corpus = read_texts([], texts, False)
    result = {"load_seconds": load_seconds,
              **measurement.measure(embedder, corpus, rounds=rounds, query_repeats=query_repeats)}
    typer.echo(json.dumps(result, indent=2) if as_json else measurement.table(result))
