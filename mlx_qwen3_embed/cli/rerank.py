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
    query: str = typer.Argument(..., help="The query the documents are ranked for."),
    documents: list[str] | None = typer.Argument(None, help="Documents; or --file, or '-' / a pipe for stdin."),
    model: str | None = typer.Option(None, help=f"Qwen3-Reranker hub id or folder (default: ${RERANKER_ENV}, "
                                                f"else {DEFAULT_RERANKER})."),
    file: str | None = typer.Option(None, "--file", "-f", help="Documents, one per line, or .jsonl with a 'text' "
                                                               "field; '-' for stdin."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Read --file / stdin as JSON Lines whatever its name."),
    instruction: str | None = typer.Option(None, help="What relevance means (default: the web search "
                                                      "instruction of the model card)."),
    top_n: int | None = typer.Option(None, "--top-n", help="Print only the best N documents."),
    max_length: int | None = typer.Option(None, help="Tokens per query-document pair (default 8192); longer "
                                                     "documents are cut."),
    batch_tokens: int | None = typer.Option(None, help="Padded tokens per forward pass (default per device)."),
    device: str | None = typer.Option(None, help=DEVICE_HELP),
    dtype: str | None = typer.Option(None, help=DTYPE_HELP),
):
    """Score documents against a query with Qwen3-Reranker: one JSON line {index, score, document} each, best
    first."""
    from ..checks import check_top_n
    from ..reranker import load_reranker

    check_top_n(top_n)  # before minutes of loading
    texts = read_texts(documents or [], file, jsonl)
    reranker = load_reranker(model or default_reranker(), device=device, dtype=dtype, batch_tokens=batch_tokens,
                             max_length=max_length)
    for result in reranker.rerank(query, texts, instruction=instruction, top_n=top_n):
        typer.echo(json.dumps(result, ensure_ascii=False))
