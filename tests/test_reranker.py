"""Reranker against the model card's recipe run by transformers (hub layouts) and by mlx-lm's own model
(mlx-community layout), on the same random weights; batching independence; the errors of bad input."""

import json

import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.checkpoint.weights import model_kind
from rerank_checkpoints import DOCUMENTS, QUERIES

# The model card's template, written out here rather than imported, so the test checks ours too
CARD_PREFIX = ("<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the "
               "Instruct provided. Note that the answer can only be \"yes\" or \"no\".<|im_end|>\n<|im_start|>user\n")
CARD_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
CARD_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
TOLERANCE = 1e-5
PAIRS = [(q, d) for q in QUERIES for d in DOCUMENTS]


def card_ids(folder, pairs, instruction=None, max_length=8192):
    """The card's process_inputs: the body tokenized alone and truncated, then prefix + body + suffix."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), padding_side="left")
    prefix = tok.encode(CARD_PREFIX, add_special_tokens=False)
    suffix = tok.encode(CARD_SUFFIX, add_special_tokens=False)
    bodies = [f"<Instruct>: {instruction or CARD_INSTRUCTION}\n<Query>: {q}\n<Document>: {d}" for q, d in pairs]
    encoded = tok(bodies, padding=False, truncation="longest_first", return_attention_mask=False,
                  add_special_tokens=False, max_length=max_length - len(prefix) - len(suffix))
    return tok, [prefix + ids + suffix for ids in encoded["input_ids"]]


def transformers_scores(folder, pairs, instruction=None, max_length=8192):
    """The card's compute_logits: AutoModelForCausalLM, left-padded batch, softmax over no/yes at the end."""
    import torch
    from transformers import AutoModelForCausalLM

    tok, ids = card_ids(folder, pairs, instruction, max_length)
    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    batch = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")
    with torch.no_grad():
        logits = model(**batch).logits[:, -1, :]
    scores = torch.nn.functional.log_softmax(torch.stack([logits[:, no], logits[:, yes]], dim=1), dim=1)
    return scores[:, 1].exp().numpy()


def mlx_lm_scores(folder, pairs):
    """mlx-lm's own model of the quantized checkpoint, full logits at each pair's last token."""
    import mlx.core as mx
    from mlx_lm.utils import load_model

    tok, ids = card_ids(folder, pairs)
    model, _ = load_model(folder)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    scores = []
    for sequence in ids:
        logits = model(mx.array([sequence]))[0, -1].astype(mx.float32)
        scores.append(mx.softmax(mx.stack([logits[no], logits[yes]]))[1].item())
    return np.array(scores)


@pytest.fixture(scope="module")
def reranker(reranker_hub):
    return mqe.load_reranker(str(reranker_hub))


def assert_spread(scores):
    """Random weights otherwise give 0.5 everywhere: parity on such scores would prove nothing."""
    assert scores.max() - scores.min() > 0.4 and 0.01 < scores.min() and scores.max() < 0.99, scores


def test_tied_head_matches_transformers_running_the_card(reranker, reranker_hub):
    ours = reranker.score_pairs(PAIRS)
    reference = transformers_scores(reranker_hub, PAIRS)
    assert ours.dtype == np.float32 and ours.shape == (len(PAIRS),)
    assert_spread(reference)
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_untied_lm_head_matches_transformers(reranker_untied):
    ours = mqe.load_reranker(str(reranker_untied)).score_pairs(PAIRS)
    reference = transformers_scores(reranker_untied, PAIRS)
    assert_spread(reference)
    assert np.abs(ours - reference).max() <= TOLERANCE


@pytest.mark.parametrize("fixture", ["reranker_mlx", "reranker_mlx_untied"])
def test_mlx_community_layout_matches_mlx_lm(fixture, request):
    folder = request.getfixturevalue(fixture)
    pairs = PAIRS[::3]
    ours = mqe.load_reranker(str(folder)).score_pairs(pairs)
    reference = mlx_lm_scores(folder, pairs)
    assert_spread(reference)
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_instruction_is_the_cards(reranker, reranker_hub):
    instruction = "Judge whether the passage is written in French"
    ours = reranker.score(QUERIES[1], DOCUMENTS, instruction=instruction)
    reference = transformers_scores(reranker_hub, [(QUERIES[1], d) for d in DOCUMENTS], instruction)
    assert np.abs(ours - reference).max() <= TOLERANCE
    assert np.abs(ours - reranker.score(QUERIES[1], DOCUMENTS)).max() > 1e-3  # the instruction is read


