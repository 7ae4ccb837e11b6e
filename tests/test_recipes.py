"""The README's client recipes ("## Using it from llm, Python and JavaScript clients"), each run as written against a
real `mlx-embed serve` (conftest's `served`): the code is the README's fenced block after `<!-- recipe: NAME -->`,
with only the URL, the model name and `dim` swapped for the test server's. Vectors equal the library's for the text
the client sends (cosine >= 0.99999), and where a client has a known trap, the recipe's setting is shown to avoid
it. The JavaScript ones run under node with tests/js's node_modules (`npm ci` there), and skip without them."""

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm fetches its price list at import otherwise

README = Path(__file__).parent.parent / "README.md"
JS = Path(__file__).parent / "js"
RECIPE = re.compile(r"<!-- recipe: (\S+) -->\n```(python|js)\n(.*?)```", re.S)
COSINE = 0.99999
DIM = 32  # the tiny checkpoint has 64 values; the README's 256 is for the real 0.6B model
LONG = "The quick brown fox jumps over the lazy dog. " * 120  # over the tiny model's 512 tokens
PYTHON = ["openai", "langchain-openai", "langchain-ollama", "llama-index-openai-like", "llama-index-ollama", "litellm",
          "haystack", "chromadb"]
JAVASCRIPT = ["openai-js", "ollama-js", "langchain-openai-js", "langchain-ollama-js", "huggingface-js"]


def recipes() -> dict[str, str]:
    return {name: code for name, _, code in RECIPE.findall(README.read_text())}


def for_server(code: str, url: str) -> str:
    return code.replace("http://127.0.0.1:8000", url).replace("qwen3-embedding", "tiny")


@pytest.fixture(scope="module")
def inputs():
    """The README's `inputs` block run: docs, task, question, query, with dim set to DIM."""
    names: dict = {}
    exec(recipes()["inputs"], names)
    return {key: names[key] for key in ("docs", "task", "question", "query")} | {"dim": DIM}


def run_python(name: str, url: str, inputs: dict, **changed) -> dict:
    """Recipe `name` executed with the inputs (and `changed` ones) defined: the names it leaves."""
    names = dict(inputs, **changed)
    exec(compile(for_server(recipes()[name], url), f"README.md recipe {name}", "exec"), names)
    return names


def assert_cosines(got, expected):
    got, expected = np.atleast_2d(np.asarray(got, dtype=np.float64)), np.atleast_2d(expected)
    assert got.shape == expected.shape
    cosines = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosines.min() >= COSINE, cosines


def assert_library(ran: dict, embedder, inputs: dict, dim=DIM, docs=None):
    """doc_vectors and query_vector equal the library's for `docs` (default: the inputs') and the query."""
    assert_cosines(ran["doc_vectors"], embedder.embed(docs or inputs["docs"], dim=dim))
    assert_cosines(ran["query_vector"], embedder.embed(inputs["query"], dim=dim))


def test_every_recipe_in_the_readme_is_run_here():
    assert sorted(recipes()) == sorted(["inputs", *PYTHON, *JAVASCRIPT])


def test_the_query_is_the_models_query_prompt(inputs, embedder):
    np.testing.assert_allclose(embedder.embed(inputs["query"]), embedder.embed_query(inputs["question"]), atol=1e-6)


# --- Python clients -----------------------------------------------------------------------------------------------

def test_openai(served, inputs, embedder):
    assert_library(run_python("openai", served, inputs), embedder, inputs)


def test_langchain_openai(served, inputs, embedder):
    pytest.importorskip("langchain_openai")
    assert_library(run_python("langchain-openai", served, inputs), embedder, inputs)


def test_langchain_ollama(served, inputs, embedder):
    pytest.importorskip("langchain_ollama")
    assert_library(run_python("langchain-ollama", served, inputs), embedder, inputs)


def test_llama_index_openai_like_gets_the_query_prompt_from_the_server(served, inputs, embedder):
    pytest.importorskip("llama_index.embeddings.openai_like")
    ran = run_python("llama-index-openai-like", served, inputs)
    sent = [d.replace("\n", " ") for d in inputs["docs"]]  # the client's own change, no setting turns it off
    assert_library(ran, embedder, inputs, docs=sent)


