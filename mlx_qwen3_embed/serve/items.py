"""Image and mixed items in `/v1/embeddings` `input` for a Qwen3-VL model, as Jina's API takes them:
`"text"`, `{"text": ...}`, `{"image": <data URL | base64>}`, `{"text": ..., "image": ...}` -> prepared items.

The server never reads its own files for a client: an image is the request's bytes (a data URL or plain base64),
or, only when started with --allow-remote-images, an http(s) URL it downloads into the image cache (remote.py:
a time limit, a byte cap, redirects bounded); a decoded image over the pixel cap is a 400.
"""

import base64
import binascii
from typing import Any

from ..vision import remote
from .errors import ApiError

ALLOW_FLAG = "--allow-remote-images"


def prepare_items(embedder, given: Any, instruction, max_inputs: int, allow_remote: bool = False) -> list:
    """The request's `input` -> VLEmbedder.prepare'd items (their len() is their token count), or an ApiError.
    allow_remote: download http(s) image URLs (else they are refused)."""
    data = [given] if isinstance(given, (str, dict)) else given
    if not isinstance(data, list):
        raise ApiError(f"input must be a string, an item object or a list of them, got {type(given).__name__}",
                       "input", "invalid_type")
    if not data:
        raise ApiError("input is empty: send at least one string or item", "input", "empty_input")
    if len(data) > max_inputs:
        raise ApiError(f"input has {len(data)} items, more than the limit of {max_inputs}: split the request",
                       "input", "too_many_inputs")
    prepared = []
    for i, item in enumerate(data):
        if isinstance(item, dict) and "image" in item:
            item = {**item, "image": _image_bytes(item["image"], i, allow_remote, embedder.max_image_pixels)}
        if isinstance(item, dict) and "video" in item:
            raise ApiError(f"input[{i}] has a video: the server takes text and image items", "input",
                           "invalid_value")
        try:
            prepared.append(embedder.prepare(item, i, instruction))
        except (ValueError, TypeError, FileNotFoundError) as e:
            raise ApiError(str(e).replace(f"item {i}", f"input[{i}]", 1), "input", "invalid_value") from None
    return prepared


def _image_bytes(image: Any, index: int, allow_remote: bool, max_image_pixels: int) -> bytes:
    if not isinstance(image, str) or not image:
        raise ApiError(f"input[{index}].image must be a data URL or base64 string", "input", "invalid_type")
    if remote.is_url(image):
        if not allow_remote:
            raise ApiError(f"input[{index}].image is a remote URL: this server fetches images only when started "
                           f"with {ALLOW_FLAG}; send it as a data URL or base64", "input", "invalid_value")
        try:
            return remote.fetch_image(image, max_image_pixels=max_image_pixels)
        except ValueError as e:
            raise ApiError(f"input[{index}].image: {e}", "input", "invalid_value") from None
    if image.startswith("data:"):
        header, _, payload = image.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64"):
            raise ApiError(f"input[{index}].image must be data:image/...;base64,...", "input", "invalid_value")
        image = payload
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(f"input[{index}].image is neither a data URL nor valid base64 (file paths are not read)",
                       "input", "invalid_value") from None
