"""Several embedding models in one server (`mlx-embed serve --model A --model B`, or `--models FILE`): each request
reaches the model its `model` field names (through the real openai, ollama and huggingface_hub clients), an unknown
name is a 404 in the dialect's shape listing the served names, /v1/models, /api/tags and /info list them all, and
their memory is planned together, refused before any model loads when the sum does not fit."""

import base64
import io
import json
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from typer.testing import CliRunner

import mlx_qwen3_embed as mqe
from conftest import make_hub_checkpoint
from mlx_qwen3_embed.checkpoint.together import plan_together
from mlx_qwen3_embed.checkpoint.weights import memory_figures
from mlx_qwen3_embed.cli import app as cli
from mlx_qwen3_embed.cli.serve import model_specs
from mlx_qwen3_embed.device import MEMORY_ENV, fit_memory, memory_left, plan
from mlx_qwen3_embed.serve.worker import Turns
from server_process import running_server
from vl_fixtures import vl_model  # noqa: F401  (session fixture)

openai = pytest.importorskip("openai")
ollama = pytest.importorskip("ollama")
huggingface_hub = pytest.importorskip("huggingface_hub")

ATOL = 1e-5
NAMES = ["small", "wide", "vl"]


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory):
    """A second text checkpoint, of another width (96) and other weights."""
    return make_hub_checkpoint(tmp_path_factory.mktemp("wide") / "Qwen3-Embedding-wide", hidden_size=96,
                               intermediate_size=192, seed=1)


@pytest.fixture(scope="module")
def library(hub_model, wide_model, vl_model):  # noqa: F811
    return {"small": mqe.load(str(hub_model)), "wide": mqe.load(str(wide_model)), "vl": mqe.load(str(vl_model))}


@pytest.fixture(scope="module")
def reranker(reranker_hub):
    return mqe.load_reranker(str(reranker_hub))


@pytest.fixture(scope="module")
def server(hub_model, wide_model, vl_model, reranker_hub, tmp_path_factory):  # noqa: F811
    """A real `mlx-embed serve` of three embedders (--model given three times) and a reranker."""
    log = tmp_path_factory.mktemp("multi") / "serve.log"
    args = ["--model", f"small={hub_model}", "--model", f"wide={wide_model}", "--model", f"vl={vl_model}",
            "--reranker", str(reranker_hub), "--log-level", "warning"]
    with running_server(args, log) as url:
        yield url


@pytest.fixture(scope="module")
def oa(server):
    return openai.OpenAI(base_url=server + "/v1", api_key="unused", max_retries=0)


def png() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 56, 3), dtype=np.uint8)).save(buffer, "PNG")
    return buffer.getvalue()


# --- each request reaches the model it names ----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["small", "wide", "vl"])
def test_openai_client_reaches_the_model_it_names(oa, library, sample, name):
    response = oa.embeddings.create(model=name, input=sample[:4])
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    np.testing.assert_allclose(got, library[name].embed(sample[:4]), atol=ATOL)
    assert response.model == name and got.shape[1] == library[name].dim


def test_a_request_naming_no_model_gets_the_first(server, library, sample):
    response = httpx.post(server + "/v1/embeddings", json={"input": sample[0]}, timeout=60)
    assert response.status_code == 200 and response.json()["model"] == "small"
    np.testing.assert_allclose([response.json()["data"][0]["embedding"]], library["small"].embed(sample[:1]),
                               atol=ATOL)


def test_qwen3_vl_model_among_them_embeds_items(server, library):
    image = png()
    body = {"model": "vl", "input": ["a caption", {"text": "a photo", "image": base64.b64encode(image).decode()}]}
    response = httpx.post(server + "/v1/embeddings", json=body, timeout=60)
    assert response.status_code == 200, response.text
    got = np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)
    np.testing.assert_allclose(got, library["vl"].embed(["a caption", {"text": "a photo", "image": image}]),
                               atol=ATOL)


@pytest.mark.parametrize("name", ["wide", "vl"])
def test_ollama_client_reaches_the_model_it_names(server, library, sample, name):
    response = ollama.Client(host=server, timeout=60).embed(model=name, input=sample[:3])
    np.testing.assert_allclose(np.array(response.embeddings, dtype=np.float32), library[name].embed(sample[:3]),
                               atol=ATOL)
    assert response.model == name


def test_ollama_default_tag_names_the_same_model(server, library, sample):
    response = ollama.Client(host=server, timeout=60).embed(model="wide:latest", input=sample[0])
    np.testing.assert_allclose(np.array(response.embeddings, dtype=np.float32), library["wide"].embed(sample[:1]),
                               atol=ATOL)


