"""Reranking from a shared prefix: pairs of one query run its template + instruction + query once, then only their
documents against its keys and values. Scores equal the whole-pair path (share_prefix off) and transformers running
the model card's recipe (|difference| <= 1e-5) for any batch, document lengths, truncation and prefix length;
through score_pairs with interleaved queries, rerank, the CLI, every rerank route of the server; on the Metal plan
(quantized matmuls, MLX's fused attention); for the Qwen3-VL reranker, image documents and an image query's
image included (but not equal ids of other pixels)."""

import json
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.batching import MIN_SHARED, shared_prefixes
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.models import qwen3
from mlx_qwen3_embed.reranker import Reranker
from mlx_qwen3_embed.serve import create_app
from mlx_qwen3_embed.vision.reranker import VLReranker
from rerank_checkpoints import DOCUMENTS, QUERIES
from test_reranker import mlx_lm_scores, transformers_scores
import vl_fixtures
from test_vl import picture

vl_reranker_model, vl_rerank_reference = vl_fixtures.vl_reranker_model, vl_fixtures.vl_rerank_reference  # fixtures

TOLERANCE = 1e-5
# documents from a few words to a page (the tiny BPE makes ~3 tokens a word)
MIXED = ["yes", DOCUMENTS[0], " ".join(DOCUMENTS[:6]), "a fox", " ".join(DOCUMENTS[3:5]), DOCUMENTS[7] * 3]


def assert_spread(scores: np.ndarray) -> None:
    """Scores that prove something: neither all near 0.5 nor saturated (one query's spread less than many's)."""
    assert scores.max() - scores.min() > 0.2 and 0.01 < scores.min() and scores.max() < 0.99, scores


@pytest.fixture(scope="module")
def reranker(reranker_hub) -> Reranker:
    return mqe.load_reranker(str(reranker_hub))


@pytest.fixture(scope="module")
def whole(reranker_hub) -> Reranker:
    """Today's path: every pair run whole."""
    model = mqe.load_reranker(str(reranker_hub))
    model.share_prefix = False
    return model


@pytest.fixture
def shared(monkeypatch) -> list:
    """(prefix tokens, pairs) of each group run from a shared prefix, by either reranker."""
    groups = []
    for kind in (Reranker, VLReranker):
        def spy(self, items, tokens, batch_tokens, run=kind._shared_logits):
            groups.append((tokens, len(items)))
            return run(self, items, tokens, batch_tokens)
        monkeypatch.setattr(kind, "_shared_logits", spy)
    return groups


def test_a_query_s_pairs_are_one_group_and_queries_are_not_merged():
    template, documents = list(range(100, 140)), [[300 + d, 7, 8] for d in range(5)]
    pairs = [template + [200 + q] * 20 + d for q in range(3) for d in documents]
    singles = [template + [250 + q] * 20 + [9] for q in range(4)]  # four queries of one document each
    groups = shared_prefixes(pairs + singles)
    assert sorted((P, sorted(m)) for P, m in groups) == [(40, [15, 16, 17, 18])] + [
        (60, list(range(5 * q, 5 * q + 5))) for q in range(3)]
    assert shared_prefixes([pairs[0]]) == [] and shared_prefixes([]) == []
    assert shared_prefixes([[1] * (MIN_SHARED - 1) + [2], [1] * (MIN_SHARED - 1) + [3]]) == []  # too little shared


def test_groups_share_their_prefix_and_never_a_whole_head():
    rng = random.Random(0)
    for _ in range(300):
        heads = [[rng.randint(0, 2) for _ in range(rng.randint(0, 9))] for _ in range(rng.randint(0, 14))]
        seen = set()
        for P, members in shared_prefixes(heads, least=2):
            assert P >= 2 and len(members) >= 2 and not seen & set(members)
            assert all(len(heads[i]) >= P and heads[i][:P] == heads[members[0]][:P] for i in members)
            seen |= set(members)


@pytest.mark.parametrize("batch_tokens", [60, 250, 900, None])
def test_mixed_lengths_equal_the_whole_path_and_transformers(reranker, whole, reranker_hub, batch_tokens, shared):
    pairs = [(QUERIES[2], d) for d in MIXED + DOCUMENTS[:7]]
    ours = reranker.score_pairs(pairs, batch_tokens=batch_tokens)
    assert shared and sum(n for _, n in shared) == len(pairs)
    reference = transformers_scores(reranker_hub, pairs)
    assert_spread(reference)
    assert np.abs(ours - reference).max() <= TOLERANCE
    assert np.abs(ours - whole.score_pairs(pairs, batch_tokens=batch_tokens)).max() <= TOLERANCE


