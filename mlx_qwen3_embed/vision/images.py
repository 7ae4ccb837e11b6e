"""Images -> the pixel patches Qwen3-VL reads: decode, RGB, resize to multiples of 32 px, normalise, patchify.

Equal to the official Qwen3-VL-Embedding preprocessing (qwen-vl-utils' fetch_image, then the Qwen2-VL image
processor with do_resize=False): PIL's bicubic resize of the uint8 RGB image, x / 255, (x - 0.5) / 0.5, each image
repeated into the two temporal frames of the 3-D patch embedding, patches in 2x2 merge-block order.

An http(s) URL is read from the image cache, never downloaded here: remote.py fills the cache when the CLI or
server is allowed to (--allow-remote-images). The cache is a folder of files named sha256(url), by default
~/.cache/mlx-qwen3-embed/images (under $XDG_CACHE_HOME when set), or $MLX_QWEN3_EMBED_IMAGE_CACHE; delete a file
(or the folder) to download it again. A file's modification time is its last use (remote.py evicts the least
recently used past the cache's cap), so reading it here counts as a use.
"""

import base64
import binascii
import hashlib
import io
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from ..checks import without_addresses

PATCH = 16            # vision_config.patch_size
MERGE = 2             # vision_config.spatial_merge_size: 2x2 patches become one LLM token
TEMPORAL = 2          # vision_config.temporal_patch_size
FACTOR = PATCH * MERGE
MIN_PIXELS = 4 * FACTOR * FACTOR       # the recipe's bounds: 4 to 1800 LLM tokens per image
MAX_PIXELS = 1800 * FACTOR * FACTOR
MAX_IMAGE_PIXELS = 64_000_000          # decoded-size cap: a larger image is refused before it is decoded
MEAN = STD = 0.5
CACHE_ENV = "MLX_QWEN3_EMBED_IMAGE_CACHE"
SCHEMES = ("http://", "https://")


class ImageError(ValueError):
    """An input that is not a usable image; the message says why."""


@dataclass
class Patches:
    """One image or video as the vision tower reads it."""
    pixels: np.ndarray   # (t * h * w, 3 * TEMPORAL * PATCH * PATCH) float32, rows in merge-block order
    grid: tuple          # (t, h, w) in patches: t temporal patches of h x w

    @property
    def tokens(self) -> int:
        """LLM tokens after the 2x2 merge."""
        t, h, w = self.grid
        return t * h * w // (MERGE * MERGE)


def is_url(source) -> bool:
    """Whether `source` is an http(s) URL (the only remote images there are)."""
    return isinstance(source, str) and source.lower().startswith(SCHEMES)


def cache_dir() -> Path:
    """The image cache's folder ($MLX_QWEN3_EMBED_IMAGE_CACHE, else ~/.cache/mlx-qwen3-embed/images)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or "~/.cache").expanduser() / "mlx-qwen3-embed" / "images"


def cache_path(url: str) -> Path:
    """Where `url`'s bytes are (or would be) cached: the cache folder / sha256(url)."""
    return cache_dir() / hashlib.sha256(url.encode("utf-8")).hexdigest()


def read_cached(url: str) -> Optional[bytes]:
    """`url`'s cached bytes (marked used now), or None when it was never downloaded or has been evicted."""
    path = cache_path(url)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    mark_used(path)
    return raw


def mark_used(path: Path) -> None:
    """Set a cached file's modification time to now, to the nanosecond (atime is often not kept, and the
    kernel's own "now" is coarse): the least recently used leave the cache first."""
    now = time.time_ns()
    try:
        os.utime(path, ns=(now, now))
    except OSError:  # evicted meanwhile, or a cache this user may read but not write: still a read
        pass


