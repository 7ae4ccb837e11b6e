"""`mlx-embed embed`: texts (and, for Qwen3-VL, items) from arguments, a file or stdin -> JSON lines, .npy or
.parquet; `--file F --output O` runs a corpus job (streamed, resumable, multi-rank under mlx.launch: corpus/job.py).
One path for every model kind, written against contracts.EmbeddingModel."""

import os
import signal
import sys

import typer

from .options import DEVICE_HELP, DTYPE_HELP, MODEL_HELP, default_model, friendly_errors

PROGRESS_CHUNK = 256  # inputs per call when a progress bar is shown; vectors do not depend on the chunking


@friendly_errors
def embed(
    texts: list[str] | None = typer.Argument(None, help="Texts to embed; '-' (or none, with a pipe) reads stdin."),
    model: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    file: str | None = typer.Option(None, "--file", "-f",
                                    help="Read texts from F: one per line, or JSON Lines with a 'text' field "
                                         "(.jsonl/.ndjson, or --jsonl); '-' is stdin."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Input is JSON Lines with a 'text' field (any file, stdin)."),
    output: str | None = typer.Option(None, "--output", "-o",
                                      help="Write x.npy (float32 (N, dim)), x.jsonl or x.parquet instead of "
                                           "stdout: the suffix chooses the format."),
    format: str | None = typer.Option(None, "--format",
                                      help="jsonl, npy or parquet: must match --output's suffix (default: that "
                                           "suffix's, else jsonl on stdout)."),
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
    text_field: str = typer.Option("text", help="Field (jsonl) or column (parquet) holding the text."),
    id_field: str | None = typer.Option(None, help="Field or column of ids carried to the output "
                                                   "(default: the 0-based line number)."),
    precision: str = typer.Option("float32", help="float32, float16, int8, uint8, binary or ubinary "
                                                  "(sentence-transformers' semantics; --file/--output jobs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --output (refused without it)."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                         help="Progress on stderr (default: when stderr is a terminal)."),
    # Qwen3-VL models (cli/items.py): image items, and --file lines {"text", "image", "video"}
    image: list[str] | None = typer.Option(None, "--image", help="An image file to embed, one item each "
                                           "(Qwen3-VL models); repeatable."),
    text: str | None = typer.Option(None, "--text", help="The text that goes with each --image."),
    layer: int | None = typer.Option(None, help="Qwen3-VL: the hidden state to pool (default: the final one)."),
    allow_remote_images: bool = typer.Option(False, "--allow-remote-images",
                                             help="Qwen3-VL: download http(s) --image URLs (and --file ones) into "
                                                  "the image cache; without it only URLs already there are read."),
):
    """Embed texts (or, with a Qwen3-VL model, images and mixed items); print one JSON line per item:
    {"index", "embedding", "tokens"}. A JSON Lines record with "image", "video" or "instruction" is an item;
    relative image and video paths are read from the current folder.

    With --file F (txt, jsonl or parquet) and --output O (npy, jsonl or parquet) it is a corpus job: streamed in
    windows, written as it goes beside O, resumable by running the same command again; under `mlx.launch` the
    ranks share the work and rank 0 writes O.
    """
    from .. import load
    from .inputs import read_texts
    from .items import fetch_remote_images, flag_items
    from .output import check_output, write_in_chunks

    check_output(output, format, overwrite)  # before the model loads: a bad --output costs nothing
    loading = dict(device=device, dtype=dtype, max_length=max_length, pooling=pooling, layer=layer)
    if file not in (None, "-") and output is not None and not texts and not image:
        return corpus_job(model, file, output, loading, instruction, prompt_name, prompt, dim, normalize, truncate,
                          batch_tokens, text_field, id_field, precision, overwrite, progress)
    if precision != "float32" or id_field is not None or text_field != "text":
        raise ValueError("--precision, --id-field and --text-field belong to corpus jobs: "
                         "give --file F and --output O")
    if overwrite and output is None:
        raise ValueError("--overwrite replaces an existing --output: give --output O")

    inputs = flag_items(image or [], text)
    if texts or file is not None or not inputs:
        inputs += read_texts(texts or [], file, jsonl, skip_blank=True)
    fetch_remote_images(inputs, allow_remote_images)
    embedder = load(model or default_model(), **loading)
    # prepare all first: an over-long text (--no-truncate) or a bad image fails before any output is written
    prepared = embedder.prepare_inputs(inputs, instruction=instruction, prompt_name=prompt_name, prompt=prompt,
                                       truncate=truncate)
    write_in_chunks(lambda part: embedder.embed_prepared(part, dim=dim, normalize=normalize,
                                                        batch_tokens=batch_tokens),
                    prepared, [len(p) for p in prepared], output, PROGRESS_CHUNK)


def corpus_job(model, file, output, loading, instruction, prompt_name, prompt, dim, normalize, truncate,
               batch_tokens, text_field, id_field, precision, overwrite, progress) -> None:
    """`--file F --output O`: corpus.embed_corpus, with a progress line on stderr (rank 0 only)."""
    from .. import load
    from ..corpus.job import embed_corpus
    from .output import ProgressLine

    embedder = load(model or default_model(), **loading)
    show = sys.stderr.isatty() if progress is None else progress
    line = ProgressLine(sys.stderr) if show else None
    last = []  # the latest Progress (rank 0): what a stop keeps

    def track(p):
        last[:] = [p]
        if line is not None:
            line(p)

    def kept() -> str:
        done = f"{last[0].done} of {last[0].total} records are done; " if last else ""
        return f"{done}finished windows are kept beside {output}: run the same command again to resume"

    def stopped(signum, frame):
        # mlx.launch stops the other ranks with SIGTERM when one fails; say what happens next, then exit 1
        raise InterruptedError(f"stopped by SIGTERM (under mlx.launch: another rank failed, see above); {kept()}")
    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        summary = embed_corpus(embedder, file, output, text_field=text_field, id_field=id_field,
                               precision=precision, overwrite=overwrite, instruction=instruction,
                               prompt_name=prompt_name, prompt=prompt, dim=dim, normalize=normalize,
                               truncate=truncate, batch_tokens=batch_tokens, progress=track)
    except KeyboardInterrupt:  # Ctrl-C: the same news as SIGTERM, and the shell's 130
        if line is not None:
            line.close()
        typer.echo(f"stopped by Ctrl-C; {kept()}", err=True)
        raise typer.Exit(130) from None
    finally:
        # under mlx.launch a SIGTERM may come while this rank exits, having said why (it saw the peer go): it must
        # not raise again inside MLX's atexit cleanup (a traceback after the message)
        signal.signal(signal.SIGTERM, signal.SIG_IGN if "MLX_RANK" in os.environ else previous)
    if line is not None:
        line.close()
    if summary.files:  # rank 0 wrote them
        notes = [f"{summary.skipped} blank lines skipped"] if summary.skipped else []
        notes += [f"{summary.resumed} done by an earlier run"] if summary.resumed else []
        notes += [f"{summary.duplicates} duplicate texts reused an earlier vector"] if summary.duplicates else []
        typer.echo(f"wrote {summary.count} vectors to {', '.join(map(str, summary.files))} in "
                   f"{summary.seconds:.1f} s" + (f" ({'; '.join(notes)})" if notes else ""), err=True)
