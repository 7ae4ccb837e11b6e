"""Remote images: http(s) URLs downloaded on request (the server's and CLI's --allow-remote-images) into the image
cache that images.open_image reads by URL without ever touching the network (images.py names and reads the cache;
its is_url, cache_dir, cache_path, read_cached and CACHE_ENV are named here too). A URL is downloaded once and
then read from there; the cache holds at most a cap of bytes, the least recently used images leaving first.

A download has one wall-clock deadline, redirects included: a watchdog shuts the socket when it passes, so a
server that drips a byte now and then is cut there (a socket timeout alone restarts with every byte).
"""

import http.client
import os
import socket
import ssl
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional
from urllib.parse import urljoin, urlsplit

from ..atomic import write_file
from .images import (CACHE_ENV, MAX_IMAGE_PIXELS, cache_dir, cache_path, describe, is_url, mark_used,  # noqa: F401
                     open_image, read_cached)

TIMEOUT = 10.0                 # seconds for the whole download, redirects included
MAX_BYTES = 20 * 1024 * 1024   # a larger body is refused before it is decoded
MAX_REDIRECTS = 3
CACHE_BYTES = 1 << 30          # what the image cache may hold (1 GiB); least recently used images go first
CHUNK = 64 * 1024
REDIRECTS = (301, 302, 303, 307, 308)
STALE_SECONDS = 600            # a hidden temporary file this old was left by a killed writer


@dataclass(frozen=True)
class RemoteImages:
    """What a server lets its clients' image URLs cost (create_app's image_cache_bytes); given where
    allow_remote_images=True would be, it allows them."""
    cache_bytes: int = CACHE_BYTES

    def fetch(self, url: str) -> bytes:
        return fetch_image(url, cache_bytes=self.cache_bytes)


def fetch_image(url: str, *, timeout: Optional[float] = None, max_bytes: Optional[int] = None,
                max_image_pixels: Optional[int] = None, cache_bytes: Optional[int] = None) -> bytes:
    """Download the image at `url` into the cache (once; later calls read the cache) and return its bytes.

    Only http and https, at most MAX_REDIRECTS redirects (to http or https), `timeout` seconds in all (a wall
    clock, however slowly the bytes come) and `max_bytes` bytes; the body must decode as an image within
    `max_image_pixels` before it is stored, so the cache holds only usable images. The cache keeps at most
    `cache_bytes` (CACHE_BYTES): storing an image evicts the least recently used ones past it (an image larger
    than the whole cap is returned, not stored). Raises ValueError (images.ImageError for a body that is not a
    usable image) naming the URL and the cause; writes are atomic."""
    if not is_url(url):
        raise ValueError(f"only http:// and https:// images are fetched, got {url[:80]!r}")
    cached = read_cached(url)
    if cached is not None:
        return cached
    timeout = TIMEOUT if timeout is None else timeout
    max_bytes = MAX_BYTES if max_bytes is None else max_bytes
    raw = _download(url, timeout, max_bytes)
    open_image(raw, MAX_IMAGE_PIXELS if max_image_pixels is None else max_image_pixels)
    store(url, raw, CACHE_BYTES if cache_bytes is None else cache_bytes)
    return raw


# ------------------------------------------------------------------------------------------ the download

def _download(url: str, timeout: float, max_bytes: int) -> bytes:
    name = url[:80]  # errors name the URL the caller gave, not where it redirected
    with _Deadline(timeout) as deadline:
        try:
            for _ in range(MAX_REDIRECTS + 1):
                with _get(url, deadline) as response:
                    location = response.getheader("Location")
                    if response.status in REDIRECTS and location:
                        url = urljoin(url, location.strip())
                        if not is_url(url):
                            raise ValueError(f"{name} redirects to a non-http(s) URL {url[:80]!r}: only http:// "
                                             "and https:// images are fetched")
                        continue
                    if not 200 <= response.status < 300:
                        raise ValueError(f"{name} answered HTTP {response.status} {response.reason}")
                    return _body(response, name, max_bytes, deadline)
            raise ValueError(f"{name} redirects more than {MAX_REDIRECTS} times")
        except (OSError, http.client.HTTPException) as e:  # TimeoutError and ssl.SSLError are OSErrors
            if deadline.expired or isinstance(e, TimeoutError):
                raise ValueError(f"{name} timed out: not downloaded within {timeout:g} s") from None
            raise ValueError(f"could not fetch {name}: {describe(e)}") from None


