"""`mlx-embed embed`: texts from arguments, a file or stdin -> JSON lines or a .npy file; `--file F --output O`
runs a corpus job (streamed, resumable, multi-rank under mlx.launch: see corpus.py)."""

import json
import os
import signal
import sys
import time
from pathlib import Path

import typer

from .options import DEVICE_HELP, DTYPE_HELP, MODEL_HELP, default_model, friendly_errors
from .inputs import read_texts

PROGRESS_CHUNK = 256  # texts per call when a progress bar is shown; vectors do not depend on the chunking


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
    text_field: str = typer.Option("text", help="Field (jsonl) or column (parquet) holding the text."),
    id_field: str | None = typer.Option(None, help="Field or column of ids carried to the output "
                                                   "(default: the 0-based line number)."),
    precision: str = typer.Option("float32", help="float32, float16, int8, uint8, binary or ubinary "
                                                  "(sentence-transformers' semantics; --file/--output jobs)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a finished --output."),
    progress: bool | None = typer.Option(None, "--progress/--no-progress",
                                         help="Progress on stderr (default: when stderr is a terminal)."),
    # Qwen3-VL models (cli/vl_items.py): image items, and --file lines {"text", "image", "video"}
    image: list[str] | None = typer.Option(None, "--image", help="An image file to embed, one item each "
                                           "(Qwen3-VL models); repeatable."),
    text: str | None = typer.Option(None, "--text", help="The text that goes with each --image."),
    layer: int | None = typer.Option(None, help="Qwen3-VL: the hidden state to pool (default: the final one)."),
    allow_remote_images: bool = typer.Option(False, "--allow-remote-images",
                                             help="Qwen3-VL: download http(s) --image URLs (and --file ones) into "
                                                  "the image cache; without it only URLs already there are read."),
):
    """Embed texts (or, with a Qwen3-VL model, images and mixed items); print one JSON line per item:
    {"index", "embedding", "tokens"}.

    With --file F (txt, jsonl or parquet) and --output O (npy, jsonl or parquet) it is a corpus job: streamed in
    windows, written as it goes beside O, resumable by running the same command again; under `mlx.launch` the
    ranks share the work and rank 0 writes O.
    """

    from .. import load
    from .items import embed_items, fetch_remote_images, is_vl, read_items

    if image or text is not None or layer is not None or is_vl(model or default_model()):
        if prompt_name is not None or prompt is not None:
            raise ValueError("--prompt-name and --prompt are for Qwen3 text models; use --instruction")
        items = read_items(texts or [], file, image or [], text)
        fetch_remote_images(items, allow_remote_images)
        embedder = load(model or default_model(), device=device, dtype=dtype, max_length=max_length,
                        pooling=pooling, layer=layer)
        if not hasattr(embedder, "embed_prepared"):
            raise ValueError(f"--image, --text and --layer need a Qwen3-VL model; {model or default_model()} is "
                             "a Qwen3 text model (try --model Qwen/Qwen3-VL-Embedding-2B)")
        return embed_items(embedder, items, instruction=instruction, dim=dim, normalize=normalize,
                           batch_tokens=batch_tokens, output=output, format=output_format(format, output))

    if file not in (None, "-") and output is not None and not texts:
        return corpus_job(model, file, output, format, instruction, prompt_name, prompt, dim, normalize, truncate,
                          max_length, batch_tokens, pooling, device, dtype, text_field, id_field, precision,
                          overwrite, progress)
    if precision != "float32" or id_field is not None or text_field != "text" or overwrite:
        raise ValueError("--precision, --id-field, --text-field and --overwrite belong to corpus jobs: "
                         "give --file F and --output O")

    texts = read_texts(texts or [], file, jsonl)
    format = output_format(format, output)
    embedder = load(model or default_model(), device=device, dtype=dtype, max_length=max_length, pooling=pooling)
    # tokenize all first: an over-long text (--no-truncate) fails before any output is written
    sequences = embedder.tokenize(texts, instruction=instruction, prompt_name=prompt_name, prompt=prompt,
                                  truncate=truncate)
    tokens = [len(ids) for ids in sequences]
    write_in_chunks(lambda part: embedder.embed_ids(part, dim=dim, normalize=normalize, batch_tokens=batch_tokens),
                    sequences, tokens, output, format, PROGRESS_CHUNK)


