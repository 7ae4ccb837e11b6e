"""Model folders: a folder or hub id resolved once, its config.json and kind read once (`open_checkpoint`), then
passed down to whatever loads, describes or converts it (load, load_reranker, info, convert, verify)."""

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from ..models.args import ModelArgs
from .weights import KIND_KEY, model_kind, read_config, read_config_json, resolve

VL_KINDS = ("qwen3_vl", "qwen3_vl_reranker")  # Qwen3-VL's config: the embedder and the reranker alike


@dataclass(frozen=True)
class Checkpoint:
    """One resolved model folder and what it holds."""
    name: str          # as the caller gave it: a hub id or a folder
    folder: Path       # where its files are (the hub cache's snapshot for a hub id)
    config: dict       # config.json
    kind: Optional[str]  # "embedding", "reranker" (Qwen3 text decoders), "qwen3_vl", "qwen3_vl_reranker", or
                         # None: nothing tells

    @property
    def vision(self) -> bool:
        """A Qwen3-VL checkpoint (embedder or reranker: the same config and weights' layout)."""
        return self.kind in VL_KINDS


def open_checkpoint(model, revision: Optional[str] = None, *, weights: bool = True) -> Checkpoint:
    """A folder or hub id -> Checkpoint (weights=False: a hub id's config and tokenizer files only); a
    Checkpoint given is returned as it is, so functions that take either open it only once."""
    if isinstance(model, Checkpoint):
        return model
    folder = resolve(model, revision, weights=weights)
    config = read_config_json(folder)
    if config.get("model_type") == "qwen3_vl":
        told = vl_role(Checkpoint(str(model), folder, config, "qwen3_vl"))
        kind = "qwen3_vl_reranker" if told == "reranker" else "qwen3_vl"
    else:
        kind = model_kind(folder, config)
    return Checkpoint(str(model), folder, config, kind)


def vl_role(checkpoint: Checkpoint) -> Optional[str]:
    """What a Qwen3-VL folder says it is: "reranker", "embedding", or None. Only `convert`'s KIND_KEY and the
    folder's name (a hub id's repository name in the hub cache: "rerank" or "embed") tell: Qwen3-VL-Reranker's
    config and weights are an instruct model's, as Qwen3-VL-Embedding's are (REFERENCE.md)."""
    marked = checkpoint.config.get(KIND_KEY)
    if marked in ("embedding", "reranker"):
        return marked
    path = checkpoint.folder.resolve()
    if path.parent.name == "snapshots":  # the hub cache: models--Qwen--Qwen3-VL-Reranker-2B/snapshots/<hash>
        path = path.parent.parent
    name = path.name.lower()
    return "reranker" if "rerank" in name else "embedding" if "embed" in name else None


def decoder_args(checkpoint: Checkpoint) -> ModelArgs:
    """The text decoder's numbers of any kind (a Qwen3-VL's: its text_config), from the config already read."""
    if checkpoint.vision:
        from .vl_weights import read_vl_config  # only a Qwen3-VL checkpoint reads the vision config

        return read_vl_config(checkpoint.folder, checkpoint.config).text
    return read_config(checkpoint.folder, checkpoint.config)
