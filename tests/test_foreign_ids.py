"""The foreign-token-id check of /v1/embeddings, exactly: an id list passes when decode -> encode gives it back
(a Qwen tokenization of some text, whoever produced it, embedded as that text), so a one-token list passes
whenever its token encodes back to itself; a request holding any other list is refused as a whole."""

import numpy as np
import pytest

UNLIMITED = 2**62


def round_trips(tokenizer, ids: list[int]) -> bool:
    return tokenizer.encode([tokenizer.decode(ids)], UNLIMITED)[0][:-1] == ids


@pytest.fixture(scope="module")
def single_ids(embedder):
    """(ids whose token encodes back to itself alone, ids whose token does not), over the whole vocabulary."""
    tok = embedder.tokenizer
    ids = [t for t in range(embedder.args.vocab_size) if t != tok.eos_id and tok.decode([t])]
    passing = [t for t in ids if round_trips(tok, [t])]
    failing = [t for t in ids if not round_trips(tok, [t])]
    assert passing and failing  # the tiny tokenizer has both, as Qwen's has (e.g. lone UTF-8 continuation bytes)
    return passing, failing


@pytest.fixture(scope="module")
def foreign(embedder, sample):
    """A multi-token list that is no Qwen tokenization: a text's ids reversed."""
    ids = embedder.tokenize(sample[1])[0][:-1][::-1]
    assert len(ids) > 2 and not round_trips(embedder.tokenizer, ids)
    return ids


def test_a_one_token_list_that_round_trips_is_embedded_as_its_text(app_client, embedder, single_ids):
    tok = embedder.tokenizer
    chosen = single_ids[0][:: max(1, len(single_ids[0]) // 8)]  # a spread of the vocabulary
    response = app_client.post("/v1/embeddings", json={"input": [[t] for t in chosen]})
    assert response.status_code == 200, response.text
    got = np.array([d["embedding"] for d in response.json()["data"]])
    np.testing.assert_allclose(got, embedder.embed([tok.decode([t]) for t in chosen]), atol=1e-5)


def test_a_one_token_list_that_does_not_round_trip_is_refused(app_client, single_ids):
    t = single_ids[1][0]
    response = app_client.post("/v1/embeddings", json={"input": [[t]]})
    assert response.status_code == 400 and response.json()["error"]["code"] == "foreign_token_ids"


def test_one_token_lists_beside_a_foreign_list_are_refused_with_it(app_client, single_ids, foreign):
    response = app_client.post("/v1/embeddings", json={"input": [[single_ids[0][0]], foreign]})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "foreign_token_ids" and error["message"].startswith("input[1] ")
