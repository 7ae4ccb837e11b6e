"""Corpus jobs: a file of texts (or, for Qwen3-VL, items) -> one output of vectors, streamed in bounded windows,
resumable after any kill, split across the ranks of `mlx.launch` and gathered to rank 0 through mx.distributed.
Written against the contract (contracts.EmbeddingModel): any model kind runs the same job.

The job keeps its progress in a folder beside the output (`.NAME.job/`): state.json (what the job is: input
digest, options, int8 ranges) and one .npy per finished window, each written whole or not at all. A rerun with the
same input and options continues after the last finished window; the output appears (by rename) only when done.
Identical inputs are embedded once per job: a duplicate copies its first occurrence's row (dedup.py).
"""

import errno
import json
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import numpy as np

from .. import atomic
from .. import pooling as _pooling
from .. import precision as _precision
from ..contracts import EmbeddingModel
from .dedup import Seen, digests
from .files import Source, output_format, save_part, sidecars, write_output

WINDOW_SECONDS = 10.0  # a window's target duration: a kill loses at most about this much work
FIRST_WINDOW = 256     # texts in the first window; it also fixes the int8/uint8 ranges, so not too few
MAX_WINDOW = 8192      # bounds memory: texts, ids and vectors of one window


@dataclass
class Progress:
    """What a progress callback gets after each window (rank 0 only)."""
    done: int            # records with vectors, including those of earlier runs
    total: int
    texts_per_s: float   # this run
    tokens_per_s: float
    eta_s: float
    resumed: int         # records found done when this run started
    duplicates: int = 0  # records of this run that reused an identical earlier text's vector


@dataclass
class Summary:
    output: Path
    count: int           # vectors written
    skipped: int         # blank lines of a txt input, not embedded
    resumed: int         # records done by an earlier run
    embedded: int        # records embedded by this run
    unique: int          # distinct texts this run embedded (identical texts share one forward pass)
    seconds: float
    tokens: int
    files: list[Path] = field(default_factory=list)
    duplicates: int = 0  # records of this run not embedded: an identical text earlier in the job gave its vector


