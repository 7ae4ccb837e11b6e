"""Inputs from command-line arguments, a file or stdin: texts, one per line, or JSON Lines whose records are texts
or (with "image", "video" or "instruction") Qwen3-VL items, as corpus jobs read them (corpus/files.py).

`embed` skips blank texts (empty or only whitespace) in every mode, as corpus jobs skip them, with a note on stderr
naming how many and where: an empty text has no meaning to embed (bench and rerank keep every line)."""

import sys

import typer


def read_texts(arguments: list[str], file: str | None, jsonl: bool, skip_blank: bool = False) -> list:
    """Texts (and, from JSON Lines, items) from the arguments, a file or stdin ('-', or a pipe when nothing else is
    given); skip_blank: without the blank ones (a note on stderr says which). Item paths are kept as written:
    relative ones are read from the current folder."""
    if arguments and file is not None:
        raise ValueError("give texts as arguments or --file, not both")
    if arguments == ["-"]:
        file = "-"
    elif arguments:
        return without_blank(list(arguments), "arguments", "argument") if skip_blank else list(arguments)
    if file is None:
        if sys.stdin is None or sys.stdin.isatty():
            raise ValueError("no texts: give them as arguments, with --file F, or pipe them on stdin")
        file = "-"
    content, name = read_content(file)
    if jsonl or name.endswith((".jsonl", ".ndjson")):
        return parse_jsonl(content, name)
    lines = content.split("\n")
    if lines and lines[-1] == "":  # the file's final newline ends the last text, it starts none
        lines.pop()
    if not lines:
        raise ValueError(f"no texts in {name}: it is empty")
    texts = [line.removesuffix("\r") for line in lines]
    return without_blank(texts, name, "line") if skip_blank else texts


def read_content(file: str) -> tuple[str, str]:
    """(the text of `file`, or of stdin for '-', its name for messages); bytes that are not UTF-8 are an error
    naming the line."""
    from ..corpus.files import decode_utf8

    if file == "-":
        stream = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else None
        if stream is None:  # a text stream without bytes underneath (a test's StringIO)
            return sys.stdin.read(), "stdin"
        return decode_utf8(stream.read(), "stdin"), "stdin"
    try:
        with open(file, "rb") as f:
            data = f.read()
    except OSError as e:
        raise FileNotFoundError(f"cannot read {file}: {e.strerror}; give a readable text file (one text per "
                                "line, or JSON Lines with a 'text' field) or '-' for stdin") from None
    return decode_utf8(data, file), file


def without_blank(texts: list[str], name: str, unit: str) -> list[str]:
    """`texts` without the blank ones; a note on stderr counts them and names the first few (1-based)."""
    blank = [number for number, text in enumerate(texts, 1) if not text.strip()]
    if not blank:
        return texts
    if len(blank) == len(texts):
        raise ValueError(f"no texts in {name}: {'every' if len(texts) > 1 else 'its one'} {unit} is blank")
    where = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
    typer.echo(f"note: skipped {len(blank)} blank {unit}{'s' if len(blank) > 1 else ''} of {name} ({unit} "
               f"{where}): blank texts are left out, and \"index\" counts the others", err=True)
    return [text for text in texts if text.strip()]


def parse_jsonl(content: str, name: str) -> list:
    from ..corpus.files import record_input
    from ..textio import json_lines

    texts = [record_input(record, "text", name, number) for number, record in json_lines(content, name)]
    if not texts:
        raise ValueError(f"no texts in {name}: it is empty")
    return texts
