"""llm (Simon Willison's CLI): Qwen3-Embedding models for `llm embed`, `llm embed-multi` and `llm similar`, through
llm's `register_embedding_models` hook (extra: `llm`; the entry point is in pyproject.toml).

llm hands an embedding model the texts and nothing else (no options, no query/document flag), so the prompt is in
the model id: `mlx-embed:NAME` embeds documents as they are, `mlx-embed:NAME:query` embeds queries with the
instruction (the registered one, else the checkpoint's query prompt). NAME is one of KNOWN (hub ids) or a model the
user registered with `llm mlx-embed register FOLDER_OR_HUB_ID --name NAME [--dim N] [--instruction TASK]`, kept in
llm.user_dir()/mlx-embed.json. `llm similar` embeds its query with the collection's (document) model, so
`llm mlx-embed query -m ID TEXT` prints the query as the model reads it, prompt included, for `llm similar -c`.
Registering reads no weights: a model loads at its first embedding, once per process for both ids.
"""

import json
from pathlib import Path
from typing import Iterable, Iterator, Optional

import click
import llm

from .. import atomic
from ..checkpoint import decoder_args, open_checkpoint
from ..contracts import EmbeddingModel
from ..pooling import check_dim
from ..tokenizer import query_prompt, read_prompts
from . import embedder_of

PREFIX = "mlx-embed:"
KNOWN = ["Qwen/Qwen3-Embedding-0.6B", "Qwen/Qwen3-Embedding-4B", "Qwen/Qwen3-Embedding-8B",
         "mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ", "mlx-community/Qwen3-Embedding-4B-4bit-DWQ",
         "mlx-community/Qwen3-Embedding-8B-4bit-DWQ"]
LIBRARY_ERRORS = (ValueError, TypeError, OSError, UnicodeError)  # what load and embed raise for bad input

_loaded: dict[str, EmbeddingModel] = {}  # model (folder or hub id) -> its embedder, shared by the two ids


class MLXEmbedding(llm.EmbeddingModel):
    """One llm model id over a Qwen3-Embedding checkpoint: documents, or queries (`query=True`), at `dim`."""

    def __init__(self, name: str, model: str, *, query: bool = False, dim: Optional[int] = None,
                 instruction: Optional[str] = None):
        self.model_id = PREFIX + name + (":query" if query else "")
        self.model, self.query, self.dim, self.instruction = model, query, dim, instruction

    def embed_batch(self, items: Iterable[str], *, key: Optional[str] = None) -> Iterator[list[float]]:
        texts = list(items)  # a generator: llm closes what embed_batch returns
        if not texts:
            return
        try:
            embedder = self.embedder()
            if self.query:
                vectors = embedder.embed_query(texts, self.instruction, dim=self.dim)
            else:
                vectors = embedder.embed_document(texts, dim=self.dim)
        except LIBRARY_ERRORS as e:  # llm's commands show a ClickException as one line and exit 1
            raise click.ClickException(f"{self.model_id}: {e}") from e
        yield from vectors.tolist()

    def embedder(self) -> EmbeddingModel:
        if self.model not in _loaded:
            _loaded[self.model] = embedder_of(self.model)
        return _loaded[self.model]


def registry_path() -> Path:
    return llm.user_dir() / "mlx-embed.json"


def registered() -> dict[str, dict]:
    """{NAME: {"model": folder or hub id, "dim": int | None, "instruction": str | None}} the user registered."""
    path = registry_path()
    return json.loads(path.read_text()) if path.is_file() else {}


def save(models: dict[str, dict]) -> None:
    text = json.dumps(models, indent=2, ensure_ascii=False).encode()
    atomic.write_file(registry_path(), lambda f: f.write(text))


def entries() -> dict[str, dict]:
    """Every NAME this plugin serves: the KNOWN hub ids, then the registered models (which may redefine one)."""
    return {name: {"model": name} for name in KNOWN} | registered()


@llm.hookimpl
def register_embedding_models(register):
    for name, entry in entries().items():
        options = dict(dim=entry.get("dim"), instruction=entry.get("instruction"))
        register(MLXEmbedding(name, entry["model"], **options))
        register(MLXEmbedding(name, entry["model"], query=True, **options))