def test_tei_model_field_picks_and_inference_client_gets_the_first(server, library, sample):
    wide = httpx.post(server + "/embed", json={"inputs": sample[:2], "model": "wide"}, timeout=60)
    assert wide.status_code == 200, wide.text
    np.testing.assert_allclose(np.array(wide.json(), dtype=np.float32), library["wide"].embed(sample[:2]), atol=ATOL)
    got = huggingface_hub.InferenceClient(model=server, timeout=60).feature_extraction(sample[0])
    np.testing.assert_allclose(got, library["small"].embed(sample[:1]), atol=ATOL)


def test_reranker_keeps_working_beside_several_embedders(server, reranker, sample):
    response = httpx.post(server + "/v2/rerank", json={"query": sample[0], "documents": sample[1:5]}, timeout=60)
    assert response.status_code == 200, response.text
    scores = reranker.score(sample[0], sample[1:5])
    assert all(abs(r["relevance_score"] - scores[r["index"]]) <= 1e-6 for r in response.json()["results"])


# --- an unknown name, in each dialect's shape --------------------------------------------------------------------

def test_unknown_model_is_openai_404_listing_the_served(oa):
    with pytest.raises(openai.NotFoundError) as e:
        oa.embeddings.create(model="text-embedding-3-small", input="hello")
    error = e.value.body
    assert error["code"] == "model_not_found" and error["param"] == "model"
    assert "text-embedding-3-small" in error["message"] and "small, wide, vl" in error["message"]


def test_unknown_model_is_ollama_404_listing_the_served(server):
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=server, timeout=60).embed(model="nomic-embed-text", input="hello")
    assert e.value.status_code == 404 and "small, wide, vl" in e.value.error
    show = httpx.post(server + "/api/show", json={"model": "nomic-embed-text"})
    assert show.status_code == 404 and set(show.json()) == {"error"}


def test_unknown_model_is_tei_404_listing_the_served(server):
    response = httpx.post(server + "/embed", json={"inputs": "hello", "model": "bge"})
    assert response.status_code == 404
    body = response.json()
    assert body["error_type"] == "Validation" and "small, wide, vl" in body["error"]


# --- the listings ------------------------------------------------------------------------------------------------

def test_models_routes_list_every_served_model(server, oa, library):
    listed = {m.id: m for m in oa.models.list().data}
    assert list(listed) == NAMES + ["Qwen3-Reranker-tiny"]
    assert [listed[n].model_extra["dimensions"] for n in NAMES] == [library[n].dim for n in NAMES]
    tags = ollama.Client(host=server).list().models
    assert [m.model for m in tags] == NAMES
    info = httpx.get(server + "/info").json()
    assert info["models"] == NAMES and info["model_id"] == "small"


def test_health_and_metrics_show_each_models_queue(server):
    health = httpx.get(server + "/health").json()
    assert health["status"] == "ok" and health["models"] == NAMES and health["model"] == "small"
    metrics = httpx.get(server + "/metrics").text
    assert all(f'mlx_embed_model_queue_depth{{model="{n}"}}' in metrics for n in NAMES)
    assert "mlx_embed_queue_depth " in metrics


# --- one model: the field stays ignored ----------------------------------------------------------------------------

def test_one_model_still_ignores_the_model_field(app_client, embedder, sample):
    response = app_client.post("/v1/embeddings", json={"input": sample[0], "model": "text-embedding-3-small"})
    assert response.status_code == 200 and response.json()["model"] == "tiny"
    np.testing.assert_allclose([response.json()["data"][0]["embedding"]], embedder.embed(sample[:1]), atol=ATOL)
    ollama_route = app_client.post("/api/embed", json={"input": sample[0], "model": "nomic-embed-text"})
    assert ollama_route.status_code == 200 and ollama_route.json()["model"] == "tiny"


# --- the CLI ---------------------------------------------------------------------------------------------------

@pytest.fixture
def launched(monkeypatch):
    """`mlx-embed serve` up to the point it would listen: the app it built."""
    from mlx_qwen3_embed.serve import listen

    got = {}
    monkeypatch.setattr(listen, "run", lambda application, sock, **kw: got.update(app=application))
    monkeypatch.delenv("MLX_EMBED_DEBUG", raising=False)
    return got


def test_cli_serves_models_from_flags_and_a_file(hub_model, wide_model, launched, tmp_path):
    file = tmp_path / "models.txt"
    file.write_text(f"# indexing\nwide = {wide_model}   # the big one\n\n")
    result = CliRunner().invoke(cli, ["serve", "--model", str(hub_model), "--models", str(file), "--port", "0"])
    assert result.exit_code == 0, result.output
    with TestClient(launched["app"]) as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"]] == ["Qwen3-Embedding-tiny", "wide"]
        assert c.post("/v1/embeddings", json={"input": "hi", "model": "wide"}).json()["model"] == "wide"