def test_llama_index_ollama_without_query_instruction_keeps_the_format(served, inputs, embedder):
    ollama_embedding = pytest.importorskip("llama_index.embeddings.ollama")
    ran = run_python("llama-index-ollama", served, inputs)
    assert_library(ran, embedder, inputs, dim=None)
    joined = ollama_embedding.OllamaEmbedding(model_name="tiny", query_instruction=f"Instruct: {inputs['task']}\nQuery:")
    assert joined._format_query(inputs["question"]) != inputs["query"]  # the trap the recipe avoids: "Query: what"


def test_litellm_sends_dimensions(served, inputs, embedder):
    pytest.importorskip("litellm")
    ran = run_python("litellm", served, inputs)
    assert len(ran["query_vector"]) == DIM
    assert_library(ran, embedder, inputs)


def test_haystack(served, inputs, embedder):
    pytest.importorskip("haystack")
    assert_library(run_python("haystack", served, inputs), embedder, inputs)


def test_haystack_raises_for_an_over_long_document_instead_of_emptying_the_batch(served, inputs):
    pytest.importorskip("haystack")
    import openai

    with pytest.raises(openai.BadRequestError, match="max_length"):
        run_python("haystack", served, inputs, docs=[*inputs["docs"], LONG])


def test_chromadb_sends_dimensions(served, inputs, embedder):
    pytest.importorskip("chromadb")
    ran = run_python("chromadb", served, inputs)
    assert len(ran["doc_vectors"][0]) == DIM
    assert_library(ran, embedder, inputs)
    scores = embedder.embed(inputs["docs"], dim=DIM) @ embedder.embed(inputs["query"], dim=DIM)
    assert ran["best"] == [str(int(np.argmax(scores)))]


# --- JavaScript clients -------------------------------------------------------------------------------------------

PRELUDE = "const { docs, query, dim } = JSON.parse(process.env.RECIPE_INPUTS);\n"
EPILOGUE = "\nconsole.log(JSON.stringify({ docVectors, queryVector }));\n"


def run_js(name: str, url: str, inputs: dict, tmp_path: Path, **changed) -> dict:
    """Recipe `name` as a node script (tests/js's node_modules linked beside it): {docVectors, queryVector}."""
    if shutil.which("node") is None or not (JS / "node_modules").is_dir():
        pytest.skip("node and tests/js/node_modules are needed: cd tests/js && npm ci")
    (tmp_path / "node_modules").symlink_to(JS / "node_modules", target_is_directory=True)
    script = tmp_path / f"{name}.mjs"
    script.write_text(PRELUDE + for_server(recipes()[name], url) + EPILOGUE)
    env = dict(os.environ, RECIPE_INPUTS=json.dumps(dict(inputs, **changed)))
    done = subprocess.run(["node", str(script)], capture_output=True, text=True, env=env, timeout=120)
    if done.returncode != 0:
        pytest.fail(f"node {name}.mjs failed: {done.stderr[-2000:]}")
    ran = json.loads(done.stdout)
    return {"doc_vectors": ran["docVectors"], "query_vector": ran["queryVector"]}


@pytest.mark.parametrize("name", ["openai-js", "ollama-js"])
def test_javascript_sdk(name, served, inputs, embedder, tmp_path):
    assert_library(run_js(name, served, inputs, tmp_path), embedder, inputs)


def test_langchain_openai_js_keeps_newlines(served, inputs, embedder, tmp_path):
    """The query and the code document hold newlines: equal vectors mean none became a space."""
    assert_library(run_js("langchain-openai-js", served, inputs, tmp_path), embedder, inputs)


def test_langchain_ollama_js_truncates_an_over_long_text(served, inputs, embedder, tmp_path):
    docs = [*inputs["docs"], LONG]
    ran = run_js("langchain-ollama-js", served, inputs, tmp_path, docs=docs)
    assert_library(ran, embedder, inputs, docs=docs)  # the library cuts LONG at max_length too


def test_huggingface_js(served, inputs, embedder, tmp_path):
    assert_library(run_js("huggingface-js", served, inputs, tmp_path), embedder, inputs, dim=None)