@pytest.mark.parametrize("query, instruction", [
    ("MLX", None),                                    # a short query: the prefix is mostly the template
    (" ".join(DOCUMENTS[8:11]), None),                # a long query
    (QUERIES[1], " ".join(DOCUMENTS[11:14])),         # a long instruction: a prefix longer than the budget
])
def test_short_and_long_prefixes(reranker, whole, reranker_hub, query, instruction, shared):
    pairs = [(query, d) for d in MIXED]
    ours = reranker.score_pairs(pairs, instruction=instruction, batch_tokens=64)
    assert len(shared) == 1
    assert np.abs(ours - transformers_scores(reranker_hub, pairs, instruction)).max() <= TOLERANCE
    assert np.abs(ours - whole.score_pairs(pairs, instruction=instruction)).max() <= TOLERANCE


def test_a_prefix_longer_than_the_budget_runs(reranker, whole, shared):
    instruction = " ".join(DOCUMENTS[:4])
    pairs = [(QUERIES[0], d) for d in DOCUMENTS[:5]]
    ours = reranker.score_pairs(pairs, instruction=instruction, batch_tokens=32)
    assert shared[0][0] > 32 * 3
    assert np.abs(ours - whole.score_pairs(pairs, instruction=instruction, batch_tokens=32)).max() <= TOLERANCE


def test_truncated_documents(reranker_hub, shared):
    short = mqe.load_reranker(str(reranker_hub), max_length=150)
    pairs = [(QUERIES[3], d) for d in MIXED]
    assert max(map(len, short.tokenize_pairs(pairs))) == 150
    ours = short.score_pairs(pairs, batch_tokens=300)
    assert shared
    assert np.abs(ours - transformers_scores(reranker_hub, pairs, max_length=150)).max() <= TOLERANCE


def test_interleaved_queries(reranker, whole, reranker_hub, shared):
    pairs = [(q, d) for q in QUERIES for d in DOCUMENTS] + [("a lone query", DOCUMENTS[9])]
    random.Random(1).shuffle(pairs)
    ours = reranker.score_pairs(pairs, batch_tokens=400)
    assert len(shared) >= 2
    assert np.abs(ours - transformers_scores(reranker_hub, pairs)).max() <= TOLERANCE
    assert np.abs(ours - whole.score_pairs(pairs)).max() <= TOLERANCE


def test_rerank_and_raw_logits_equal_the_whole_path(reranker, whole, shared):
    ranked = reranker.rerank(QUERIES[0], MIXED, top_n=4)
    expected = whole.rerank(QUERIES[0], MIXED, top_n=4)
    assert [r["index"] for r in ranked] == [r["index"] for r in expected]
    assert max(abs(r["score"] - e["score"]) for r, e in zip(ranked, expected)) <= TOLERANCE
    sequences = reranker.tokenize(QUERIES[0], MIXED)
    assert np.abs(reranker.score_ids(sequences, raw=True) - whole.score_ids(sequences, raw=True)).max() <= 1e-4
    assert shared


@pytest.mark.parametrize("kernels", [qwen3.Kernels(), qwen3.Kernels(chunked_attention=True),
                                     qwen3.Kernels(host_exp=True), qwen3.Kernels(True, True)])
def test_every_kernel_choice_attends_to_the_prefix(reranker_hub, whole, kernels, monkeypatch, shared):
    monkeypatch.setattr(qwen3, "CHUNK", 4)  # several blocks of queries, each against the prefix's keys too
    model = with_kernels(mqe.load_reranker(str(reranker_hub)), kernels)
    pairs = [(QUERIES[1], d) for d in MIXED]
    assert np.abs(model.score_pairs(pairs, batch_tokens=200) - whole.score_pairs(pairs)).max() <= TOLERANCE
    assert shared