def test_model_specs_read_names_hub_ids_and_folders(tmp_path):
    folder = tmp_path / "a=b"
    folder.mkdir()
    assert model_specs(["q=Qwen/Qwen3-Embedding-0.6B", "Qwen/Qwen3-Embedding-8B", str(folder),
                        "./x=y"], None) == [("q", "Qwen/Qwen3-Embedding-0.6B"), (None, "Qwen/Qwen3-Embedding-8B"),
                                            (None, str(folder)), (None, "./x=y")]


@pytest.mark.parametrize("args, words", [
    (["--model", "a=X", "--model", "b=Y", "--served-model-name", "n"], "--served-model-name names one model"),
    (["--model", "same=X", "--model", "same=Y"], "two models would be served as 'same'"),
    (["--model", "=X"], "give MODEL or NAME=MODEL"),
])
def test_cli_refuses_bad_model_flags_before_loading(args, words, launched, monkeypatch):
    monkeypatch.setattr(mqe, "load", lambda *a, **kw: pytest.fail("a model was loaded"))
    result = CliRunner().invoke(cli, ["serve", *args, "--port", "0"])
    assert result.exit_code == 1 and words in result.stderr, result.output


def test_cli_refuses_an_empty_models_file(launched, tmp_path):
    file = tmp_path / "models.txt"
    file.write_text("# nothing yet\n")
    result = CliRunner().invoke(cli, ["serve", "--models", str(file), "--port", "0"])
    assert result.exit_code == 1 and "names no model" in result.stderr


# --- memory: planned together, before any loads ------------------------------------------------------------------

@pytest.fixture(scope="module")
def big_models(hub_model, tmp_path_factory):
    """Two folders whose config.json claims a model of ~2 GB of weights (their files hold the tiny one)."""
    folders = []
    for name in ("big-a", "big-b"):
        folder = tmp_path_factory.mktemp("big") / name
        shutil.copytree(hub_model, folder)
        config = json.loads((folder / "config.json").read_text())
        config.update(hidden_size=2048, intermediate_size=8192, num_hidden_layers=8, torch_dtype="bfloat16")
        (folder / "config.json").write_text(json.dumps(config))
        folders.append(folder)
    return folders


def test_models_that_fit_alone_but_not_together_are_refused_before_any_load(big_models, launched, monkeypatch):
    figures = [memory_figures(folder, plan("cpu")) for folder in big_models]  # (planned, stored, working)
    alone = max(stored + working for _, stored, working in figures)  # each fits alone, up-cast per layer
    monkeypatch.setenv(MEMORY_ENV, str(alone + figures[1][1] // 2))
    monkeypatch.setattr(mqe, "load", lambda *a, **kw: pytest.fail("a model was loaded"))
    result = CliRunner().invoke(cli, ["serve", "--model", f"a={big_models[0]}", "--model", f"b={big_models[1]}",
                                      "--port", "0"])
    assert result.exit_code == 1, result.output
    line = result.stderr.strip()
    assert line.startswith("error: the 2 models need about") and "GB is available" in line
    assert all(f"{folder} " in line and "GB of weights" in line for folder in big_models)


def test_a_later_model_gets_the_memory_the_earlier_left(tmp_path):
    folders = [make_hub_checkpoint(tmp_path / name, dtype="bfloat16", seed=i) for i, name in enumerate("ab")]
    cpu = plan("cpu")
    (planned_a, _, working), (_, stored_b, _) = [memory_figures(f, cpu) for f in folders]
    budgets = plan_together([str(f) for f in folders], cpu, available=planned_a + stored_b + working)
    assert not fit_memory(cpu, *memory_figures(folders[0], cpu), budgets[0]).upcast
    with memory_left(budgets[1]):
        second = mqe.load(str(folders[1]))
    assert second.device.upcast  # float32 would not fit beside the first: its stored bf16, up-cast per layer


# --- the workers take the device in turns -------------------------------------------------------------------------

def test_turns_are_handed_over_in_arrival_order():
    turns, order = Turns(), []

    def take(name):
        with turns:
            order.append(name)

    with turns:
        waiting = []
        for name in ("first", "second"):
            waiting.append(threading.Thread(target=take, args=(name,)))
            waiting[-1].start()
            while len(turns._waiting) < len(waiting):  # until it queues behind the holder
                time.sleep(0.001)
    for thread in waiting:
        thread.join()
    assert order == ["first", "second"]


def test_concurrent_requests_to_two_models_each_get_their_models_vectors(library, sample):
    from mlx_qwen3_embed.serve import create_app

    models = {"small": library["small"], "wide": library["wide"]}
    with TestClient(create_app(models, max_batch_requests=4)) as c:
        def ask(i):
            name = ("small", "wide")[i % 2]
            response = c.post("/v1/embeddings", json={"model": name, "input": sample[i % len(sample)]})
            return name, i % len(sample), response.json()["data"][0]["embedding"]

        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(ask, range(24)))
    for name, i, vector in answers:
        np.testing.assert_allclose([vector], models[name].embed([sample[i]]), atol=ATOL)
