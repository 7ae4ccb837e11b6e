"""Every dialect x every model kind: each route answers 200 with the library's vectors or scores, or a documented
4xx in its own error shape saying why, never a 5xx. The kinds: a Qwen3 text embedder, a Qwen3-VL embedder, a
Qwen3-Reranker (served alone, then every embedding route is a 404 naming what is missing)."""

import numpy as np
import pytest
from fastapi.testclient import TestClient

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.contracts import EmbeddingModel, RerankModel
from mlx_qwen3_embed.serve import create_app
from rerank_checkpoints import DOCUMENTS, QUERIES
from vl_fixtures import vl_model  # noqa: F401  (session fixture)

TEXTS = ["what is MLX?", "MLX is an array framework for Apple silicon."]


@pytest.fixture(scope="module")
def models(hub_model, vl_model, reranker_hub):
    return {"text": mqe.load(str(hub_model)), "qwen3_vl": mqe.load(str(vl_model)),
            "reranker": mqe.load_reranker(str(reranker_hub))}


@pytest.fixture(scope="module")
def clients(models):
    apps = {"text": create_app(models["text"]), "qwen3_vl": create_app(models["qwen3_vl"]),
            "reranker": create_app(None, reranker=models["reranker"])}
    with TestClient(apps["text"]) as text, TestClient(apps["qwen3_vl"]) as vl, TestClient(apps["reranker"]) as r:
        yield {"text": text, "qwen3_vl": vl, "reranker": r}


def test_every_model_implements_its_contract(models):
    assert isinstance(models["text"], EmbeddingModel) and isinstance(models["qwen3_vl"], EmbeddingModel)
    assert isinstance(models["reranker"], RerankModel)


EMBED_KINDS = ["text", "qwen3_vl"]


@pytest.mark.parametrize("kind", EMBED_KINDS)
def test_openai_equals_library(clients, models, kind):
    response = clients[kind].post("/v1/embeddings", json={"input": TEXTS, "dimensions": 16})
    assert response.status_code == 200, response.text
    got = np.array([d["embedding"] for d in response.json()["data"]], np.float32)
    np.testing.assert_allclose(got, models[kind].embed(TEXTS, dim=16), atol=1e-5)


@pytest.mark.parametrize("kind", EMBED_KINDS)
def test_ollama_embed_equals_library(clients, models, kind):
    response = clients[kind].post("/api/embed", json={"input": TEXTS})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json()["embeddings"], np.float32), models[kind].embed(TEXTS),
                               atol=1e-5)
    assert response.json()["prompt_eval_count"] == sum(len(p) for p in models[kind].prepare_inputs(TEXTS))


@pytest.mark.parametrize("kind", EMBED_KINDS)
def test_ollama_legacy_route_answers_the_raw_vector(clients, models, kind):
    response = clients[kind].post("/api/embeddings", json={"prompt": TEXTS[0]})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(response.json()["embedding"], models[kind].embed(TEXTS[0], normalize=False),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", EMBED_KINDS)
def test_ollama_show_and_tags_describe_the_model(clients, models, kind):
    family = models[kind].describe()["family"]
    shown = clients[kind].post("/api/show", json={"model": "x"})
    assert shown.status_code == 200 and shown.json()["model_info"][f"{family}.embedding_length"] == models[kind].dim
    assert clients[kind].get("/api/tags").json()["models"][0]["details"]["family"] == family


@pytest.mark.parametrize("path", ["/embed", "/"])
@pytest.mark.parametrize("kind", EMBED_KINDS)
def test_tei_embed_equals_library(clients, models, kind, path):
    response = clients[kind].post(path, json={"inputs": TEXTS, "normalize": False})
    assert response.status_code == 200, response.text
    np.testing.assert_allclose(np.array(response.json(), np.float32), models[kind].embed(TEXTS, normalize=False),
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", EMBED_KINDS)
def test_tei_tokenize_gives_what_the_model_reads(clients, models, kind):
    response = clients[kind].post("/tokenize", json={"inputs": TEXTS[1]})
    assert response.status_code == 200, response.text
    tokens = response.json()[0]
    prepared = models[kind].prepare_inputs([TEXTS[1]])[0]
    read = list(prepared) if kind == "text" else prepared.ids  # a text's ids; a Qwen3-VL item's template ids
    assert [t["id"] for t in tokens] == read
    plain = [t for t in tokens if not t["special"]]
    assert "".join(TEXTS[1][t["start"]:t["stop"]] for t in plain) == TEXTS[1]


@pytest.mark.parametrize("kind", EMBED_KINDS)
def test_tei_unknown_prompt_name_is_413_in_tei_shape(clients, kind):
    response = clients[kind].post("/embed", json={"inputs": "x", "prompt_name": "nope"})
    assert response.status_code == 413 and "unknown prompt_name 'nope'" in response.json()["error"]
    assert response.json()["error_type"] == "Validation"


def test_token_ids_on_a_qwen3_vl_model_are_a_400_saying_why(clients):
    response = clients["qwen3_vl"].post("/v1/embeddings", json={"input": [[1, 2, 3]]})
    assert response.status_code == 400 and "does not read bare token ids" in response.json()["error"]["message"]


def test_an_image_item_on_a_text_model_is_a_400_naming_it(clients):
    response = clients["text"].post("/v1/embeddings", json={"input": ["a", {"image": "aGVsbG8="}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith("input[1] ") and "Qwen3-VL" in error["message"]


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank", "/rerank"])
@pytest.mark.parametrize("kind", EMBED_KINDS)
def test_rerank_routes_without_a_reranker_are_404_naming_the_fix(clients, kind, path):
    body = {"query": "q", "documents": ["d"]} if path != "/rerank" else {"query": "q", "texts": ["d"]}
    response = clients[kind].post(path, json=body)
    assert response.status_code == 404 and "--reranker" in response.text


@pytest.mark.parametrize("path", ["/v1/rerank", "/v2/rerank"])
def test_cohere_rerank_equals_library(clients, models, path):
    response = clients["reranker"].post(path, json={"query": QUERIES[0], "documents": DOCUMENTS})
    assert response.status_code == 200, response.text
    scores = models["reranker"].score(QUERIES[0], DOCUMENTS)
    got = {r["index"]: r["relevance_score"] for r in response.json()["results"]}
    np.testing.assert_allclose([got[i] for i in range(len(DOCUMENTS))], scores, atol=1e-6)


def test_tei_rerank_equals_library(clients, models):
    response = clients["reranker"].post("/rerank", json={"query": QUERIES[1], "texts": DOCUMENTS})
    assert response.status_code == 200, response.text
    got = {r["index"]: r["score"] for r in response.json()}
    np.testing.assert_allclose([got[i] for i in range(len(DOCUMENTS))], models["reranker"].score(QUERIES[1], DOCUMENTS),
                               atol=1e-6)


@pytest.mark.parametrize("method, path, body", [
    ("post", "/v1/embeddings", {"input": "x"}), ("post", "/api/embed", {"input": "x"}),
    ("post", "/api/embeddings", {"prompt": "x"}), ("post", "/embed", {"inputs": "x"}), ("post", "/", {"inputs": "x"}),
    ("post", "/tokenize", {"inputs": "x"})])
def test_embedding_routes_of_a_reranker_only_server_are_4xx(clients, method, path, body):
    response = getattr(clients["reranker"], method)(path, json=body)
    assert 400 <= response.status_code < 500, response.text
