"""Batching: every text exactly once, within the token budget, right-padded."""

import numpy as np

from mlx_qwen3_embed.batching import pad_right, plan_batches


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
