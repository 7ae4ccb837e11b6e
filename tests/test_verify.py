"""`verify` and `mlx-embed verify`: the card's example through the library, compared with a matrix; the expected
values here come from sentence-transformers on the same tiny checkpoint (real cards need real weights)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from conftest import make_hub_checkpoint
from mlx_qwen3_embed.tokenizer import DEFAULT_INSTRUCTION, query_prompt
from mlx_qwen3_embed.verify import CARD_SCORES, DOCUMENTS, QUERIES, verify

st = pytest.importorskip("sentence_transformers")
SCRIPT = str(Path(sys.executable).parent / "mlx-embed")


@pytest.fixture(scope="module")
def reference_scores(hub_model) -> list[list[float]]:
    model = st.SentenceTransformer(str(hub_model), device="cpu")
    queries = model.encode(QUERIES, prompt=query_prompt(DEFAULT_INSTRUCTION))
    return (queries @ model.encode(DOCUMENTS).T).tolist()


def test_matches_the_reference_matrix(embedder, reference_scores):
    verdict = verify(embedder, expected=reference_scores)
    assert verdict.passed and verdict.max_error < 1e-4


def test_a_matrix_off_by_more_than_the_tolerance_fails(embedder, reference_scores):
    shifted = (np.array(reference_scores) + [[0, 0.05], [0, 0]]).tolist()
    verdict = verify(embedder, expected=shifted)
    assert not verdict.passed and verdict.max_error == pytest.approx(0.05, abs=1e-4)


def test_the_card_is_chosen_by_embedding_size(tmp_path):
    folder = make_hub_checkpoint(tmp_path / "wide", hidden_size=1024, num_hidden_layers=1)
    verdict = verify(mqe.load(str(folder)))
    assert verdict.card == "Qwen3-Embedding-0.6B"
    np.testing.assert_array_equal(verdict.expected, CARD_SCORES[1024][1])
    assert not verdict.passed  # random weights are not the card's model


def test_a_size_no_card_covers_is_refused(embedder):
    with pytest.raises(ValueError, match="pass the expected 2x2 matrix"):
        verify(embedder)


@pytest.mark.parametrize("bad", [0, 1.5, True])
def test_bad_tolerance_is_refused(embedder, bad):
    with pytest.raises(ValueError, match="tolerance"):
        verify(embedder, tolerance=bad, expected=[[0, 0], [0, 0]])


def run(*args):
    return subprocess.run([SCRIPT, "verify", *args], capture_output=True, text=True, timeout=120)


def test_cli_prints_pass_and_exits_0(hub_model, reference_scores):
    done = run(str(hub_model), "--expected", json.dumps(reference_scores))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1].startswith("PASS") and done.stdout.startswith("got: [[")


def test_cli_prints_fail_and_exits_1(hub_model, reference_scores):
    done = run(str(hub_model), "--expected", json.dumps((np.array(reference_scores) - 0.2).tolist()))
    assert done.returncode == 1 and done.stdout.splitlines()[-1].startswith("FAIL")


def test_cli_without_a_card_is_one_error_line(hub_model):
    done = run(str(hub_model))
    assert done.returncode == 1 and done.stderr.startswith("error: ") and len(done.stderr.splitlines()) == 1
