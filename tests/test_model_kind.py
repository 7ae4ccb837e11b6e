"""weights.model_kind on folders whose name says nothing: a reranker converted by `convert` carries a mark in
config.json, and a hub download's model card (README.md front matter) names its pipeline; `info` and `load` use
the rule."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.quant import quantize
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.checkpoint.weights import model_kind, tensor_names
from rerank_checkpoints import DOCUMENTS, QUERIES


@pytest.fixture(scope="module")
def converted_anonymous(reranker_hub, tmp_path_factory):
    """The tied reranker converted to a folder named "out-8bit" (no "rerank" in it, no lm_head in it)."""
    dst = tmp_path_factory.mktemp("kind") / "out-8bit"
    quantize.convert(str(reranker_hub), str(dst), bits=8, group_size=32)
    return dst


def anonymous_copy(src, dst, card=None):
    """`src`'s files linked into a folder named `dst`, with a README.md holding `card` when given."""
    dst.mkdir()
    for f in src.iterdir():
        if f.name != "README.md":
            (dst / f.name).symlink_to(f)
    if card is not None:
        (dst / "README.md").write_text(card)
    return dst


def test_a_converted_tied_reranker_is_a_reranker_whatever_its_folder_name(converted_anonymous):
    assert "rerank" not in converted_anonymous.name
    # nothing else would tell: tied head (no lm_head tensor), no sentence-transformers files
    assert not any("lm_head" in name for name in tensor_names(converted_anonymous))
    assert model_kind(converted_anonymous) == "reranker"


def test_info_names_the_converted_reranker(converted_anonymous):
    result = CliRunner().invoke(app, ["info", "--json", str(converted_anonymous)])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["kind"] == "reranker"


def test_load_refuses_the_converted_reranker_and_load_reranker_scores_it(converted_anonymous):
    with pytest.raises(ValueError, match="holds a reranker .*load_reranker"):
        mqe.load(str(converted_anonymous))
    scores = mqe.load_reranker(str(converted_anonymous)).score(QUERIES[0], DOCUMENTS[:3])
    assert scores.shape == (3,) and np.isfinite(scores).all()


def test_the_converted_config_still_loads_in_mlx_lm(converted_anonymous):
    from mlx_lm.utils import load_model

    model, config = load_model(converted_anonymous)
    assert config["mlx_qwen3_embed_kind"] == "reranker" and model is not None


@pytest.mark.parametrize("tag, kind", [("text-ranking", "reranker"), ("feature-extraction", "embedding"),
                                       ("sentence-similarity", "embedding")])
def test_the_model_cards_pipeline_tag_tells_the_kind(reranker_hub, tmp_path, tag, kind):
    card = f"---\nlicense: apache-2.0\npipeline_tag: {tag}\nbase_model: Qwen/Qwen3-0.6B-Base\n---\n# A model\n"
    assert model_kind(anonymous_copy(reranker_hub, tmp_path / "snapshot", card)) == kind


def test_a_card_without_front_matter_tells_nothing(reranker_hub, tmp_path):
    folder = anonymous_copy(reranker_hub, tmp_path / "snapshot", "# pipeline_tag: text-ranking\n")
    assert model_kind(folder) is None
