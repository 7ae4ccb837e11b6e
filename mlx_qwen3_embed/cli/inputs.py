"""Texts from command-line arguments, a file or stdin."""

import sys


def read_texts(arguments: list[str], file: str | None, jsonl: bool) -> list[str]:
    """Texts from the arguments, a file or stdin ('-', or a pipe when nothing else is given)."""
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


def parse_jsonl(content: str, name: str) -> list[str]:
    from ..textio import jsonl_records

    texts = [record["text"] for _, record in jsonl_records(content, name)]
    if not texts:
        raise ValueError(f"no texts in {name}: it is empty")
    return texts

