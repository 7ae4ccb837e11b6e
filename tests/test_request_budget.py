"""A small request never costs a lot (issue #26): the work a request asks for is bounded before the expensive
step, tokenizing never runs on the event loop, and a big batch's memory goes back to the system after it."""

import asyncio
import json
import threading
import time
import urllib.request
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.serve import create_app
from server_process import running_server


@pytest.fixture(scope="module")
def reranker(reranker_hub):
    return mqe.load_reranker(str(reranker_hub))


def on_loop(calls: list, name: str, function):
    """`function`, recording `name` in `calls` whenever it runs on a thread with a running event loop."""
    def wrapped(*args, **kwargs):
        try:
            asyncio.get_running_loop()
            calls.append(name)
        except RuntimeError:  # no loop in this thread: a worker thread
            pass
        return function(*args, **kwargs)
    return wrapped


def test_no_route_tokenizes_on_the_event_loop(embedder, reranker, monkeypatch):
    calls = []
    for model, method in ((embedder, "prepare_inputs"), (embedder, "tokens"), (reranker, "prepare_pairs")):
        monkeypatch.setattr(model, method, on_loop(calls, method, getattr(model, method)))
    requests = [("/v1/embeddings", {"input": ["a few words"]}), ("/api/embed", {"input": "a few words"}),
                ("/api/embeddings", {"prompt": "a few words"}), ("/embed", {"inputs": "a few words"}),
                ("/tokenize", {"inputs": "a few words"}), ("/v1/rerank", {"query": "q", "documents": ["d"]}),
                ("/v2/rerank", {"query": "q", "documents": ["d"]}), ("/rerank", {"query": "q", "texts": ["d"]})]
    with TestClient(create_app(embedder, reranker=reranker)) as client:
        for path, body in requests:
            assert client.post(path, json=body).status_code == 200, path
    assert calls == []


def message(path: str, body: dict) -> str:
    """The error message of a response body, in the shape of the dialect of `path`."""
    if path.startswith("/v1/embeddings"):
        return body["error"]["message"]
    if path in ("/v1/rerank", "/v2/rerank"):
        return body["message"]  # Cohere's shape
    assert body["error_type"] == "Validation"  # TEI's
    return body["error"]


SMALL_BODIES = {  # each under 3 KB, each asking to tokenize over 8,000 characters
    "instruction x inputs": ("/v1/embeddings", {"input": ["a"] * 100, "instruction": "x" * 200}),
    "prompt_name x inputs": ("/v1/embeddings", {"input": ["a"] * 100, "prompt_name": "query"}),
    "Cohere v1: query x documents": ("/v1/rerank", {"query": "q" * 200, "documents": ["d"] * 100}),
    "Cohere v2: query x documents": ("/v2/rerank", {"query": "q" * 200, "documents": ["d"] * 100}),
    "TEI: query x texts": ("/rerank", {"query": "q" * 200, "texts": ["d"] * 100}),
    "TEI: prompt_name x inputs": ("/embed", {"inputs": ["a"] * 100, "prompt_name": "query"}),
}


@pytest.mark.parametrize("case", list(SMALL_BODIES))
def test_a_small_body_asking_for_much_work_is_413_before_tokenizing(embedder, reranker, monkeypatch, case):
    path, body = SMALL_BODIES[case]
    for model, method in ((embedder, "prepare_inputs"), (reranker, "prepare_pairs")):
        monkeypatch.setattr(model, method, lambda *a, **k: pytest.fail("tokenized"))
    assert len(json.dumps(body)) < 3000
    with TestClient(create_app(embedder, reranker=reranker, max_request_bytes=8000)) as client:
        response = client.post(path, json=body)
    assert response.status_code == 413
    assert "more than the limit of 8000 (--max-request-bytes)" in message(path, response.json())


def test_many_short_inputs_are_the_work_their_body_says(embedder):
    with TestClient(create_app(embedder, max_request_bytes=8000)) as client:
        assert client.post("/api/embed", json={"input": ["a"] * 1000}).status_code == 200


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def server_pid(port: int) -> int:
    """The pid listening on loopback `port` (the `mlx-embed serve` running_server started)."""
    inode = None
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":  # LISTEN
            inode = fields[9]
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                if any(f"socket:[{inode}]" == str(fd.readlink()) for fd in (proc / "fd").iterdir()):
                    return int(proc.name)
            except OSError:
                continue
    raise RuntimeError(f"nothing listens on {port}")


