"""What `mlx-embed embed` writes: the output's format checked before any work, vectors streamed to stdout as JSON
lines or written through corpus/files.py's one writer per format, and the progress shown on stderr."""

import sys
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import typer

from ..atomic import refuse_overwrite
from ..corpus.files import OUTPUT_FORMATS, jsonl_lines, output_format, write_vectors

FORMATS = sorted(set(OUTPUT_FORMATS.values()))


def check_output(output: Optional[str], format: Optional[str], overwrite: bool = False) -> str:
    """--output and --format -> the format (its suffix chooses it; jsonl on stdout), checked before the model
    loads: an unknown suffix, a --format the suffix contradicts, a missing folder or an existing output without
    --overwrite (atomic.refuse_overwrite, the rule corpus jobs follow too) is an error, and no file."""
    if format is not None and format not in FORMATS:
        raise ValueError(f"--format must be one of {', '.join(FORMATS)}, got {format!r}")
    if output is None:
        if format not in (None, "jsonl"):
            raise ValueError(f"--format {format} needs --output x.{format}: binary arrays do not go to the terminal")
        return "jsonl"
    chosen = output_format(output)
    if format is not None and format != chosen:
        raise ValueError(f"--format {format} does not match --output {output}: the suffix chooses the format")
    folder = Path(output).expanduser().parent
    if not folder.is_dir():  # before minutes of embedding
        raise FileNotFoundError(f"cannot write {output}: folder {folder} does not exist")
    refuse_overwrite(Path(output).expanduser(), overwrite)
    return chosen


def write_in_chunks(embed_chunk: Callable[[list], np.ndarray], inputs: list, tokens: list[int],
                    output: Optional[str], chunk: int) -> None:
    """Embed `inputs` `chunk` at a time (a progress bar past one chunk); stream JSON lines {"index", "embedding",
    "tokens"} to stdout as chunks finish, or write `output` at the end (its suffix chooses the format). Vectors do
    not depend on the chunking."""
    columns = {"index": iter(range(len(inputs))), "tokens": iter(tokens)}
    vectors = []
    with typer.progressbar(length=len(inputs), label="embedding", file=sys.stderr,
                           hidden=len(inputs) <= chunk) as bar:
        for start in range(0, len(inputs), chunk):
            part = embed_chunk(inputs[start:start + chunk])
            if output is None:  # stream to stdout as chunks finish
                sys.stdout.writelines(jsonl_lines(part, columns))
                sys.stdout.flush()
            else:
                vectors.append(part)
            bar.update(len(part))
    if output is not None:
        write_vectors(Path(output).expanduser(), vectors, columns)


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