def test_truncation_cuts_only_the_document(reranker, reranker_hub):
    long_document = " ".join(DOCUMENTS) * 3
    pairs = [(QUERIES[0], long_document), (QUERIES[2], DOCUMENTS[1])]
    sequences = reranker.tokenize_pairs(pairs, max_length=160)
    assert len(sequences[0]) == 160 and sequences[0][-len(reranker.suffix_ids):] == reranker.suffix_ids
    _, reference_ids = card_ids(reranker_hub, pairs, max_length=160)
    assert sequences == reference_ids
    short = mqe.load_reranker(str(reranker_hub), max_length=160)
    reference = transformers_scores(reranker_hub, pairs, max_length=160)
    assert np.abs(short.score_pairs(pairs) - reference).max() <= TOLERANCE


def test_ids_are_the_cards_for_awkward_text(reranker, reranker_hub):
    # the body is encoded in two parts (the query's once): the ids must be those of the whole body, whatever the
    # document starts with (spaces, newlines, digits, punctuation, a combining mark, a special token)
    rng = np.random.default_rng(0)
    pieces = ["a", "Zé", " ", "  ", "\n", "\r\n", "\t", "5", "42", "!", ":", ".", "<", ">", "'s", "'ll", "\u0301",
              "日本", "<|im_end|>", "<|endoftext|>"]
    pairs = [("".join(rng.choice(pieces, rng.integers(0, 6))), "".join(rng.choice(pieces, rng.integers(0, 10))))
             for _ in range(300)]
    for max_length in (8192, 150):
        _, reference = card_ids(reranker_hub, pairs, max_length=max_length)
        assert reranker.tokenize_pairs(pairs, max_length=max_length) == reference


def test_a_query_is_tokenized_once_per_request(reranker, monkeypatch):
    texts = []
    ids = reranker.tokenizer.ids
    monkeypatch.setattr(reranker.tokenizer, "ids", lambda batch: texts.extend(batch) or ids(batch))
    query = "which fox is the quickest of them all"
    reranker.tokenize(query, DOCUMENTS * 10)
    assert sum(query in t for t in texts) == 1 and len(texts) == 1 + 10 * len(DOCUMENTS)


def test_a_query_too_long_is_refused_by_its_characters(reranker, monkeypatch):
    monkeypatch.setattr(reranker.tokenizer, "ids", lambda batch: pytest.fail("tokenized"))
    with pytest.raises(ValueError, match="pair 0: the instruction and query take .* characters"):
        reranker.tokenize("q " * 100_000, ["d"] * 2048, max_length=512)


def test_an_over_long_document_without_truncation_is_refused_by_its_characters(reranker, monkeypatch):
    ids = reranker.tokenizer.ids
    monkeypatch.setattr(reranker.tokenizer, "ids", lambda batch: [pytest.fail("tokenized")] if len(batch[0]) > 10**5
                        else ids(batch))
    with pytest.raises(ValueError, match="pair 0 has 1000000 characters .* more than max_length 512"):
        reranker.tokenize("q", ["d" * 10**6], max_length=512, truncate=False)


def test_a_query_too_long_raises(reranker):
    with pytest.raises(ValueError, match="pair 0: the instruction and query take .* shorten the query"):
        reranker.tokenize_pairs([(" ".join(DOCUMENTS), "short")], max_length=100)


def test_a_document_alone_equals_it_in_a_mixed_batch(reranker):
    together = reranker.score_pairs(PAIRS, batch_tokens=900)  # several batches of mixed lengths
    alone = np.array([reranker.score_pairs([pair])[0] for pair in PAIRS[::5]])
    assert np.abs(together[::5] - alone).max() <= 1e-6


def test_score_pairs_equals_score_per_query(reranker):
    per_query = np.concatenate([reranker.score(q, DOCUMENTS) for q in QUERIES])
    assert np.abs(reranker.score_pairs(PAIRS) - per_query).max() <= 1e-6


