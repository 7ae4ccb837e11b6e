"""`mlx-embed bench`: speed and memory of a model on this machine."""

import json

import typer

from .options import DEVICE_HELP, DTYPE_HELP, MODEL_HELP, default_model, friendly_errors
from .inputs import read_texts


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

    from .. import bench as measurement
    from .. import load

    if count < 1 or rounds < 1 or query_repeats < 1:
        raise ValueError(f"--count, --rounds and --query-repeats must be at least 1, "
                         f"got {count}, {rounds}, {query_repeats}")
    start = time.perf_counter()
    embedder = load(model or default_model(), device=device, dtype=dtype, batch_tokens=batch_tokens)
    load_seconds = time.perf_counter() - start
    if texts is None:
        corpus = measurement.sample_passages(count, count_tokens=lambda text: len(embedder.prepare_inputs([text])[0]))
    else:
        corpus = read_texts([], texts, False)
    result = {"load_seconds": load_seconds,
              **measurement.measure(embedder, corpus, rounds=rounds, query_repeats=query_repeats)}
    typer.echo(json.dumps(result, indent=2) if as_json else measurement.table(result))