def write_in_chunks(embed_chunk, inputs: list, tokens: list[int], output: str | None, format: str,
                    chunk: int) -> None:
    """Embed `inputs` `chunk` at a time (a progress bar past one chunk); stream JSON lines to stdout as chunks
    finish, or write `output` atomically at the end. Vectors do not depend on the chunking."""
    import numpy as np

    size = chunk if len(inputs) > chunk else len(inputs)
    out = sys.stdout if output is None else None
    vectors = []
    with typer.progressbar(length=len(inputs), label="embedding", file=sys.stderr,
                           hidden=len(inputs) <= chunk) as bar:
        for start in range(0, len(inputs), size):
            part = embed_chunk(inputs[start:start + size])
            if out is not None:  # stream to stdout as chunks finish
                write_jsonl(out, part, tokens[start:start + size], start)
                out.flush()
            else:
                vectors.append(part)
            bar.update(len(part))
    if out is None:
        write_output(np.concatenate(vectors), tokens, output, format)


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



def corpus_job(model, file, output, format, instruction, prompt_name, prompt, dim, normalize, truncate, max_length,
               batch_tokens, pooling, device, dtype, text_field, id_field, precision, overwrite, progress) -> None:
    """`--file F --output O`: corpus.embed_corpus, with a progress line on stderr (rank 0 only)."""
    from .. import load
    from ..corpus.job import embed_corpus
    from ..corpus.files import output_format as job_format

    if format is not None and format != job_format(output):
        raise ValueError(f"--format {format} does not match --output {output}: the suffix chooses the format")
    embedder = load(model or default_model(), device=device, dtype=dtype, max_length=max_length, pooling=pooling)
    show = sys.stderr.isatty() if progress is None else progress
    line = ProgressLine(sys.stderr) if show else None

    def stopped(signum, frame):
        # mlx.launch stops the other ranks with SIGTERM when one fails; say what happens next, then exit 1
        raise InterruptedError(f"stopped by SIGTERM (under mlx.launch: another rank failed, see above); finished "
                               f"windows are kept beside {output}: run the same command again to resume")
    previous = signal.signal(signal.SIGTERM, stopped)
    try:
        summary = embed_corpus(embedder, file, output, text_field=text_field, id_field=id_field,
                               precision=precision, overwrite=overwrite, instruction=instruction,
                               prompt_name=prompt_name, prompt=prompt, dim=dim, normalize=normalize,
                               truncate=truncate, batch_tokens=batch_tokens, progress=line)
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


class ProgressLine:
    """done/total, texts/s, tokens/s, ETA on stderr: redrawn in place on a terminal, a line every 10 s otherwise
    (a log file or a service's journal)."""

    def __init__(self, stream):
        self.stream, self.tty, self.last = stream, stream.isatty(), 0.0

    def __call__(self, p) -> None:
        now = time.monotonic()
        if now - self.last < (0.2 if self.tty else 10) and p.done < p.total:
            return
        self.last = now
        eta = time.strftime("%H:%M:%S", time.gmtime(p.eta_s)) if p.eta_s < 360000 else "?"
        text = (f"embedding {p.done}/{p.total} ({100 * p.done / p.total:.1f}%)  {p.texts_per_s:.1f} texts/s  "
                f"{p.tokens_per_s:.0f} tokens/s  ETA {eta}")
        text += f"  ({p.duplicates} duplicates reused)" if p.duplicates else ""
        self.stream.write(("\r" + text + "\033[K") if self.tty else text + "\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty and self.last:
            self.stream.write("\n")
