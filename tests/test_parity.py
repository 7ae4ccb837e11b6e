"""Parity with the references on the same weights: transformers' Qwen3Model + the model card's recipe,
sentence-transformers, and mlx-lm's own forward pass for quantized checkpoints."""

import mlx.core as mx
import numpy as np
import pytest

import mlx_qwen3_embed as mqe

torch = pytest.importorskip("torch")
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=-1, keepdims=True)
    b = b / np.linalg.norm(b, axis=-1, keepdims=True)
    return (a * b).sum(-1)


def transformers_embed(folder, texts: list[str], max_length: int = 512) -> np.ndarray:
    """The model card's recipe: left padding, last-token pool, L2 normalise."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    model = AutoModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    vectors = hidden[:, -1]  # left padding: the last position is every text's last token
    return torch.nn.functional.normalize(vectors, p=2, dim=1).numpy()


def test_matches_transformers_batched_mixed_lengths(embedder, hub_model, texts):
    expected = transformers_embed(hub_model, texts)
    got = embedder.embed(texts)
    assert cosines(got, expected).min() >= 0.99999


def test_matches_transformers_with_instruction(embedder, hub_model, texts):
    prompted = [f"Instruct: {INSTRUCTION}\nQuery:{t}" for t in texts]
    expected = transformers_embed(hub_model, prompted)
    got = embedder.embed(texts, instruction=INSTRUCTION)
    assert cosines(got, expected).min() >= 0.99999


def test_matches_transformers_when_truncating(embedder, hub_model, texts):
    expected = transformers_embed(hub_model, texts, max_length=8)
    got = embedder.embed(texts, max_length=8)
    assert cosines(got, expected).min() >= 0.99999


def test_matches_sentence_transformers(embedder, hub_model, texts):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(hub_model), device="cpu")
    docs = model.encode(texts, batch_size=4, convert_to_numpy=True)
    queries = model.encode(texts, prompt_name="query", batch_size=4, convert_to_numpy=True)
    assert cosines(embedder.embed_document(texts), docs).min() >= 0.99999
    assert cosines(embedder.embed_query(texts), queries).min() >= 0.99999


def test_matches_sentence_transformers_truncate_dim(embedder, hub_model, texts):
    st = pytest.importorskip("sentence_transformers")
    model = st.SentenceTransformer(str(hub_model), device="cpu", truncate_dim=32)
    expected = model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    got = embedder.embed(texts, dim=32)
    assert got.shape == (len(texts), 32)
    assert cosines(got, expected).min() >= 0.99999


def test_quantized_checkpoint_matches_mlx_lm(mlx_model, texts):
    from mlx_lm.utils import load_model

    reference, _ = load_model(mlx_model)
    ours = mqe.load(str(mlx_model))
    sequences = ours.tokenize(texts)
    expected = []
    for ids in sequences:  # one at a time: mlx-lm has no padding logic of its own
        hidden = reference.model(mx.array([ids]))
        expected.append(np.array(hidden[0, -1].astype(mx.float32)))
    assert cosines(ours.embed(texts), np.stack(expected)).min() >= 0.99999


def test_quantized_kept_on_device_matches_dequantized(mlx_model, texts):
    """The Metal path (quantized matmul) and the CPU path (dequantized fp32) give the same vectors."""
    kept = mqe.load(str(mlx_model), dequantize=False, dtype="float32")
    dequantized = mqe.load(str(mlx_model), dequantize=True)
    assert cosines(kept.embed(texts), dequantized.embed(texts)).min() >= 0.99999
