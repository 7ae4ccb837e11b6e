"""The fast embedding path keeps the references' vectors: the last-token-only final block, pipelined batches,
any token budget, and the full forward still serving the other poolings. References: transformers' Qwen3Model
run on each text alone (no padding at all), on the same weights, in float32."""

import warnings

import mlx.core as mx
import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.models import qwen3 as model
from mlx_qwen3_embed.batching import pad_right

torch = pytest.importorskip("torch")


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


@pytest.fixture(scope="module")
def reference_hidden(hub_model, embedder, texts):
    """transformers' final hidden states of each text alone: a list of (L_i, D)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(hub_model), dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(torch.tensor([ids])).last_hidden_state[0].numpy() for ids in embedder.tokenize(texts)]


def test_last_token_equals_transformers_at_each_texts_end(embedder, reference_hidden, texts):
    input_ids, lengths = pad_right(embedder.tokenize(texts), embedder.tokenizer.eos_id)
    got = np.array(embedder.model.last_token(mx.array(input_ids), mx.array(lengths)))
    expected = np.stack([h[-1] for h in reference_hidden])
    assert got.shape == (len(texts), embedder.dim)
    assert cosines(got, expected).min() >= 0.99999
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_full_forward_still_returns_every_position(embedder, reference_hidden, texts):
    input_ids, lengths = pad_right(embedder.tokenize(texts), embedder.tokenizer.eos_id)
    hidden = np.array(embedder.model(mx.array(input_ids)))
    assert hidden.shape == (*input_ids.shape, embedder.dim)
    for row, expected in enumerate(reference_hidden):
        assert cosines(hidden[row, : lengths[row]], expected).min() >= 0.99999


@pytest.mark.parametrize("chunk", [3, 16])
def test_chunked_causal_attention_equals_transformers(embedder, reference_hidden, texts, monkeypatch, chunk):
    monkeypatch.setattr(model, "CHUNK", chunk)  # queries in blocks of 3 or 16 against keys up to each block's end
    expected = np.stack([h[-1] for h in reference_hidden])
    got = embedder.embed(texts, batch_tokens=4096)
    assert cosines(got, expected).min() >= 0.99999


@pytest.mark.parametrize("batch_tokens", [1, 24, 64, 100_000])
def test_any_token_budget_gives_the_reference_vectors(embedder, reference_hidden, texts, batch_tokens):
    # budget 1: every text alone; 24/64: many pipelined batches; 100000: one batch
    expected = np.stack([h[-1] for h in reference_hidden])
    got = embedder.embed(texts, batch_tokens=batch_tokens)
    assert cosines(got, expected).min() >= 0.99999


def test_mean_pooling_uses_every_real_token(embedder, reference_hidden, texts):
    expected = np.stack([h.mean(axis=0) for h in reference_hidden])
    got = embedder.embed(texts, pooling="mean", batch_tokens=64)
    assert cosines(got, expected).min() >= 0.99999


def test_unnormalized_vectors_keep_the_hidden_state_scale(embedder, reference_hidden, texts):
    expected = np.stack([h[-1] for h in reference_hidden])
    got = embedder.embed(texts, normalize=False, batch_tokens=64)
    np.testing.assert_allclose(got, expected, atol=1e-4)


@pytest.mark.parametrize("pack", [True, False])
def test_packed_and_padded_token_rows_give_the_reference(embedder, reference_hidden, texts, pack):
    # packed: only the real tokens go through the projections and MLP; padded: every position of the batch does
    input_ids, lengths = pad_right(embedder.tokenize(texts), embedder.tokenizer.eos_id)
    assert (lengths < lengths.max()).any()  # the batch has padding to skip
    rows = model.Rows(lengths, input_ids.shape[1], pack=pack)
    assert rows.packed == pack
    h = embedder.model.embed_tokens(rows.pack(mx.array(input_ids)))
    assert h.shape[0] == (lengths.sum() if pack else lengths.size * lengths.max())
    for layer in embedder.model.layers[:-1]:
        h = layer(h, rows)
    last = np.array(embedder.model.norm(embedder.model.layers[-1](h, rows, last=True)))
    every = np.array(rows.pad(embedder.model.norm(embedder.model.layers[-1](h, rows))))
    for row, expected in enumerate(reference_hidden):
        assert cosines(every[row, : lengths[row]], expected).min() >= 0.99999
        assert cosines(last[row], expected[-1]) >= 0.99999


def test_rows_pack_only_batches_with_enough_padding():
    assert not model.Rows([10, 10, 10]).packed
    assert not model.Rows([100, 99, 98]).packed  # 1% padding: the gathers would cost more than they save
    assert model.Rows([100, 10, 10]).packed
    rows = model.Rows([3, 1, 2])
    x = mx.arange(3 * 3).reshape(3, 3)  # padded (B, L)
    np.testing.assert_array_equal(np.array(rows.pack(x)), [0, 1, 2, 3, 6, 7])
    np.testing.assert_array_equal(np.array(rows.pad(rows.pack(x))), [[0, 1, 2], [3, 3, 3], [6, 7, 7]])
    np.testing.assert_array_equal(np.array(rows.last), [2, 3, 5])


@pytest.mark.parametrize("kernels", [model.Kernels(), model.Kernels(chunked_attention=True),
                                     model.Kernels(host_exp=True), model.Kernels(chunked_attention=True, host_exp=True)])
def test_every_kernel_choice_gives_the_reference(embedder, reference_hidden, texts, kernels, monkeypatch):
    monkeypatch.setattr(model, "CHUNK", 4)  # several blocks even for these short texts
    rebuilt = model.Qwen3(embedder.args, kernels)
    rebuilt.update(embedder.model.parameters())
    monkeypatch.setattr(embedder, "model", rebuilt)
    expected = np.stack([h[-1] for h in reference_hidden])
    for pooling in ("last", "mean"):
        got = embedder.embed(texts, pooling=pooling, batch_tokens=64)
        want = expected if pooling == "last" else np.stack([h.mean(axis=0) for h in reference_hidden])
        assert cosines(got, want).min() >= 0.99999


def test_host_exp_equals_exp_in_every_float_dtype():
    x = mx.array([-mx.inf, -1e4, -88.0, -3.5, 0.0, 1e-8, 2.25, 80.0], dtype=mx.float32)
    np.testing.assert_allclose(np.array(model.host_exp(x)), np.exp(np.array(x, dtype=np.float64)), rtol=1e-6)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # overflow to inf is the right answer, not a warning for the user
        assert np.array(model.host_exp(mx.array([100.0, mx.inf]))).tolist() == [np.inf, np.inf]
    for dtype in (mx.bfloat16, mx.float16):
        got = model.host_exp(x[2:7].astype(dtype))
        assert got.dtype == dtype
        want = np.array(mx.exp(x[2:7].astype(dtype)).astype(mx.float32))
        # MLX's bfloat16 exp flushes exp(-88) (a float32 subnormal) to zero, numpy keeps it: hence atol
        np.testing.assert_allclose(np.array(got.astype(mx.float32)), want, rtol=1e-2, atol=1e-37)


def test_quantized_last_token_path_matches_mlx_lm(mlx_model, texts):
    from mlx_lm.utils import load_model

    reference, _ = load_model(mlx_model)
    ours = mqe.load(str(mlx_model), dequantize=False, dtype="float32")  # the Metal path, quantized matmuls
    expected = [np.array(reference.model(mx.array([ids]))[0, -1].astype(mx.float32)) for ids in ours.tokenize(texts)]
    assert cosines(ours.embed(texts, batch_tokens=64), np.stack(expected)).min() >= 0.99999
