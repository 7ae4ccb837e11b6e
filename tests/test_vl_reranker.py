"""Qwen3-VL-Reranker: scores equal transformers' Qwen3-VL driven by the official recipe (fp32, |difference| <= 1e-5)
for text, image and mixed documents, an image query, an instruction, truncation; a pair alone equals it in any
batch; the 4-bit conversion stays within the quantization's error; the CLI and the server's Jina route give the
library's scores; bad input names the item."""

import base64
import io
import json
import shutil

import numpy as np
import pytest
from fastapi.testclient import TestClient

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.checkpoint import open_checkpoint
from mlx_qwen3_embed.cli import app
from mlx_qwen3_embed.serve import create_app
from mlx_qwen3_embed.vision.reranker import VLReranker
from rerank_checkpoints import DOCUMENTS, QUERIES
from test_vl import picture
from vl_fixtures import (vl_model, vl_rerank_reference, vl_reranker_model,  # noqa: F401  (session fixtures)
                         vl_reranker_untied)

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def reranker(vl_reranker_model) -> VLReranker:
    return mqe.load_reranker(str(vl_reranker_model), dtype="float32")


@pytest.fixture(scope="module")
def pictures() -> list:
    return [picture(64, 64, 1), picture(77, 131, 2), picture(300, 40, 3)]


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def assert_spread(scores: np.ndarray) -> None:
    """Scores that prove something: neither all near 0.5 nor saturated."""
    assert np.isfinite(scores).all()
    assert scores.max() - scores.min() > 0.05 and 0.01 < scores.min() and scores.max() < 0.99


# ------------------------------------------------------------------------------------------ the recipe

def test_is_a_rerank_model(reranker):
    assert isinstance(reranker, mqe.RerankModel)


def test_text_documents_match_the_recipe(reranker, vl_rerank_reference):
    documents = DOCUMENTS[:8]
    ours = reranker.score(QUERIES[0], documents)
    theirs = vl_rerank_reference.score([(QUERIES[0], d) for d in documents])
    assert_spread(theirs)
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_image_documents_match_the_recipe(reranker, vl_rerank_reference, pictures):
    ours = reranker.score(QUERIES[1], [{"image": p} for p in pictures] + [{"image": pictures[:2]}])
    theirs = vl_rerank_reference.score([(QUERIES[1], {"images": [p]}) for p in pictures]
                                       + [(QUERIES[1], {"images": pictures[:2]})])
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_text_and_image_documents_match_the_recipe(reranker, vl_rerank_reference, pictures):
    documents = [{"text": DOCUMENTS[i], "image": p} for i, p in enumerate(pictures)] + [DOCUMENTS[5]]
    ours = reranker.score(QUERIES[2], documents)
    theirs = vl_rerank_reference.score([(QUERIES[2], {"text": d["text"], "images": [d["image"]]})
                                        for d in documents[:-1]] + [(QUERIES[2], DOCUMENTS[5])])
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_an_image_query_matches_the_recipe(reranker, vl_rerank_reference, pictures):
    query = {"image": pictures[1], "text": "like this"}
    documents = [DOCUMENTS[0], {"image": pictures[0]}, DOCUMENTS[3]]
    ours = reranker.score(query, documents)
    theirs = vl_rerank_reference.score([({"text": "like this", "images": [pictures[1]]}, d)
                                        for d in [DOCUMENTS[0], {"images": [pictures[0]]}, DOCUMENTS[3]]])
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_a_video_document_matches_the_recipe(reranker, vl_rerank_reference, pictures):
    from mlx_qwen3_embed.vision import images

    frames = [picture(64, 96, s) for s in range(4)]
    patches, _ = images.preprocess_video([images.open_image(f) for f in frames])
    ours = reranker.score(QUERIES[0], [{"video": frames, "text": DOCUMENTS[1]}])
    theirs = vl_rerank_reference.score([(QUERIES[0], {"videos": [patches], "text": DOCUMENTS[1]})])
    assert np.abs(ours - theirs).max() <= TOLERANCE