def embed_corpus(embedder: EmbeddingModel, input: Union[str, Path], output: Union[str, Path], *,
                 text_field: str = "text", id_field: Optional[str] = None, precision: str = "float32",
                 overwrite: bool = False, instruction: Optional[str] = None, prompt_name: Optional[str] = None,
                 prompt: Optional[str] = None, dim: Optional[int] = None, normalize: bool = True,
                 truncate: bool = True, batch_tokens: Optional[int] = None,
                 progress: Optional[Callable[[Progress], None]] = None, window_seconds: float = WINDOW_SECONDS,
                 group=None) -> Summary:
    """Embed every record of `input` (.txt one per line, .jsonl, .parquet) into `output` (.npy, .jsonl, .parquet).

    A record is a text, or a jsonl line with "image", "video" or "instruction" is a Qwen3-VL item (its text from
    `text_field`; files.record_input): relative image and video paths are read from the current folder, as
    `embed` reads them. A text model refuses an item with an error naming its id.
    prompt: a raw prefix before every text, the text Embedder's option (prepare below).

    Output rows follow input order: (N, dim) at `precision` (binary/ubinary: (N, dim/8)); ids from `id_field`, else
    the 0-based line (row) number: a column in parquet, a field in jsonl, NAME.ids.jsonl beside a .npy. NAME.meta.json
    (or the parquet metadata) records precision and int8/uint8 ranges. Under `mlx.launch` every rank calls this with
    the same arguments and its own copy of the input; rank 0 writes. Returns a Summary on every rank.

    Identical inputs anywhere in the job are embedded once: later copies get the first one's row, read back from
    the finished parts (memory: 24 bytes per distinct input for the digest map, see dedup.py).
    """
    started = time.perf_counter()
    group = _group(group)
    rank, size = group.rank(), group.size()
    output = Path(output).expanduser()
    format = output_format(output)
    _precision.check(precision)
    dim = _pooling.check_dim(dim, embedder.dim)
    if rank == 0:
        if not output.parent.is_dir():
            raise FileNotFoundError(f"cannot write {output}: folder {output.parent} does not exist")
        atomic.refuse_overwrite(output, overwrite)
    source = Source(input, text_field=text_field, id_field=id_field)
    prompting = {"instruction": instruction, "prompt_name": prompt_name, "prompt": prompt}
    embedder.prepare_inputs([], truncate=truncate, **prompting)  # a bad prompt fails before the input is read
    scan = source.scan()
    _same_input_everywhere(group, scan)
    options = {"model": embedder.name, "dtype": str(embedder.device.dtype), **prompting, "dim": dim,
               "normalize": normalize, "truncate": truncate, "max_length": embedder.max_length,
               "pooling": embedder.pooling, "precision": precision, "text_field": text_field,
               "id_field": id_field, "format": format}
    job = Job(output, {"input": {"path": str(source.path.resolve()), "size": source.path.stat().st_size,
                                 "digest": scan.digest, "records": scan.count}, "options": options}) \
        if rank == 0 else None
    resumed = _broadcast(group, job.done() if job else 0)
    ranges = job.state.get("ranges") if job else None

    with _kept_when_disk_full(job, scan.count):  # a full disk ends the job resumable, saying so
        records = source.records()
        seen = Seen()  # every rank builds the same map: they agree on which inputs are new
        for start in range(0, resumed, MAX_WINDOW):  # finished windows: read past them, remember their texts
            seen.add_records(digests(next(records)[1] for _ in range(min(MAX_WINDOW, resumed - start))), start)
        done, tokens, unique, duplicates, window = resumed, 0, 0, 0, FIRST_WINDOW
        while done < scan.count:
            window = _broadcast(group, min(window, scan.count - done))
            ids, inputs = zip(*(next(records) for _ in range(window)))
            t0 = time.perf_counter()
            keys, first, which = np.unique(digests(inputs), return_index=True, return_inverse=True)
            earlier = seen.find(keys)  # the row where an earlier window wrote each distinct input, else -1
            new = np.flatnonzero(earlier < 0)
            # each new distinct input is embedded once; ranks take every size-th one
            mine = [first[u] for u in new[rank::size]]
            prepared = _prepare_records(embedder, [inputs[i] for i in mine], [ids[i] for i in mine], source.path,
                                        truncate=truncate, **prompting)
            vectors = embedder.embed_prepared(prepared, dim=dim, normalize=normalize, batch_tokens=batch_tokens) \
                if mine else np.zeros((0, dim), np.float32)
            vectors, window_tokens = _gather(group, vectors, sum(map(len, prepared)), len(new))
            tokens += window_tokens
            unique += len(new)
            duplicates += window - len(new)
            if rank == 0:
                ranges = job.save_window(done, vectors, new, which, earlier, precision, ranges)
            seen.add(keys[new], done + first[new])
            done += window
            elapsed = time.perf_counter() - t0
            # next window: about window_seconds of work even if all its inputs are new, at the rate just measured (a
            # window of repeats only tells how fast copying is: it may double, not jump to hours of new inputs)
            window = int(min(MAX_WINDOW, max(16, len(new) * window_seconds / max(elapsed, 1e-3)) if len(new)
                             else 2 * window))
            if rank == 0 and progress is not None:
                spent = time.perf_counter() - started
                rate = (done - resumed) / spent
                progress(Progress(done, scan.count, rate, tokens / spent, (scan.count - done) / max(rate, 1e-9),
                                  resumed, duplicates))

        files = []
        if rank == 0:
            meta = {"precision": precision, "ranges": ranges, "count": scan.count, "skipped": scan.skipped,
                    "dim": dim, "input": job.state["input"], "options": options}
            write_output(output, job.parts(), (ident for ident, _ in source.records()), meta)
            files = [output, *sidecars(output).values()]
            job.remove()
    return Summary(output, scan.count, scan.skipped, resumed, scan.count - resumed, unique,
                   time.perf_counter() - started, tokens, files, duplicates)


