"""Inputs from command-line arguments, a file or stdin: texts, one per line, or JSON Lines whose records are texts
or (with "image", "video" or "instruction") Qwen3-VL items, as corpus jobs read them (corpus/files.py)."""

import sys


def read_texts(arguments: list[str], file: str | None, jsonl: bool) -> list:
    """Texts (and, from JSON Lines, items) from the arguments, a file or stdin ('-', or a pipe when nothing else is
    given). Item paths are kept as written: relative ones are read from the current folder."""
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


def parse_jsonl(content: str, name: str) -> list:
    from ..corpus.files import record_input
    from ..textio import json_lines

    texts = [record_input(record, "text", name, number) for number, record in json_lines(content, name)]
    if not texts:
        raise ValueError(f"no texts in {name}: it is empty")
    return texts

