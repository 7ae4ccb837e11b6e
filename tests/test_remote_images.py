"""Remote images against hostile or slow web servers (a loopback http.server): one wall-clock deadline per download,
redirects included, however slowly the bytes drip; redirects out of http(s) named as such; the image cache's cap,
least recently used out, with threads and processes writing; and through `serve --allow-remote-images`, a
dripping URL answered 400 at the deadline while /health answers meanwhile."""

import http.server
import io
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.serve import create_app
from mlx_qwen3_embed.vision import images, remote
from test_server_limits import serving
from vl_fixtures import vl_model  # noqa: F401  (session fixture)

DRIP_BYTES = 60       # a byte every DRIP_SECONDS: 15 s for the whole body, unless the client hangs up
DRIP_SECONDS = 0.25
HOP_SECONDS = 0.6     # each redirect hop waits this long: two of them pass a 1 s deadline, neither alone does


def bmp(seed: int) -> bytes:
    """A 16x16 BMP: uncompressed, so every picture has the same size (822 bytes)."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(seed).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    images.Image.fromarray(pixels).save(buffer, format="BMP")
    return buffer.getvalue()


class Site(http.server.BaseHTTPRequestHandler):
    """/pic/N.bmp pictures, bodies and headers that drip, slow redirect hops, redirects out of http(s)."""
    sent: dict = {}       # path -> bytes of a dripped body (or header) sent before the client left
    started: dict = {}    # path -> set when its request came
    finished: dict = {}   # path -> set when its drip stopped
    protocol_version = "HTTP/1.1"

    def do_GET(self):
        path = self.path
        self.started.setdefault(path, threading.Event()).set()
        if path.startswith("/pic/"):
            self.answer(200, bmp(int(path.removeprefix("/pic/").removesuffix(".bmp"))))
        elif path.startswith("/hop/"):  # /hop/0 -> /hop/1 -> /pic/0.bmp, each after HOP_SECONDS
            time.sleep(HOP_SECONDS)
            step = int(path.removeprefix("/hop/"))
            self.answer(302, location="/pic/0.bmp" if step else "/hop/1")
        elif path == "/to-file":
            self.answer(302, location="file:///etc/passwd")
        elif path == "/to-gopher":
            self.answer(302, location="gopher://127.0.0.1:70/1")
        elif path == "/loop":
            self.answer(302, location="/loop")
        elif path.startswith("/drip-body"):
            self.send_response(200)
            self.send_header("Content-Type", "image/bmp")
            self.send_header("Content-Length", str(DRIP_BYTES))
            self.end_headers()
            self.drip(path, b"x")
        elif path == "/drip-headers":
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            self.drip(path, b"a", prefix=b"X-Slow: ")
        else:
            self.answer(404)

    def answer(self, status: int, body: bytes = b"", location: str = ""):
        self.send_response(status)
        if location:
            self.send_header("Location", location)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def drip(self, path: str, byte: bytes, prefix: bytes = b""):
        self.sent[path] = 0
        try:
            self.wfile.write(prefix)
            for _ in range(DRIP_BYTES):
                self.wfile.write(byte)
                self.sent[path] += 1
                time.sleep(DRIP_SECONDS)
        except OSError:  # the client hung up
            pass
        finally:
            self.finished.setdefault(path, threading.Event()).set()
            self.close_connection = True

    def log_message(self, *args):  # quiet
        pass


@pytest.fixture(scope="module")
def site():
    """-> the base URL of a threaded http.server on 127.0.0.1 serving Site."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Site)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(autouse=True)
def image_cache(tmp_path, monkeypatch) -> Path:
    """Each test its own empty image cache."""
    monkeypatch.setenv(remote.CACHE_ENV, str(tmp_path / "image-cache"))
    return tmp_path / "image-cache"


def cut_short(path: str) -> bool:
    """Whether the drip at `path` stopped because the client hung up, before it had sent everything."""
    assert Site.finished.setdefault(path, threading.Event()).wait(60), f"{path} never stopped dripping"
    return Site.sent[path] < DRIP_BYTES


# --- one deadline per download --------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/drip-body", "/drip-headers"])
def test_a_server_that_drips_is_cut_at_the_deadline(site, image_cache, path):
    with pytest.raises(ValueError, match=r"timed out: not downloaded within 1 s"):
        remote.fetch_image(site + path, timeout=1.0)
    assert cut_short(path)  # hung up on at the deadline, not when the server was done
    assert not image_cache.exists() or not any(image_cache.iterdir())


def test_redirects_count_against_the_same_deadline(site):
    with pytest.raises(ValueError, match="timed out"):
        remote.fetch_image(site + "/hop/0", timeout=1.0)
    # the same hops under a deadline that holds both: the picture
    assert remote.fetch_image(site + "/hop/0", timeout=30.0) == bmp(0)


@pytest.mark.parametrize("path, target", [("/to-file", "file:///etc/passwd"),
                                          ("/to-gopher", "gopher://127.0.0.1:70/1")])
def test_a_redirect_out_of_http_is_named_as_such(site, path, target):
    with pytest.raises(ValueError, match=f"redirects to a non-http\\(s\\) URL '{target}'"):
        remote.fetch_image(site + path)


def test_a_redirect_loop_is_still_more_than_3_redirects(site):
    with pytest.raises(ValueError, match="redirects more than 3 times"):
        remote.fetch_image(site + "/loop")


# --- the cache's cap ------------------------------------------------------------------------------------------

