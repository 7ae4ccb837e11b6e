"""Model folders: a folder or hub id resolved once, its config.json and kind read once (`open_checkpoint`), then
passed down to whatever loads, describes or converts it (load, load_reranker, info, convert, verify)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from .weights import model_kind, read_config_json, resolve

KINDS = ("embedding", "reranker", "qwen3_vl")


@dataclass(frozen=True)
class Checkpoint:
    """One resolved model folder and what it holds."""
    name: str          # as the caller gave it: a hub id or a folder
    folder: Path       # where its files are (the hub cache's snapshot for a hub id)
    config: dict       # config.json
    kind: Optional[str]  # "embedding", "reranker" (Qwen3 text decoders), "qwen3_vl", or None: nothing tells

    @property
    def model_type(self) -> str:
        return self.config.get("model_type", "")


def open_checkpoint(model, revision: Optional[str] = None, *, weights: bool = True) -> Checkpoint:
    """A folder or hub id -> Checkpoint (weights=False: a hub id's config and tokenizer files only); a
    Checkpoint given is returned as it is, so functions that take either open it only once."""
    if isinstance(model, Checkpoint):
        return model
    folder = resolve(model, revision, weights=weights)
    config = read_config_json(folder)
    if config.get("model_type") == "qwen3_vl":
        kind = "qwen3_vl"
    else:
        kind = model_kind(folder, config)
    return Checkpoint(str(model), folder, config, kind)
