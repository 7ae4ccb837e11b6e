"""Corpus files in and out: txt / jsonl / parquet records streamed with their ids, and the one writer per output
format (npy / jsonl / parquet, chosen by the suffix) that corpus jobs and `mlx-embed embed -o` share: a job's
output is written from its parts without holding the corpus in memory."""

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Optional, Sequence, Union

import numpy as np

from .. import atomic
from ..textio import json_lines

INPUT_FORMATS = {".txt": "txt", ".text": "txt", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
OUTPUT_FORMATS = {".npy": "npy", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
ITEM_KEYS = ("image", "video", "instruction")  # a jsonl record holding one of these is a Qwen3-VL item
Id = Union[int, str]
Input = Union[str, dict]  # a text, or a Qwen3-VL item {"text", "image", "video", "instruction"}


def record_input(record: object, text_field: str, name: str, number: int) -> Input:
    """One JSON Lines record -> what a model embeds: its `text_field` string, or, when the record has an "image",
    "video" or "instruction", the item of those keys and its text as "text" (other fields, ids among them, stay
    out). Item paths are kept as written: a relative one is read from the current folder, as the library reads it.
    A text model refuses an item (its prepare_inputs names it); ValueError naming `name` and the line otherwise."""
    if isinstance(record, dict) and any(key in record for key in ITEM_KEYS):
        item = {key: record[key] for key in ITEM_KEYS if key in record}
        if text_field in record:
            item["text"] = record[text_field]
        return item
    if not isinstance(record, dict) or not isinstance(record.get(text_field), str) or not record[text_field]:
        raise ValueError(f"{name} line {number} has no non-empty string {text_field!r} field: "
                         f"write {{\"{text_field}\": \"...\"}}")
    return record[text_field]


@dataclass
class Scan:
    """What one pass over the input found: records to embed, empty lines skipped, the file's digest."""
    count: int
    skipped: int
    digest: str


class Source:
    """A corpus file: yields (id, input) in file order; ids from `id_field`, else the 0-based line (row) number.
    An input is a text (each txt line, each parquet `text_field` value) or, in jsonl, what record_input makes."""

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

    def records(self) -> Iterator[tuple[Id, Input]]:
        """(id, input) for each record to embed, in file order; blank lines of a txt file are skipped (counted)."""
        self.skipped = 0
        if self.format == "parquet":
            yield from self._parquet_records()
            return
        try:
            with open(self.path, encoding="utf-8", newline="") as f:
                if self.format == "jsonl":
                    for number, record in json_lines(f, str(self.path)):
                        value = record_input(record, self.text_field, str(self.path), number)
                        yield self._record_id(record, number), value
                    return
                for number, line in enumerate(f):
                    text = line.removesuffix("\n").removesuffix("\r")
                    if not text.strip():  # an empty text has no meaning to embed: skip it, keep the line ids
                        self.skipped += 1
                        continue
                    yield number, text
        except UnicodeDecodeError:
            raise ValueError(f"cannot read {self.path}: it is not UTF-8 at line {first_non_utf8_line(self.path)}; "
                             "give UTF-8 text (one text per line), JSON Lines or Parquet") from None

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


def decode_utf8(data: bytes, name: str) -> str:
    """Bytes of a text input -> str, or ValueError naming `name` and the first line that is not UTF-8."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ValueError(f"cannot read {name}: it is not UTF-8 at line {line} (byte 0x{data[e.start]:02X}); give "
                         "UTF-8 text: one text per line, or JSON Lines with a 'text' field") from None


def first_non_utf8_line(path: Path) -> int:
    """The 1-based number of the first line of `path` that is not UTF-8 (a newline byte never lies inside a
    UTF-8 character, so lines decode on their own); 0 if every line is."""
    with open(path, "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return 0


def output_format(path: Union[str, Path]) -> str:
    """An output's format from its suffix, case-insensitive: npy, jsonl or parquet."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        raise ValueError(f"the output's suffix chooses its format: it writes .npy, .jsonl or .parquet, "
                         f"got {Path(path).name!r}")
    return OUTPUT_FORMATS[suffix]


def sidecars(output: Path) -> dict[str, Path]:
    """Files a corpus job writes next to its output: the job's metadata (precision, int8 ranges; parquet keeps it
    inside) and the ids beside a .npy: x.npy -> x.npy.meta.json, x.ids.jsonl."""
    format = output_format(output)
    files = {"meta": Path(f"{output}.meta.json")} if format != "parquet" else {}
    if format == "npy":
        files["ids"] = output.with_suffix(".ids.jsonl")
    return files


def write_output(output: Path, parts: list[Path], ids: Iterator[Id], meta: dict) -> None:
    """A corpus job's parts ((n_i, width) .npy files, in order) + ids -> the output and its sidecars, each via a
    temporary file and a rename; the output itself is renamed last, so it stands only once everything is written."""
    extra = sidecars(output)
    if "meta" in extra:
        atomic.write_file(extra["meta"], lambda f: f.write(json.dumps(meta, indent=1).encode()))
    if "ids" in extra:  # a .npy holds the vectors alone
        atomic.write_file(extra["ids"], lambda f: f.writelines(json.dumps(i).encode() + b"\n" for i in ids))
    vectors = [np.load(part, mmap_mode="r") for part in parts]  # read part by part as they are written
    write_vectors(output, vectors, {"id": ids}, meta)


def write_vectors(path: Path, parts: Sequence[np.ndarray], columns: dict[str, Iterator],
                  meta: Optional[dict] = None) -> None:
    """(n_i, width) arrays, in order -> `path` in the format its suffix names, atomically (atomic.write_file).

    columns: values per row (a job's "id"; the CLI's "index" and "tokens"): a jsonl line is {first column,
    "embedding", the others}, a parquet table has the columns and "embedding" (FixedSizeList) with `meta` in its
    schema; a .npy holds the vectors alone. Only one part is in memory at a time.
    """
    format = output_format(path)
    if format == "npy":
        def write(f):
            count, (_, width), dtype = sum(map(len, parts)), parts[0].shape, parts[0].dtype
            np.lib.format.write_array_header_1_0(f, {"descr": np.lib.format.dtype_to_descr(dtype),
                                                     "fortran_order": False, "shape": (count, width)})
            for part in parts:
                f.write(np.ascontiguousarray(part).tobytes())
    elif format == "jsonl":
        def write(f):
            for part in parts:
                f.writelines(line.encode() for line in jsonl_lines(part, columns))
    else:
        def write(f):
            _write_parquet(f, parts, columns, meta)
    atomic.write_file(path, write)


def jsonl_lines(vectors: np.ndarray, columns: dict[str, Iterator]) -> Iterator[str]:
    """(n, width) vectors -> n JSON lines {first column, "embedding", the other columns}, each ending in "\\n";
    takes the next n values of each column."""
    names = list(columns)
    for vector in vectors:
        values = {name: next(columns[name]) for name in names}
        row = {names[0]: values.pop(names[0]), "embedding": vector.tolist(), **values}
        yield json.dumps(row) + "\n"


def _write_parquet(f, parts: Iterable[np.ndarray], columns: dict[str, Iterator], meta: Optional[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    for part in parts:
        width = part.shape[1]
        embedding = pa.FixedSizeListArray.from_arrays(pa.array(np.ascontiguousarray(part).reshape(-1)), width)
        values = {name: [next(column) for _ in range(len(part))] for name, column in columns.items()}
        table = pa.table({**values, "embedding": embedding})
        if writer is None:
            schema = table.schema.with_metadata({"mlx_qwen3_embed": json.dumps(meta)}) if meta else table.schema
            writer = pq.ParquetWriter(f, schema)
        writer.write_table(table.replace_schema_metadata(schema.metadata))
    writer.close()


def save_part(path: Path, array: np.ndarray) -> None:
    """One part of a job: written whole or not at all (a kill -9 leaves a temporary file, never a short part)."""
    atomic.write_file(path, lambda f: np.save(f, array))