@contextmanager
def _get(url: str, deadline: "_Deadline") -> Iterator[http.client.HTTPResponse]:
    """GET `url` on a new connection the deadline watches (no proxy: the environment's proxies are not asked to
    fetch clients' URLs); the connection is closed on exit."""
    parts = urlsplit(url)
    https = parts.scheme.lower() == "https"
    try:
        host, port = parts.hostname, parts.port or (443 if https else 80)
    except ValueError:
        raise ValueError(f"{url[:80]} has a port that is not a number") from None
    if not host:
        raise ValueError(f"{url[:80]} names no host")
    sock = socket.create_connection((host, port), timeout=deadline.left())
    deadline.watch(sock)  # before TLS: a handshake can drip too
    connection = (http.client.HTTPSConnection if https else http.client.HTTPConnection)(host, port)
    try:
        connection.sock = _tls().wrap_socket(sock, server_hostname=host) if https else sock
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        connection.request("GET", target, headers={"User-Agent": "mlx-qwen3-embed", "Accept": "image/*"})
        with connection.getresponse() as response:
            yield response
    finally:
        connection.close()
        sock.close()


def _body(response: http.client.HTTPResponse, name: str, max_bytes: int, deadline: "_Deadline") -> bytes:
    length = response.getheader("Content-Length")
    if length is not None and length.isdigit() and int(length) > max_bytes:
        raise ValueError(f"{name} is {int(length):,} bytes, over the cap of {max_bytes:,} bytes")
    parts, size = [], 0
    while chunk := response.read(CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise ValueError(f"{name} is over the cap of {max_bytes:,} bytes")
        parts.append(chunk)
    if deadline.expired:  # the watchdog's shutdown reads as the end of a body without a length
        raise TimeoutError
    return b"".join(parts)


_context: Optional[ssl.SSLContext] = None


def _tls() -> ssl.SSLContext:
    global _context
    if _context is None:
        _context = ssl.create_default_context()
    return _context


class _Deadline:
    """One download's wall-clock limit: when it passes, the socket being read is shut down, which ends whatever
    read or handshake is blocked on it. It holds a duplicate of that socket, so the descriptor it shuts is
    never one the connection has closed and the system has given to someone else."""

    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds
        self.expired = False
        self._socket: Optional[socket.socket] = None
        self._lock = threading.Lock()
        self._timer = threading.Timer(seconds, self._expire)
        self._timer.daemon = True

    def __enter__(self) -> "_Deadline":
        self._timer.start()
        return self

    def __exit__(self, *exc) -> None:
        self._timer.cancel()
        self.watch(None)

    def left(self) -> float:
        """Seconds left (the socket's timeout for connecting), or TimeoutError."""
        left = self.end - time.monotonic()
        if left <= 0 or self.expired:
            raise TimeoutError
        return left

    def watch(self, sock: Optional[socket.socket]) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
            self._socket = None if sock is None else sock.dup()
            if self.expired:
                self._shut()

    def _expire(self) -> None:
        with self._lock:
            self.expired = True
            self._shut()

    def _shut(self) -> None:
        if self._socket is not None:
            try:
                self._socket.shutdown(socket.SHUT_RDWR)
            except OSError:  # already closed by the other side
                pass


# ------------------------------------------------------------------------------------------ the cache's cap

_held: dict[Path, int] = {}  # a cache folder -> bytes it held at this process's last look, plus what it wrote since
_held_lock = threading.Lock()
LOW_WATER = 0.9              # evicting goes down to 90% of the cap, so a full cache is not listed at every store


def store(url: str, raw: bytes, cache_bytes: int = CACHE_BYTES) -> None:
    """Write `raw` as `url`'s cached bytes (atomically), then evict the least recently used images while the
    folder holds more than `cache_bytes`. Processes sharing a folder each keep it within the cap for what they
    write; an image larger than the cap is not stored."""
    if len(raw) > cache_bytes:
        return
    path = cache_path(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, lambda f: f.write(raw))  # readers never see half a file
    mark_used(path)
    with _held_lock:
        held = _held.get(path.parent)
        if held is not None and held + len(raw) <= cache_bytes:
            _held[path.parent] = held + len(raw)
        else:  # the first store here, or the cap may be passed: look at the folder itself
            _held[path.parent] = _evict(path.parent, cache_bytes, keep=path)


def _evict(folder: Path, cache_bytes: int, keep: Path) -> int:
    """Remove the least recently used images of `folder` (never `keep`) until it holds at most LOW_WATER x
    `cache_bytes`, when it holds more than `cache_bytes`; -> the bytes it holds then. Files another process
    removed meanwhile are skipped."""
    entries, now = [], time.time()
    with os.scandir(folder) as listing:
        for entry in listing:
            try:
                stat = entry.stat(follow_symlinks=False)
                if not entry.is_file(follow_symlinks=False):
                    continue
                if entry.name.startswith("."):  # a write in progress (atomic.write_file), or a killed one's
                    if now - stat.st_mtime > STALE_SECONDS:
                        os.unlink(entry.path)
                    continue
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime_ns, entry.name, stat.st_size))
    total = sum(size for _, _, size in entries)
    if total <= cache_bytes:
        return total
    for _, name, size in sorted(entries):
        if total <= LOW_WATER * cache_bytes:
            break
        if name == keep.name:
            continue
        try:
            os.unlink(folder / name)
        except FileNotFoundError:
            pass
        total -= size
    return total
