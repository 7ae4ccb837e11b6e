"""The OpenAI-compatible server: vectors equal the library's (through the real openai SDK on a loopback uvicorn and
in-process), OpenAI's error shape and status for every client mistake, the API key, 429 on a full queue, and
cross-request batching in the worker."""

import base64
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import mlx.core as mx
import numpy as np
import pytest
import uvicorn
from fastapi import testclient as fastapi_testclient

from mlx_qwen3_embed.serve import create_app
from mlx_qwen3_embed.serve.worker import BatchWorker, Job

openai = pytest.importorskip("openai")  # the `test` extra

API_KEY = "test-key-123"
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
ATOL = 1e-6  # packing differs from the library's batches, so the last bits of a matmul may differ


@pytest.fixture(scope="module")
def sample(texts) -> list[str]:
    """The shared texts minus the empty one, which OpenAI's API (and ours) refuses."""
    return [t for t in texts if t]


@pytest.fixture(scope="module")
def client(embedder):
    with fastapi_testclient.TestClient(create_app(embedder, served_model_name="tiny")) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def live_url(embedder):
    """A real uvicorn on 127.0.0.1 with an API key, for the openai SDK."""
    port = free_port()
    config = uvicorn.Config(create_app(embedder, api_key=API_KEY, served_model_name="tiny"), host="127.0.0.1",
                            port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            pytest.fail("uvicorn did not start")
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.fixture(scope="module")
def sdk(live_url):
    return openai.OpenAI(base_url=live_url + "/v1", api_key=API_KEY, max_retries=0, timeout=60)


def vectors_of(response) -> np.ndarray:
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)], dtype=np.float32)


def post(client, body: dict):
    return client.post("/v1/embeddings", json=body)


# --- the openai SDK against uvicorn on loopback ---------------------------------------------------------------

def test_sdk_default_base64_equals_library(sdk, embedder, sample):
    response = sdk.embeddings.create(model="tiny", input=sample)  # the SDK asks for base64 unless told otherwise
    np.testing.assert_allclose(vectors_of(response), embedder.embed(sample), atol=ATOL)


def test_sdk_float_encoding_equals_library(sdk, embedder, sample):
    response = sdk.embeddings.create(model="tiny", input=sample, encoding_format="float")
    np.testing.assert_allclose(vectors_of(response), embedder.embed(sample), atol=ATOL)


def test_sdk_dimensions_are_renormalised_matryoshka(sdk, embedder, sample):
    got = vectors_of(sdk.embeddings.create(model="tiny", input=sample, dimensions=32))
    assert got.shape == (len(sample), 32)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, embedder.embed(sample, dim=32), atol=ATOL)


def test_sdk_instruction_extension_equals_library_query(sdk, embedder, sample):
    response = sdk.embeddings.create(model="tiny", input=sample, extra_body={"instruction": INSTRUCTION})
    np.testing.assert_allclose(vectors_of(response), embedder.embed(sample, instruction=INSTRUCTION), atol=ATOL)


def test_sdk_usage_counts_real_tokens(sdk, embedder, sample):
    response = sdk.embeddings.create(model="tiny", input=sample)
    tokens = sum(len(ids) for ids in embedder.tokenize(sample))
    assert response.usage.prompt_tokens == response.usage.total_tokens == tokens
    assert response.model == "tiny"


def test_sdk_without_api_key_gets_401(live_url):
    anonymous = openai.OpenAI(base_url=live_url + "/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        anonymous.embeddings.create(model="tiny", input="hello")
    assert e.value.status_code == 401
    assert e.value.body["code"] == "invalid_api_key"


def test_missing_authorization_header_gets_401(live_url):
    response = httpx.post(live_url + "/v1/embeddings", json={"input": "hello"})
    assert response.status_code == 401
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_sixteen_concurrent_clients_all_correct(sdk, embedder, sample):
    """16 clients x 3 requests, each a different slice and size; every answer checked against the library."""
    jobs = [(c, r) for c in range(16) for r in range(3)]

    def call(job):
        c, r = job
        chosen = [sample[(c + r + k) % len(sample)] for k in range(1 + (c + r) % 4)]
        dim = (None, 32, 48)[r]
        kwargs = {"dimensions": dim} if dim else {}
        return chosen, dim, vectors_of(sdk.embeddings.create(model="tiny", input=chosen, **kwargs))

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(call, jobs))
    for chosen, dim, got in results:
        np.testing.assert_allclose(got, embedder.embed(chosen, dim=dim), atol=ATOL)


# --- in-process (TestClient): inputs and extensions -----------------------------------------------------------