@pytest.mark.parametrize("kernels", [qwen3.Kernels(), qwen3.Kernels(True, True)])
def test_a_continuation_s_hidden_states_are_the_whole_texts(reranker, kernels, monkeypatch):
    """Qwen3.prefix + last_token(rest, cache) against last_token(whole), on the hidden states themselves."""
    import mlx.core as mx

    from mlx_qwen3_embed.batching import pad_right

    monkeypatch.setattr(qwen3, "CHUNK", 4)
    model = with_kernels(mqe.load_reranker(str(reranker.folder)), kernels).model
    sequences = reranker.tokenize(QUERIES[1], MIXED)
    [(P, _)] = shared_prefixes([s[:-1] for s in sequences])
    whole = model.last_token(*map(mx.array, pad_right(sequences, 0)))
    rest = model.last_token(*map(mx.array, pad_right([s[P:] for s in sequences], 0)),
                            model.prefix(mx.array([sequences[0][:P]])))
    assert np.abs(np.array(rest) - np.array(whole)).max() <= 1e-5 * np.abs(np.array(whole)).max()


def with_kernels(model, kernels: qwen3.Kernels):
    """The model with other attention and exp kernels (device.plan picks them per device)."""
    layers = model.embedder.model.language_model.layers if isinstance(model, VLReranker) else model.model.layers
    for layer in layers:
        layer.self_attn.kernels = layer.mlp.kernels = kernels
    return model


def test_the_metal_plan_shares_as_the_dequantized_path(reranker_mlx, shared):
    """Metal's plan: the 4-bit weights kept (quantized matmuls) and MLX's fused attention with a mask against
    the prefix's keys; it scores as the dequantized CPU path and as mlx-lm's own model."""
    metal = with_kernels(mqe.load_reranker(str(reranker_mlx), dtype="float32", dequantize=False), qwen3.Kernels())
    dequantized = mqe.load_reranker(str(reranker_mlx))
    dequantized.share_prefix = False
    pairs = [(q, d) for q in QUERIES[:2] for d in MIXED]
    ours = metal.score_pairs(pairs, batch_tokens=300)
    assert len(shared) == 2
    assert np.abs(ours - dequantized.score_pairs(pairs)).max() <= TOLERANCE
    assert np.abs(ours - mlx_lm_scores(reranker_mlx, pairs)).max() <= TOLERANCE


def test_the_cli_gives_the_whole_paths_ranking(runner, reranker_hub, whole, shared):
    result = runner.invoke(app, ["rerank", "--model", str(reranker_hub), QUERIES[0], *MIXED])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = whole.rerank(QUERIES[0], MIXED)
    assert [r["index"] for r in rows] == [e["index"] for e in expected] and shared
    assert max(abs(r["score"] - e["score"]) for r, e in zip(rows, expected)) <= TOLERANCE


@pytest.fixture(scope="module")
def client(reranker):
    """A served reranker whose worker splits requests and packs several into one call (a small budget)."""
    with TestClient(create_app(None, reranker=reranker, batch_tokens=500)) as c:
        yield c


@pytest.mark.parametrize("route, body, results", [
    ("/v1/rerank", {"documents": MIXED}, lambda a: [(r["index"], r["relevance_score"]) for r in a["results"]]),
    ("/v2/rerank", {"model": "m", "documents": MIXED},
     lambda a: [(r["index"], r["relevance_score"]) for r in a["results"]]),
    ("/rerank", {"texts": MIXED}, lambda a: [(r["index"], r["score"]) for r in a]),
])
def test_every_rerank_route_gives_the_whole_paths_scores(client, whole, route, body, results, shared):
    def ask(query):
        answer = client.post(route, json={"query": query, **body})
        assert answer.status_code == 200, answer.text
        return results(answer.json())

    with ThreadPoolExecutor(3) as pool:  # concurrent requests: the worker packs several queries into one call
        answers = list(pool.map(ask, QUERIES[:3]))
    for query, answer in zip(QUERIES[:3], answers):
        expected = whole.score(query, MIXED)
        assert sorted(i for i, _ in answer) == list(range(len(MIXED)))
        assert max(abs(score - expected[i]) for i, score in answer) <= TOLERANCE
    assert shared