@pytest.fixture(scope="module")
def big_server(hub_model, reranker_hub, tmp_path_factory):
    """A real server whose body cap (64 MiB) lets multi-megabyte bodies reach the handlers."""
    log = tmp_path_factory.mktemp("budget") / "serve.log"
    with running_server(["--model", str(hub_model), "--reranker", str(reranker_hub), "--max-request-bytes",
                         str(64 << 20), "--log-level", "warning"], log) as url:
        yield url


ABUSE = {  # the bodies: (path, body, the status they get)
    "rerank: 20 KB query x 2048 documents": ("/v1/rerank", {"query": "q " * 10_000, "documents": ["d"] * 2048}, 400),
    "rerank: one 10 MB document": ("/v1/rerank", {"query": "q", "documents": ["lorem ipsum " * 900_000]}, 200),
    "tokenize: 3 MB": ("/tokenize", {"inputs": "lorem ipsum " * 250_000}, 413),
    "8 KB instruction x 2048 inputs": ("/v1/embeddings", {"input": ["a"] * 2048, "instruction": "x " * 4000}, 400),
    "TEI embed: 10 MB": ("/embed", {"inputs": "lorem ipsum " * 900_000}, 413),
    "Ollama embed (truncating): 10 MB": ("/api/embed", {"input": "lorem ipsum " * 900_000}, 200),
}


@pytest.mark.parametrize("case", list(ABUSE))
def test_a_costly_body_leaves_health_answering_and_memory_flat(big_server, case):
    path, body, status = ABUSE[case]
    pid = server_pid(int(big_server.rsplit(":", 1)[1]))
    idle = rss_mib(pid)
    answered, health = [], []

    def send():
        answered.append(httpx.post(big_server + path, content=json.dumps(body).encode(),
                                   headers={"content-type": "application/json"}, timeout=300).status_code)

    sender = threading.Thread(target=send)
    sender.start()
    while sender.is_alive():  # /health keeps answering while the request is worked on
        health.append(urllib.request.urlopen(big_server + "/health", timeout=10).status)
        sender.join(0.05)
    assert answered == [status] and set(health) <= {200}
    assert rss_mib(pid) - idle < 300, f"RSS grew from {idle:.0f} to {rss_mib(pid):.0f} MiB"


@pytest.fixture(scope="module")
def long_model(tmp_path_factory) -> Path:
    """A 512-wide model reading 8192 tokens: one input at max_length takes about a GB of activations on CPU."""
    from conftest import make_hub_checkpoint

    return make_hub_checkpoint(tmp_path_factory.mktemp("long") / "Qwen3-Embedding-long", num_hidden_layers=2,
                               hidden_size=512, intermediate_size=1536, num_attention_heads=8,
                               num_key_value_heads=4, head_dim=64, max_position_embeddings=8192)


def test_memory_goes_back_after_the_largest_allowed_input(long_model, tmp_path):
    with running_server(["--model", str(long_model), "--max-length", "8192", "--log-level", "warning"],
                        tmp_path / "serve.log") as url:
        pid = server_pid(int(url.rsplit(":", 1)[1]))
        httpx.post(url + "/v1/embeddings", json={"input": "warm up"}, timeout=60)
        idle = rss_mib(pid)
        body = {"input": "lorem ipsum dolor sit amet " * 1600, "truncate": True}  # cut to 8192 tokens
        response = httpx.post(url + "/v1/embeddings", json=body, timeout=600)
        assert response.status_code == 200 and response.json()["usage"]["prompt_tokens"] == 8192
        deadline = time.monotonic() + 10  # the worker hands memory back once idle (0.1 s after its last call)
        while rss_mib(pid) - idle >= 300 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rss_mib(pid) - idle < 300, f"RSS grew from {idle:.0f} to {rss_mib(pid):.0f} MiB and stayed"
