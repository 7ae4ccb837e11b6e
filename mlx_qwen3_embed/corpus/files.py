"""Corpus files in and out: txt / jsonl / parquet records streamed with their ids, and the final output written
from a job's parts (npy / jsonl / parquet) without holding the corpus in memory."""

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional, Union

import numpy as np

from ..textio import jsonl_records

INPUT_FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
OUTPUT_FORMATS = {".npy": "npy", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
Id = Union[int, str]


@dataclass
class Scan:
    """What one pass over the input found: records to embed, empty lines skipped, the file's digest."""
    count: int
    skipped: int
    digest: str


class Source:
    """A corpus file: yields (id, text) in file order; ids from `id_field`, else the 0-based line (row) number."""

    def __init__(self, path: Union[str, Path], *, text_field: str = "text", id_field: Optional[str] = None,
                 format: Optional[str] = None):
        self.path = Path(path).expanduser()
        self.format = format or INPUT_FORMATS.get(self.path.suffix.lower(), "txt")
        if self.format not in ("txt", "jsonl", "parquet"):
            raise ValueError(f"input format must be txt, jsonl or parquet, got {self.format!r}")
        if self.format == "txt" and id_field is not None:
            raise ValueError(f"--id-field needs a jsonl or parquet input, {self.path} is one text per line")
        self.text_field, self.id_field = text_field, id_field
        try:
            with open(self.path, "rb"):
                pass
        except OSError as e:
            raise FileNotFoundError(f"cannot read {path}: {e.strerror}; give a readable .txt (one text per line), "
                                    ".jsonl or .parquet file") from None
        if self.path.is_dir():
            raise IsADirectoryError(f"cannot read {path}: it is a folder; give a .txt, .jsonl or .parquet file")

    def scan(self) -> Scan:
        """Read everything once: checks every record (errors name the line), counts them, finds duplicate ids."""
        digest = hashlib.blake2b(digest_size=16)
        with open(self.path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        count, id_hashes = 0, []
        for count, (ident, _) in enumerate(self.records(), 1):
            if self.id_field is not None:  # 8 bytes per id, not the ids themselves: memory stays small
                id_hashes.append(_id_hash(ident))
        if count == 0:
            raise ValueError(f"no texts in {self.path}: it is empty")
        if id_hashes:
            self._check_unique(np.array(id_hashes, dtype=np.uint64))
        return Scan(count, self.skipped, digest.hexdigest())

    def records(self) -> Iterator[tuple[Id, str]]:
        """(id, text) for each record to embed, in file order; blank lines of a txt file are skipped (counted)."""
        self.skipped = 0
        if self.format == "parquet":
            yield from self._parquet_records()
            return
        try:
            with open(self.path, encoding="utf-8", newline="") as f:
                if self.format == "jsonl":
                    for number, record in jsonl_records(f, str(self.path), self.text_field):
                        yield self._record_id(record, number), record[self.text_field]
                    return
                for number, line in enumerate(f):
                    text = line.removesuffix("\n").removesuffix("\r")
                    if not text.strip():  # an empty text has no meaning to embed: skip it, keep the line ids
                        self.skipped += 1
                        continue
                    yield number, text
        except UnicodeDecodeError:
            raise ValueError(f"cannot read {self.path}: it is not UTF-8 text; give one text per line, JSON Lines "
                             "or Parquet") from None

    def _record_id(self, record: dict, number: int) -> Id:
        if self.id_field is None:
            return number - 1
        ident = record.get(self.id_field)
        if isinstance(ident, bool) or not isinstance(ident, (int, str)):
            raise ValueError(f"{self.path} line {number} has no string or integer {self.id_field!r} field "
                             f"(--id-field), got {ident!r}")
        return ident

    def _parquet_records(self) -> Iterator[tuple[Id, str]]:
        import pyarrow.parquet as pq

        try:
            table = pq.ParquetFile(self.path)
        except Exception as e:  # pyarrow raises its own ArrowInvalid for a file that is not Parquet
            raise ValueError(f"cannot read {self.path} as Parquet: {e}") from None
        columns = [self.text_field] + ([self.id_field] if self.id_field else [])
        names = table.schema_arrow.names
        for column in columns:
            if column not in names:
                raise ValueError(f"{self.path} has no column {column!r}: its columns are {', '.join(names)}")
        row = 0
        for batch in table.iter_batches(batch_size=4096, columns=columns):
            texts = batch.column(0).to_pylist()
            ids = batch.column(1).to_pylist() if self.id_field else range(row, row + len(texts))
            for text, ident in zip(texts, ids):
                if not isinstance(text, str) or not text:
                    raise ValueError(f"{self.path} row {row} has no non-empty string {self.text_field!r}, "
                                     f"got {text!r}")
                if isinstance(ident, bool) or not isinstance(ident, (int, str)):
                    raise ValueError(f"{self.path} row {row} has no string or integer {self.id_field!r}, "
                                     f"got {ident!r}")
                yield ident, text
                row += 1

    def _check_unique(self, hashes: np.ndarray) -> None:
        values, counts = np.unique(hashes, return_counts=True)
        repeated = set(values[counts > 1].tolist())
        if not repeated:
            return
        first = {}
        for position, (ident, _) in enumerate(self.records()):  # rare: find the names for the message
            if _id_hash(ident) in repeated:
                if ident in first:
                    raise ValueError(f"{self.path}: id {ident!r} appears twice (records {first[ident]} and "
                                     f"{position}): ids ({self.id_field!r}) must be unique")
                first[ident] = position


def _id_hash(ident: Id) -> int:
    return int.from_bytes(hashlib.blake2b(repr(ident).encode(), digest_size=8).digest(), "little")


def output_format(path: Union[str, Path]) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"a corpus job writes .npy, .jsonl or .parquet, got {Path(path).name!r}")
    return OUTPUT_FORMATS[suffix]


def sidecars(output: Path) -> dict[str, Path]:
    """Files written next to the output: the job's metadata (precision, int8 ranges; parquet keeps it inside) and
    the ids beside a .npy: x.npy -> x.npy.meta.json, x.ids.jsonl."""
    format = output_format(output)
    files = {"meta": Path(f"{output}.meta.json")} if format != "parquet" else {}
    if format == "npy":
        files["ids"] = output.with_suffix(".ids.jsonl")
    return files


def write_output(output: Path, parts: list[Path], ids: Iterator[Id], count: int, meta: dict) -> None:
    """Parts ((n_i, width) arrays, in order) + ids -> the output and its sidecars, each via a temporary file and a
    rename; the output itself is renamed last, so it stands only once everything is written."""
    format = output_format(output)
    extra = sidecars(output)
    if "meta" in extra:
        _atomic(extra["meta"], lambda f: f.write(json.dumps(meta, indent=1).encode()))
    first = np.load(parts[0], mmap_mode="r")
    width, dtype = first.shape[1], first.dtype
    if format == "npy":
        _atomic(extra["ids"], lambda f: f.writelines(json.dumps(i).encode() + b"\n" for i in ids))

        def npy(f):
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": (count, width)})
            for part in parts:
                f.write(np.ascontiguousarray(np.load(part)).tobytes())
        _atomic(output, npy)
    elif format == "jsonl":
        def jsonl(f):
            for part in parts:
                for vector in np.load(part):
                    f.write(json.dumps({"id": next(ids), "embedding": vector.tolist()}).encode() + b"\n")
        _atomic(output, jsonl)
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        def parquet(f):
            writer = None
            for part in parts:
                vectors = np.load(part)
                column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), width)
                table = pa.table({"id": [next(ids) for _ in range(len(vectors))], "embedding": column})
                if writer is None:
                    schema = table.schema.with_metadata({"mlx_qwen3_embed": json.dumps(meta)})
                    writer = pq.ParquetWriter(f, schema)
                writer.write_table(table.replace_schema_metadata(schema.metadata))
            writer.close()
        _atomic(output, parquet)


def _atomic(path: Path, write) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; a finished file gets the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_atomic(path: Path, array: np.ndarray) -> None:
    """One part of a job: written whole or not at all (a kill -9 leaves a temporary file, never a short part)."""
    _atomic(path, lambda f: np.save(f, array))
