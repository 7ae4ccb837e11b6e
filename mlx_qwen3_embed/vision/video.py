"""Video files -> the frames and pixel patches Qwen3-VL reads, as the official Qwen3-VL-Embedding recipe does for a
`"video": "clip.mp4"` item: qwen-vl-utils' fetch_video with the recipe's fps=1 and max_frames=64, then the
Qwen3-VL processor without a further resize. A file may also be given as its bytes (decoded from memory).

Decoding uses FFmpeg through PyAV (the optional `video` extra), each frame converted with `to_ndarray("rgb24")` as
transformers' PyAV reader does; decord or torchcodec (the recipe's readers) may convert colours a level apart.
A Budget bounds what decoding a client's video may cost (the server's limits: frames, pixels, a deadline).
"""

import io
import math
import os
import time
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
from PIL import Image

from . import images

FPS = 1.0            # the recipe samples video files at 1 frame per second...
MIN_FRAMES = 4       # ...at least 4 frames (qwen-vl-utils' FPS_MIN_FRAMES)...
MAX_FRAMES = 64      # ...and at most 64 (the recipe's MAX_FRAMES)
# qwen-vl-utils' per-frame bounds; the recipe passes no total_pixels for files, so the default budget of 128k
# tokens never binds at 64 frames and every frame may use up to 768 tokens
MIN_PIXELS = images.VIDEO_MIN_PIXELS
MAX_PIXELS = images.VIDEO_MAX_PIXELS
INSTALL = "pip install 'mlx-qwen3-embed[video]'"


class LimitExceeded(ValueError):
    """A video over a Budget; `limit` says which: "frames", "pixels" or "seconds"."""

    def __init__(self, message: str, limit: str):
        super().__init__(message)
        self.limit = limit


@dataclass
class Budget:
    """What decoding may spend: frames per video, RGB pixels for all videos it is shared by (spent as they are
    decoded), and a time.monotonic() deadline checked between frames. None: unbounded."""
    frames: int = MAX_FRAMES
    pixels: Optional[int] = None
    deadline: Optional[float] = None

    def check_frames(self, count: int, what: str) -> None:
        if count > self.frames:
            raise LimitExceeded(f"{what} {count} frames, more than the limit of {self.frames}", "frames")

    def spend(self, pixels: int) -> None:
        """Take `pixels` from the budget before they are decoded; LimitExceeded when they do not fit."""
        if self.pixels is not None:
            if pixels > self.pixels:
                raise LimitExceeded(f"its frames hold {pixels:,} pixels, more than the {self.pixels:,} left of "
                                    "the limit on decoded pixels", "pixels")
            self.pixels -= pixels

    def check_time(self) -> None:
        if self.deadline is not None and time.monotonic() > self.deadline:
            raise LimitExceeded("decoding ran past the time limit", "seconds")


@dataclass
class Clip:
    """A video already decoded and preprocessed (decode_video): what a `"video"` item becomes."""
    patches: images.Patches
    stamps: list  # each temporal patch's time in seconds


def sample_count(total: int, video_fps: float, fps: float = FPS, min_frames: int = MIN_FRAMES,
                 max_frames: int = MAX_FRAMES) -> int:
    """How many frames qwen-vl-utils' smart_nframes takes from `total` frames at `video_fps`: `fps` a second,
    within [min_frames, max_frames], at most `total`, rounded down to an even count (0 when under 2)."""
    even = images.TEMPORAL
    wanted = total / video_fps * fps
    low, high = math.ceil(min_frames / even) * even, math.floor(max_frames / even) * even
    return math.floor(min(max(wanted, low), high, total) / even) * even


