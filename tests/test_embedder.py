"""Embedder: shapes, batch invariance, Matryoshka dims, prompts, pre-tokenized input and every bad input."""

import numpy as np
import pytest

import mlx_qwen3_embed as mqe

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def model(hub_model):
    return mqe.load(str(hub_model))


@pytest.fixture(scope="module")
def reference_hidden(hub_model, texts):
    """transformers' Qwen3Model hidden states, one text at a time (no padding at all)."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(hub_model))
    reference = AutoModel.from_pretrained(str(hub_model), dtype=torch.float32).eval()
    with torch.no_grad():
        return [reference(**tokenizer(t, return_tensors="pt")).last_hidden_state[0].numpy() for t in texts]


def test_a_text_alone_equals_the_same_text_in_a_mixed_batch(model, texts):
    batched = model.embed(texts)
    for i, text in enumerate(texts):
        assert np.abs(model.embed([text])[0] - batched[i]).max() <= 1e-5


def test_tiny_token_budget_changes_nothing(model, texts):
    np.testing.assert_allclose(model.embed(texts, batch_tokens=8), model.embed(texts), atol=1e-5)


def test_input_order_is_restored(model, texts):
    np.testing.assert_allclose(model.embed(texts[::-1])[::-1], model.embed(texts), atol=1e-5)


def test_shapes_and_unit_rows(model, texts):
    vectors = model.embed(texts)
    assert vectors.dtype == np.float32 and vectors.shape == (len(texts), model.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, rtol=1e-5)
    assert model.embed("a single string").shape == (model.dim,)


def test_empty_list_gives_an_empty_matrix(model):
    assert model.embed([]).shape == (0, model.dim)


def test_empty_string_is_a_valid_text(model):
    vector = model.embed("")
    assert np.isfinite(vector).all() and abs(np.linalg.norm(vector) - 1) < 1e-5


def test_matryoshka_dim_is_the_renormalised_prefix(model, texts):
    full, small = model.embed(texts), model.embed(texts, dim=16)
    expected = full[:, :16] / np.linalg.norm(full[:, :16], axis=1, keepdims=True)
    np.testing.assert_allclose(small, expected, atol=1e-5)


def test_normalize_false_returns_the_reference_last_hidden_state(model, texts, reference_hidden):
    expected = np.stack([h[-1] for h in reference_hidden])
    np.testing.assert_allclose(model.embed(texts, normalize=False), expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", ["mean", "first", "max"])
def test_other_poolings_match_the_reference_hidden_states(model, texts, reference_hidden, method):
    reduce = {"mean": lambda h: h.mean(0), "first": lambda h: h[0], "max": lambda h: h.max(0)}[method]
    expected = np.stack([reduce(h) for h in reference_hidden])
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(model.embed(texts, pooling=method), expected, atol=1e-5)


def test_instruction_equals_the_spelled_out_prompt(model, texts):
    np.testing.assert_allclose(model.embed(texts, instruction="Find code"),
                               model.embed([f"Instruct: Find code\nQuery:{t}" for t in texts]), atol=1e-6)


def test_embed_query_uses_the_checkpoint_query_prompt(model, texts):
    np.testing.assert_allclose(model.embed_query(texts), model.embed(texts, prompt=model.prompts["query"]), atol=1e-6)
    np.testing.assert_allclose(model.embed_document(texts), model.embed(texts), atol=1e-6)


def test_embed_ids_equals_embed_and_adds_the_eos(model, texts):
    ids = model.tokenize(texts)
    np.testing.assert_allclose(model.embed_ids(ids), model.embed(texts), atol=1e-6)
    np.testing.assert_allclose(model.embed_ids([s[:-1] for s in ids]), model.embed(texts), atol=1e-6)


def test_long_inputs_are_finite(model):
    vectors = model.embed(["word " * 2000, "x" * 5000])
    assert np.isfinite(vectors).all()


def test_max_length_applies_at_load(hub_model, texts):
    short = mqe.load(str(hub_model), max_length=8)
    assert max(len(s) for s in short.tokenize(texts)) == 8


@pytest.mark.parametrize("bad", [0, -1, 65, 2.5, True, "16"])
def test_dim_out_of_range_is_refused(model, bad):
    with pytest.raises(ValueError, match=f"dim must be between 1 and 64, got {bad!r}"):
        model.embed(["text"], dim=bad)


@pytest.mark.parametrize("bad, message", [(None, "texts must be a str or a list of str, got NoneType"),
                                          (b"bytes", "texts must be a str or a list of str, got bytes"),
                                          (["ok", 3], "texts\\[1\\] must be a str, got int"),
                                          (["ok", None], "texts\\[1\\] must be a str, got NoneType"),
                                          (42, "got int")])
def test_non_string_inputs_are_type_errors(model, bad, message):
    with pytest.raises(TypeError, match=message):
        model.embed(bad)


def test_over_long_input_can_raise_instead_of_truncating(model, texts):
    too_long = "input 2 has .* (tokens, more than max_length 8|characters, more than 8 tokens)"
    with pytest.raises(ValueError, match=too_long):
        model.embed(["a", "b", texts[-1]], max_length=8, truncate=False)


def test_unknown_prompt_name_lists_the_known_ones(model):
    with pytest.raises(ValueError, match="unknown prompt_name 'passage': this model has document, query"):
        model.embed(["x"], prompt_name="passage")


def test_instruction_and_prompt_together_are_refused(model):
    with pytest.raises(ValueError, match="at most one of instruction, prompt_name and prompt"):
        model.embed(["x"], instruction="a", prompt="b")


def test_bad_token_ids_are_named(model):
    with pytest.raises(ValueError, match="input 1 holds 99999, not a token id"):
        model.embed_ids([[1, 2], [99999]])
    with pytest.raises(TypeError, match="input 0 must be a list of token ids"):
        model.embed_ids(["text"])


@pytest.mark.parametrize("kwargs, message", [(dict(pooling="cls"), "pooling must be one of"),
                                             (dict(batch_tokens=0), "batch_tokens must be a positive int"),
                                             (dict(max_length=1), "max_length must be an int of at least 2")])
def test_bad_options_are_named(model, kwargs, message):
    with pytest.raises(ValueError, match=message):
        model.embed(["x"], **kwargs)