def test_rerank_is_best_first_and_at_most_top_n(reranker):
    scores = reranker.score(QUERIES[0], DOCUMENTS)
    results = reranker.rerank(QUERIES[0], DOCUMENTS, top_n=5)
    assert [r["index"] for r in results] == list(np.argsort(-scores, kind="stable")[:5])
    assert all(r["document"] == DOCUMENTS[r["index"]] and r["score"] == pytest.approx(float(scores[r["index"]]))
               for r in results)
    assert len(reranker.rerank(QUERIES[0], DOCUMENTS)) == len(DOCUMENTS)


def test_raw_scores_are_the_yes_minus_no_logit(reranker):
    sequences = reranker.tokenize(QUERIES[0], DOCUMENTS)
    raw = reranker.score_ids(sequences, raw=True)
    assert np.allclose(1 / (1 + np.exp(-raw.astype(np.float64))), reranker.score_ids(sequences), atol=1e-7)


def test_only_two_head_rows_are_kept(reranker):
    assert reranker.head.shape == (2, reranker.args.hidden_size)


@pytest.mark.parametrize("documents, error, message", [
    (["ok", 3], TypeError, r"documents\[1\] must be a str, got int"),
    ("a single string", TypeError, "documents must be a list of str"),
])
def test_bad_documents_raise(reranker, documents, error, message):
    with pytest.raises(error, match=message):
        reranker.score(QUERIES[0], documents)


@pytest.mark.parametrize("top_n", [0, -1, True, 1.5])
def test_bad_top_n_raises(reranker, top_n):
    with pytest.raises(ValueError, match="top_n must be an int of at least 1"):
        reranker.rerank(QUERIES[0], DOCUMENTS, top_n=top_n)


def test_empty_input_gives_empty_results_as_embed_does(reranker):
    """One rule for empty input in the library: no documents, no scores (embed([]) is (0, dim)); the HTTP APIs
    refuse an empty request with a 400, as Cohere's and TEI's do."""
    assert reranker.score(QUERIES[0], []).shape == (0,) and reranker.score(QUERIES[0], []).dtype == np.float32
    assert reranker.score_pairs([]).shape == (0,) and reranker.rerank(QUERIES[0], []) == []


def test_bad_pairs_and_query_raise(reranker):
    with pytest.raises(TypeError, match=r"pairs\[0\]'s document must be a str"):
        reranker.score_pairs([("q", None)])
    with pytest.raises(TypeError, match="query must be a str"):
        reranker.score(None, DOCUMENTS)


def test_an_embedding_folder_is_refused(hub_model):
    with pytest.raises(ValueError, match="holds an embedding model .* mlx_qwen3_embed.load"):
        mqe.load_reranker(str(hub_model))


@pytest.mark.parametrize("fixture", ["reranker_hub", "reranker_untied", "reranker_mlx"])
def test_a_reranker_folder_is_refused_by_load(fixture, request):
    with pytest.raises(ValueError, match="holds a reranker .*load_reranker"):
        mqe.load(str(request.getfixturevalue(fixture)))


def test_model_kind_rule(hub_model, mlx_model, reranker_hub, reranker_untied, reranker_mlx, tmp_path):
    assert model_kind(hub_model) == model_kind(mlx_model) == "embedding"  # sentence-transformers pooling
    assert model_kind(reranker_untied) == "reranker"  # its own lm_head, in a folder named "model"
    assert model_kind(reranker_hub) == model_kind(reranker_mlx) == "reranker"  # tied: the name tells
    anonymous = tmp_path / "snapshot"
    anonymous.mkdir()
    for f in reranker_hub.iterdir():
        (anonymous / f.name).symlink_to(f)
    assert model_kind(anonymous) is None
    assert mqe.load_reranker(str(anonymous)).score(QUERIES[0], DOCUMENTS[:2]).shape == (2,)
    cross_encoder = tmp_path / "cross"
    cross_encoder.mkdir()
    (cross_encoder / "config_sentence_transformers.json").write_text(json.dumps({"model_type": "CrossEncoder"}))
    assert model_kind(cross_encoder) == "reranker"
