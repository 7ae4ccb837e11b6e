"""Video files -> the frames and pixel patches Qwen3-VL reads, as the official Qwen3-VL-Embedding recipe does for a
`"video": "clip.mp4"` item: qwen-vl-utils' fetch_video with the recipe's fps=1 and max_frames=64, then the
Qwen3-VL processor without a further resize.

Decoding uses FFmpeg through PyAV (the optional `video` extra), each frame converted with `to_ndarray("rgb24")` as
transformers' PyAV reader does; decord or torchcodec (the recipe's readers) may convert colours a level apart.
"""

import math
import os

import numpy as np

from . import images

FPS = 1.0            # the recipe samples video files at 1 frame per second...
MIN_FRAMES = 4       # ...at least 4 frames (qwen-vl-utils' FPS_MIN_FRAMES)...
MAX_FRAMES = 64      # ...and at most 64 (the recipe's MAX_FRAMES)
# qwen-vl-utils' per-frame bounds; the recipe passes no total_pixels for files, so the default budget of 128k
# tokens never binds at 64 frames and every frame may use up to 768 tokens
MIN_PIXELS = images.VIDEO_MIN_PIXELS
MAX_PIXELS = images.VIDEO_MAX_PIXELS
INSTALL = "pip install 'mlx-qwen3-embed[video]'"


def sample_count(total: int, video_fps: float, fps: float = FPS, min_frames: int = MIN_FRAMES,
                 max_frames: int = MAX_FRAMES) -> int:
    """How many frames qwen-vl-utils' smart_nframes takes from `total` frames at `video_fps`: `fps` a second,
    within [min_frames, max_frames], at most `total`, rounded down to an even count (0 when under 2)."""
    even = images.TEMPORAL
    wanted = total / video_fps * fps
    low, high = math.ceil(min_frames / even) * even, math.floor(max_frames / even) * even
    return math.floor(min(max(wanted, low), high, total) / even) * even


def read_video(path: str, max_image_pixels: int = images.MAX_IMAGE_PIXELS, resize: bool = False
               ) -> tuple[np.ndarray, list[int], float]:
    """A video file -> (frames (n, H, W, 3) uint8, their indices in the file, the file's frame rate).

    The frames are qwen-vl-utils' sample: `sample_count` of them at linspace(0, total - 1, n) rounded (n is even,
    so no index lands on a .5 where torch's float32 linspace could round otherwise). resize: each frame resized
    as it is decoded to multiples of 32 px within the per-frame bounds (memory stays at the sampled frames' size).
    Raises FileNotFoundError, ImportError (PyAV missing) or ValueError (not a video, too few frames)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no video file at {path}")
    try:
        import av
    except ImportError:
        raise ImportError(f"reading video files needs PyAV: {INSTALL}") from None
    try:
        with av.open(path) as container:
            if not container.streams.video:
                raise images.ImageError(f"{path} has no video stream")
            stream = container.streams.video[0]
            if stream.width * stream.height > max_image_pixels:
                raise images.ImageError(f"video frames of {stream.width}x{stream.height} px are over the cap of "
                                        f"{max_image_pixels:,} pixels: downscale the video first")
            rate = stream.average_rate or stream.guessed_rate
            # the header's count when it has one (as transformers' reader), else the packets holding frames
            total = stream.frames or sum(1 for packet in container.demux(stream) if packet.size)
            if total < 1:
                raise images.ImageError(f"{path} has no frames")
            if not rate:
                raise images.ImageError(f"{path} does not say its frame rate")
            count = sample_count(total, float(rate))
            if count < images.TEMPORAL:
                raise images.ImageError(f"{path} has {total} frame(s): a video needs at least {images.TEMPORAL}")
            indices = np.round(np.linspace(0, total - 1, count)).astype(int).tolist()
            wanted, frames = set(indices), {}
            container.seek(0)
            for i, frame in enumerate(container.decode(stream)):
                if i in wanted:
                    frames[i] = _resized(frame.to_ndarray(format="rgb24")) if resize else \
                        frame.to_ndarray(format="rgb24")
                if i >= indices[-1]:
                    break
    except images.ImageError:
        raise
    except (av.error.FFmpegError, OSError, ValueError, EOFError) as e:
        raise images.ImageError(f"{path} is not a readable video ({type(e).__name__}: {e})") from None
    if not frames:
        raise images.ImageError(f"{path} has no frames")
    # a header that counts more frames than decode: the missing ones repeat the last decoded frame
    last = frames[max(frames)]
    return np.stack([frames.get(i, last) for i in indices]), indices, float(rate)


def preprocess_video_file(path: str, max_image_pixels: int = images.MAX_IMAGE_PIXELS
                          ) -> tuple[images.Patches, list[float]]:
    """A video file -> Patches and each temporal patch's timestamp in seconds (the mean time of its two frames,
    as the Qwen3-VL processor writes them into the prompt)."""
    frames, indices, rate = read_video(path, max_image_pixels, resize=True)
    seconds = [i / rate for i in indices]
    stamps = [(seconds[i] + seconds[i + 1]) / 2 for i in range(0, len(seconds), images.TEMPORAL)]
    return images.patchify(frames), stamps


def _resized(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) uint8 -> resized to qwen-vl-utils' size for video frames (torchvision's antialiased bicubic)."""
    height, width, _ = frame.shape
    h, w = images.smart_resize(height, width, images.FACTOR, MIN_PIXELS, MAX_PIXELS)
    return images.resize_frames(frame[None], h, w)[0]
