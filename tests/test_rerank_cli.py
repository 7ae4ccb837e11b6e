"""`mlx-embed rerank`, `convert` and `info` on tiny reranker checkpoints: outputs equal the library's scores,
conversions load in mlx-lm and here with the same scores as mlx-lm's own model, mistakes are one `error:` line."""

import json

import numpy as np
import pytest

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.quant import quantize
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.checkpoint.weights import model_kind
from rerank_checkpoints import DOCUMENTS, QUERIES
from test_reranker import assert_spread, mlx_lm_scores

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reranker(reranker_hub):
    return mqe.load_reranker(str(reranker_hub))


def rows(stdout: str) -> list[dict]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_rerank_prints_the_librarys_ranking(runner, reranker, reranker_hub):
    documents = DOCUMENTS[:6]
    result = runner.invoke(app, ["rerank", "--model", str(reranker_hub), "--top-n", "4", QUERIES[0], *documents])
    assert result.exit_code == 0, result.output
    assert rows(result.stdout) == reranker.rerank(QUERIES[0], documents, top_n=4)
    scores = [r["score"] for r in rows(result.stdout)]
    assert scores == sorted(scores, reverse=True) and len(scores) == 4


def test_rerank_reads_documents_from_a_jsonl_file_and_stdin(runner, reranker, reranker_hub, tmp_path):
    documents = DOCUMENTS[2:7]
    path = tmp_path / "docs.jsonl"
    path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    expected = reranker.rerank(QUERIES[1], documents, instruction="Find French text")
    from_file = runner.invoke(app, ["rerank", "--model", str(reranker_hub), "--instruction", "Find French text",
                                    "--file", str(path), QUERIES[1]])
    assert from_file.exit_code == 0, from_file.output
    assert rows(from_file.stdout) == expected
    lines = [d for d in documents if "\n" not in d]
    from_stdin = runner.invoke(app, ["rerank", "--model", str(reranker_hub), "--instruction", "Find French text",
                                     QUERIES[1], "-"], input="\n".join(lines) + "\n")
    assert from_stdin.exit_code == 0, from_stdin.output
    assert rows(from_stdin.stdout) == reranker.rerank(QUERIES[1], lines, instruction="Find French text")


@pytest.mark.parametrize("arguments, message", [
    (["--top-n", "0", "q", "doc"], "top_n must be an int of at least 1, got 0"),
    (["q", "--file", "/nonexistent/docs.txt"], "cannot read /nonexistent/docs.txt"),
    (["--max-length", "100", " ".join(DOCUMENTS), "doc"], "pair 0: the instruction and query take"),
])
def test_rerank_mistakes_are_one_error_line(runner, reranker_hub, arguments, message):
    result = runner.invoke(app, ["rerank", "--model", str(reranker_hub), *arguments])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: ") and message in result.stderr and len(result.stderr.splitlines()) == 1


def test_rerank_refuses_an_embedding_model(runner, hub_model):
    result = runner.invoke(app, ["rerank", "--model", str(hub_model), "q", "doc"])
    assert result.exit_code == 1 and "holds an embedding model" in result.stderr


def test_embed_refuses_a_reranker(runner, reranker_untied):
    result = runner.invoke(app, ["embed", "--model", str(reranker_untied), "text"])
    assert result.exit_code == 1 and "holds a reranker" in result.stderr


@pytest.mark.parametrize("fixture", ["reranker_hub", "reranker_untied"])
def test_convert_keeps_the_head_and_loads_in_mlx_lm_and_here(fixture, request, tmp_path):
    src = request.getfixturevalue(fixture)
    dst = tmp_path / "Qwen3-Reranker-tiny-8bit"
    quantize.convert(str(src), str(dst), bits=8, group_size=32)
    assert model_kind(dst) == "reranker" and not (dst / "modules.json").exists()
    config = json.loads((dst / "config.json").read_text())
    assert config["tie_word_embeddings"] == json.loads((src / "config.json").read_text())["tie_word_embeddings"]
    pairs = [(q, d) for q in QUERIES[:2] for d in DOCUMENTS[:8]]
    reference = mlx_lm_scores(dst, pairs)
    assert_spread(reference)
    assert np.abs(mqe.load_reranker(str(dst)).score_pairs(pairs) - reference).max() <= TOLERANCE


def test_convert_refuses_dwq_for_a_reranker(reranker_hub, tmp_path):
    with pytest.raises(ValueError, match="is a reranker: --dwq distills embedding vectors"):
        quantize.convert(str(reranker_hub), str(tmp_path / "out"), dwq=True)
    assert not (tmp_path / "out").exists()


def test_info_says_what_kind_of_model(runner, reranker_untied, hub_model):
    for folder, kind in ((reranker_untied, "reranker"), (hub_model, "embedding")):
        result = runner.invoke(app, ["info", "--json", str(folder)])
        assert result.exit_code == 0, result.output
        assert json.loads(result.stdout)["kind"] == kind
