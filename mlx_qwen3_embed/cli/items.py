"""`mlx-embed embed` for Qwen3-VL models: text, --image and JSON Lines items ({"text", "image", "video"}) ->
the same JSON lines or .npy as for texts. cli/embed.py hands over to `embed_items` for a qwen3_vl model."""

import sys
from pathlib import Path
from typing import Optional

from ..textio import json_lines
from ..vision.embedder import ITEM_KEYS

CHUNK = 64  # items per call when a progress bar is shown; vectors do not depend on the chunking


def is_vl(model: str) -> bool:
    """Whether `model` (folder or hub id) is a Qwen3-VL checkpoint."""
    from ..checkpoint.vl_weights import model_type
    from ..checkpoint.weights import resolve

    return model_type(resolve(model, weights=False)) == "qwen3_vl"


def read_items(texts: list[str], file: Optional[str], images: list[str], caption: Optional[str]) -> list:
    """Items from text arguments, --image paths (each one item, with --text as its text) and a --file of
    JSON Lines, each line {"text": ..., "image": "path or URL", "video": "clip.mp4" or ["frame", ...],
    "instruction": ...}."""
    if caption is not None and not images:
        raise ValueError("--text goes with --image (an image and its text, one item); give plain texts as arguments")
    items: list = [{"image": path} | ({"text": caption} if caption is not None else {}) for path in images]
    items += list(texts)
    if file is not None:
        items += parse_items(sys.stdin.read() if file == "-" else _read(file), "stdin" if file == "-" else file)
    if not items:
        raise ValueError("no items: give texts as arguments, --image PATH, or --file items.jsonl")
    return items


def fetch_remote_images(items: list, allow: bool) -> None:
    """Download the items' http(s) image URLs into the image cache (remote.py) when `allow`; without it a URL
    not already there is an error naming --allow-remote-images. The library then reads them from the cache."""
    from ..vision import remote

    for item in items:
        sources = item.get("image") if isinstance(item, dict) else None
        for source in sources if isinstance(sources, list) else [sources]:
            if not remote.is_url(source):
                continue
            if allow:
                remote.fetch_image(source)
            elif remote.read_cached(source) is None:
                raise ValueError(f"image {source[:80]} is a remote URL: add --allow-remote-images to download it "
                                 f"(into {remote.cache_dir()})")


def _read(file: str) -> str:
    try:
        return Path(file).expanduser().read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"cannot read {file}: it is not UTF-8 JSON Lines") from None
    except OSError as e:
        raise FileNotFoundError(f"cannot read {file}: {e.strerror}") from None


def parse_items(content: str, name: str) -> list[dict]:
    """JSON Lines -> item dicts; a line that is not an object of text/image/video/instruction is named."""
    items = []
    for number, record in json_lines(content, name):
        if not isinstance(record, dict) or not set(record) & {"text", "image", "video"} \
                or set(record) - set(ITEM_KEYS):
            raise ValueError(f"{name} line {number} must be an object with text, image and/or video "
                             f"(and optionally instruction), e.g. {{\"text\": \"...\", \"image\": \"a.png\"}}")
        items.append(record)
    return items


def embed_items(embedder, items: list, *, instruction: Optional[str], dim: Optional[int], normalize: bool,
                batch_tokens: Optional[int], output: Optional[str], format: str) -> None:
    """Embed items and write them as cli/embed.py writes texts: {"index", "embedding", "tokens"} lines."""
    from .embed import write_in_chunks

    # prepare all first: a bad image fails before any output is written
    prepared = [embedder.prepare(item, i, instruction) for i, item in enumerate(items)]
    tokens = [len(p.ids) for p in prepared]
    write_in_chunks(lambda part: embedder.embed_prepared(part, dim=dim, normalize=normalize,
                                                        batch_tokens=batch_tokens),
                    prepared, tokens, output, format, CHUNK)
