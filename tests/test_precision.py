"""precision.quantize against sentence-transformers' quantize_embeddings on the same vectors."""

import numpy as np
import pytest
from sentence_transformers.quantization import quantize_embeddings

from mlx_qwen3_embed import precision


@pytest.fixture(scope="module")
def vectors():
    rng = np.random.default_rng(0)
    v = rng.standard_normal((40, 64)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("name", ["float32", "int8", "uint8", "binary", "ubinary"])
def test_quantize_equals_sentence_transformers(vectors, name):
    ours = precision.quantize(vectors, name)
    theirs = quantize_embeddings(vectors, precision=name)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("name", ["int8", "uint8"])
def test_fixed_ranges_equal_sentence_transformers_and_round_trip(vectors, name):
    bounds = precision.ranges(vectors[:30])
    ours = precision.quantize(vectors[30:], name, bounds)
    np.testing.assert_array_equal(ours, quantize_embeddings(vectors[30:], precision=name, ranges=bounds))
    inside = precision.quantize(vectors[:30], name, bounds)
    back = precision.dequantize(inside, name, bounds)
    step = (bounds[1] - bounds[0]) / 255
    assert np.all(vectors[:30] - back >= -1e-6) and np.all(vectors[:30] - back <= step + 1e-6)


def test_ubinary_is_packbits_of_signs(vectors):
    np.testing.assert_array_equal(precision.quantize(vectors, "ubinary"), np.packbits(vectors > 0, axis=-1))


def test_float16(vectors):
    half = precision.quantize(vectors, "float16")
    assert half.dtype == np.float16 and np.abs(half.astype(np.float32) - vectors).max() < 1e-3


def test_bad_precision_and_single_vector_ranges(vectors):
    with pytest.raises(ValueError, match="precision must be one of"):
        precision.quantize(vectors, "int4")
    with pytest.raises(ValueError, match="at least 2 vectors"):
        precision.quantize(vectors[:1], "int8")
    with pytest.raises(ValueError, match="ranges must have shape"):
        precision.quantize(vectors, "int8", np.zeros((2, 3)))
