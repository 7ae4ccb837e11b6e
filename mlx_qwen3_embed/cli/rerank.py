"""`mlx-embed rerank`: one query, documents from arguments, a file or stdin -> JSON lines, best first."""

import json
import os

import typer

from .options import DEVICE_HELP, DTYPE_HELP, friendly_errors
from .inputs import read_texts

DEFAULT_RERANKER = "mlx-community/Qwen3-Reranker-0.6B-4bit"
RERANKER_ENV = "MLX_EMBED_RERANKER"


def default_reranker() -> str:
    return os.environ.get(RERANKER_ENV) or DEFAULT_RERANKER


@friendly_errors
def rerank(
    query: str | None = typer.Argument(None, help="The query the documents are ranked for (or --query)."),
    documents: list[str] | None = typer.Argument(None, help="Documents; or --file, or '-' / a pipe for stdin."),
    model: str | None = typer.Option(None, "--model", "-m", help=f"Qwen3-Reranker or Qwen3-VL-Reranker hub id or "
                                                                 f"folder (default: ${RERANKER_ENV}, else "
                                                                 f"{DEFAULT_RERANKER})."),
    file: str | None = typer.Option(None, "--file", "-f", help="Documents, one per line, or .jsonl with a 'text' "
                                                               "field (Qwen3-VL: or 'image', 'video'); '-' for "
                                                               "stdin."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Read --file / stdin as JSON Lines whatever its name."),
    query_option: str | None = typer.Option(None, "--query", help="The query's text (instead of the argument; "
                                                                  "then every argument is a document)."),
    query_image: str | None = typer.Option(None, "--query-image", help="Qwen3-VL: an image the query holds (with "
                                                                       "or without its text)."),
    image: list[str] | None = typer.Option(None, "--image", help="Qwen3-VL: an image file to rank, one document "
                                                                 "each (after the text documents)."),
    text: list[str] | None = typer.Option(None, "--text", help="A text document (repeatable), ranked with the "
                                                               "--image ones."),
    allow_remote_images: bool = typer.Option(False, "--allow-remote-images",
                                             help="Qwen3-VL: download http(s) image URLs into the image cache."),
    instruction: str | None = typer.Option(None, help="What relevance means (default: the model card's "
                                                      "instruction)."),
    top_n: int | None = typer.Option(None, "--top-n", help="Print only the best N documents."),
    max_length: int | None = typer.Option(None, help="Tokens per query-document pair (default: the model's); "
                                                     "longer documents are cut."),
    batch_tokens: int | None = typer.Option(None, help="Padded tokens per forward pass (default per device)."),
    device: str | None = typer.Option(None, help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, help=DTYPE_HELP),
):
    """Score documents against a query with Qwen3-Reranker, or images and texts with Qwen3-VL-Reranker: one
    JSON line {index, score, document} each, best first. Documents come in this order: the arguments and
    --file (or stdin), then --text, then --image."""
    from ..checks import check_top_n
    from ..reranker import load_reranker
    from .items import fetch_remote_images

    check_top_n(top_n)  # before minutes of loading
    arguments = list(documents or [])
    if query_option is not None:  # no query argument: the first argument was a document
        arguments = ([query] if query is not None else []) + arguments
        query = query_option
    if query is None and query_image is None:
        raise ValueError("no query: give it as the first argument, --query TEXT or --query-image IMAGE")
    if query_image is not None:
        query = {"image": query_image} | ({"text": query} if query is not None else {})
    flagged = list(text or []) + [{"image": path} for path in image or []]
    items = read_texts(arguments, file, jsonl) if arguments or file is not None or not flagged else []
    items += flagged
    fetch_remote_images(items + [query], allow_remote_images)
    reranker = load_reranker(model or default_reranker(), device=device, dtype=dtype, batch_tokens=batch_tokens,
                             max_length=max_length)
    for result in reranker.rerank(query, items, instruction=instruction, top_n=top_n):
        typer.echo(json.dumps(result, ensure_ascii=False))