def check_model(model: str, dim: Optional[int]) -> str:
    """`model` as it will be stored (a folder made absolute), after checking it is an embedding checkpoint whose
    size allows `dim`: config and tokenizer files only, no weights."""
    checkpoint = open_checkpoint(model, weights=False)
    if checkpoint.kind in ("reranker", "qwen3_vl_reranker"):
        raise ValueError(f"{model} holds a reranker, not an embedding model: give a Qwen3-Embedding folder or hub id")
    check_dim(dim, decoder_args(checkpoint).hidden_size)
    return str(Path(model).expanduser().resolve()) if Path(model).expanduser().is_dir() else model


def model_entry(model_id: str) -> dict:
    """The registration behind a `mlx-embed:NAME` or `mlx-embed:NAME:query` id, else a ClickException."""
    name = model_id.removeprefix(PREFIX).removesuffix(":query")
    served = entries()
    if not model_id.startswith(PREFIX) or name not in served:
        ids = ", ".join(PREFIX + n for n in served)
        raise click.ClickException(f"unknown model {model_id!r}: this plugin has {ids}")
    return served[name]


@llm.hookimpl
def register_commands(cli):
    @cli.group(name="mlx-embed")
    def group():
        """Qwen3-Embedding models in MLX (mlx-qwen3-embed): ids mlx-embed:NAME (documents) and
        mlx-embed:NAME:query (queries)."""

    @group.command(name="register")
    @click.argument("model")
    @click.option("--name", help="The NAME in mlx-embed:NAME (default: the folder's name, or the hub id)")
    @click.option("--dim", type=int, help="Matryoshka size: the first DIM values, normalised again")
    @click.option("--instruction", help="The query task for mlx-embed:NAME:query (default: the checkpoint's)")
    def register(model, name, dim, instruction):
        """Register a model folder or hub id as mlx-embed:NAME and mlx-embed:NAME:query."""
        try:
            stored = check_model(model, dim)
        except LIBRARY_ERRORS as e:
            raise click.ClickException(str(e)) from e
        name = name or (Path(stored).name if Path(stored).is_absolute() else stored)
        if ":" in name:
            raise click.ClickException(f"--name must not hold ':' (it ends the id), got {name!r}")
        save(registered() | {name: {"model": stored, "dim": dim, "instruction": instruction}})
        click.echo(f"{PREFIX}{name} (documents) and {PREFIX}{name}:query (queries)")

    @group.command(name="unregister")
    @click.argument("name")
    def unregister(name):
        """Forget a model registered as mlx-embed:NAME."""
        models = registered()
        if name.removeprefix(PREFIX) not in models:
            raise click.ClickException(f"no registered model {name!r}: registered are {', '.join(models) or 'none'}")
        del models[name.removeprefix(PREFIX)]
        save(models)

    @group.command(name="query")
    @click.argument("text")
    @click.option("-m", "--model", "model_id", required=True, help="The collection's model id, mlx-embed:NAME")
    def query(text, model_id):
        """Print TEXT with the model's query prompt, as mlx-embed:NAME:query embeds it (for llm similar -c)."""
        entry = model_entry(model_id)
        if entry.get("instruction") is not None:
            prompt = query_prompt(entry["instruction"])
        else:
            try:
                checkpoint = open_checkpoint(entry["model"], weights=False)
            except LIBRARY_ERRORS as e:
                raise click.ClickException(str(e)) from e
            if checkpoint.vision:
                raise click.ClickException(f"{entry['model']} is a Qwen3-VL model: its query prompt is a chat turn, "
                                           f"not a prefix; embed queries with {model_id.removesuffix(':query')}:query")
            prompts = read_prompts(checkpoint.folder)
            if prompts["document"]:  # the collection's model would put it before the query's
                raise click.ClickException(f"{entry['model']} gives documents a prompt too: embed queries with "
                                           f"{model_id.removesuffix(':query')}:query")
            prompt = prompts["query"]
        click.echo(prompt + text, nl=False)
