"""JSON Lines of texts, as the CLI's --file and the converter's calibration set read them."""

import json
from typing import Iterator


def jsonl_records(content: str, name: str) -> Iterator[tuple[int, dict]]:
    """(line number, record) for each non-blank line, each record holding a non-empty string "text".

    Raises ValueError naming `name` and the line when a line is not a JSON object with such a field.
    """
    for number, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{name} line {number} is not JSON ({e.msg}): give one JSON object per line") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str) or not record["text"]:
            raise ValueError(f"{name} line {number} has no non-empty string 'text' field: write {{\"text\": \"...\"}}")
        yield number, record
