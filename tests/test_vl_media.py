"""Qwen3-VL media: video files decoded and sampled as the official recipe does (qwen-vl-utils' fetch_video with
fps=1, max_frames=64), frames resized as torchvision does, pixels equal to transformers' video processor and
vectors equal to transformers' model (fp32, cosine >= 0.99999); remote images through the cache, the server and
the CLI against a loopback http.server."""

import http.server
import io
import json
import math
import platform
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import fastapi.testclient
import numpy as np
import pytest
import torch

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.vision import images, remote, video
from mlx_qwen3_embed.serve.app import create_app
from vl_fixtures import vl_model, vl_reference  # noqa: F401  (session fixtures)

av = pytest.importorskip("av")

COSINE = 0.99999
CLIPS = {"small": (120, 160, 25, 75), "large": (800, 1056, 10, 24)}  # height, width, fps, frames


def write_clip(path: Path, height: int, width: int, fps: int, count: int) -> Path:
    """A clip of coloured discs moving over a gradient, mpeg4 in mp4."""
    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(count):
            frame = np.stack([xx * 255 // width, yy * 255 // height, np.full_like(xx, 60 + 3 * i)], -1)
            for k, colour in enumerate([(255, 40, 40), (40, 255, 80), (60, 60, 255)]):
                cx = (0.2 + 0.3 * k + 0.01 * i) * width
                cy = (0.5 + 0.3 * math.sin(i / 5 + k)) * height
                frame[(xx - cx) ** 2 + (yy - cy) ** 2 < (0.12 * min(height, width)) ** 2] = colour
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame.astype(np.uint8), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("clips")
    return {name: write_clip(folder / f"{name}.mp4", *shape) for name, shape in CLIPS.items()}


@pytest.fixture(scope="module")
def embedder(vl_model):
    return mqe.load(str(vl_model), dtype="float32")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def torchvision_resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """torchvision.transforms.functional.resize(uint8 tensor, BICUBIC, antialias=True), as its source does it
    (torchvision itself does not load beside this machine's torch): float32 interpolate, clamp, round."""
    if frames.shape[1:3] == (height, width):
        return frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    x = torch.nn.functional.interpolate(x, size=[height, width], mode="bicubic", align_corners=False,
                                        antialias=True)
    return x.clamp(0, 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def assert_same_pixels(ours: np.ndarray, ref: np.ndarray) -> None:
    """Equal on x86-64 (our float32 rounding follows torch's kernel there); elsewhere within 1 level on a few."""
    if platform.machine() in ("x86_64", "AMD64"):
        np.testing.assert_array_equal(ours, ref)
    else:
        diff = np.abs(ours.astype(int) - ref)
        assert diff.max() <= 1 and (diff > 0).mean() < 1e-3


def reference_clip(path: Path):
    """The recipe's pipeline from other code: transformers' PyAV reader with qwen-vl-utils' smart_nframes (fps=1,
    max_frames=64, min_frames=4), qwen-vl-utils' smart_resize bounds, torchvision's resize, transformers'
    Qwen3VLVideoProcessor (do_resize=False, as the recipe calls it) and Qwen3VLProcessor's timestamps."""
    from transformers import Qwen3VLProcessor
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor
    from transformers.video_utils import read_video_pyav

    def smart_nframes(metadata, **_):
        total, rate = metadata.total_num_frames, metadata.fps
        n = min(min(max(total / rate * 1, 4), 64), total) // 2 * 2
        return torch.linspace(0, total - 1, int(n)).round().long().tolist()

    import transformers.image_processing_backends as backends

    if not hasattr(backends, "tvF"):  # torchvision's normalize, the one call of it the processor makes here
        backends.tvF = SimpleNamespace(normalize=lambda x, mean, std, inplace=False:
                                       (x - mean.view(-1, 1, 1)) / std.view(-1, 1, 1))
    frames, metadata = read_video_pyav(str(path), smart_nframes)
    h, w = smart_resize(frames.shape[1], frames.shape[2], 32, 128 * 32 * 32, 768 * 32 * 32)
    resized = torchvision_resize(frames, h, w)
    processor = Qwen3VLVideoProcessor(patch_size=16, temporal_patch_size=2, merge_size=2, image_mean=[0.5] * 3,
                                      image_std=[0.5] * 3, cap_pixels_per_frame=True)
    out = processor(videos=[torch.from_numpy(resized).permute(0, 3, 1, 2)], do_resize=False, do_convert_rgb=False,
                    do_sample_frames=False, return_tensors="pt")
    stamps = Qwen3VLProcessor._calculate_timestamps(None, list(metadata.frames_indices), metadata.fps, 2)
    return frames, metadata, resized, out["pixel_values_videos"].numpy(), tuple(out["video_grid_thw"][0].tolist()), \
        stamps


@dataclass
class ReferenceVideo:  # what vl_fixtures.Reference reads of a video: its pixels, grid and timestamps
    pixels: np.ndarray
    grid: tuple
    stamps: list


# ------------------------------------------------------------------------------------------ resize

@pytest.mark.parametrize("size", [(60, 70), (288, 448), (100, 37), (640, 1152)])
def test_resize_frames_equals_torchvision(size):
    """Downscales, upscales and both at once (a different axis each), against torch's antialiased bicubic."""
    rng = np.random.default_rng(3)
    small = rng.integers(0, 256, (3, 30, 40, 3), dtype=np.uint8)
    frames = np.stack([np.asarray(images.Image.fromarray(f).resize((320, 240), images.Image.Resampling.BILINEAR))
                       for f in small])
    frames[1] = rng.integers(0, 256, frames[1].shape)  # noise: every rounding shows
    assert_same_pixels(images.resize_frames(frames, *size), torchvision_resize(frames, *size))


def test_frame_list_second_resize_equals_torchvision():
    """A frame list: PIL's resize to multiples of 64 (fetch_image), then torchvision's resize to the per-frame
    budget: an upscale for small frames, a downscale for large ones."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    rng = np.random.default_rng(5)
    for height, width in [(90, 120), (1000, 1400)]:
        frames = [images.Image.fromarray(rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8))
                  .resize((width, height), images.Image.Resampling.BILINEAR) for _ in range(4)]
        patches, _ = images.preprocess_video(frames)
        h1, w1 = smart_resize(height, width, 64, 4 * 64 * 64, 16384 * 64 * 64)
        first = np.stack([np.asarray(f.resize((w1, h1), images.Image.Resampling.BICUBIC)) for f in frames])
        h2, w2 = smart_resize(h1, w1, 32, 128 * 32 * 32, 768 * 32 * 32)
        assert (h2 * w2 > h1 * w1) == (height < 500)  # really an upscale, then a downscale
        expected = images.patchify(torchvision_resize(first, h2, w2))
        assert patches.grid == expected.grid
        np.testing.assert_array_equal(patches.pixels, expected.pixels)


# ------------------------------------------------------------------------------------------ video files

@pytest.mark.parametrize("name", list(CLIPS))
def test_video_file_frames_and_pixels_equal_the_recipe(clips, name):
    frames, metadata, _, pixels, grid, stamps = reference_clip(clips[name])
    ours, indices, rate = video.read_video(str(clips[name]))
    assert indices == list(metadata.frames_indices) and rate == metadata.fps
    np.testing.assert_array_equal(ours, frames)
    patches, our_stamps = video.preprocess_video_file(str(clips[name]))
    assert patches.grid == grid and our_stamps == stamps
    assert np.abs(patches.pixels - pixels).max() < 1e-6


def test_sampling_follows_smart_nframes():
    """1 frame a second, at least 4, at most 64, never more than the file has, an even count."""
    assert video.sample_count(75, 25.0) == 4        # 3 s: raised to the minimum
    assert video.sample_count(250, 25.0) == 10      # 10 s
    assert video.sample_count(275, 25.0) == 10      # 11 s: rounded down to even
    assert video.sample_count(3000, 25.0) == 64     # 2 min: the maximum
    assert video.sample_count(3, 25.0) == 2 and video.sample_count(1, 25.0) == 0


def test_video_file_equals_reference(clips, embedder, vl_reference):
    refs = []
    for name in CLIPS:
        *_, pixels, grid, stamps = reference_clip(clips[name])
        refs.append(ReferenceVideo(pixels, grid, stamps))
    items = [{"video": str(clips["small"])}, {"video": clips["large"], "text": "moving discs"}]
    expected = vl_reference.embed([{"videos": [refs[0]]}, {"videos": [refs[1]], "text": "moving discs"}])
    assert cosines(embedder.embed(items), expected).min() >= COSINE
    assert cosines(embedder.embed(items[0]), expected[0]).min() >= COSINE


def test_bad_video_files_name_their_index(embedder, tmp_path):
    text = tmp_path / "notes.mp4"
    text.write_text("not a video at all")
    empty = tmp_path / "empty.avi"
    with av.open(str(empty), "w") as container:  # a video stream that holds no frame
        stream = container.add_stream("mpeg4", rate=25)
        stream.width, stream.height, stream.pix_fmt = 64, 64, "yuv420p"
        container.start_encoding()
    single = write_clip(tmp_path / "single.mp4", 64, 64, 25, 1)
    for path, words in [(text, "not a readable video"), (empty, "no frames"), (single, "at least 2"),
                        (tmp_path / "missing.mp4", "no video file")]:
        with pytest.raises((ValueError, FileNotFoundError), match=rf"item 1: .*{words}"):
            embedder.embed(["fine", {"video": str(path)}])


def test_video_files_without_pyav_name_the_extra(embedder, clips, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "av", None)
    with pytest.raises(ImportError, match=r"item 0: .*pip install 'mlx-qwen3-embed\[video\]'"):
        embedder.embed([{"video": str(clips["small"])}])


# ------------------------------------------------------------------------------------------ remote images

class Site(http.server.BaseHTTPRequestHandler):
    """A loopback web site: an image, a text, redirects, a 404, a slow answer, a body without a length."""
    pages: dict = {}
    hits = 0

    def do_GET(self):
        type(self).hits += 1
        route = self.pages.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
        elif route[0] == "redirect":
            self.send_response(302)
            self.send_header("Location", route[1])
            self.send_header("Content-Length", "0")
            self.end_headers()
        elif route[0] == "slow":
            time.sleep(route[1])
            self.send_error(503)
        else:
            kind, body = route
            self.send_response(200)
            self.send_header("Content-Type", kind)
            if kind != "unsized":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    def log_message(self, *args):  # quiet
        pass


def png_bytes(height: int, width: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    images.Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def site():
    """-> the base URL of a threaded http.server on 127.0.0.1 serving Site.pages."""
    picture = png_bytes(70, 90, 0)
    Site.pages = {"/pic.png": ("image/png", picture), "/other.png": ("image/png", png_bytes(64, 64, 1)),
                  "/notes.txt": ("text/plain", b"not an image"), "/big.png": ("image/png", png_bytes(200, 200, 2)),
                  "/stream.png": ("unsized", png_bytes(200, 200, 2)), "/redirect": ("redirect", "/pic.png"),
                  "/loop": ("redirect", "/loop"), "/ftp": ("redirect", "ftp://127.0.0.1/pic.png"),
                  "/slow": ("slow", 2.0)}
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", picture
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def image_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own empty image cache."""
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "image-cache"))
    return tmp_path / "image-cache"


def test_fetched_url_is_read_from_the_cache_without_the_network(site, embedder, image_cache):
    base, picture = site
    assert remote.fetch_image(base + "/pic.png") == picture
    assert remote.cache_path(base + "/pic.png").parent == image_cache
    assert remote.cache_path(base + "/pic.png").read_bytes() == picture
    hits = Site.hits
    got = embedder.embed([{"image": base + "/pic.png", "text": "a"}])
    assert Site.hits == hits  # read from the cache, not fetched again
    np.testing.assert_array_equal(got, embedder.embed([{"image": picture, "text": "a"}]))
    assert remote.fetch_image(base + "/pic.png") == picture and Site.hits == hits


def test_library_refuses_a_url_not_in_the_cache(site, embedder):
    base, _ = site
    hits = Site.hits
    with pytest.raises(ValueError, match=r"item 1: remote image .* not in the image cache .*fetch_image"):
        embedder.embed(["fine", {"image": base + "/pic.png"}])
    assert Site.hits == hits  # the library never downloads


@pytest.mark.parametrize("path, words", [
    ("/notes.txt", "not a readable image"),
    ("/missing.png", "HTTP 404"),
    ("/big.png", "over the cap of 1,000 bytes"),
    ("/stream.png", "over the cap of 1,000 bytes"),
    ("/loop", "redirects more than 3 times"),
    ("/ftp", "redirects to a non-http(s) URL"),
    ("/slow", "timed out"),
])
def test_fetch_refuses_and_caches_nothing(site, image_cache, monkeypatch, path, words):
    monkeypatch.setattr(remote, "MAX_BYTES", 1000 if "big" in path or "stream" in path else remote.MAX_BYTES)
    monkeypatch.setattr(remote, "TIMEOUT", 0.5)
    base, _ = site
    with pytest.raises(ValueError, match=re.escape(words)):
        remote.fetch_image(base + path)
    assert not image_cache.exists() or not any(image_cache.iterdir())


def test_fetch_applies_the_decoded_pixel_cap_and_follows_redirects(site, image_cache):
    base, picture = site
    with pytest.raises(ValueError, match="over the cap of 100 pixels"):
        remote.fetch_image(base + "/pic.png", max_image_pixels=100)
    assert not image_cache.exists() or not any(image_cache.iterdir())
    assert remote.fetch_image(base + "/redirect") == picture
    for url in ["file:///etc/hostname", "ftp://127.0.0.1/a.png"]:
        with pytest.raises(ValueError, match="only http:// and https://"):
            remote.fetch_image(url)


@pytest.fixture(scope="module")
def clients(embedder):
    """-> (a server started with allow_remote_images, one without)."""
    with fastapi.testclient.TestClient(create_app(embedder, allow_remote_images=True)) as allowed, \
            fastapi.testclient.TestClient(create_app(embedder)) as refused:
        yield allowed, refused


def test_server_fetches_urls_when_allowed(site, clients, embedder, image_cache):
    base, picture = site
    allowed, _ = clients
    body = {"input": [{"image": base + "/pic.png", "text": "a photo"}, {"image": base + "/other.png"}]}
    response = allowed.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    expected = embedder.embed([{"image": picture, "text": "a photo"}, {"image": Site.pages["/other.png"][1]}])
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert remote.cache_path(base + "/pic.png").read_bytes() == picture  # stored in the cache


def test_server_refuses_urls_without_the_flag(site, clients, image_cache):
    base, _ = site
    _, refused = clients
    hits = Site.hits
    response = refused.post("/v1/embeddings", json={"input": ["fine", {"image": base + "/pic.png"}]})
    assert response.status_code == 400 and Site.hits == hits
    error = response.json()["error"]
    assert error["message"].startswith("input[1]") and "--allow-remote-images" in error["message"]
    assert error["param"] == "input" and error["type"] == "invalid_request_error"


@pytest.mark.parametrize("path, words", [("/notes.txt", "not a readable image"), ("/missing.png", "HTTP 404"),
                                         ("/big.png", "over the cap")])
def test_server_answers_bad_urls_with_400(site, clients, monkeypatch, path, words):
    monkeypatch.setattr(remote, "MAX_BYTES", 1000)
    base, _ = site
    allowed, _ = clients
    response = allowed.post("/v1/embeddings", json={"input": [{"text": "fine"}, {"image": base + path}]})
    assert response.status_code == 400
    message = response.json()["error"]["message"]
    assert message.startswith("input[1].image") and words in message


def test_cli_fetches_urls_only_with_the_flag(site, vl_model, embedder, monkeypatch):
    from typer.testing import CliRunner

    from mlx_qwen3_embed.cli import app

    monkeypatch.delenv("MLX_EMBED_DEBUG", raising=False)
    base, picture = site
    runner = CliRunner()
    refused = runner.invoke(app, ["embed", "--model", str(vl_model), "--image", base + "/pic.png"])
    assert refused.exit_code == 1 and "--allow-remote-images" in refused.output
    result = runner.invoke(app, ["embed", "--model", str(vl_model), "--image", base + "/pic.png", "--text", "a",
                                 "--allow-remote-images"])
    assert result.exit_code == 0, result.output
    got = np.array([json.loads(line)["embedding"] for line in result.stdout.splitlines()], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.embed([{"image": picture, "text": "a"}]), atol=1e-5)
    # now cached: read without the flag, and without the network
    hits = Site.hits
    again = runner.invoke(app, ["embed", "--model", str(vl_model), "--image", base + "/pic.png", "--text", "a"])
    assert again.exit_code == 0 and again.stdout == result.stdout and Site.hits == hits


def test_cli_embeds_video_files_from_json_lines(clips, vl_model, embedder, tmp_path):
    from typer.testing import CliRunner

    from mlx_qwen3_embed.cli import app

    items = [{"video": str(clips["small"]), "text": "discs"}, {"text": "plain"}]
    (tmp_path / "items.jsonl").write_text("\n".join(json.dumps(item) for item in items))
    result = CliRunner().invoke(app, ["embed", "--model", str(vl_model), "--file", str(tmp_path / "items.jsonl")])
    assert result.exit_code == 0, result.output
    got = np.array([json.loads(line)["embedding"] for line in result.stdout.splitlines()], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.embed(items), atol=1e-5)
