"""A server that bad clients cannot hurt: fair chunked scheduling and cancellation in the worker, then (through
real sockets to a loopback uvicorn) body caps, timeouts, hang-ups, lone surrogates, CORS, HEAD, auth leaks, the
port check and graceful shutdown of the `mlx-embed serve` process."""

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn

from mlx_qwen3_embed.serve import create_app
from mlx_qwen3_embed.serve.listen import GracefulServer, bind, guarded_protocol
from mlx_qwen3_embed.serve.worker import BatchWorker, Job

ATOL = 1e-6
API_KEY = "limits-key"
AUTH = {"Authorization": f"Bearer {API_KEY}"}
AUTH_LINE = f"Authorization: Bearer {API_KEY}\r\n"
SCRIPT = str(Path(sys.executable).parent / "mlx-embed")


@pytest.fixture(scope="module")
def long_texts(texts) -> list[str]:
    """12 texts of a few dozen tokens each, all different."""
    return [f"{i}: " + " ".join(t for t in texts if t) for i in range(12)]


class HeldWorker:
    """A BatchWorker whose model calls are recorded and can be held: `entered` is set inside each call, which
    then waits for `release`."""

    def __init__(self, embedder, **kwargs):
        self.worker = BatchWorker(embedder, **kwargs)
        self.calls: list[list[tuple[int, int, int]]] = []  # per call: (job arrival, start, stop) of each chunk
        self.entered, self.release = threading.Event(), threading.Event()
        self.release.set()
        real = self.worker._embed

        def held(chunks):
            self.calls.append([(c.job.arrival, c.start, c.stop) for c in chunks])
            self.entered.set()
            assert self.release.wait(30)
            real(chunks)

        self.worker._embed = held


def test_big_request_is_cut_into_budget_chunks_equal_to_library(embedder, long_texts):
    sequences = embedder.tokenize(long_texts)
    budget = 2 * max(len(s) for s in sequences)
    held = HeldWorker(embedder, batch_tokens=budget)
    future = held.worker.submit(Job(sequences, embedder.dim))
    held.worker.start()
    try:
        got = future.result(timeout=60)
    finally:
        held.worker.stop()
    sizes = [sum(len(s) for s in sequences[start:stop]) for call in held.calls for _, start, stop in call]
    assert len(held.calls) >= len(long_texts) // 2 and max(sizes) <= budget
    np.testing.assert_allclose(got, embedder.embed(long_texts), atol=ATOL)


def test_small_request_runs_in_the_next_call_after_a_big_one_started(embedder, long_texts):
    """The big request's first chunk is in flight when the small one arrives: the very next call serves it."""
    big = Job(embedder.tokenize(long_texts), embedder.dim)
    held = HeldWorker(embedder, batch_tokens=max(len(s) for s in big.sequences))  # one text per call
    held.release.clear()
    held.worker.submit(big)
    held.worker.start()
    try:
        assert held.entered.wait(30)
        small = Job(embedder.tokenize(["a small query"]), embedder.dim)
        held.worker.submit(small)
        held.release.set()
        got = small.future.result(timeout=60)
        big.future.result(timeout=60)
    finally:
        held.worker.stop()
    assert [arrival for arrival, _, _ in held.calls[1]] == [small.arrival]
    assert len(held.calls) == len(long_texts) + 1
    np.testing.assert_allclose(got, embedder.embed(["a small query"]), atol=ATOL)


def test_cancelled_request_loses_its_remaining_chunks(embedder, long_texts):
    big = Job(embedder.tokenize(long_texts), embedder.dim)
    held = HeldWorker(embedder, batch_tokens=max(len(s) for s in big.sequences))
    held.release.clear()
    held.worker.submit(big)
    held.worker.start()
    try:
        assert held.entered.wait(30)
        assert big.future.cancel()  # what asyncio does to it when the client hangs up
        held.release.set()
        after = held.worker.submit(Job(embedder.tokenize(["next"]), embedder.dim))
        after.result(timeout=60)
    finally:
        held.worker.stop()
    assert len(held.calls) == 2  # the chunk in flight, then the next request: nothing more of the big one
    assert (held.worker.cancelled, held.worker.dropped_inputs) == (1, len(long_texts) - 1)


# --- through real sockets: a loopback uvicorn with the guarded protocol, in this process ------------------------