def test_token_id_inputs_equal_library_embed_ids(client, embedder, sample):
    ids = [finished[:-1] for finished in embedder.tokenize(sample)]  # as a client's tokenizer gives them: no EOS
    response = post(client, {"input": ids, "encoding_format": "float"})
    got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.embed_ids(ids), atol=ATOL)


def test_single_token_list_is_one_input(client, embedder, sample):
    ids = embedder.tokenize(sample[0])[0]
    data = post(client, {"input": ids, "encoding_format": "float"}).json()["data"]
    assert len(data) == 1
    np.testing.assert_allclose(np.float32(data[0]["embedding"]), embedder.embed_ids([ids])[0], atol=ATOL)


def test_single_string_gives_one_embedding(client, embedder, sample):
    data = post(client, {"input": sample[0], "encoding_format": "base64"}).json()["data"]
    got = np.frombuffer(base64.b64decode(data[0]["embedding"]), dtype="<f4")
    np.testing.assert_allclose(got, embedder.embed(sample[0]), atol=ATOL)


def test_prompt_name_query_equals_embed_query(client, embedder, sample):
    response = post(client, {"input": sample, "prompt_name": "query", "encoding_format": "float"})
    got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.embed_query(sample), atol=ATOL)


def test_truncate_equals_library_truncation(client, embedder):
    long_text = "The quick brown fox jumps over the lazy dog. " * 120
    response = post(client, {"input": [long_text], "truncate": True, "encoding_format": "float"})
    assert response.status_code == 200
    assert response.json()["usage"]["prompt_tokens"] == embedder.max_length
    np.testing.assert_allclose(np.float32(response.json()["data"][0]["embedding"]), embedder.embed(long_text),
                               atol=ATOL)


def test_large_truncated_request_equals_library(client, embedder, sample):
    texts = [(t + " ") * 60 for t in sample]
    response = post(client, {"input": texts, "truncate": True, "encoding_format": "float"})
    got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, embedder.embed(texts), atol=ATOL)


def test_embeddings_path_without_v1_prefix_answers_the_same(client, sample):
    body = {"input": sample[:3], "encoding_format": "float"}
    assert client.post("/embeddings", json=body).json() == post(client, body).json()


def test_user_field_is_accepted(client):
    assert post(client, {"input": "hello", "user": "someone"}).status_code == 200


# --- every client mistake: 400 in OpenAI's error shape ---------------------------------------------------------

LONG = "The quick brown fox jumps over the lazy dog. " * 120
BAD_REQUESTS = {
    "empty list": ({"input": []}, "input", "empty_input"),
    "empty string": ({"input": ""}, "input", "empty_input"),
    "empty string in list": ({"input": ["a", ""]}, "input", "empty_input"),
    "empty token list": ({"input": [[]]}, "input", "empty_input"),
    "missing input": ({"model": "tiny"}, "input", "missing_field"),
    "number": ({"input": 3}, "input", "invalid_type"),
    "null item": ({"input": ["a", None]}, "input", "invalid_type"),
    "strings mixed with ids": ({"input": ["a", [1, 2]]}, "input", "invalid_type"),
    "float token": ({"input": [[1.5, 2]]}, "input", "invalid_type"),
    "bool token": ({"input": [[True, 2]]}, "input", "invalid_type"),
    "token over vocab": ({"input": [[1, 10**6]]}, "input", "invalid_value"),
    "negative token": ({"input": [-1, 2]}, "input", "invalid_value"),
    "dimensions 0": ({"input": "a", "dimensions": 0}, "dimensions", "invalid_value"),
    "dimensions over dim": ({"input": "a", "dimensions": 65}, "dimensions", "invalid_value"),
    "dimensions string": ({"input": "a", "dimensions": "32"}, "dimensions", "invalid_value"),
    "encoding int8": ({"input": "a", "encoding_format": "int8"}, "encoding_format", "invalid_value"),
    "too many inputs": ({"input": ["a"] * 2049}, "input", "too_many_inputs"),
    "too long without truncate": ({"input": [LONG]}, "input", "context_length_exceeded"),
    "too long token ids": ({"input": [[5] * 600]}, "input", "context_length_exceeded"),
    "unknown prompt_name": ({"input": "a", "prompt_name": "nope"}, "prompt_name", "invalid_value"),
    "instruction and prompt_name": ({"input": "a", "instruction": "x", "prompt_name": "query"}, "prompt_name",
                                    "invalid_value"),
    "instruction on token ids": ({"input": [[1, 2]], "instruction": "x"}, "instruction", "invalid_value"),
    "truncate not bool": ({"input": "a", "truncate": "yes"}, "truncate", "invalid_value"),
}


