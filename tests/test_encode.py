"""Embedder.encode / encode_query / encode_document against sentence-transformers' SentenceTransformer.encode on the
same checkpoint, with the same arguments: vectors (fp32) within 1e-5, quantized outputs equal (int8/uint8 allow one
bucket where a value sits on a bucket edge), shapes and dtypes the same."""

import mlx.core as mx
import numpy as np
import pytest


st = pytest.importorskip("sentence_transformers")

ATOL = 1e-5


@pytest.fixture(scope="module")
def reference(hub_model):
    return st.SentenceTransformer(str(hub_model), device="cpu")


CASES = {
    "defaults": {},
    "prompt_name query": {"prompt_name": "query"},
    "raw prompt": {"prompt": "Instruct: Find code\nQuery:"},
    "prompt wins over prompt_name": {"prompt": "Instruct: Find code\nQuery:", "prompt_name": "query"},
    "truncate_dim": {"truncate_dim": 16},
    "truncate_dim normalized": {"truncate_dim": 16, "normalize_embeddings": True},
    "batch_size 3": {"batch_size": 3},
}


@pytest.mark.parametrize("kwargs", CASES.values(), ids=CASES.keys())
def test_encode_equals_sentence_transformers(embedder, reference, texts, kwargs):
    expected = reference.encode(texts, **kwargs)
    got = embedder.encode(texts, **kwargs)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    np.testing.assert_allclose(got, expected, atol=ATOL)


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_sign_precisions_equal_sentence_transformers(embedder, reference, texts, precision):
    expected = reference.encode(texts, precision=precision, truncate_dim=32)
    got = embedder.encode(texts, precision=precision, truncate_dim=32)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    # a value within float noise of 0 could flip its bit; none here is that close
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_bucket_precisions_equal_sentence_transformers(embedder, reference, texts, precision):
    expected = reference.encode(texts, precision=precision)
    got = embedder.encode(texts, precision=precision)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    assert np.abs(got.astype(np.int16) - expected.astype(np.int16)).max() <= 1


def test_single_string_gives_one_vector(embedder, reference, texts):
    expected = reference.encode(texts[0])
    got = embedder.encode(texts[0])
    assert got.shape == expected.shape == (embedder.dim,)
    np.testing.assert_allclose(got, expected, atol=ATOL)


def test_encode_query_and_document_equal_sentence_transformers(embedder, reference, texts):
    np.testing.assert_allclose(embedder.encode_query(texts), reference.encode_query(texts), atol=ATOL)
    np.testing.assert_allclose(embedder.encode_document(texts), reference.encode_document(texts), atol=ATOL)


def test_output_containers(embedder, texts):
    rows = embedder.encode(texts[:3], convert_to_numpy=False)
    assert isinstance(rows, list) and len(rows) == 3 and rows[0].shape == (embedder.dim,)
    tensor = embedder.encode(texts[:3], convert_to_tensor=True)
    assert isinstance(tensor, mx.array) and tensor.shape == (3, embedder.dim)
    np.testing.assert_allclose(np.array(tensor), np.stack(rows), atol=0)


def test_show_progress_bar_prints_nothing(embedder, texts, capsys):
    embedder.encode(texts, show_progress_bar=True)
    assert capsys.readouterr() == ("", "")


BAD = {
    "batch_size 0": ({"batch_size": 0}, ValueError, "batch_size"),
    "precision": ({"precision": "int4"}, ValueError, "precision"),
    "truncate_dim": ({"truncate_dim": 65}, ValueError, "dim"),
    "token embeddings": ({"output_value": "token_embeddings"}, ValueError, "output_value"),
    "device": ({"device": "cuda"}, ValueError, "device"),
    "unknown prompt_name": ({"prompt_name": "nope"}, ValueError, "nope"),
    "unknown keyword": ({"colour": 1}, TypeError, "colour"),
}


@pytest.mark.parametrize("kwargs, error, word", BAD.values(), ids=BAD.keys())
def test_bad_arguments_are_named(embedder, kwargs, error, word):
    with pytest.raises(error, match=word):
        embedder.encode(["a"], **kwargs)