def describe(e: BaseException) -> str:
    """An exception as its type and text, without the object reprs some libraries put in messages (PIL's
    "cannot identify image file <_io.BytesIO object at 0x7f...>"): a heap address tells a client nothing."""
    text = without_addresses(str(e))
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def smart_resize(height: int, width: int, factor: int = FACTOR, min_pixels: int = MIN_PIXELS,
                 max_pixels: int = MAX_PIXELS) -> tuple[int, int]:
    """(height, width) -> the nearest size in multiples of `factor` with min_pixels <= h * w <= max_pixels,
    keeping the aspect ratio (qwen-vl-utils' rule, which the model was trained with)."""
    if max(height, width) / min(height, width) > 200:
        raise ImageError(f"an aspect ratio over 200 is not supported, got {width}x{height} px")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def open_image(source: Any, max_image_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """A path, data URL, http(s) URL already in the image cache, bytes, PIL image or uint8 (H, W, 3) array -> an
    RGB PIL image (RGBA on white).

    Remote URLs are never fetched here (remote.fetch_image does that, when the CLI or server is allowed to).
    Raises ImageError (a ValueError) or FileNotFoundError naming the problem."""
    if isinstance(source, Image.Image):
        image = source
    elif isinstance(source, np.ndarray):
        if source.dtype != np.uint8 or source.ndim != 3 or source.shape[2] not in (3, 4):
            raise ImageError(f"an image array must be uint8 (H, W, 3), got {source.dtype} {source.shape}")
        image = Image.fromarray(source)
    elif isinstance(source, (bytes, bytearray)):
        image = _decode(bytes(source), "the image bytes", max_image_pixels)
    elif isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        if is_url(text):  # read from the image cache; the library itself never downloads
            raw = read_cached(text)
            if raw is None:
                raise ImageError(f"remote image {text[:80]} is not in the image cache ({cache_dir()}) and is not "
                                 "downloaded here: allow it with mlx_qwen3_embed.vision.remote.fetch_image(url) "
                                 "(the CLI's and server's --allow-remote-images), or give the image's bytes")
            image = _decode(raw, text[:80], max_image_pixels)
        elif text.startswith("data:"):
            header, _, data = text.partition(",")
            if not header.startswith("data:image/") or not header.endswith(";base64"):
                raise ImageError(f"a data URL must be data:image/...;base64,..., got {header[:40]!r}")
            try:
                raw = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise ImageError("the data URL's base64 payload does not decode") from None
            image = _decode(raw, "the data URL", max_image_pixels)
        else:
            path = text.removeprefix("file://")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"no image file at {path}")
            with open(path, "rb") as f:
                image = _decode(f.read(), path, max_image_pixels)
    else:
        raise TypeError(f"an image must be a path, data URL, bytes, PIL image or uint8 array, "
                        f"got {type(source).__name__}")
    _check_size(image, max_image_pixels)
    if image.mode == "RGBA":  # transparent parts become white, as in training
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image, mask=image.split()[3])
        return background
    return image.convert("RGB")


def _decode(raw: bytes, what: str, max_image_pixels: int) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw))
        _check_size(image, max_image_pixels)  # before decoding the pixels: the header has the size
        image.load()
    except ImageError:
        raise
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ImageError(f"{what} is not a readable image ({describe(e)})") from None
    return image


def _check_size(image: Image.Image, max_image_pixels: int) -> None:
    width, height = image.size
    if width * height > max_image_pixels:
        raise ImageError(f"image of {width}x{height} px is over the cap of {max_image_pixels:,} pixels: "
                         "downscale it first")
    if width < 1 or height < 1:
        raise ImageError(f"image of {width}x{height} px is empty")


def resize(image: Image.Image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS,
           factor: int = FACTOR) -> Image.Image:
    """RGB image -> resized to smart_resize's size with PIL's bicubic (other filters change the vectors)."""
    width, height = image.size
    h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    return image.resize((w, h), Image.Resampling.BICUBIC)