@pytest.mark.parametrize("body, param, code", BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_client_mistake_is_400_in_openai_shape(client, body, param, code):
    response = post(client, body)
    assert response.status_code == 400
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert error["message"]


def test_invalid_json_is_400_in_openai_shape(client):
    response = client.post("/v1/embeddings", content=b'{"input": ', headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_json"


@pytest.mark.parametrize("method, path, status", [("GET", "/v1/nothing", 404), ("GET", "/v1/embeddings", 405)])
def test_wrong_path_or_method_answers_in_openai_shape(client, method, path, status):
    response = client.request(method, path)
    assert response.status_code == status
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}


def test_full_queue_is_429(embedder):
    """The worker is held inside a batch; one request waits in the queue (max_queue=1); the next gets 429."""
    app = create_app(embedder, max_queue=1)
    worker = app.state.worker
    entered, release = threading.Event(), threading.Event()
    real_embed = worker._embed

    def held(jobs):
        entered.set()
        release.wait(30)
        real_embed(jobs)

    worker._embed = held
    with fastapi_testclient.TestClient(app) as c, ThreadPoolExecutor(2) as pool:
        first = pool.submit(post, c, {"input": "first"})
        assert entered.wait(30)
        second = pool.submit(post, c, {"input": "second"})
        deadline = time.monotonic() + 30
        while worker.queue.qsize() < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        refused = post(c, {"input": "third"})
        release.set()
        assert refused.status_code == 429
        assert refused.json()["error"]["code"] == "queue_full"
        assert refused.headers["retry-after"] == "1"
        assert first.result().status_code == second.result().status_code == 200


class NaNEmbedder:
    """Stands in for a model whose arithmetic overflowed (fp16 can): every raw vector is NaN."""
    name = "overflowing"

    def __init__(self, dim: int):
        self.dim = dim

    def embed_prepared(self, sequences, **kwargs):
        return np.full((len(sequences), self.dim), np.nan, np.float32)


def test_non_finite_vector_is_500_and_never_sent(embedder):
    app = create_app(embedder)
    app.state.worker.embedder = NaNEmbedder(embedder.dim)
    with fastapi_testclient.TestClient(app) as c:
        response = post(c, {"input": "hello", "encoding_format": "float"})
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "server_error"
    assert "data" not in response.json()


# --- models, health, metrics ------------------------------------------------------------------------------------

def test_models_lists_the_served_model(client, embedder):
    data = client.get("/v1/models").json()["data"]
    assert [(m["id"], m["object"], m["dimensions"]) for m in data] == [("tiny", "model", embedder.dim)]


def test_health_is_ok_while_worker_runs(client):
    response = client.get("/health")
    assert response.status_code == 200 and response.json()["status"] == "ok"


def test_metrics_count_requests_and_tokens(client, embedder):
    before = client.get("/metrics").text
    post(client, {"input": ["metric one", "metric two"]})
    after = client.get("/metrics").text
    tokens = sum(len(ids) for ids in embedder.tokenize(["metric one", "metric two"]))
    assert metric(after, "mlx_embed_prompt_tokens_total") - metric(before, "mlx_embed_prompt_tokens_total") == tokens
    assert metric(after, 'mlx_embed_requests_total{code="200",path="/v1/embeddings"}') \
        == metric(before, 'mlx_embed_requests_total{code="200",path="/v1/embeddings"}') + 1
    for name in ("mlx_embed_batch_requests_count", "mlx_embed_request_duration_seconds_count"):
        assert metric(after, name) >= 1


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize("cache_keep", [0, 2**30])
def test_mlx_cache_is_kept_only_up_to_cache_keep(embedder, cache_keep):
    previous = mx.set_cache_limit(2**31)  # MLX's own CPU default (32 MiB) must not decide for the worker here
    worker = BatchWorker(embedder, cache_keep=cache_keep)
    try:
        mx.clear_cache()
        worker.start()
        worker.submit(Job(embedder.tokenize(["release the cache"] * 8), embedder.dim)).result(timeout=60)
        worker.stop()  # joins the thread: the call, and the cache decision after it, are done
        assert (mx.get_cache_memory() > 0) == (cache_keep > 0)
    finally:
        worker.stop()
        mx.set_cache_limit(previous)
        mx.clear_cache()


@pytest.mark.parametrize("bad", [{"cache_keep": -1}, {"cache_keep": 1.5}, {"max_queue": 0},
                                 {"max_batch_requests": True}])
def test_worker_refuses_bad_settings(embedder, bad):
    name = next(iter(bad))
    with pytest.raises(ValueError, match=name):
        BatchWorker(embedder, **bad)


# --- the worker: cross-request batching under a token budget ------------------------------------------------

def test_worker_packs_queued_requests_into_one_call(embedder, sample):
    worker = BatchWorker(embedder)
    jobs = [Job(embedder.tokenize([t]), embedder.dim) for t in sample]
    futures = [worker.submit(job) for job in jobs]  # queued before the worker starts: all wait together
    worker.start()
    try:
        got = np.concatenate([f.result(timeout=60) for f in futures])
    finally:
        worker.stop()
    assert worker.batches == 1 and worker.metrics.value("mlx_embed_batch_requests_sum") == len(sample)
    np.testing.assert_allclose(got, embedder.embed(sample), atol=ATOL)


def test_worker_keeps_each_call_within_the_token_budget(embedder, sample):
    jobs = [Job(embedder.tokenize([t]), embedder.dim) for t in sample]
    budget = max(job.tokens for job in jobs) * 2
    worker = BatchWorker(embedder, batch_tokens=budget)
    calls, real_embed = [], worker._embed
    worker._embed = lambda packed: (calls.append(sum(j.tokens for j in packed)), real_embed(packed))
    futures = [worker.submit(job) for job in jobs]
    worker.start()
    try:
        got = np.concatenate([f.result(timeout=60) for f in futures])
    finally:
        worker.stop()
    assert len(calls) > 1 and max(calls) <= budget
    np.testing.assert_allclose(got, embedder.embed(sample), atol=ATOL)


def test_worker_with_max_batch_requests_1_runs_one_request_per_call(embedder, sample):
    worker = BatchWorker(embedder, max_batch_requests=1)
    futures = [worker.submit(Job(embedder.tokenize([t]), embedder.dim)) for t in sample[:4]]
    worker.start()
    try:
        for f in futures:
            f.result(timeout=60)
    finally:
        worker.stop()
    assert worker.batches == 4


# --- the CLI command -------------------------------------------------------------------------------------------

def test_cli_serve_binds_loopback_and_reads_api_key_from_env(hub_model, monkeypatch):
    from typer.testing import CliRunner

    from mlx_qwen3_embed.cli import app as cli

    from mlx_qwen3_embed.serve import listen

    launched, port = {}, free_port()
    monkeypatch.setattr(listen, "run", lambda application, sock, **kw: launched.update(
        kw, app=application, address=sock.getsockname()))
    result = CliRunner().invoke(cli, ["serve", "--model", str(hub_model), "--port", str(port)],
                                env={"MLX_EMBED_API_KEY": API_KEY})
    assert result.exit_code == 0, result.output
    assert launched["address"] == ("127.0.0.1", port)  # loopback unless --host says otherwise
    with fastapi_testclient.TestClient(launched["app"]) as c:
        assert post(c, {"input": "hello"}).status_code == 401
        assert c.post("/v1/embeddings", json={"input": "hello"},
                      headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200


class PoisonedEmbedder:
    """The real model, except that any call holding token id `poison` fails as a non-finite result would."""

    def __init__(self, embedder, poison: int):
        self.embedder, self.poison, self.name, self.device = embedder, poison, "poisoned", embedder.device
        self.cache = None

    def embed_prepared(self, sequences, **kwargs):
        if any(self.poison in s for s in sequences):
            raise FloatingPointError("non-finite vectors")
        return self.embedder.embed_prepared(sequences, **kwargs)


def test_worker_fails_only_the_bad_request_of_a_packed_call(embedder, sample):
    good = [embedder.tokenize([t]) for t in sample[:2]]
    poison = next(t for t in range(embedder.args.vocab_size) if not any(t in ids[0] for ids in good))
    bad = [[poison] * 3]
    worker = BatchWorker(PoisonedEmbedder(embedder, poison))
    futures = [worker.submit(Job(ids, embedder.dim)) for ids in (good[0], bad, good[1])]
    worker.start()
    try:
        with pytest.raises(FloatingPointError):
            futures[1].result(timeout=60)
        got = np.concatenate([futures[0].result(timeout=60), futures[2].result(timeout=60)])
    finally:
        worker.stop()
    np.testing.assert_allclose(got, embedder.embed(sample[:2]), atol=ATOL)


def test_worker_skips_requests_whose_client_hung_up(embedder, sample):
    worker = BatchWorker(embedder)
    gone = worker.submit(Job(embedder.tokenize([sample[0]]), embedder.dim))
    kept = worker.submit(Job(embedder.tokenize([sample[1]]), embedder.dim))
    gone.cancel()  # what asyncio does to the future when the HTTP client disconnects
    worker.start()
    try:
        got = kept.result(timeout=60)
    finally:
        worker.stop()
    assert worker.metrics.value("mlx_embed_batch_inputs_sum") == 1
    np.testing.assert_allclose(got, embedder.embed([sample[1]]), atol=ATOL)