def test_a_custom_instruction_matches_the_recipe(reranker, vl_rerank_reference):
    instruction = "Find the passage about animals."
    pairs = [(QUERIES[1], d) for d in DOCUMENTS[:5]]
    ours = reranker.score_pairs(pairs, instruction=instruction)
    theirs = vl_rerank_reference.score(pairs, instruction=instruction)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    assert np.abs(ours - reranker.score_pairs(pairs)).max() > 1e-4  # the instruction is read


def test_truncation_matches_the_recipe(reranker, vl_rerank_reference, pictures):
    long = " ".join(DOCUMENTS)
    pairs = [(QUERIES[0], long), (QUERIES[0], {"text": long, "image": pictures[0]})]
    prepared = reranker.prepare_pairs(pairs, max_length=120)
    assert [len(p) for p in prepared] == [120, 120]
    ours = reranker.score_prepared(prepared)
    reference_pairs = [(QUERIES[0], long), (QUERIES[0], {"text": long, "images": [pictures[0]]})]
    theirs = vl_rerank_reference.score(reference_pairs, max_length=120 - 5)
    assert np.abs(ours - theirs).max() <= TOLERANCE
    with pytest.raises(ValueError, match=r"pairs\[0\] has \d+ tokens, more than max_length 120"):
        reranker.prepare_pairs(pairs, max_length=120, truncate=False)


def test_a_pair_alone_equals_it_in_any_batch(reranker, pictures):
    pairs = [(QUERIES[i % 4], d) for i, d in enumerate(DOCUMENTS[:6])]
    pairs += [(QUERIES[0], {"image": pictures[2]}), ({"image": pictures[0]}, {"text": "x", "image": pictures[1]})]
    together = reranker.score_pairs(pairs, batch_tokens=4096)
    alone = np.array([reranker.score_pairs([p])[0] for p in pairs])
    assert np.abs(together - alone).max() <= 1e-6


def test_rerank_orders_best_first(reranker, pictures):
    documents = DOCUMENTS[:5] + [{"image": pictures[0]}]
    ranked = reranker.rerank(QUERIES[0], documents, top_n=3)
    scores = reranker.score(QUERIES[0], documents)
    assert [r["index"] for r in ranked] == list(np.argsort(-scores, kind="stable")[:3])
    assert ranked[0]["document"] is documents[ranked[0]["index"]]


def test_the_untied_head_matches_the_recipe(vl_reranker_untied):
    from vl_fixtures import RerankReference

    ours = mqe.load_reranker(str(vl_reranker_untied), dtype="float32").score(QUERIES[3], DOCUMENTS[:6])
    theirs = RerankReference(vl_reranker_untied).score([(QUERIES[3], d) for d in DOCUMENTS[:6]])
    assert_spread(theirs)
    assert np.abs(ours - theirs).max() <= TOLERANCE


@pytest.mark.parametrize("untied", [False, True])
def test_the_4bit_conversion_is_within_the_quantization_error(reranker, vl_reranker_model, vl_reranker_untied,
                                                              pictures, tmp_path, untied):
    from mlx_qwen3_embed.quant.vl_quantize import convert_vl

    source = vl_reranker_untied if untied else vl_reranker_model
    float_model = mqe.load_reranker(str(source), dtype="float32") if untied else reranker
    convert_vl(str(source), str(tmp_path / "q"), bits=4, group_size=32)
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    assert config["quantization"]["model.visual.blocks.0.attn.qkv"]["bits"] == 8
    assert open_checkpoint(str(tmp_path / "q")).kind == "qwen3_vl_reranker"  # marked: no name needed
    quantized = mqe.load_reranker(str(tmp_path / "q"), dtype="float32")
    documents = DOCUMENTS[:6] + [{"image": p} for p in pictures]
    prepared = float_model.prepare_pairs([(QUERIES[0], d) for d in documents])
    exact = float_model.score_prepared(prepared, raw=True)
    approx = quantized.score_prepared(quantized.prepare_pairs([(QUERIES[0], d) for d in documents]), raw=True)
    # a 4-bit decoder this tiny (D=64, groups of 32) moves every pair's last hidden state alike: the logits
    # shift together (measured: correlation 0.93 tied, 0.81 untied); the head's rows are kept exact (score_head)
    assert np.isfinite(approx).all() and np.corrcoef(exact, approx)[0, 1] > 0.7