def _prepare_records(embedder: EmbeddingModel, inputs: list, ids: list, path: Path, **options) -> list:
    """A window's inputs -> prepared; an input the model refuses is named by its id in the input file."""
    try:
        return embedder.prepare_inputs(inputs, **options)
    except (TypeError, ValueError, OSError):
        for ident, one in zip(ids, inputs):  # rare: find the record for the message
            try:
                embedder.prepare_inputs([one], **options)
            except (TypeError, ValueError, OSError) as e:
                raise type(e)(f"{path}, id {ident!r}: {e}") from None
        raise


class Job:
    """The job's folder beside the output: state.json + parts/START-END.npy, one per finished window."""

    def __init__(self, output: Path, identity: dict):
        self.folder = output.parent / f".{output.name}.job"
        self.state_path = self.folder / "state.json"
        if self.state_path.is_file():
            self.state = json.loads(self.state_path.read_text())
            _refuse_changes(self.state, identity, self.folder)
        else:
            (self.folder / "parts").mkdir(parents=True, exist_ok=True)
            self.state = dict(identity, ranges=None)
            self._write_state()
        self.finished = self._finished()

    def _finished(self) -> list[tuple[int, int, Path]]:
        """(start, stop, path) of the finished parts, counted from 0 without a gap."""
        finished, end = [], 0
        for part in self.parts():
            start, stop = (int(n) for n in part.stem.split("-"))
            if start != end:
                break
            finished.append((start, stop, part))
            end = stop
        return finished

    def done(self) -> int:
        """Records covered by finished parts, counted from 0 without a gap."""
        return self.finished[-1][1] if self.finished else 0

    def parts(self) -> list[Path]:
        return sorted((self.folder / "parts").glob("*-*.npy"))

    def save(self, start: int, rows: np.ndarray) -> None:
        path = self.folder / "parts" / f"{start:012d}-{start + len(rows):012d}.npy"
        save_part(path, rows)
        self.finished.append((start, start + len(rows), path))

    def save_window(self, start: int, vectors: np.ndarray, new: np.ndarray, which: np.ndarray,
                    earlier: np.ndarray, precision: str, ranges: Optional[list]) -> Optional[list]:
        """One window's part: rows of new texts from `vectors` ((len(new), dim) float32, in `new`'s order), rows of
        texts an earlier window wrote copied from its part. `which` maps each row to its distinct text, `earlier`
        each distinct text to its earlier row (-1: new). Returns the int8/uint8 ranges (fixed by the first window).
        """
        position = np.full(len(earlier), -1)
        position[new] = np.arange(len(new))
        fresh = earlier[which] < 0
        floats = vectors[position[which[fresh]]]  # identical texts within the window share a vector too
        if precision in ("int8", "uint8") and ranges is None:
            ranges = self.fix_ranges(floats)  # the first window: every row is fresh
        coded = _precision.quantize(floats, precision, None if ranges is None else np.array(ranges))
        rows = np.empty((len(which), coded.shape[1]), coded.dtype)
        rows[fresh] = coded
        if not fresh.all():
            rows[~fresh] = self.rows(earlier[which[~fresh]])
        self.save(start, rows)
        return ranges

    def rows(self, indices: np.ndarray) -> np.ndarray:
        """Rows already written (input-order indices, any order) read back from the finished parts."""
        starts = np.array([start for start, _, _ in self.finished])
        part_of = np.searchsorted(starts, indices, side="right") - 1
        out = None
        for p in np.unique(part_of):
            start, _, path = self.finished[p]
            part = np.load(path, mmap_mode="r")  # only the rows asked for are read
            out = np.empty((len(indices), part.shape[1]), part.dtype) if out is None else out
            here = part_of == p
            out[here] = part[indices[here] - start]
        return out

    def fix_ranges(self, vectors: np.ndarray) -> list:
        """int8/uint8 buckets from the first window, kept in the state so every later window (and run) agrees."""
        self.state["ranges"] = _precision.ranges(vectors).tolist()
        self._write_state()
        return self.state["ranges"]

    def remove(self) -> None:
        shutil.rmtree(self.folder)

    def _write_state(self) -> None:
        atomic.write_file(self.state_path, lambda f: f.write(json.dumps(self.state, indent=1).encode()))


