"""`/v1/embeddings` with a Qwen3-VL model: Jina-style items ({"text"}, {"image": data URL or base64}) equal the
library's vectors; local paths, remote URLs, bad images and images over the cap are 400s naming the input."""

import base64
import io

import fastapi.testclient
import numpy as np
import pytest
from PIL import Image

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.serve.app import create_app
from vl_fixtures import vl_model  # noqa: F401  (session fixture)


@pytest.fixture(scope="module")
def embedder(vl_model):
    return mqe.load(str(vl_model))


@pytest.fixture(scope="module")
def client(embedder):
    with fastapi.testclient.TestClient(create_app(embedder, served_model_name="tiny-vl")) as c:
        yield c


@pytest.fixture(scope="module")
def png() -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (70, 90, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_items_equal_library(client, embedder, png):
    b64 = base64.b64encode(png).decode()
    body = {"input": ["plain text", {"text": "caption", "image": "data:image/png;base64," + b64}, {"image": b64}],
            "instruction": "Find the photo", "dimensions": 32}
    response = client.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    expected = embedder.embed(["plain text", {"text": "caption", "image": png}, {"image": png}],
                              instruction="Find the photo", dim=32)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    tokens = sum(len(embedder.prepare(i, 0, "Find the photo")) for i in ["plain text", {"image": png}])
    assert response.json()["usage"]["prompt_tokens"] > tokens  # the caption's tokens too


@pytest.mark.parametrize("image, words", [
    ("/etc/hostname", "neither a data URL nor valid base64"),
    ("https://example.com/a.png", "--allow-remote-images"),
    (base64.b64encode(b"not an image").decode(), "not a readable image"),
])
def test_bad_images_are_400_naming_the_input(client, image, words):
    response = client.post("/v1/embeddings", json={"input": ["fine", {"image": image}]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["message"].startswith("input[1]") and words in error["message"] and error["param"] == "input"


def test_image_over_the_cap_is_400(client):
    buffer = io.BytesIO()
    Image.new("RGB", (9000, 8000)).save(buffer, format="PNG")
    response = client.post("/v1/embeddings", json={"input": {"image": base64.b64encode(buffer.getvalue()).decode()}})
    assert response.status_code == 400 and "over the cap" in response.json()["error"]["message"]


def test_item_without_content_is_400(client):
    response = client.post("/v1/embeddings", json={"input": [{"instruction": "x"}]})
    assert response.status_code == 400 and "none of text, image and video" in response.json()["error"]["message"]
