"""Rerank through `mlx-embed serve --reranker`: the real cohere SDK (v1 and v2 clients) and raw TEI-shaped requests
get the library's scores; bad input is a 4xx in each API's error shape; rerank and embedding jobs share the worker."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.serve import create_app
from rerank_checkpoints import DOCUMENTS, QUERIES
from server_process import running_server

KEY = "secret-key"


@pytest.fixture(scope="module")
def reranker(reranker_hub):
    return mqe.load_reranker(str(reranker_hub))


@pytest.fixture(scope="module")
def server(hub_model, reranker_hub, tmp_path_factory):
    """A real `mlx-embed serve --model E --reranker R --api-key K` on a free loopback port: its base URL."""
    log = tmp_path_factory.mktemp("rerank-serve") / "serve.log"
    with running_server(["--model", str(hub_model), "--reranker", str(reranker_hub), "--api-key", KEY,
                         "--log-level", "warning"], log) as url:
        yield url


@pytest.fixture(scope="module")
def client(hub_model, reranker_hub, reranker):
    with TestClient(create_app(mqe.load(str(hub_model)), reranker=reranker)) as c:
        yield c


def test_cohere_v2_client_gets_the_librarys_scores(server, reranker):
    import cohere

    co = cohere.ClientV2(api_key=KEY, base_url=server)
    response = co.rerank(model="tiny", query=QUERIES[0], documents=DOCUMENTS, top_n=5)
    expected = reranker.rerank(QUERIES[0], DOCUMENTS, top_n=5)
    assert [r.index for r in response.results] == [e["index"] for e in expected]
    assert np.abs(np.array([r.relevance_score for r in response.results])
                  - np.array([e["score"] for e in expected])).max() <= 1e-6


def test_cohere_v1_client_returns_documents(server, reranker):
    import cohere

    co = cohere.Client(api_key=KEY, base_url=server)
    documents = DOCUMENTS[:6]
    response = co.rerank(query=QUERIES[1], documents=[{"text": d} for d in documents], return_documents=True,
                         model="tiny")
    scores = reranker.score(QUERIES[1], documents)
    assert [r.index for r in response.results] == list(np.argsort(-scores, kind="stable"))
    assert all(r.document.text == documents[r.index] for r in response.results)
    assert all(abs(r.relevance_score - scores[r.index]) <= 1e-6 for r in response.results)


def test_cohere_client_sees_a_bad_request(server):
    import cohere
    from cohere.core.api_error import ApiError

    co = cohere.ClientV2(api_key=KEY, base_url=server)
    with pytest.raises(ApiError) as raised:
        co.rerank(model="tiny", query="q", documents=[], top_n=1)
    assert raised.value.status_code == 400 and "documents is empty" in raised.value.body["message"]


def test_tei_rerank_raw_request(server, reranker):
    import httpx

    documents = DOCUMENTS[:7]
    headers = {"Authorization": f"Bearer {KEY}"}
    answer = httpx.post(server + "/rerank", json={"query": QUERIES[2], "texts": documents, "return_text": True},
                        headers=headers, timeout=60).json()
    scores = reranker.score(QUERIES[2], documents)
    assert [a["index"] for a in answer] == list(np.argsort(-scores, kind="stable"))
    assert all(abs(a["score"] - scores[a["index"]]) <= 1e-6 and a["text"] == documents[a["index"]] for a in answer)
    raw = httpx.post(server + "/rerank", json={"query": QUERIES[2], "texts": documents, "raw_scores": True},
                     headers=headers, timeout=60).json()
    logits = reranker.score_ids(reranker.tokenize(QUERIES[2], documents), raw=True)
    assert all(abs(a["score"] - logits[a["index"]]) <= 1e-5 and "text" not in a for a in raw)


def test_rerank_needs_the_api_key(server):
    import httpx

    answer = httpx.post(server + "/rerank", json={"query": "q", "texts": ["d"]}, timeout=30)
    assert answer.status_code == 401 and answer.json()["error_type"] == "Unauthorized"
    answer = httpx.post(server + "/v1/rerank", json={"query": "q", "documents": ["d"]}, timeout=30)
    assert answer.status_code == 401 and "API key" in answer.json()["message"]


def test_rerank_and_embedding_requests_share_the_worker(client, hub_model, reranker):
    answer = client.post("/v1/rerank", json={"query": QUERIES[0], "documents": DOCUMENTS[:3]})
    embedded = client.post("/v1/embeddings", json={"input": ["a text"]})
    assert answer.status_code == 200 and embedded.status_code == 200
    body = answer.json()
    assert body["results"][0]["document"]["text"] == DOCUMENTS[body["results"][0]["index"]]  # v1 returns them
    assert body["usage"]["total_tokens"] == sum(len(s) for s in reranker.tokenize(QUERIES[0], DOCUMENTS[:3]))
    assert "document" not in client.post("/v2/rerank", json={"model": "m", "query": "q",
                                                             "documents": ["d"]}).json()["results"][0]
    metrics = client.get("/metrics").text
    assert 'mlx_embed_requests_total{code="200",path="/v1/rerank"} 1.0' in metrics


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/rerank", {"query": "q", "documents": []}, 400, "documents is empty"),
    ("/v2/rerank", {"query": "q", "documents": ["ok", 3]}, 400, "documents[1] must be a string"),
    ("/v2/rerank", {"query": "q", "documents": ["d"], "top_n": 0}, 400, "top_n must be at least 1"),
    ("/v1/rerank", {"query": " ".join(DOCUMENTS) * 20, "documents": ["d"]}, 400, "shorten the query"),
    ("/v1/rerank", {"documents": ["d"]}, 400, "query"),
])
def test_cohere_errors_are_in_cohere_shape(client, path, body, status, message):
    answer = client.post(path, json=body)
    assert answer.status_code == status and message in answer.json()["message"]


@pytest.mark.parametrize("body, status, error_type, message", [
    ({"query": "q", "texts": []}, 400, "Empty", "texts is empty"),
    ({"query": "q", "texts": [{"text": "d"}]}, 400, "Validation", "texts[0] must be a string"),
    ({"query": "q", "texts": [" ".join(DOCUMENTS) * 20]}, 413, "Validation", "more than max_length"),
])
def test_tei_errors_are_in_tei_shape(client, body, status, error_type, message):
    answer = client.post("/rerank", json=body)
    assert answer.status_code == status
    assert answer.json()["error_type"] == error_type and message in answer.json()["error"]


def test_tei_truncate_cuts_the_document(client, reranker):
    long_document = " ".join(DOCUMENTS) * 20
    answer = client.post("/rerank", json={"query": "q", "texts": [long_document], "truncate": True})
    assert answer.status_code == 200
    assert abs(answer.json()[0]["score"] - reranker.score("q", [long_document])[0]) <= 1e-6


def test_a_server_with_only_a_reranker(reranker):
    with TestClient(create_app(None, reranker=reranker)) as c:
        assert c.post("/rerank", json={"query": "q", "texts": ["a", "b"]}).status_code == 200
        assert c.post("/v1/embeddings", json={"input": "x"}).status_code == 404


def test_a_server_without_a_reranker_says_how_to_add_one(hub_model):
    with TestClient(create_app(mqe.load(str(hub_model)))) as c:
        answer = c.post("/v2/rerank", json={"model": "m", "query": "q", "documents": ["d"]})
    assert answer.status_code == 404 and "--reranker" in answer.json()["message"]


def test_a_model_call_holds_jobs_of_one_kind(hub_model, reranker):
    from mlx_qwen3_embed.serve.worker import BatchWorker, Job

    embedder = mqe.load(str(hub_model))
    worker = BatchWorker(embedder, reranker=reranker)
    pairs = reranker.tokenize(QUERIES[0], DOCUMENTS[:2])
    jobs = [Job(embedder.tokenize(["a", "b"]), embedder.dim), Job(pairs, 1, kind="rerank"),
            Job(embedder.tokenize(["c"]), embedder.dim)]
    for job in jobs:
        worker.submit(job)
    calls = []
    while not all(job.future.done() for job in jobs):
        chunks = worker._take()
        calls.append({chunk.job.kind for chunk in chunks})
        worker._run(chunks)
    assert all(len(kinds) == 1 for kinds in calls) and {"embed", "rerank"} == set().union(*calls)
    assert np.abs(jobs[1].future.result()[:, 0]
                  - reranker.score_ids(pairs, raw=True)).max() <= 1e-6
