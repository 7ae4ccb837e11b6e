"""Remote images: http(s) URLs downloaded on request (the server's and CLI's --allow-remote-images) into the image
cache that images.open_image reads by URL without ever touching the network (images.py names and reads the cache;
its is_url, cache_dir, cache_path, read_cached and CACHE_ENV are named here too). A URL is downloaded once and
then read from there.
"""

import time
import urllib.error
import urllib.request
from typing import Optional

from ..atomic import write_file
from .images import CACHE_ENV, MAX_IMAGE_PIXELS, cache_dir, cache_path, is_url, open_image, read_cached  # noqa: F401

TIMEOUT = 10.0                 # seconds for the whole download, redirects included
MAX_BYTES = 20 * 1024 * 1024   # a larger body is refused before it is decoded
MAX_REDIRECTS = 3
CHUNK = 64 * 1024


def fetch_image(url: str, *, timeout: Optional[float] = None, max_bytes: Optional[int] = None,
                max_image_pixels: Optional[int] = None) -> bytes:
    """Download the image at `url` into the cache (once; later calls read the cache) and return its bytes.

    Only http and https, at most MAX_REDIRECTS redirects (to http or https), `timeout` seconds in all and
    `max_bytes` bytes; the body must decode as an image within `max_image_pixels` before it is stored, so the
    cache holds only usable images. Raises ValueError (images.ImageError for a body that is not a usable image)
    naming the URL and the cause; writes are atomic."""
    if not is_url(url):
        raise ValueError(f"only http:// and https:// images are fetched, got {url[:80]!r}")
    cached = read_cached(url)
    if cached is not None:
        return cached
    timeout = TIMEOUT if timeout is None else timeout
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    raw = _download(url, timeout, max_bytes)
    open_image(raw, MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels)
    path = cache_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, lambda f: f.write(raw))  # readers never see half a file
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