def cached_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.iterdir())


def test_the_cache_keeps_its_cap_and_evicts_the_least_recently_used(site, image_cache):
    size = len(bmp(0))
    cap = int(3.4 * size)  # holds three pictures; evicting goes down to 90% of it, three still
    urls = [f"{site}/pic/{i}.bmp" for i in range(4)]
    for url in urls[:3]:
        remote.fetch_image(url, cache_bytes=cap)
    assert remote.read_cached(urls[0]) == bmp(0)  # a read is a use: now picture 1 is the least recently used
    assert remote.fetch_image(urls[3], cache_bytes=cap) == bmp(3)
    assert [remote.cache_path(url).exists() for url in urls] == [True, False, True, True]
    assert cached_bytes(image_cache) <= cap


def test_an_image_larger_than_the_cap_is_returned_not_stored(site, image_cache):
    url = f"{site}/pic/5.bmp"
    assert remote.fetch_image(url, cache_bytes=len(bmp(5)) - 1) == bmp(5)
    assert remote.read_cached(url) is None


def test_the_cli_refuses_a_run_whose_remote_images_pass_the_cap(site, monkeypatch):
    """The CLI fetches first and embeds from the cache after: past the cap, its first images would be gone."""
    from mlx_qwen3_embed.cli.items import fetch_remote_images

    monkeypatch.setattr(remote, "CACHE_BYTES", int(1.5 * len(bmp(0))))
    fetch_remote_images([{"image": f"{site}/pic/0.bmp"}, "a text"], True)  # one fits
    with pytest.raises(ValueError, match="over the image cache's cap of 1,233 bytes together"):
        fetch_remote_images([{"image": [f"{site}/pic/0.bmp", f"{site}/pic/1.bmp"]}], True)


def entry(url: str) -> bytes:
    return (url.encode() * 100)[:1000]


def test_threads_storing_at_once_keep_the_cap_and_whole_files(image_cache):
    urls = [f"http://example.test/{i}.png" for i in range(64)]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda url: remote.store(url, entry(url), 10_000), urls))
    kept = [url for url in urls if remote.cache_path(url).exists()]
    assert kept and all(remote.read_cached(url) == entry(url) for url in kept)
    assert cached_bytes(image_cache) <= 10_000 and not any(p.name.startswith(".") for p in image_cache.iterdir())


WRITER = """
import sys
from mlx_qwen3_embed.vision import remote
for i in range(int(sys.argv[2])):
    url = f"http://example.test/{sys.argv[1]}/{i}.png"
    remote.store(url, (url.encode() * 100)[:1000], 10_000)
"""


def test_processes_storing_at_once_leave_whole_files_and_the_next_store_restores_the_cap(image_cache):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, name, "40"], env=env) for name in "ab"]
    for i in range(40):  # this process writes meanwhile
        url = f"http://example.test/c/{i}.png"
        remote.store(url, entry(url), 10_000)
    assert [w.wait(60) for w in writers] == [0, 0]
    subprocess.run([sys.executable, "-c", WRITER, "d", "1"], env=env, check=True)  # a new writer looks first
    assert cached_bytes(image_cache) <= 10_000
    for path in image_cache.iterdir():
        assert not path.name.startswith(".")
    kept = [f"http://example.test/{name}/{i}.png" for name in "abcd" for i in range(40)]
    kept = [url for url in kept if remote.cache_path(url).exists()]
    assert kept and all(remote.read_cached(url) == entry(url) for url in kept)


# --- through the server ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vl_embedder(vl_model):
    return mqe.load(str(vl_model), dtype="float32")


def test_server_answers_a_dripping_url_400_at_the_deadline_with_health_answering_meanwhile(site, vl_embedder,
                                                                                          monkeypatch):
    monkeypatch.setattr(remote, "TIMEOUT", 1.0)
    path = "/drip-body?served"
    with serving(create_app(vl_embedder, allow_remote_images=True)) as port:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=60) as client, ThreadPoolExecutor(1) as pool:
            pending = pool.submit(client.post, base + "/v1/embeddings",
                                  json={"input": [{"image": site + path, "text": "a"}]})
            assert Site.started.setdefault(path, threading.Event()).wait(30)
            health = httpx.get(base + "/health", timeout=30)  # while the download drips
            response = pending.result()
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "input" and error["message"].startswith("input[0].image: ")
    assert "timed out: not downloaded within 1 s" in error["message"]
    assert cut_short(path)


def test_server_image_cache_bytes_caps_what_it_keeps(site, vl_embedder, image_cache):
    url = f"{site}/pic/7.bmp"
    with serving(create_app(vl_embedder, allow_remote_images=True, image_cache_bytes=0)) as port:
        response = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": [{"image": url}]},
                              timeout=60)
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["data"][0]["embedding"], vl_embedder.embed([{"image": bmp(7)}])[0],
                               atol=1e-5)
    assert remote.read_cached(url) is None  # used, not kept


def test_image_cache_bytes_must_be_a_size(vl_embedder):
    from typer.testing import CliRunner

    from mlx_qwen3_embed.cli import app

    with pytest.raises(ValueError, match="image_cache_bytes must be an int of at least 0, got -1"):
        create_app(vl_embedder, allow_remote_images=True, image_cache_bytes=-1)
    result = CliRunner().invoke(app, ["serve", "--image-cache-bytes", "-1", "--port", "1"])
    assert result.exit_code == 1 and "--image-cache-bytes must be an int of at least 0" in result.output