@contextmanager
def serving(app, header_timeout=10.0, keep_alive_timeout=5.0, max_connections=None):
    """`app` on 127.0.0.1 (a free port) with listen.py's protocol, as `mlx-embed serve` runs it; yields the port."""
    sock = bind("127.0.0.1", 0)
    config = uvicorn.Config(app, http=guarded_protocol(header_timeout, max_connections),
                            timeout_keep_alive=keep_alive_timeout, log_level="warning")
    server = GracefulServer(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield sock.getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()


def connect(port: int) -> socket.socket:
    conn = socket.create_connection(("127.0.0.1", port), timeout=20)
    return conn


def read_response(conn: socket.socket) -> tuple[int, dict, bytes]:
    """One HTTP/1.1 response: status, lower-case headers, body (by content-length, else until EOF)."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            raise ConnectionError(f"closed before a full response: {data!r}")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    length = int(headers.get("content-length", -1))
    while length < 0 or len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(lines[0].split()[1]), headers, body


def raw_post(path: str, body: bytes, headers: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{headers}\r\n").encode() + body


def closed_by_server(conn: socket.socket) -> bool:
    """True when the server closed the connection (EOF or reset) within the socket's timeout."""
    try:
        while conn.recv(65536):
            pass
        return True
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False


@pytest.fixture(scope="module")
def guarded(embedder):
    """A keyed server with small limits: 64 KiB bodies, 1 s for a body, 1 s for headers, CORS for one origin."""
    app = create_app(embedder, api_key=API_KEY, served_model_name="/home/someone/models/tiny",
                     max_request_bytes=64 * 1024, body_timeout=1.0, cors_origins=("https://app.example",))
    with serving(app, header_timeout=1.0, keep_alive_timeout=1.0) as port:
        yield port


def test_content_length_over_the_cap_is_413_before_the_body_is_read(guarded):
    with connect(guarded) as conn:
        conn.sendall(raw_post("/v1/embeddings", b"", AUTH_LINE).replace(b"Content-Length: 0",
                                                                       b"Content-Length: 100000000"))
        status, headers, body = read_response(conn)  # answered with no body byte sent
        assert (status, headers["connection"]) == (413, "close")
        assert json.loads(body)["error"]["code"] == "request_too_large"
        assert closed_by_server(conn)


def test_chunked_body_over_the_cap_is_413_and_never_buffered(guarded):
    """A chunked body has no length: the cap is enforced while reading; the server stops reading and answers."""
    chunk = b"%x\r\n%s\r\n" % (1 << 20, b"x" * (1 << 20))
    with connect(guarded) as conn:
        conn.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n" + AUTH_LINE.encode() + b"\r\n")
        sent = 0
        conn.settimeout(2)
        try:
            while sent < 200 << 20:  # 200 MiB offered; the server must stop taking them
                conn.sendall(chunk)
                sent += 1 << 20
        except (socket.timeout, BrokenPipeError, ConnectionResetError):
            pass
        assert sent < 64 << 20  # the kernel's buffers took some; the server did not read the rest
        conn.settimeout(20)
        try:
            status, _, body = read_response(conn)
        except (ConnectionResetError, ConnectionError):
            return  # the reset can beat the 413 to the client when it was still sending: refused either way
        assert status == 413 and json.loads(body)["error"]["code"] == "request_too_large"


@pytest.mark.parametrize("body", [b'{"input": "\\ud800"}', b'{"input": ["fine", "half an emoji \\ud83d"]}',
                                  b'{"input": "ok", "instruction": "\\udfff"}', b'{"input": "\xff\xfe"}'],
                         ids=["lone high", "split emoji in a list", "in the instruction", "invalid utf-8"])
def test_unencodable_text_is_a_400_naming_it_never_5xx(guarded, body):
    with connect(guarded) as conn:
        conn.sendall(raw_post("/v1/embeddings", body, AUTH_LINE))
        status, _, answer = read_response(conn)
    error = json.loads(answer)["error"]
    assert status == 400 and error["message"]
    if b"\\ud" in body:
        assert (error["param"], error["code"]) == ("input", "invalid_text") and "surrogate" in error["message"]


def test_malformed_json_has_no_offset_as_param(guarded):
    with connect(guarded) as conn:
        conn.sendall(raw_post("/v1/embeddings", b'{"input": ', AUTH_LINE))
        status, _, answer = read_response(conn)
    assert status == 400 and json.loads(answer)["error"]["param"] is None


def test_stalled_headers_get_408_and_are_closed(guarded):
    with connect(guarded) as conn:
        conn.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        status, headers, _ = read_response(conn)
        assert (status, headers["connection"]) == (408, "close")
        assert closed_by_server(conn)


def test_stalled_headers_of_a_second_request_on_a_kept_alive_connection_get_408(guarded):
    """The first request's header timer is freed once its headers come, so the next request arms its own."""
    with connect(guarded) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(conn)[0] == 200
        conn.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n")  # and nothing more
        conn.settimeout(8)  # header_timeout is 1 s; before the fix this request was never answered
        status, headers, _ = read_response(conn)
        assert (status, headers["connection"]) == (408, "close")


def test_a_connection_that_sends_nothing_is_closed(guarded):
    with connect(guarded) as conn:
        assert read_response(conn)[0] == 408
        assert closed_by_server(conn)


def test_trickled_body_gets_408_and_is_closed(guarded):
    with connect(guarded) as conn:
        conn.sendall(raw_post("/v1/embeddings", b'{"input": "never finished"}', AUTH_LINE)[:-10])
        status, headers, body = read_response(conn)
        assert (status, headers["connection"]) == (408, "close")
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert closed_by_server(conn)


def test_idle_keep_alive_connection_is_closed(guarded):
    with connect(guarded) as conn:
        conn.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        assert read_response(conn)[0] == 200
        assert closed_by_server(conn)  # keep_alive_timeout is 1 s; the socket waits 20


def test_cors_preflight_answers_the_configured_origin_only(guarded):
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization"}
    url = f"http://127.0.0.1:{guarded}/v1/embeddings"
    allowed = httpx.options(url, headers={"Origin": "https://app.example", **preflight})
    assert allowed.status_code == 200  # no API key needed for a preflight
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    refused = httpx.options(url, headers={"Origin": "https://evil.example", **preflight})
    assert "access-control-allow-origin" not in refused.headers
    answer = httpx.post(url, json={"input": "hi"}, headers={"Origin": "https://app.example", **AUTH})
    assert answer.status_code == 200 and answer.headers["access-control-allow-origin"] == "https://app.example"


def test_head_works_where_get_does_and_a_trailing_slash_is_the_same_path(guarded):
    base = f"http://127.0.0.1:{guarded}"
    head = httpx.head(base + "/health")
    assert head.status_code == 200 and head.content == b""
    slash = httpx.post(base + "/v1/embeddings/", json={"input": "hi"}, headers=AUTH)
    assert slash.status_code == 200 and len(slash.json()["data"]) == 1


def test_with_a_key_nothing_about_the_machine_reaches_unauthenticated_callers(guarded):
    base = f"http://127.0.0.1:{guarded}"
    anonymous = httpx.get(base + "/health")
    assert anonymous.status_code == 200 and "/home/someone" not in anonymous.text
    assert httpx.get(base + "/health", headers=AUTH).json()["model"] == "/home/someone/models/tiny"
    for path in ("/metrics", "/v1/models", "/docs", "/openapi.json"):
        assert httpx.get(base + path).status_code == 401, path


def test_public_metrics_opens_metrics_only(embedder):
    app = create_app(embedder, api_key=API_KEY, public_metrics=True)
    with serving(app) as port:
        assert httpx.get(f"http://127.0.0.1:{port}/metrics").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401


def test_connections_past_max_connections_get_503(embedder):
    with serving(create_app(embedder), max_connections=2) as port:
        with connect(port) as a, connect(port) as b, connect(port) as c:
            status, headers, body = read_response(c)
            assert (status, headers["connection"]) == (503, "close")
            assert json.loads(body)["error"]["code"] == "too_many_connections"
            a.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert read_response(a)[0] == 200  # those within the cap are served
            del b


class SlowEmbedder:
    """The real model, 0.25 s slower per call: a big request's whole time is many calls."""

    def __init__(self, embedder):
        self.embedder, self.name, self.cache = embedder, "slow", None

    def embed_prepared(self, sequences, **kwargs):
        time.sleep(0.25)
        return self.embedder.embed_prepared(sequences, **kwargs)


def test_client_that_hangs_up_frees_the_worker(embedder, long_texts):
    """A 12-call request whose client leaves after its first call: the worker drops the rest (counted in
    /metrics), and a small request afterwards is answered in about one call, not the big request's 12."""
    budget = max(len(s) for s in embedder.tokenize(long_texts))  # one text per call
    app = create_app(embedder, batch_tokens=budget)
    worker = app.state.worker
    worker.embedder = SlowEmbedder(embedder)
    with serving(app) as port:
        conn = connect(port)
        conn.sendall(raw_post("/v1/embeddings", json.dumps({"input": long_texts}).encode()))
        deadline = time.monotonic() + 30
        while worker.batches < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        conn.close()  # the client gives up after the first chunk
        while worker.cancelled < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        small = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", json={"input": "small", "encoding_format":
                                                                            "float"}, timeout=30)
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert small.status_code == 200
    np.testing.assert_allclose(small.json()["data"][0]["embedding"], embedder.embed("small"), atol=ATOL)
    assert worker.batches <= 3  # the big one's call in flight (and at most one more), then the small one
    assert "mlx_embed_cancelled_requests_total 1.0" in metrics  # prometheus_client writes counters as floats
    assert f"mlx_embed_dropped_inputs_total {float(len(long_texts) - worker.batches + 1)}" in metrics
    assert 'code="499"' in metrics


