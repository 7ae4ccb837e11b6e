"""The `precision` extension of /v1/embeddings (through the real openai SDK against `mlx-embed serve`) and TEI's
/embed: the rows equal sentence-transformers' quantize_embeddings of the server's own float32 vectors, base64 carries
them as OpenAI's float32 bytes (what the SDK decodes), int8/uint8 take the request's ranges or its own (never a
single vector's), bad values are 400s in each dialect's error shape."""

import base64

import httpx
import numpy as np
import pytest
from fastapi import testclient as fastapi_testclient

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.serve import create_app

openai = pytest.importorskip("openai")  # the `test` extra
quantization = pytest.importorskip("sentence_transformers.util.quantization")
quantize_embeddings = quantization.quantize_embeddings



@pytest.fixture(scope="module")
def sample(texts) -> list[str]:
    return [t for t in texts if t]


@pytest.fixture(scope="module")
def sdk(served):
    return openai.OpenAI(base_url=served + "/v1", api_key="unused", max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def floats(sdk, sample) -> np.ndarray:
    """The server's own float32 vectors of `sample`: what its compact rows must be quantized from."""
    response = sdk.embeddings.create(model="tiny", input=sample, encoding_format="float")
    return np.array([d.embedding for d in response.data], dtype=np.float32)


@pytest.fixture(scope="module")
def client(hub_model):
    with fastapi_testclient.TestClient(create_app(mqe.load(str(hub_model)), served_model_name="tiny")) as c:
        yield c


def rows(response) -> np.ndarray:
    return np.array([d.embedding for d in sorted(response.data, key=lambda d: d.index)])


@pytest.mark.parametrize("precision", ["binary", "ubinary", "int8", "uint8", "float16"])
def test_sdk_precision_equals_quantize_embeddings_of_the_float_vectors(sdk, sample, floats, precision):
    response = sdk.embeddings.create(model="tiny", input=sample, encoding_format="float",
                                     extra_body={"precision": precision})
    got = rows(response)
    if precision == "float16":
        np.testing.assert_array_equal(got, floats.astype(np.float16).astype(np.float64))
        return
    # without ranges, int8/uint8 take the request's own per-dimension min/max, as quantize_embeddings does
    expected = quantize_embeddings(floats, precision)
    np.testing.assert_array_equal(got, expected)
    assert response.model_extra["precision"] == precision
    if precision in ("int8", "uint8"):
        np.testing.assert_array_equal(np.array(response.model_extra["ranges"], np.float32),
                                      np.vstack((floats.min(0), floats.max(0))))


def test_compact_rows_are_json_integers(client):
    for precision in ("binary", "ubinary", "int8", "uint8"):
        body = client.post("/v1/embeddings", json={"input": ["a b", "c d"], "precision": precision}).json()
        assert all(type(x) is int for d in body["data"] for x in d["embedding"])


@pytest.mark.parametrize("precision", ["binary", "ubinary", "int8", "float16"])
@pytest.mark.parametrize("encoding_format", ["base64", None], ids=["base64", "sdk-default"])
def test_sdk_base64_decodes_to_the_compact_values(sdk, sample, floats, precision, encoding_format):
    """base64 is OpenAI's float32 bytes whatever the precision: the SDK's own decoding (its default asks for
    base64) gives the compact values, never garbage."""
    extra = {} if encoding_format is None else {"encoding_format": encoding_format}
    response = sdk.embeddings.create(model="tiny", input=sample, extra_body={"precision": precision}, **extra)
    if encoding_format is None:  # the SDK asked for base64 itself and decoded it
        got = np.array([d.embedding for d in response.data], np.float32)
    else:  # asked for explicitly, the SDK hands over the strings
        got = np.array([np.frombuffer(base64.b64decode(d.embedding), "<f4") for d in response.data])
    expected = floats.astype(np.float16) if precision == "float16" else quantize_embeddings(floats, precision)
    np.testing.assert_array_equal(got, expected.astype(np.float32))


def test_sdk_int8_with_given_ranges_quantizes_one_query_like_the_corpus(sdk, sample, floats):
    ranges = np.vstack((floats.min(0), floats.max(0))) * 1.5  # say, a corpus job's ranges
    response = sdk.embeddings.create(model="tiny", input=sample[0], encoding_format="float",
                                     extra_body={"precision": "int8", "ranges": ranges.tolist()})
    np.testing.assert_array_equal(rows(response), quantize_embeddings(floats[:1], "int8", ranges=ranges))
    np.testing.assert_array_equal(np.array(response.model_extra["ranges"], np.float32), ranges.astype(np.float32))


def test_sdk_binary_with_dimensions_packs_the_truncated_vector(sdk, sample):
    small = rows(sdk.embeddings.create(model="tiny", input=sample, dimensions=32, encoding_format="float"))
    packed = rows(sdk.embeddings.create(model="tiny", input=sample, dimensions=32, encoding_format="float",
                                        extra_body={"precision": "ubinary"}))
    assert packed.shape == (len(sample), 4)
    np.testing.assert_array_equal(packed, quantize_embeddings(small.astype(np.float32), "ubinary"))


def test_sdk_int8_of_one_input_without_ranges_is_a_400_saying_what_to_send(sdk, sample):
    # quantize_embeddings refuses a single embedding too: its own min/max would be no range at all
    with pytest.raises(ValueError, match="single embedding"):
        quantize_embeddings(np.ones((1, 4), np.float32), "int8")
    with pytest.raises(openai.BadRequestError) as e:
        sdk.embeddings.create(model="tiny", input=sample[0], encoding_format="float", extra_body={"precision": "int8"})
    assert e.value.status_code == 400 and "send \"ranges\"" in e.value.message
    assert e.value.body["param"] == "ranges" and e.value.body["code"] == "missing_ranges"


BAD = {
    "unknown precision": ({"precision": "int4"}, "precision", "precision must be one of float32, float16, int8"),
    "precision not a string": ({"precision": 8}, "precision", "precision"),
    "ranges without precision": ({"ranges": [[0.0] * 64, [1.0] * 64]}, "ranges", "send \"precision\" too"),
    "ranges for binary": ({"precision": "binary", "ranges": [[0.0] * 64, [1.0] * 64]}, "ranges",
                          "int8 or uint8, not binary"),
    "ranges of the wrong width": ({"precision": "int8", "ranges": [[0.0] * 8, [1.0] * 8]}, "ranges",
                                  "2 lists of 64 numbers"),
    "ragged ranges": ({"precision": "uint8", "ranges": [[0.0] * 64, [1.0]]}, "ranges", "ragged"),
    "min over max": ({"precision": "int8", "ranges": [[1.0] * 64, [0.0] * 64]}, "ranges", "min <= its max"),
}


@pytest.mark.parametrize("extra, param, message", BAD.values(), ids=BAD.keys())
def test_bad_precision_or_ranges_is_400_in_openai_shape(client, extra, param, message):
    response = client.post("/v1/embeddings", json={"input": ["a b", "c d"], "model": "tiny", **extra})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == param and message in error["message"] and error["type"] == "invalid_request_error"


# --- TEI /embed ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["ubinary", "uint8"])
def test_tei_embed_precision_equals_quantize_embeddings(served, sample, precision):
    floats = np.array(httpx.post(served + "/embed", json={"inputs": sample}, timeout=60).json(), np.float32)
    got = httpx.post(served + "/embed", json={"inputs": sample, "precision": precision}, timeout=60)
    assert got.status_code == 200 and all(isinstance(x, int) for x in got.json()[0])
    np.testing.assert_array_equal(np.array(got.json()), quantize_embeddings(floats, precision))


def test_tei_bad_precision_is_400_in_tei_shape(client):
    for body, message in (({"inputs": "a", "precision": "int4"}, "precision must be one of"),
                          ({"inputs": "a", "precision": "int8"}, "int8 needs per-dimension ranges")):
        response = client.post("/embed", json=body)
        assert response.status_code == 400 and set(response.json()) == {"error", "error_type"}
        assert response.json()["error_type"] == "Validation" and message in response.json()["error"]
