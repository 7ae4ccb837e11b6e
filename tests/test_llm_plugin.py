"""The llm plugin (mlx_qwen3_embed.integrations.llm) through the real `llm` CLI, in its own LLM_USER_PATH, offline:
`llm embed` (documents, queries, --dim) equals the library, `llm embed-multi` stores the library's vectors from a
CSV, `llm similar` ranks as the library does, bad models and dims are one line and exit 1, registering reads no
weights."""

import csv
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import numpy as np
import pytest

llm = pytest.importorskip("llm")  # the `test` extra
if not any(ep.value == "mlx_qwen3_embed.integrations.llm" for ep in entry_points(group="llm")):
    pytest.skip("the llm entry point is not installed: pip install -e .", allow_module_level=True)

ATOL = 1e-5
DOCUMENTS = {"mlx": "MLX is an array framework for machine learning on Apple silicon.",
             "fox": "The quick brown fox jumps over the lazy dog.",
             "code": "def embed(texts):\n    return model.encode(texts)",
             "rag": "Retrieval-augmented generation, combines a search index with a language model."}


@pytest.fixture(scope="module")
def run_llm(hub_model, tmp_path_factory):
    """`llm ARGS` in a fresh user dir holding the tiny model registered as mlx-embed:tiny and (dim 16) :tiny16."""
    home = tmp_path_factory.mktemp("llm-user")
    env = dict(os.environ, LLM_USER_PATH=str(home), HF_HUB_OFFLINE="1")

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        done = subprocess.run([str(Path(sys.executable).parent / "llm"), *args], env=env, capture_output=True,
                              text=True, timeout=300)
        if check and done.returncode != 0:
            pytest.fail(f"llm {' '.join(args)} failed: {done.stderr}")
        return done

    run("mlx-embed", "register", str(hub_model), "--name", "tiny")
    run("mlx-embed", "register", str(hub_model), "--name", "tiny16", "--dim", "16")
    run.home = home
    return run


def vector(done: subprocess.CompletedProcess) -> np.ndarray:
    return np.array(json.loads(done.stdout))


def test_known_and_registered_models_are_listed(run_llm):
    listed = run_llm("embed-models").stdout
    for model_id in ("mlx-embed:Qwen/Qwen3-Embedding-0.6B", "mlx-embed:Qwen/Qwen3-Embedding-0.6B:query",
                     "mlx-embed:tiny", "mlx-embed:tiny:query", "mlx-embed:tiny16"):
        assert f": {model_id}\n" in listed


def test_embed_documents_equals_library(run_llm, embedder):
    got = vector(run_llm("embed", "-m", "mlx-embed:tiny", "-c", DOCUMENTS["code"]))
    np.testing.assert_allclose(got, embedder.embed_document(DOCUMENTS["code"]), atol=ATOL)


def test_embed_query_id_carries_the_query_prompt(run_llm, embedder):
    got = vector(run_llm("embed", "-m", "mlx-embed:tiny:query", "-c", "what is MLX?"))
    np.testing.assert_allclose(got, embedder.embed_query("what is MLX?"), atol=ATOL)


def test_registered_dim_gives_matryoshka_vectors(run_llm, embedder):
    got = vector(run_llm("embed", "-m", "mlx-embed:tiny16:query", "-c", "what is MLX?"))
    np.testing.assert_allclose(got, embedder.embed_query("what is MLX?", dim=16), atol=ATOL)


def test_registered_instruction_is_the_query_task(run_llm, embedder, hub_model):
    run_llm("mlx-embed", "register", str(hub_model), "--name", "code", "--instruction", "Find the code")
    got = vector(run_llm("embed", "-m", "mlx-embed:code:query", "-c", "embed texts"))
    np.testing.assert_allclose(got, embedder.embed("embed texts", instruction="Find the code"), atol=ATOL)


def test_unregister_forgets_a_model(run_llm, hub_model):
    run_llm("mlx-embed", "register", str(hub_model), "--name", "brief")
    run_llm("mlx-embed", "unregister", "brief")
    assert "mlx-embed:brief" not in run_llm("embed-models").stdout


@pytest.fixture(scope="module")
def collection(run_llm, tmp_path_factory):
    """DOCUMENTS through `llm embed-multi docs FILE.csv -m mlx-embed:tiny`: the collection's name."""
    path = tmp_path_factory.mktemp("csv") / "docs.csv"
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "content"])
        writer.writerows(DOCUMENTS.items())
    run_llm("embed-multi", "docs", str(path), "-m", "mlx-embed:tiny", "--store")
    return "docs"


def test_embed_multi_stores_library_vectors(run_llm, collection, embedder):
    with sqlite3.connect(run_llm.home / "embeddings.db") as db:
        rows = dict(db.execute("select id, embedding from embeddings"))
    assert sorted(rows) == sorted(DOCUMENTS)
    got = np.array([llm.decode(rows[i]) for i in DOCUMENTS])
    np.testing.assert_allclose(got, embedder.embed_document(list(DOCUMENTS.values())), atol=ATOL)


def test_similar_with_the_query_prompt_ranks_as_the_library(run_llm, collection, embedder):
    question = "Which framework runs machine learning on Apple silicon?"
    query = run_llm("mlx-embed", "query", "-m", "mlx-embed:tiny", question).stdout
    found = [json.loads(line) for line in run_llm("similar", collection, "-c", query).stdout.splitlines()]
    scores = embedder.embed_document(list(DOCUMENTS.values())) @ embedder.embed_query(question)
    expected = [list(DOCUMENTS)[i] for i in np.argsort(-scores)]
    assert [r["id"] for r in found] == expected
    np.testing.assert_allclose([r["score"] for r in found], np.sort(scores)[::-1], atol=ATOL)


def test_bad_dim_is_one_line_and_exit_1(run_llm, hub_model):
    done = run_llm("mlx-embed", "register", str(hub_model), "--name", "wide", "--dim", "999", check=False)
    assert done.returncode == 1 and done.stderr.strip() == "Error: dim must be between 1 and 64, got 999"


def test_missing_folder_is_one_line_and_exit_1(run_llm, tmp_path):
    done = run_llm("mlx-embed", "register", str(tmp_path / "absent"), check=False)
    assert done.returncode == 1 and done.stderr.startswith("Error: no model folder at")
    assert len(done.stderr.strip().splitlines()) == 1


def test_unknown_model_id_lists_the_plugins_ids(run_llm):
    done = run_llm("mlx-embed", "query", "-m", "mlx-embed:absent", "text", check=False)
    assert done.returncode == 1 and "unknown model 'mlx-embed:absent'" in done.stderr
    assert "mlx-embed:tiny" in done.stderr


def test_registering_reads_no_weights_and_embedding_names_what_is_missing(run_llm, hub_model, tmp_path):
    """A folder without its safetensors registers and is listed; its first embedding fails in one line."""
    folder = shutil.copytree(hub_model, tmp_path / "no-weights", ignore=shutil.ignore_patterns("*.safetensors"))
    run_llm("mlx-embed", "register", str(folder), "--name", "lazy")
    assert ": mlx-embed:lazy\n" in run_llm("embed-models").stdout
    done = run_llm("embed", "-m", "mlx-embed:lazy", "-c", "text", check=False)
    assert done.returncode == 1 and done.stderr.splitlines()[-1].startswith("Error: mlx-embed:lazy: ")
    assert "safetensors" in done.stderr
