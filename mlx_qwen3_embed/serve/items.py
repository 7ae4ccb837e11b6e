"""Image and mixed items in a request, as Jina's API takes them: `"text"`, `{"text": ...}`,
`{"image": <data URL | base64>}`, `{"text": ..., "image": ...}` -> items whose images are bytes.

The server never reads its own files for a client: an image is the request's bytes (a data URL or plain base64),
or, only when started with --allow-remote-images, an http(s) URL it downloads into the image cache (remote.py:
a time limit, a byte cap, redirects bounded); a decoded image over the pixel cap is a 400.
"""

import base64
import binascii
from typing import Any, Optional

from ..vision import remote
from .errors import ApiError

ALLOW_FLAG = "--allow-remote-images"


def read_images(item: dict, index: Optional[int], allow_remote: bool = False, param: str = "input") -> dict:
    """An input item with its "image" (data URL, base64, or with allow_remote an http(s) URL) read into bytes,
    as the model's prepare_inputs takes them; anything else about the item is the model's to check.
    Errors name `param[index]` (a rerank request's "documents[3]"), or `param` alone for index None ("query")."""
    name = param if index is None else f"{param}[{index}]"
    if "video" in item:
        raise ApiError(f"{name} has a video: the server takes text and image items", param, "invalid_value")
    if "image" not in item:
        return item
    images = item["image"]
    if isinstance(images, list):
        return {**item, "image": [_image_bytes(image, name, param, allow_remote) for image in images]}
    return {**item, "image": _image_bytes(images, name, param, allow_remote)}


def _image_bytes(image: Any, name: str, param: str, allow_remote: bool) -> bytes:
    if not isinstance(image, str) or not image:
        raise ApiError(f"{name}.image must be a data URL or base64 string", param, "invalid_type")
    if remote.is_url(image):
        if not allow_remote:
            raise ApiError(f"{name}.image is a remote URL: this server fetches images only when started "
                           f"with {ALLOW_FLAG}; send it as a data URL or base64", param, "invalid_value")
        try:
            return remote.fetch_image(image)  # the pixel cap: the model's, when it decodes them
        except ValueError as e:
            raise ApiError(f"{name}.image: {e}", param, "invalid_value") from None
    if image.startswith("data:"):
        header, _, payload = image.partition(",")
        if not header.startswith("data:image/") or not header.endswith(";base64"):
            raise ApiError(f"{name}.image must be data:image/...;base64,...", param, "invalid_value")
        image = payload
    try:
        return base64.b64decode(image, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(f"{name}.image is neither a data URL nor valid base64 (file paths are not read)",
                       param, "invalid_value") from None
