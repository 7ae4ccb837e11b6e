"""The TEI dialect through huggingface_hub's real InferenceClient and plain HTTP against `mlx-embed serve`: vectors
equal the library's, TEI's defaults (normalize=true, truncate=false), its error shape {"error", "error_type"} and
status (413 too long or too many, 400 Validation for a malformed body, 400 Empty)."""

import httpx
import numpy as np
import pytest


huggingface_hub = pytest.importorskip("huggingface_hub")

ATOL = 1e-5
LONG = "The quick brown fox jumps over the lazy dog. " * 120


@pytest.fixture(scope="module")
def hub_client(served):
    return huggingface_hub.InferenceClient(model=served, timeout=60)


def test_inference_client_feature_extraction_equals_library(hub_client, embedder, sample):
    got = hub_client.feature_extraction(sample[0])
    np.testing.assert_allclose(got, embedder.embed([sample[0]]), atol=ATOL)


def test_inference_client_parameters_reach_the_model(hub_client, embedder, sample):
    got = hub_client.feature_extraction(sample[1], prompt_name="query", normalize=False)
    np.testing.assert_allclose(got, embedder.embed([sample[1]], prompt_name="query", normalize=False), atol=ATOL)


def test_embed_list_equals_library(served, embedder, sample):
    got = httpx.post(served + "/embed", json={"inputs": sample}, timeout=60).json()
    np.testing.assert_allclose(np.array(got), embedder.embed(sample), atol=ATOL)


def test_embed_dimensions_and_raw_vectors(served, embedder, sample):
    got = httpx.post(served + "/embed", json={"inputs": sample, "dimensions": 16}, timeout=60).json()
    np.testing.assert_allclose(np.array(got), embedder.embed(sample, dim=16), atol=ATOL)
    raw = httpx.post(served + "/embed", json={"inputs": sample, "normalize": False}, timeout=60).json()
    np.testing.assert_allclose(np.array(raw), embedder.embed(sample, normalize=False), atol=ATOL)


def test_truncate_right_keeps_the_first_tokens(app_client, embedder):
    got = app_client.post("/embed", json={"inputs": [LONG], "truncate": True}).json()
    np.testing.assert_allclose(np.array(got), embedder.embed([LONG]), atol=ATOL)


def test_truncate_left_keeps_the_last_tokens(app_client, embedder):
    got = app_client.post("/embed", json={"inputs": [LONG + "end"], "truncate": True,
                                          "truncation_direction": "Left"}).json()
    whole = embedder.tokenize([LONG + "end"], max_length=10**6)[0]
    kept = whole[len(whole) - embedder.max_length:]  # the last max_length-1 tokens and the final <|endoftext|>
    np.testing.assert_allclose(np.array(got), embedder.embed_ids([kept]), atol=ATOL)


def test_tokenize_gives_the_model_ids_with_offsets(app_client, embedder, sample):
    tokens = app_client.post("/tokenize", json={"inputs": sample[:2]}).json()
    assert [[t["id"] for t in row] for row in tokens] == embedder.tokenize(sample[:2])
    for text, row in zip(sample[:2], tokens):
        assert "".join(t["text"] for t in row if not t["special"]) == text
        assert row[-1]["special"] and row[-1]["text"] == "<|endoftext|>"


def test_info_describes_the_model(app_client, embedder):
    info = app_client.get("/info").json()
    assert (info["model_id"], info["max_input_length"]) == ("tiny", embedder.max_length)
    assert "embedding" in info["model_type"]


BAD = {
    "too long": ({"inputs": [LONG]}, 413, "Validation"),
    "too many inputs": ({"inputs": ["a"] * 2049}, 413, "Validation"),
    "dimensions over dim": ({"inputs": "a", "dimensions": 65}, 413, "Validation"),
    "unknown prompt_name": ({"inputs": "a", "prompt_name": "nope"}, 413, "Validation"),
    "empty list": ({"inputs": []}, 400, "Empty"),
    "missing inputs": ({"normalize": True}, 400, "Validation"),
    "number input": ({"inputs": 3}, 400, "Validation"),
    "bad direction": ({"inputs": "a", "truncation_direction": "Middle"}, 400, "Validation"),
}


@pytest.mark.parametrize("body, status, error_type", BAD.values(), ids=BAD.keys())
def test_bad_input_in_tei_shape_and_status(app_client, body, status, error_type):
    for path in ("/embed", "/"):
        response = app_client.post(path, json=body)
        assert response.status_code == status
        assert response.json()["error_type"] == error_type and set(response.json()) == {"error", "error_type"}
        assert response.json()["error"]


def test_inference_client_sees_the_413_for_over_long_input(hub_client):
    with pytest.raises(huggingface_hub.errors.HfHubHTTPError) as e:
        hub_client.feature_extraction(LONG)
    assert e.value.response.status_code == 413
