"""Pooling, Matryoshka truncation and normalisation against plain numpy."""

import mlx.core as mx
import numpy as np
import pytest

from mlx_qwen3_embed.pooling import normalize, pool, truncate


@pytest.fixture
def batch():
    rng = np.random.default_rng(1)
    return rng.standard_normal((3, 5, 4)).astype(np.float32), np.array([5, 2, 1], dtype=np.int32)


@pytest.mark.parametrize("method", ["last", "first", "mean", "max"])
def test_pooling_reads_only_real_tokens(batch, method):
    hidden, lengths = batch
    real = [hidden[b, : lengths[b]] for b in range(3)]
    expected = {"last": [r[-1] for r in real], "first": [r[0] for r in real],
                "mean": [r.mean(0) for r in real], "max": [r.max(0) for r in real]}[method]
    got = np.array(pool(mx.array(hidden), mx.array(lengths), method))
    np.testing.assert_allclose(got, np.stack(expected), rtol=1e-6, atol=1e-6)


def test_unknown_pooling_is_named(batch):
    with pytest.raises(ValueError, match="pooling must be one of last, mean, first, max, got 'cls'"):
        pool(mx.array(batch[0]), mx.array(batch[1]), "cls")


def test_truncate_then_normalize_gives_unit_prefixes(batch):
    vectors = mx.array(batch[0][:, 0])
    got = np.array(normalize(truncate(vectors, 2)))
    expected = batch[0][:, 0, :2] / np.linalg.norm(batch[0][:, 0, :2], axis=1, keepdims=True)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_normalize_leaves_a_zero_row_finite():
    got = np.array(normalize(mx.zeros((2, 3))))
    assert np.isfinite(got).all() and (got == 0).all()
