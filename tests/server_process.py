"""A real `mlx-embed serve` in its own process on a free loopback port, for tests that need real sockets and real
client libraries (conftest's `served`, the rerank server, the installed wheel)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(args: list[str], log: Path, *, mlx_embed: Optional[Path] = None, cwd: Optional[Path] = None,
                   env: Optional[dict] = None, timeout: float = 120) -> Iterator[str]:
    """`mlx-embed serve ARGS --port P` (this venv's script unless `mlx_embed` names another), output to `log`:
    its base URL once /health answers; terminated (SIGTERM, then waited for) on exit. A server that exits or
    does not answer within `timeout` s fails the test with the end of its log."""
    port = free_port()
    command = [str(mlx_embed or Path(sys.executable).parent / "mlx-embed"), "serve", *args, "--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=cwd,
                                   env=dict(os.environ) if env is None else env)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=5)
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    pytest.fail(f"mlx-embed serve did not start: {log.read_text(errors='replace')[-2000:]}")
                time.sleep(0.2)
        yield url
    finally:
        process.terminate()
        process.wait(30)
