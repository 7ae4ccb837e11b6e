"""Image, video and mixed items in a request, as Jina's API takes them: `"text"`, `{"text": ...}`,
`{"image": <data URL | base64>}`, `{"video": [<frame data URL | base64>, ...]}`, `{"video": <data:video/...
URL | base64>}`, with or without "text" -> items whose images are bytes and whose videos are decoded.

The server never reads its own files for a client: an image is the request's bytes (a data URL or plain base64),
or, only when started with --allow-remote-images, an http(s) URL it downloads into the image cache (remote.py:
a wall-clock deadline, a byte cap, redirects bounded, the cache's own cap); a decoded image over the pixel cap is a 400. Videos are never
downloaded; decoding them (call read_media off the event loop) is bounded per request by VideoLimits: frames a
video, RGB pixels for all its videos (checked from the headers before anything is decoded), and a deadline.
"""

import base64
import binascii
import time
from dataclasses import dataclass
from typing import Any, Optional, Union

from ..vision import images, remote, video
from .errors import ApiError

ALLOW_FLAG = "--allow-remote-images"
MAX_VIDEO_FRAMES = video.MAX_FRAMES  # the recipe's most: a longer frame list is refused, not sampled down
MAX_VIDEO_PIXELS = 64 * 1920 * 1080  # a request's videos decode to at most 64 full-HD frames' worth of pixels
VIDEO_TIMEOUT = 30.0                 # seconds to decode a request's videos
FLAGS = {"frames": "--max-video-frames", "pixels": "--max-video-pixels", "seconds": "--video-timeout"}
ADVICE = {"frames": "sample fewer frames", "pixels": "send fewer or smaller frames, or fewer videos",
          "seconds": "send a shorter or smaller video, or its frames"}


@dataclass(frozen=True)
class VideoLimits:
    """What one request's videos may cost (create_app's max_video_frames, max_video_pixels, video_timeout)."""
    frames: int = MAX_VIDEO_FRAMES   # frames in a video: a frame list's, or a file's sample
    pixels: int = MAX_VIDEO_PIXELS   # decoded RGB pixels of all the request's videos
    seconds: float = VIDEO_TIMEOUT   # wall-clock time to decode them

    def budget(self) -> video.Budget:
        """A request's budget, its deadline starting now."""
        return video.Budget(self.frames, self.pixels, time.monotonic() + self.seconds)


def read_media(item: dict, index: Optional[int], allow_remote: Union[bool, remote.RemoteImages] = False,
               param: str = "input", budget: Optional[video.Budget] = None) -> dict:
    """An input item with its "image" (data URL, base64, or with allow_remote an http(s) URL, fetched within a
    RemoteImages' cache cap, or remote.CACHE_BYTES for True) read into bytes and
    its "video" decoded within `budget` (one per request, shared by its items; default VideoLimits()'s), as the
    model's prepare_inputs takes them; anything else about the item is the model's to check.
    Errors name `param[index]` (a rerank request's "documents[3]"), or `param` alone for index None ("query")."""
    name = param if index is None else f"{param}[{index}]"
    if "video" in item:
        item = {**item, "video": _video(item["video"], name, param, budget or VideoLimits().budget())}
    if "image" not in item:
        return item
    given = item["image"]
    if isinstance(given, list):
        return {**item, "image": [_bytes(image, f"{name}.image", "image", param, allow_remote) for image in given]}
    return {**item, "image": _bytes(given, f"{name}.image", "image", param, allow_remote)}


def _video(given: Any, name: str, param: str, budget: video.Budget) -> Any:
    """A request's video -> a video.Clip (a file's bytes) or RGB frames (a frame list), or an ApiError."""
    what = f"{name}.video"
    try:
        if isinstance(given, list):
            frames = [_bytes(frame, f"{what}[{j}]", "image", param, None) for j, frame in enumerate(given)]
            return video.open_frames(frames, images.MAX_IMAGE_PIXELS, budget)
        if not isinstance(given, str) or not given:
            raise ApiError(f"{what} must be a data:video/...;base64 URL or base64 string (a video file), or a list "
                           "of frames (image data URLs or base64)", param, "invalid_type")
        return video.decode_video(_bytes(given, what, "video", param, None), images.MAX_IMAGE_PIXELS, budget)
    except video.LimitExceeded as e:
        code = "video_timeout" if e.limit == "seconds" else "video_too_large"
        scope = "" if e.limit == "frames" else ", for all of a request's videos"
        raise ApiError(f"{what}: {e} (the server's {FLAGS[e.limit]}{scope}): {ADVICE[e.limit]}", param,
                       code) from None
    except ImportError:
        raise ApiError(f"{what} is a video file: decoding it needs PyAV on the server ({video.INSTALL} where it "
                       "runs); or send the video's frames as images", param, "video_unsupported") from None
    except ValueError as e:
        raise ApiError(f"{what}: {e}", param, "invalid_value") from None


def _bytes(value: Any, what: str, kind: str, param: str,
           allow_remote: Union[None, bool, remote.RemoteImages]) -> bytes:
    """An image or video given as a data URL (data:image/... or data:video/...) or base64 -> its bytes; an http(s)
    URL with allow_remote (None: never, as for videos and their frames). `what` names it in errors
    ("input[2].image", "input[0].video[3]")."""
    if not isinstance(value, str) or not value:
        raise ApiError(f"{what} must be a data URL or base64 string", param, "invalid_type")
    if remote.is_url(value):
        if allow_remote is None:
            raise ApiError(f"{what} is a remote URL: the server does not download videos; send it as a data URL "
                           "or base64", param, "invalid_value")
        if not allow_remote:
            raise ApiError(f"{what} is a remote URL: this server fetches images only when started "
                           f"with {ALLOW_FLAG}; send it as a data URL or base64", param, "invalid_value")
        fetcher = allow_remote if isinstance(allow_remote, remote.RemoteImages) else remote.RemoteImages()
        try:
            return fetcher.fetch(value)  # the pixel cap: the model's, when it decodes them
        except ValueError as e:
            raise ApiError(f"{what}: {e}", param, "invalid_value") from None
    if value.startswith("data:"):
        header, _, payload = value.partition(",")
        if not header.startswith(f"data:{kind}/") or not header.endswith(";base64"):
            raise ApiError(f"{what} must be data:{kind}/...;base64,...", param, "invalid_value")
        value = payload
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError(f"{what} is neither a data URL nor valid base64 (file paths are not read)",
                       param, "invalid_value") from None
