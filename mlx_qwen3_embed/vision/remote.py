"""Remote images: http(s) URLs downloaded on request (the server's and CLI's --allow-remote-images) into a local
cache, which the library reads by URL without ever touching the network.

The cache is a folder of files named sha256(url), by default ~/.cache/mlx-qwen3-embed/images (under
$XDG_CACHE_HOME when set), or $MLX_QWEN3_EMBED_IMAGE_CACHE. A URL is downloaded once and then read from there;
delete its file (or the folder) to download it again.
"""

import hashlib
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

CACHE_ENV = "MLX_QWEN3_EMBED_IMAGE_CACHE"
TIMEOUT = 10.0                 # seconds for the whole download, redirects included
MAX_BYTES = 20 * 1024 * 1024   # a larger body is refused before it is decoded
MAX_REDIRECTS = 3
SCHEMES = ("http://", "https://")
CHUNK = 64 * 1024


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
    """`url`'s cached bytes, or None when it was never downloaded."""
    try:
        return cache_path(url).read_bytes()
    except FileNotFoundError:
        return None


def fetch_image(url: str, *, timeout: Optional[float] = None, max_bytes: Optional[int] = None,
                max_image_pixels: Optional[int] = None) -> bytes:
    """Download the image at `url` into the cache (once; later calls read the cache) and return its bytes.

    Only http and https, at most MAX_REDIRECTS redirects (to http or https), `timeout` seconds in all and
    `max_bytes` bytes; the body must decode as an image within `max_image_pixels` before it is stored, so the
    cache holds only usable images. Raises ValueError (images.ImageError for a body that is not a usable image)
    naming the URL and the cause; writes are atomic."""
    from . import images

    if not is_url(url):
        raise ValueError(f"only http:// and https:// images are fetched, got {url[:80]!r}")
    cached = read_cached(url)
    if cached is not None:
        return cached
    timeout = TIMEOUT if timeout is None else timeout
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    raw = _download(url, timeout, max_bytes)
    images.open_image(raw, images.MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels)
    _store(cache_path(url), raw)
    return raw


class _Redirects(urllib.request.HTTPRedirectHandler):
    max_redirections = MAX_REDIRECTS

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if not is_url(newurl):
            raise urllib.error.URLError(f"redirect to {newurl[:80]!r}, which is not http(s)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _download(url: str, timeout: float, max_bytes: int) -> bytes:
    # no proxy handler: the environment's proxies are not asked to fetch clients' URLs
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _Redirects())
    request = urllib.request.Request(url, headers={"User-Agent": "mlx-qwen3-embed", "Accept": "image/*"})
    deadline = time.monotonic() + timeout
    try:
        with opener.open(request, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            if length is not None and length.isdigit() and int(length) > max_bytes:
                raise ValueError(f"{url[:80]} is {int(length):,} bytes, over the cap of {max_bytes:,} bytes")
            parts, size = [], 0
            while chunk := response.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"{url[:80]} is over the cap of {max_bytes:,} bytes")
                if time.monotonic() > deadline:
                    raise ValueError(f"{url[:80]} took over {timeout:g} s to download")
                parts.append(chunk)
            return b"".join(parts)
    except urllib.error.HTTPError as e:
        if 300 <= e.code < 400:
            raise ValueError(f"{url[:80]} redirects more than {MAX_REDIRECTS} times") from None
        raise ValueError(f"{url[:80]} answered HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        raise ValueError(f"could not fetch {url[:80]}: {e.reason}") from None
    except (TimeoutError, OSError) as e:
        raise ValueError(f"could not fetch {url[:80]}: {type(e).__name__}: {e}") from None


def _store(path: Path, raw: bytes) -> None:
    """Write atomically: a temporary file beside `path`, then a rename (readers never see half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