def read_video(path: Union[str, bytes], max_image_pixels: int = images.MAX_IMAGE_PIXELS, resize: bool = False,
               budget: Optional[Budget] = None) -> tuple[np.ndarray, list[int], float]:
    """A video file (its path, or its bytes) -> (frames (n, H, W, 3) uint8, their indices in the file, the file's
    frame rate).

    The frames are qwen-vl-utils' sample: `sample_count` of them at linspace(0, total - 1, n) rounded (n is even,
    so no index lands on a .5 where torch's float32 linspace could round otherwise). resize: each frame resized
    as it is decoded to multiples of 32 px within the per-frame bounds (memory stays at the sampled frames' size).
    budget: the sample's frames and their pixels are checked against it before any frame is decoded, its deadline
    between frames. Raises FileNotFoundError, ImportError (PyAV missing), ValueError (not a video, too few
    frames) or LimitExceeded (a ValueError)."""
    if isinstance(path, (bytes, bytearray)):
        source, name = io.BytesIO(path), "the data"
    elif not os.path.isfile(path):
        raise FileNotFoundError(f"no video file at {path}")
    else:
        source, name = path, path
    budget = budget or Budget(frames=MAX_FRAMES)
    try:
        import av
    except ImportError:
        raise ImportError(f"reading video files needs PyAV: {INSTALL}") from None
    try:
        with av.open(source) as container:
            if not container.streams.video:
                raise images.ImageError(f"{name} has no video stream")
            stream = container.streams.video[0]
            if stream.width * stream.height > max_image_pixels:
                raise images.ImageError(f"video frames of {stream.width}x{stream.height} px are over the cap of "
                                        f"{max_image_pixels:,} pixels: downscale the video first")
            rate = stream.average_rate or stream.guessed_rate
            # the header's count when it has one (as transformers' reader), else the packets holding frames
            total = stream.frames or _count_frames(container, stream, budget)
            if total < 1:
                raise images.ImageError(f"{name} has no frames")
            if not rate:
                raise images.ImageError(f"{name} does not say its frame rate")
            count = sample_count(total, float(rate))
            if count < images.TEMPORAL:
                raise images.ImageError(f"{name} has {total} frame(s): a video needs at least {images.TEMPORAL}")
            budget.check_frames(count, "its sample has")
            budget.spend(count * stream.width * stream.height)
            indices = np.round(np.linspace(0, total - 1, count)).astype(int).tolist()
            wanted, frames = set(indices), {}
            container.seek(0)
            for i, frame in enumerate(container.decode(stream)):
                budget.check_time()  # FFmpeg decodes every frame up to the last sampled one
                if i in wanted:
                    frames[i] = _resized(frame.to_ndarray(format="rgb24")) if resize else \
                        frame.to_ndarray(format="rgb24")
                if i >= indices[-1]:
                    break
    except (images.ImageError, LimitExceeded):
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
        raise images.ImageError(f"{name} is not a readable video ({images.describe(e)})") from None
    if not frames:
        raise images.ImageError(f"{name} has no frames")
    # a header that counts more frames than decode: the missing ones repeat the last decoded frame
    last = frames[max(frames)]
    return np.stack([frames.get(i, last) for i in indices]), indices, float(rate)


def preprocess_video_file(path: Union[str, bytes], max_image_pixels: int = images.MAX_IMAGE_PIXELS,
                          budget: Optional[Budget] = None) -> tuple[images.Patches, list[float]]:
    """A video file (its path or bytes) -> Patches and each temporal patch's timestamp in seconds (the mean time
    of its two frames, as the Qwen3-VL processor writes them into the prompt)."""
    frames, indices, rate = read_video(path, max_image_pixels, resize=True, budget=budget)
    seconds = [i / rate for i in indices]
    stamps = [(seconds[i] + seconds[i + 1]) / 2 for i in range(0, len(seconds), images.TEMPORAL)]
    return images.patchify(frames), stamps


def decode_video(data: bytes, max_image_pixels: int = images.MAX_IMAGE_PIXELS,
                 budget: Optional[Budget] = None) -> Clip:
    """A video file's bytes -> Clip, exactly as the file read from disk (preprocess_video_file), within `budget`."""
    return Clip(*preprocess_video_file(data, max_image_pixels, budget))


def open_frames(frames: list, max_image_pixels: int = images.MAX_IMAGE_PIXELS,
                budget: Optional[Budget] = None) -> list[Image.Image]:
    """A video given as encoded frames (bytes, each an image) -> RGB PIL frames, as a frame list is read.

    budget: the frame count and every frame's size (from its header) are checked before any is decoded; the
    deadline before each frame. Errors name the frame: "frame 3: ..."."""
    budget = budget or Budget(frames=len(frames))
    budget.check_frames(len(frames), "it has")
    sizes = []
    for j, raw in enumerate(frames):
        try:
            with Image.open(io.BytesIO(raw)) as image:  # the header only: nothing decoded yet
                sizes.append(image.size)
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            raise images.ImageError(f"frame {j} is not a readable image ({images.describe(e)})") from None
    big = next((j for j, (w, h) in enumerate(sizes) if w * h > max_image_pixels), None)
    if big is not None:
        w, h = sizes[big]
        raise images.ImageError(f"frame {big} of {w}x{h} px is over the cap of {max_image_pixels:,} pixels: "
                                "downscale it first")
    budget.spend(sum(w * h for w, h in sizes))
    opened = []
    for j, raw in enumerate(frames):
        budget.check_time()
        try:
            opened.append(images.open_image(raw, max_image_pixels))
        except ValueError as e:
            raise type(e)(f"frame {j}: {e}") from None
    return opened


def _count_frames(container, stream, budget: Budget) -> int:
    """Packets holding frames, for a header without a frame count (demuxing only, within the deadline)."""
    total = 0
    for packet in container.demux(stream):
        budget.check_time()
        total += 1 if packet.size else 0
    return total


def _resized(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> resized to qwen-vl-utils' size for video frames (torchvision's antialiased bicubic)."""
    height, width, _ = frame.shape
    h, w = images.smart_resize(height, width, images.FACTOR, MIN_PIXELS, MAX_PIXELS)
    return images.resize_frames(frame[None], h, w)[0]