def patchify(frames: np.ndarray) -> Patches:
    """frames (F, H, W, 3) uint8, F a multiple of TEMPORAL and H, W of FACTOR -> Patches.

    Each row holds one (channel, frame, y, x) block of 3 x TEMPORAL x PATCH x PATCH values; rows run over
    temporal patches, then 2x2 merge blocks in raster order, then the 4 patches of a block."""
    F, H, W, C = frames.shape
    x = (frames.astype(np.float32) / 255 - MEAN) / STD
    t, h, w = F // TEMPORAL, H // PATCH, W // PATCH
    x = x.reshape(t, TEMPORAL, h // MERGE, MERGE, PATCH, w // MERGE, MERGE, PATCH, C)
    # -> (t, h/2, w/2, 2, 2, C, TEMPORAL, PATCH, PATCH)
    x = x.transpose(0, 2, 5, 3, 6, 8, 1, 4, 7)
    return Patches(np.ascontiguousarray(x.reshape(t * h * w, C * TEMPORAL * PATCH * PATCH)), (t, h, w))


def preprocess(image: Image.Image, min_pixels: int = MIN_PIXELS, max_pixels: int = MAX_PIXELS) -> Patches:
    """RGB PIL image -> Patches: resized, normalised, duplicated into TEMPORAL frames."""
    pixels = np.asarray(resize(image, min_pixels, max_pixels))
    return patchify(np.broadcast_to(pixels, (TEMPORAL, *pixels.shape)))


# The recipe's video constants (Qwen3-VL-Embedding + qwen-vl-utils, frames given as a list)
MAX_FRAMES = 64                             # more frames are sampled evenly down to this many
FRAME_FPS = 2.0                             # a frame list is taken as sampled at 2 fps (for the timestamps)
FRAME_MIN_PIXELS = 4 * (2 * FACTOR) ** 2    # first resize: multiples of 64 px, at least 16,384 px
FRAME_MAX_PIXELS = 16384 * (2 * FACTOR) ** 2
VIDEO_MIN_PIXELS = 128 * FACTOR * FACTOR    # second resize: multiples of 32 px, 128 to 768 LLM tokens a frame
VIDEO_MAX_PIXELS = 768 * FACTOR * FACTOR
VIDEO_TOTAL_PIXELS = 10 * VIDEO_MAX_PIXELS  # shared by all frames of a video


def preprocess_video(frames: list) -> tuple[Patches, list[float]]:
    """RGB PIL frames (all the same size) -> Patches (t = frames / 2) and each temporal patch's timestamp (s).

    As the recipe treats a frame list: at most MAX_FRAMES, sampled evenly; each resized to multiples of 64 px;
    padded to an even count with the last frame; all resized to multiples of 32 px within the per-frame budget
    with torchvision's antialiased bicubic (resize_frames), as qwen-vl-utils does."""
    if len(frames) > MAX_FRAMES:
        frames = [frames[i] for i in np.linspace(0, len(frames) - 1, MAX_FRAMES, dtype=int)]
    frames = [resize(f, FRAME_MIN_PIXELS, FRAME_MAX_PIXELS, 2 * FACTOR) for f in frames]
    if len({f.size for f in frames}) > 1:
        raise ImageError(f"video frames must all have one size, got {sorted({f.size for f in frames})}")
    frames += frames[-1:] * (len(frames) % TEMPORAL)
    n = len(frames)
    width, height = frames[0].size
    max_pixels = max(min(VIDEO_MAX_PIXELS, VIDEO_TOTAL_PIXELS / n * TEMPORAL), int(VIDEO_MIN_PIXELS * 1.05))
    h, w = smart_resize(height, width, FACTOR, VIDEO_MIN_PIXELS, max_pixels)
    pixels = resize_frames(np.stack([np.asarray(f) for f in frames]), h, w)
    seconds = [i / FRAME_FPS for i in range(n)]
    stamps = [(seconds[i] + seconds[i + TEMPORAL - 1]) / 2 for i in range(0, n, TEMPORAL)]
    return patchify(pixels), stamps


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """frames (F, H, W, 3) uint8 -> (F, height, width, 3) uint8, as qwen-vl-utils resizes video frames:
    torchvision's resize(BICUBIC, antialias=True) of a uint8 tensor, which is torch's antialiased bicubic
    (Keys a = -0.5, support widened by the scale when shrinking, PIL's bounds) in float32, width then height,
    then clamp and round half to even. Unchanged when the size already fits (torchvision returns it as is)."""
    _, H, W, _ = frames.shape
    if (H, W) == (height, width):
        return frames
    across = _aa_bicubic_weights(W, width) if W != width else None
    down = _aa_bicubic_weights(H, height) if H != height else None
    out = np.empty((len(frames), height, width, 3), dtype=np.uint8)
    for i, frame in enumerate(frames):  # a frame at a time: float64 temporaries of a whole video would not fit
        x = frame.astype(np.float32)
        if across is not None:
            x = _resample_axis(x, 1, across)
        if down is not None:
            x = _resample_axis(x, 0, down)
        out[i] = np.round(np.clip(x, 0, 255))
    return out


def _resample_axis(x: np.ndarray, axis: int, table: tuple) -> np.ndarray:
    """One separable pass of torch's antialiased bicubic along `axis`, with its float32 rounding."""
    index, weights, taps = table
    x = np.ascontiguousarray(np.moveaxis(x, axis, 0))  # gather whole rows: fast whichever the axis
    weights = weights.reshape(*weights.shape, *[1] * (x.ndim - 1))
    out = x[index[:, 0]] * weights[:, 0]
    for k in range(1, weights.shape[1]):
        term, weight = x[index[:, k]], weights[:, k]
        # torch's x86-64 kernel: taps 2-5, 6-9, ... added in float32, the last (taps - 1) % 4 with fused multiply-adds
        fused = k > (taps - 1) // 4 * 4
        if fused.all():
            out = _fma(term, weight, out)
        elif not fused.any():
            out = out + term * weight
        else:
            out = np.where(fused.reshape(weight.shape), _fma(term, weight, out), out + term * weight)
    return np.moveaxis(out, 0, axis)


def _aa_bicubic_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> source indices (out, K), float32 weights (out, K), taps (out,) of each output pixel (torch's
    _compute_indices_min_size_weights_aa with HelperInterpCubic.aa_filter, computed in float32)."""
    f32, f64 = np.float32, np.float64
    scale = f32(in_size) / f32(out_size)
    support = f32(2) * scale if scale >= 1 else f32(2)
    inverse = f32(1 / f64(scale)) if scale >= 1 else f32(1)
    center = (f64(scale) * (np.arange(out_size) + 0.5)).astype(f32)
    low = np.maximum(((center - support).astype(f64) + 0.5).astype(np.int64), 0)
    taps = np.minimum(((center + support).astype(f64) + 0.5).astype(np.int64), in_size) - low
    j = np.arange(int(taps.max()))
    x = np.abs((((low[:, None] + j).astype(f32) - center[:, None]).astype(f64) + 0.5) * f64(inverse)).astype(f32)
    a = np.full_like(x, -0.5)  # Keys' cubic as PIL has it; the polynomials fused as the compiler fuses them
    near = _fma(_fma(a + 2, x, -(a + 3)) * x, x, 1)
    far = _fma(_fma(_fma(a, x, -5 * a), x, 8 * a), x, -4 * a)
    weights = np.where(j < taps[:, None], np.where(x < 1, near, np.where(x < 2, far, 0)), 0).astype(f32)
    total = np.zeros(out_size, f32)
    for k in range(len(j)):  # summed in order, as torch does
        total += weights[:, k]
    return np.minimum(low[:, None] + j, in_size - 1), weights / total[:, None], taps


def _fma(a: np.ndarray, b, c) -> np.ndarray:
    """float32 a * b + c rounded once (a float32 product is exact in float64)."""
    return (np.asarray(a, np.float64) * np.asarray(b, np.float64) + c).astype(np.float32)
