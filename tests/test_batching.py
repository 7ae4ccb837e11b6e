"""Batching: every text exactly once, within the token budget, right-padded; run_batches puts rows back in input
order and refuses non-finite ones."""

from types import SimpleNamespace

import mlx.core as mx
import numpy as np
import pytest

from mlx_qwen3_embed.batching import pad_right, padded, plan_batches, run_batches


def test_batches_cover_every_text_once_within_the_budget():
    lengths = [5, 40, 3, 17, 17, 100, 1, 64, 9, 33]
    batches = plan_batches(lengths, batch_tokens=64)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) == 1 or len(b) * max(lengths[i] for i in b) <= 64


def test_a_text_longer_than_the_budget_goes_alone():
    batches = plan_batches([10, 500, 10], batch_tokens=64)
    assert [1] in batches


def test_batches_group_similar_lengths_longest_first():
    lengths = [1, 50, 2, 49]
    assert plan_batches(lengths, batch_tokens=100) == [[1, 3], [2, 0]]


def test_pad_right_keeps_ids_at_the_start_and_reports_lengths():
    input_ids, lengths = pad_right([[1, 2, 3], [4]], pad_id=0)
    np.testing.assert_array_equal(input_ids, [[1, 2, 3], [4, 0, 0]])
    np.testing.assert_array_equal(lengths, [3, 1])


def _device(batch_tokens: int):
    return SimpleNamespace(stream=mx.cpu, batch_tokens=batch_tokens, dtype=mx.float32)


def test_run_batches_puts_each_batchs_rows_back_in_input_order():
    sequences = [[1, 2], [3, 4, 5, 6, 7], [8], [9, 10, 11], [12, 13, 14, 15]]
    seen = []

    def forward(input_ids, lengths):  # row sum of the real ids and the length: one row each
        seen.append(input_ids.shape[0])
        return mx.stack([input_ids.sum(axis=1), lengths], axis=1).astype(mx.float32)

    out = run_batches(sequences, padded(forward, pad_id=0), np.empty((5, 2), np.float32), _device(8), name="m")
    np.testing.assert_array_equal(out, [[sum(s), len(s)] for s in sequences])
    assert len(seen) > 1  # several batches, so the pipelined copy-out ran


def test_run_batches_refuses_non_finite_rows_naming_the_model():
    def forward(batch):
        return mx.array([float("nan") if s[0] == 3 else 1.0 for s in batch])

    with pytest.raises(FloatingPointError, match="tiny produced non-finite scores .*dtype='float32'"):
        run_batches([[1], [3, 3], [2]], forward, np.empty(3, np.float32), _device(64), name="tiny", what="scores")