# --- the `mlx-embed serve` process ----------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_port_in_use_is_one_error_line_and_exit_1_before_any_model_load():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # the model does not exist: reaching the loader would print a different error
        result = subprocess.run([SCRIPT, "serve", "--model", "/nonexistent/model", "--port", str(port)],
                                capture_output=True, text=True, timeout=60)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: cannot listen on 127.0.0.1:")
    assert "/nonexistent" not in result.stderr


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


@contextmanager
def serve_process(hub_model, *args):
    port = free_port()
    process = subprocess.Popen([SCRIPT, "serve", "--model", str(hub_model), "--port", str(port),
                                "--log-level", "warning", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, process.stderr.read().decode()
            assert time.monotonic() < deadline, "mlx-embed serve did not start"
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.1)
        yield process, port
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(30)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the server's RSS from /proc")
def test_oversized_bodies_do_not_grow_the_server_process(hub_model):
    """30 bodies of 8 MiB offered to a 1 MiB cap: each answered 413, and the server's RSS grows by far less
    than one body."""
    with serve_process(hub_model, "--max-request-bytes", str(1 << 20)) as (process, port):
        before = rss_kib(process.pid)
        body = b'{"input": "' + b"x" * (8 << 20) + b'"}'
        for _ in range(30):
            response = httpx.post(f"http://127.0.0.1:{port}/v1/embeddings", content=body,
                                  headers={"content-type": "application/json"}, timeout=30)
            assert response.status_code == 413
        grown = rss_kib(process.pid) - before
    assert grown < 8 << 10, f"RSS grew by {grown} KiB"


def refused_within(port: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        except ConnectionRefusedError:
            return True
        time.sleep(0.1)
    return False


def test_sigterm_answers_requests_in_flight_and_exits_0(hub_model, long_texts):
    """Two requests in flight when SIGTERM arrives: one whose body is still coming, one big one being embedded.
    Both are answered 200, new connections are refused, and the process exits 0."""
    with serve_process(hub_model, "--shutdown-timeout", "90") as (process, port):
        body = json.dumps({"input": long_texts * 20, "truncate": True}).encode()
        partial = connect(port)
        partial.settimeout(120)  # a loaded 2-core machine can be slow; the shutdown waits up to 90 s
        request = raw_post("/v1/embeddings", body)
        partial.sendall(request[:-100])  # headers and most of the body
        with ThreadPoolExecutor(1) as pool:
            big = pool.submit(httpx.post, f"http://127.0.0.1:{port}/v1/embeddings", content=body,
                              headers={"content-type": "application/json"}, timeout=120)
            time.sleep(0.5)
            process.send_signal(signal.SIGTERM)
            assert refused_within(port, 20)  # no longer accepting
            partial.sendall(request[-100:])
            status, _, answer = read_response(partial)
            assert status == 200 and len(json.loads(answer)["data"]) == len(long_texts) * 20
            assert big.result().status_code == 200
        partial.close()
        assert process.wait(60) == 0


@pytest.mark.parametrize("bad", [{"max_request_bytes": 0}, {"max_request_bytes": 1.5}, {"body_timeout": 0},
                                 {"max_inputs": True}])
def test_create_app_refuses_bad_limits(embedder, bad):
    with pytest.raises(ValueError, match=next(iter(bad))):
        create_app(embedder, **bad)