def test_the_conversion_error_is_the_quantizations(reranker, vl_reranker_model, pictures, tmp_path):
    """8-bit weights score closer to the float model than 4-bit ones (the error is the rounding's, not the layout's),
    and the quantized matmul path (Metal's plan, dequantize=False) scores as the dequantized CPU path does."""
    from mlx_qwen3_embed.quant.vl_quantize import convert_vl

    documents = DOCUMENTS[:6] + [{"image": p} for p in pictures]
    pairs = [(QUERIES[1], d) for d in documents]
    exact = reranker.score_prepared(reranker.prepare_pairs(pairs), raw=True)
    errors = {}
    for bits in (4, 8):
        convert_vl(str(vl_reranker_model), str(tmp_path / f"q{bits}"), bits=bits, group_size=32)
        quantized = mqe.load_reranker(str(tmp_path / f"q{bits}"), dtype="float32")
        logits = quantized.score_prepared(quantized.prepare_pairs(pairs), raw=True)
        errors[bits] = np.abs(logits - exact).max()
        metal_plan = mqe.load_reranker(str(tmp_path / f"q{bits}"), dtype="float32", dequantize=False)
        np.testing.assert_allclose(metal_plan.score_prepared(metal_plan.prepare_pairs(pairs), raw=True), logits,
                                   atol=1e-4)
    assert errors[8] < errors[4] / 4, errors


# ------------------------------------------------------------------------------------------ kinds and errors

def test_load_refuses_a_vl_reranker_folder(vl_reranker_model):
    with pytest.raises(ValueError, match="Qwen3-VL reranker.*load_reranker"):
        mqe.load(str(vl_reranker_model))


