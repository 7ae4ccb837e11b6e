"""JSON Lines of texts, as the CLI's --file, corpus jobs and the converter's calibration set read them."""

import json
from typing import Iterable, Iterator, Union


def json_lines(content: Union[str, Iterable[str]], name: str) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) for each non-blank line of JSON Lines.

    content: the whole text, or an iterable of lines (a file streams). Raises ValueError naming `name` and the
    line when a line is not JSON.
    """
    lines = content.splitlines() if isinstance(content, str) else content
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} line {number} is not JSON ({e.msg}): give one JSON object per line") from None
        yield number, value


def jsonl_records(content: Union[str, Iterable[str]], name: str, field: str = "text") -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line (json_lines), each record holding a non-empty string `field`;
    ValueError naming `name` and the line otherwise."""
    for number, record in json_lines(content, name):
        if not isinstance(record, dict) or not isinstance(record.get(field), str) or not record[field]:
            raise ValueError(f"{name} line {number} has no non-empty string {field!r} field: "
                             f"write {{\"{field}\": \"...\"}}")
        yield number, record