def test_the_worker_packs_a_query_s_documents_by_their_own_tokens(reranker, whole, shared):
    """A model call holds one query's pairs by the tokens beyond their shared prefix (which runs once a call):
    a budget that fits two whole pairs takes many, with the whole path's scores."""
    from mlx_qwen3_embed.serve.worker import BatchWorker, Job, shared_starts

    instruction = " ".join(DOCUMENTS[11:13])  # a long prefix, as a RAG query's template + instruction often is
    documents = ["a fox", "yes", DOCUMENTS[7], "the dog", "MLX", "no", "a lazy dog", "embeddings"]
    pairs = reranker.tokenize(QUERIES[1], documents, instruction=instruction)
    budget = 2 * max(map(len, pairs))
    worker = BatchWorker(None, reranker=reranker, batch_tokens=budget)
    job = Job(pairs, 1, kind="rerank", shared=shared_starts(reranker.heads(pairs)))  # as the rerank routes queue it
    worker.submit(job)
    calls = 0
    while not job.future.done():
        worker._run(worker._take())
        calls += 1
    assert calls < len(documents) / 2 and max(n for _, n in shared) > 2, (calls, shared)
    expected = whole.score(QUERIES[1], documents, instruction=instruction, batch_tokens=budget)
    assert np.abs(1 / (1 + np.exp(-job.future.result()[:, 0])) - expected).max() <= TOLERANCE
    whole_worker = BatchWorker(None, reranker=whole, batch_tokens=budget)  # share_prefix off: whole pairs count
    whole_worker.submit(Job(pairs, 1, kind="rerank", shared=shared_starts(whole.heads(pairs))))
    assert len(whole_worker._take()) == 1 and whole_worker._active[0].next <= 2


# ------------------------------------------------------------------------------------------ Qwen3-VL reranker

@pytest.fixture(scope="module")
def vl(vl_reranker_model) -> VLReranker:
    return mqe.load_reranker(str(vl_reranker_model), dtype="float32")


@pytest.fixture(scope="module")
def vl_whole(vl_reranker_model) -> VLReranker:
    model = mqe.load_reranker(str(vl_reranker_model), dtype="float32")
    model.share_prefix = False
    return model


def test_vl_text_and_image_documents_share_the_text_prefix(vl, vl_whole, vl_rerank_reference, shared):
    images = [picture(64, 64, 1), picture(77, 131, 2)]
    documents = MIXED[:4] + [{"image": images[0]}, {"text": DOCUMENTS[2], "image": images[1]}]
    ours = vl.score(QUERIES[0], documents, batch_tokens=300)
    assert shared == [(shared[0][0], len(documents))]
    theirs = vl_rerank_reference.score([(QUERIES[0], d) for d in MIXED[:4]]
                                       + [(QUERIES[0], {"images": [images[0]]}),
                                          (QUERIES[0], {"text": DOCUMENTS[2], "images": [images[1]]})])
    assert np.abs(ours - theirs).max() <= TOLERANCE
    assert np.abs(ours - vl_whole.score(QUERIES[0], documents)).max() <= TOLERANCE


def test_vl_an_image_query_is_shared_with_its_image(vl, vl_whole, vl_rerank_reference, shared):
    image = picture(64, 96, 5)
    documents = MIXED[:3] + [{"image": picture(64, 64, 1)}]
    ours = vl.score({"image": image, "text": "like this"}, documents)
    ids = vl.prepare_pairs([({"image": image, "text": "like this"}, documents[0])])[0].ids
    last_image_token = max(j for j, t in enumerate(ids) if t == vl.args.image_token_id)
    assert shared == [(shared[0][0], len(documents))] and shared[0][0] > last_image_token
    theirs = vl_rerank_reference.score([({"text": "like this", "images": [image]}, d)
                                        for d in MIXED[:3] + [{"images": [documents[3]["image"]]}]])
    assert np.abs(ours - theirs).max() <= TOLERANCE
    assert np.abs(ours - vl_whole.score({"image": image, "text": "like this"}, documents)).max() <= TOLERANCE


def test_vl_equal_images_that_are_not_the_same_object_are_not_shared(vl, vl_whole, shared):
    """Equal placeholder ids, different pixels: only the tokens before the query's image are shared."""
    pairs = [({"image": picture(64, 96, seed)}, DOCUMENTS[seed]) for seed in range(3)]
    ours = vl.score_pairs(pairs)
    ids = vl.prepare_pairs(pairs[:1])[0].ids
    assert shared and shared[0][0] <= ids.index(vl.args.image_token_id)
    assert np.abs(ours - vl_whole.score_pairs(pairs)).max() <= TOLERANCE


def test_vl_interleaved_queries_and_the_fused_kernels(vl_reranker_model, vl_whole, shared):
    model = with_kernels(mqe.load_reranker(str(vl_reranker_model), dtype="float32"), qwen3.Kernels())
    pairs = [(q, d) for d in MIXED[:4] for q in QUERIES[:3]]
    ours = model.score_pairs(pairs, batch_tokens=250)
    assert shared
    assert np.abs(ours - vl_whole.score_pairs(pairs)).max() <= TOLERANCE
