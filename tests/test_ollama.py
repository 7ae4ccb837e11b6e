"""The Ollama dialect through the real `ollama` Python client against `mlx-embed serve`: vectors equal the library's,
Ollama's defaults (truncate=true, counted in /metrics), its error shape {"error": "..."} and 4xx for bad input."""

import httpx
import numpy as np
import pytest
from fastapi import testclient as fastapi_testclient

from mlx_qwen3_embed.serve import create_app

ollama = pytest.importorskip("ollama")  # the `test` extra

ATOL = 1e-5
LONG = "The quick brown fox jumps over the lazy dog. " * 120


@pytest.fixture(scope="module")
def client(served):
    return ollama.Client(host=served, timeout=60)


def test_embed_list_equals_library(client, embedder, sample):
    response = client.embed(model="tiny", input=sample)
    np.testing.assert_allclose(np.array(response.embeddings), embedder.embed(sample), atol=ATOL)
    assert response.model == "tiny"
    assert response.prompt_eval_count == sum(len(ids) for ids in embedder.tokenize(sample))
    assert response.total_duration > 0


def test_embed_single_string_gives_one_vector(client, embedder, sample):
    response = client.embed(model="tiny", input=sample[0])
    np.testing.assert_allclose(np.array(response.embeddings), embedder.embed([sample[0]]), atol=ATOL)


def test_embed_dimensions_are_renormalised_matryoshka(client, embedder, sample):
    response = client.embed(model="tiny", input=sample, dimensions=16)
    np.testing.assert_allclose(np.array(response.embeddings), embedder.embed(sample, dim=16), atol=ATOL)


def test_keep_alive_and_options_are_accepted(client, embedder, sample):
    response = client.embed(model="tiny", input=sample[:2], keep_alive="5m", options={"num_ctx": 512})
    np.testing.assert_allclose(np.array(response.embeddings), embedder.embed(sample[:2]), atol=ATOL)


def test_long_input_is_truncated_by_default_and_counted(client, embedder, served):
    before = _truncated(served)
    response = client.embed(model="tiny", input=[LONG, "short"])
    np.testing.assert_allclose(np.array(response.embeddings), embedder.embed([LONG, "short"]), atol=ATOL)
    assert _truncated(served) == before + 1


def test_long_input_without_truncate_is_400_in_ollama_shape(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.embed(model="tiny", input=[LONG], truncate=False)
    assert e.value.status_code == 400 and "max_length" in e.value.error


def test_legacy_embeddings_is_the_raw_pooled_state(client, embedder, sample):
    response = client.embeddings(model="tiny", prompt=sample[0])
    np.testing.assert_allclose(np.array(response.embedding), embedder.embed(sample[0], normalize=False), atol=ATOL)


def test_list_and_show_describe_the_model(client, embedder):
    assert [m.model for m in client.list().models] == ["tiny"]
    shown = client.show("tiny")
    assert shown.modelinfo["qwen3.embedding_length"] == embedder.dim
    assert "embedding" in shown.capabilities


def test_version_is_answered(served):
    assert httpx.get(served + "/api/version").json()["version"]


def test_empty_input_answers_no_vectors_as_ollama_does(client):
    assert list(client.embed(model="tiny", input=[]).embeddings) == []


BAD = {
    "number input": {"model": "tiny", "input": 3},
    "null in list": {"model": "tiny", "input": ["a", None]},
    "dimensions 0": {"model": "tiny", "input": "a", "dimensions": 0},
    "dimensions over dim": {"model": "tiny", "input": "a", "dimensions": 65},
    "truncate not bool": {"model": "tiny", "input": "a", "truncate": "no"},
    "too many inputs": {"model": "tiny", "input": ["a"] * 2049},
}


@pytest.mark.parametrize("body", BAD.values(), ids=BAD.keys())
def test_bad_input_is_400_in_ollama_shape(app_client, body):
    response = app_client.post("/api/embed", json=body)
    assert response.status_code == 400
    assert set(response.json()) == {"error"} and isinstance(response.json()["error"], str)


def test_invalid_json_is_400_in_ollama_shape(app_client):
    response = app_client.post("/api/embed", content=b'{"input": ', headers={"content-type": "application/json"})
    assert response.status_code == 400 and set(response.json()) == {"error"}


def test_unknown_route_answers_in_ollama_shape(app_client):
    response = app_client.post("/api/generate", json={"model": "tiny"})
    assert response.status_code == 404 and set(response.json()) == {"error"}


def test_missing_api_key_is_401_in_ollama_shape(embedder):
    with fastapi_testclient.TestClient(create_app(embedder, api_key="k")) as c:
        refused = c.post("/api/embed", json={"input": "a"})
        allowed = c.post("/api/embed", json={"input": "a"}, headers={"Authorization": "Bearer k"})
    assert refused.status_code == 401 and set(refused.json()) == {"error"}
    assert allowed.status_code == 200


def _truncated(url: str) -> float:
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith('mlx_embed_truncated_inputs_total{api="ollama"}'):
            return float(line.rsplit(" ", 1)[1])
    return 0.0