def test_load_refuses_a_folder_marked_reranker(vl_reranker_model, tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(vl_reranker_model, folder)
    config = json.loads((folder / "config.json").read_text()) | {"mlx_qwen3_embed_kind": "reranker"}
    (folder / "config.json").write_text(json.dumps(config))
    assert open_checkpoint(str(folder)).kind == "qwen3_vl_reranker"
    with pytest.raises(ValueError, match="load_reranker"):
        mqe.load(str(folder))


def test_load_reranker_gives_a_vl_reranker_for_an_unnamed_folder(vl_reranker_model, tmp_path):
    folder = tmp_path / "plain"
    shutil.copytree(vl_reranker_model, folder)
    assert open_checkpoint(str(folder)).kind == "qwen3_vl"
    assert isinstance(mqe.load_reranker(str(folder)), VLReranker)


def test_load_reranker_refuses_a_vl_embedding_folder(vl_model):
    with pytest.raises(ValueError, match="Qwen3-VL embedding model, not a reranker.*mlx_qwen3_embed.load"):
        mqe.load_reranker(str(vl_model))


def test_a_document_without_content_is_named(reranker):
    with pytest.raises(ValueError, match=r"documents\[1\] has none of text, image and video"):
        reranker.score("q", ["a", {}])
    with pytest.raises(ValueError, match=r"pairs\[0\]: the query has none of text, image and video"):
        reranker.score_pairs([({}, "a")])


def test_an_unreadable_image_is_named(reranker):
    with pytest.raises(ValueError, match=r"documents\[0\]: .*not a readable image"):
        reranker.score("q", [{"image": b"not an image"}])
    with pytest.raises(FileNotFoundError, match=r"query: no image file"):
        reranker.score({"image": "/no/such.png"}, ["a"])


def test_an_unknown_key_is_named(reranker):
    with pytest.raises(ValueError, match=r"documents\[0\] has unknown key 'instruction'"):
        reranker.score("q", [{"text": "a", "instruction": "x"}])


# ------------------------------------------------------------------------------------------ CLI

def test_cli_ranks_images_and_texts(runner, reranker, vl_reranker_model, pictures, tmp_path):
    paths = []
    for i, p in enumerate(pictures[:2]):
        paths.append(str(tmp_path / f"{i}.png"))
        p.save(paths[-1])
    result = runner.invoke(app, ["rerank", "-m", str(vl_reranker_model), "--query", QUERIES[0], "--image", paths[0],
                                 "--image", paths[1], "--text", DOCUMENTS[0]])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    expected = reranker.rerank(QUERIES[0], [DOCUMENTS[0], {"image": paths[0]}, {"image": paths[1]}])
    assert [r["index"] for r in rows] == [e["index"] for e in expected]
    assert np.abs(np.array([r["score"] for r in rows]) - [e["score"] for e in expected]).max() <= 1e-6


def test_cli_reads_jsonl_items_and_a_query_image(runner, reranker, vl_reranker_model, pictures, tmp_path):
    pictures[0].save(tmp_path / "q.png")
    pictures[1].save(tmp_path / "d.png")
    items = [{"text": DOCUMENTS[1]}, {"image": str(tmp_path / "d.png"), "text": "a picture"}]
    (tmp_path / "docs.jsonl").write_text("".join(json.dumps(i) + "\n" for i in items))
    result = runner.invoke(app, ["rerank", "-m", str(vl_reranker_model), "--query-image", str(tmp_path / "q.png"),
                                 "--file", str(tmp_path / "docs.jsonl")])
    assert result.exit_code == 0, result.output
    scores = reranker.score({"image": str(tmp_path / "q.png")}, [DOCUMENTS[1], items[1]])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert all(abs(r["score"] - scores[r["index"]]) <= 1e-6 for r in rows) and len(rows) == 2


def test_cli_names_an_unreadable_image(runner, vl_reranker_model, tmp_path):
    (tmp_path / "bad.png").write_bytes(b"not a png")
    result = runner.invoke(app, ["rerank", "-m", str(vl_reranker_model), "q", "--image", str(tmp_path / "bad.png")])
    assert result.exit_code == 1 and "documents[0]: " in result.output and "not a readable image" in result.output


# ------------------------------------------------------------------------------------------ server

@pytest.fixture(scope="module")
def client(reranker):
    with TestClient(create_app(None, reranker=reranker)) as c:
        yield c


def message(answer) -> str:
    """The error's message in the route's own shape: Cohere's {"message"}, TEI's {"error": str}."""
    body = answer.json()
    return body["message"] if "message" in body else body["error"]


def data_url(image) -> str:
    return "data:image/png;base64," + base64.b64encode(png(image)).decode()


def test_jina_route_ranks_image_documents(client, reranker, pictures):
    documents = [DOCUMENTS[0], {"text": "a caption", "image": data_url(pictures[0])},
                 {"image": base64.b64encode(png(pictures[1])).decode()}]
    answer = client.post("/v1/rerank", json={"query": QUERIES[0], "documents": documents})
    assert answer.status_code == 200, answer.text
    scores = reranker.score(QUERIES[0], [DOCUMENTS[0], {"text": "a caption", "image": png(pictures[0])},
                                         {"image": png(pictures[1])}])
    results = answer.json()["results"]
    assert all(abs(r["relevance_score"] - scores[r["index"]]) <= 1e-6 for r in results)
    assert results[[r["index"] for r in results].index(0)]["document"] == {"text": DOCUMENTS[0]}


def test_jina_route_takes_an_image_query(client, reranker, pictures):
    answer = client.post("/v1/rerank", json={"query": {"image": data_url(pictures[2])},
                                             "documents": DOCUMENTS[:3], "return_documents": False})
    assert answer.status_code == 200, answer.text
    scores = reranker.score({"image": png(pictures[2])}, DOCUMENTS[:3])
    assert all(abs(r["relevance_score"] - scores[r["index"]]) <= 1e-6 for r in answer.json()["results"])


@pytest.mark.parametrize("path, body", [
    ("/v2/rerank", {"query": "q", "documents": ["a", {"image": "aGk="}]}),
    ("/v2/rerank", {"query": {"image": "aGk="}, "documents": ["a"]}),
    ("/rerank", {"query": "q", "texts": ["a", {"image": "aGk="}]}),
])
def test_text_routes_refuse_images_naming_jina_route(client, path, body):
    answer = client.post(path, json=body)
    assert answer.status_code == 400 and "/v1/rerank" in message(answer)


@pytest.mark.parametrize("document, named", [
    ({}, "documents[1]"),
    ({"image": base64.b64encode(b"not an image").decode()}, "documents[1]"),
    ({"image": "not base64 !"}, "documents[1].image"),
    ({"image": "https://example.com/a.png"}, "--allow-remote-images"),
])
def test_a_bad_document_is_a_400_naming_it(client, document, named):
    answer = client.post("/v1/rerank", json={"query": "q", "documents": ["a", document]})
    assert answer.status_code == 400, answer.text
    assert named in message(answer)


def test_an_unreadable_query_image_is_a_400_naming_the_query(client):
    answer = client.post("/v1/rerank", json={"query": {"image": base64.b64encode(b"junk").decode()},
                                             "documents": ["a"]})
    assert answer.status_code == 400 and message(answer).startswith("query"), message(answer)


def test_cli_converts_and_describes_a_vl_reranker(runner, vl_reranker_model, tmp_path):
    """`mlx-embed convert` takes the Qwen3-VL converter for a VL reranker, and `info` describes both folders."""
    described = json.loads(runner.invoke(app, ["info", str(vl_reranker_model), "--json"]).stdout)
    assert described["kind"] == "qwen3_vl_reranker" and "vision" in described
    done = runner.invoke(app, ["convert", str(vl_reranker_model), str(tmp_path / "q4"), "--bits", "4",
                               "--group-size", "32"])
    assert done.exit_code == 0, done.output
    converted = json.loads(runner.invoke(app, ["info", str(tmp_path / "q4"), "--json"]).stdout)
    assert converted["kind"] == "qwen3_vl_reranker" and converted["quantization"]["bits"] == 4
    assert isinstance(mqe.load_reranker(str(tmp_path / "q4")), VLReranker)


def test_empty_input_gives_empty_results(reranker):
    assert reranker.score("q", []).shape == (0,) and reranker.score_pairs([]).shape == (0,)
    assert reranker.rerank({"text": "q"}, []) == []


def test_a_hub_id_in_the_offline_cache_is_told_a_reranker_by_its_repository_name(vl_reranker_model, tmp_path,
                                                                                monkeypatch):
    """The hub cache's snapshot folder is named for its commit: the repository's name tells the kind."""
    from huggingface_hub import constants

    from test_cli import cache_hub_model

    cache_hub_model(vl_reranker_model, tmp_path, "Qwen/Qwen3-VL-Reranker-tiny")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert open_checkpoint("Qwen/Qwen3-VL-Reranker-tiny").kind == "qwen3_vl_reranker"
    assert isinstance(mqe.load_reranker("Qwen/Qwen3-VL-Reranker-tiny"), VLReranker)
    with pytest.raises(ValueError, match="load_reranker"):
        mqe.load("Qwen/Qwen3-VL-Reranker-tiny")