def _refuse_changes(state: dict, identity: dict, folder: Path) -> None:
    """A resumed job must be the same job: the same input bytes and the same options."""
    if state["input"] != identity["input"]:
        was, now = state["input"], identity["input"]
        what = "path" if was["path"] != now["path"] else "content"
        raise ValueError(f"cannot resume: the input's {what} changed since the job started ({was['path']}, "
                         f"{was['size']} bytes, then; {now['path']}, {now['size']} bytes now); run it with the "
                         f"original input, or delete {folder} (or pick another output) to start over")
    changed = [f"{k} was {state['options'].get(k)!r}, now {v!r}" for k, v in identity["options"].items()
               if state["options"].get(k) != v]
    if changed:
        raise ValueError(f"cannot resume with different options: {'; '.join(changed)}; rerun with the original "
                         f"options, or delete {folder} (or pick another output) to start over")


@contextmanager
def _kept_when_disk_full(job: Optional["Job"], total: int):
    """A full disk (atomic.write_file's ENOSPC) ends the job saying what is kept and how to resume."""
    try:
        yield
    except OSError as e:
        if job is None or e.errno != errno.ENOSPC:
            raise
        raise OSError(errno.ENOSPC, f"no space left on device writing in {job.folder.parent}: {job.done()} of "
                                    f"{total} records are done and kept in {job.folder}; free some space and run "
                                    "the same command again to resume") from None


# --- ranks: every collective runs on all ranks in the same order; with one rank they are no-ops -------------

def _group(group):
    if group is not None:
        return group
    import mlx.core as mx

    # called here, never at import: the CLI's BLAS re-exec must happen before the ring connects
    return mx.distributed.init()


@contextmanager
def _ranks_alive():
    """A collective that fails (a peer died, the network went) ends the job with what to do next."""
    try:
        yield
    except RuntimeError as e:
        raise ConnectionError(f"lost the other ranks ({e}): one stopped or failed (see its message); finished "
                              "windows are kept beside the output: run the same command again to resume") from None


def _broadcast(group, value: int) -> int:
    """Rank 0's value on every rank (the others contribute 0 to a sum)."""
    if group.size() == 1:
        return value
    import mlx.core as mx

    with _ranks_alive():
        total = mx.distributed.all_sum(mx.array([value if group.rank() == 0 else 0], mx.int32), group=group,
                                       stream=mx.cpu)
        return int(total.item())


def _same_input_everywhere(group, scan) -> None:
    if group.size() == 1:
        return
    import mlx.core as mx

    mine = np.frombuffer(bytes.fromhex(scan.digest), dtype=np.uint8).astype(np.int32)
    with _ranks_alive():
        everyone = np.array(mx.distributed.all_gather(mx.array(np.append(mine, scan.count)[None]), group=group,
                                                      stream=mx.cpu))
    for rank, row in enumerate(everyone):
        if not np.array_equal(row, everyone[0]):
            raise ValueError(f"rank {rank}'s input differs from rank 0's ({row[-1]} vs {everyone[0][-1]} records): "
                             "every machine needs the same file at the same path")


def _gather(group, vectors: np.ndarray, tokens: int, count: int) -> tuple[np.ndarray, int]:
    """Each rank's (k_r, dim) vectors of distinct texts r, r+size, ... -> all (count, dim) in order, on rank 0."""
    size = group.size()
    if size == 1:
        return vectors, tokens
    import mlx.core as mx

    per_rank = -(-count // size)
    padded = np.zeros((per_rank + 1, vectors.shape[1]), np.float32)
    padded[:len(vectors)] = vectors
    padded[-1, 0] = tokens  # a spare row carries the token count: one collective per window
    with _ranks_alive():
        everyone = np.array(mx.distributed.all_gather(mx.array(padded), group=group, stream=mx.cpu))
    everyone = everyone.reshape(size, per_rank + 1, -1)
    tokens = int(everyone[:, -1, 0].sum())
    # distinct text u went to rank u % size as its (u // size)-th row
    u = np.arange(count)
    return everyone[u % size, u // size], tokens
