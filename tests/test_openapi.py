"""The OpenAPI document (/openapi.json, /docs) against the server's real answers: every route it lists is called
once to succeed and once to fail, each body is validated against the schema the document gives for that status,
and the embedding routes' headers say what was done (serve/schema.py): the model, pooling, width, and which inputs
were cut."""

import json

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from jsonschema import Draft202012Validator

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.serve import create_app, ollama, openai, schema, tei

KEY = "secret-key"
WRONG_KEY = {"headers": {"Authorization": "Bearer wrong"}}
LONG = "word " * 2000  # over the tiny models' max_length of 512 tokens
SHORT = "MLX is an array framework."

# (method, path) -> (the request that succeeds, the one that fails, its status); None: no body.
# The successes between them reach every optional part of the answers (precision's ranges, returned documents).
CASES = {
    ("post", "/v1/embeddings"): ({"input": [SHORT, LONG], "truncate": True, "dimensions": 32}, {"input": ""}, 400),
    ("post", "/embeddings"): ({"input": [SHORT, "Paris"], "precision": "int8", "encoding_format": "base64"},
                              {"input": [SHORT], "dimensions": 0}, 400),
    ("post", "/api/embed"): ({"model": "tiny", "input": [SHORT, LONG]}, {"input": [SHORT, 3]}, 400),
    ("post", "/api/embeddings"): ({"prompt": LONG}, {"prompt": 3}, 400),
    ("get", "/api/tags"): (None, WRONG_KEY, 401),
    ("get", "/api/version"): (None, WRONG_KEY, 401),
    ("post", "/api/show"): ({"model": "tiny"}, {"model": 3}, 400),
    ("post", "/"): ({"inputs": SHORT}, {"inputs": LONG}, 413),
    ("post", "/embed"): ({"inputs": [SHORT, LONG], "truncate": True, "precision": "ubinary", "dimensions": 32},
                         {"inputs": []}, 400),
    ("post", "/tokenize"): ({"inputs": [SHORT, "Paris"]}, {"inputs": LONG}, 413),
    ("get", "/info"): (None, WRONG_KEY, 401),
    ("get", "/v1/models"): (None, WRONG_KEY, 401),
    ("post", "/v1/rerank"): ({"query": "what is MLX?", "documents": [SHORT, {"text": "Paris"}], "top_n": 1},
                             {"query": "what is MLX?", "documents": []}, 400),
    ("post", "/v2/rerank"): ({"query": "what is MLX?", "documents": [SHORT, "Paris"], "return_documents": True},
                             {"query": {"image": "aGk="}, "documents": [SHORT]}, 400),
    ("post", "/rerank"): ({"query": "what is MLX?", "texts": [SHORT, LONG], "truncate": True, "return_text": True},
                          {"query": "what is MLX?", "texts": [1]}, 400),
    ("get", "/health"): (None, "stopped", 503),
    ("get", "/metrics"): (None, WRONG_KEY, 401),
}
EMBEDDING_ROUTES = openai.EMBEDDING_PATHS + ollama.EMBED_PATHS + tei.EMBED_PATHS
# the embedding routes' requests: (one whose input 1 is over max_length and cut, one that cuts nothing)
CUT = {"/v1/embeddings": ({"input": [SHORT, LONG], "truncate": True}, {"input": [SHORT, LONG[:40]]}),
       "/api/embed": ({"input": [SHORT, LONG]}, {"input": [SHORT, SHORT]}),
       "/embed": ({"inputs": [SHORT, LONG], "truncate": True}, {"inputs": [SHORT]})}
CUT["/embeddings"], CUT["/"] = CUT["/v1/embeddings"], CUT["/embed"]
CUT["/api/embeddings"] = ({"prompt": LONG}, {"prompt": SHORT})  # one input only: it is input 0
API = {"/v1/embeddings": "openai", "/embeddings": "openai", "/api/embed": "ollama", "/api/embeddings": "ollama",
       "/embed": "tei", "/": "tei"}


@pytest.fixture(scope="module")
def app(embedder, reranker_hub):
    return create_app(embedder, reranker=mqe.load_reranker(str(reranker_hub)), api_key=KEY, served_model_name="tiny",
                      cors_origins=("https://app.example",))


@pytest.fixture(scope="module")
def client(app):
    with TestClient(app, headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


@pytest.fixture(scope="module")
def document(client) -> dict:
    response = client.get("/openapi.json")
    assert response.status_code == 200
    return response.json()


@pytest.fixture(scope="module")
def stopped(embedder):
    """A server whose worker died: /health's failure."""
    with TestClient(create_app(embedder)) as c:
        c.app.state.served.stop()
        yield c


def test_the_document_lists_exactly_the_routes_served_and_tested(app, document):
    listed = {(method, path) for path, operations in document["paths"].items() for method in operations}
    served = {(method.lower(), route.path) for route in app.routes if isinstance(route, APIRoute)
              for method in route.methods}
    assert listed == served == set(CASES)


@pytest.mark.parametrize("method,path", list(CASES), ids=[f"{m} {p}" for m, p in CASES])
def test_a_real_answer_matches_the_documented_schema(client, stopped, document, method, path):
    operation = document["paths"][path][method]
    ok, failing, status = CASES[(method, path)]
    if ok is not None:
        body_schema = operation["requestBody"]["content"]["application/json"]["schema"]
        _validate(document, body_schema, ok)  # the request sent is the one documented
    response = client.request(method.upper(), path, **({} if ok is None else {"json": ok}))
    assert response.status_code == 200, response.text
    _check_answer(document, operation["responses"]["200"], response)

    if failing == "stopped":
        response = stopped.request(method.upper(), path)
    else:
        response = client.request(method.upper(), path, **(failing if failing is WRONG_KEY else {"json": failing}))
    assert response.status_code == status, response.text
    assert str(status) in operation["responses"], f"{method} {path} answers {status}, undocumented"
    _check_answer(document, operation["responses"][str(status)], response)


def test_every_embedding_route_documents_the_headers_and_no_other_does(document):
    with_headers = {path for path, operations in document["paths"].items() for op in operations.values()
                    if schema.MODEL in op["responses"]["200"].get("headers", {})}
    assert with_headers == set(EMBEDDING_ROUTES)


def test_fastapis_422_is_not_documented_since_the_app_answers_400(document):
    assert not any("422" in op["responses"] for ops in document["paths"].values() for op in ops.values())
    assert "HTTPValidationError" not in document["components"]["schemas"]


@pytest.mark.parametrize("path", EMBEDDING_ROUTES)
def test_embedding_answers_name_the_inputs_cut_the_pooling_and_the_width(client, app, embedder, path):
    cut, whole = CUT[path]
    counted = app.state.metrics.value("mlx_embed_truncated_inputs_total", {"api": API[path]})
    response = client.post(path, json=cut)
    assert response.status_code == 200, response.text
    index = "0" if path == "/api/embeddings" else "1"
    headers = response.headers
    assert (headers[schema.TRUNCATED], headers[schema.TRUNCATED_COUNT]) == (index, "1")
    assert (headers[schema.MODEL], headers[schema.POOLING]) == ("tiny", embedder.pooling)
    assert headers[schema.NORMALIZED] == ("false" if path == "/api/embeddings" else "true")
    assert int(headers[schema.DIMENSIONS]) == len(_vectors(path, response.json())[0]) == embedder.dim
    assert app.state.metrics.value("mlx_embed_truncated_inputs_total", {"api": API[path]}) == counted + 1

    response = client.post(path, json=whole)
    assert response.status_code == 200, response.text
    assert schema.TRUNCATED not in response.headers and schema.TRUNCATED_COUNT not in response.headers
    assert response.headers[schema.POOLING] == embedder.pooling


def test_the_width_header_is_the_requested_dimensions(client):
    for path, body in (("/v1/embeddings", {"input": SHORT, "dimensions": 16}),
                       ("/api/embed", {"input": SHORT, "dimensions": 16}),
                       ("/embed", {"inputs": SHORT, "dimensions": 16, "normalize": False})):
        response = client.post(path, json=body)
        assert response.headers[schema.DIMENSIONS] == "16"
        assert len(_vectors(path, response.json())[0]) == 16
    assert response.headers[schema.NORMALIZED] == "false"


@pytest.mark.parametrize("path,body", [("/v1/embeddings", {"input": SHORT}), ("/api/embed", {"input": SHORT}),
                                       ("/api/embeddings", {"prompt": SHORT}), ("/embed", {"inputs": SHORT})])
def test_the_model_header_names_the_model_picked_and_an_unknown_one_is_a_documented_404(embedder, path, body):
    with TestClient(create_app({"live": embedder, "index": embedder})) as several:
        document = several.get("/openapi.json").json()
        assert several.post(path, json=body | {"model": "index"}).headers[schema.MODEL] == "index"
        assert several.post(path, json=body).headers[schema.MODEL] == "live"  # none named: the first
        response = several.post(path, json=body | {"model": "other"})
    assert response.status_code == 404 and "live, index" in response.text
    _check_answer(document, document["paths"][path]["post"]["responses"]["404"], response)


def test_browsers_may_read_the_headers_across_origins(client):
    response = client.post("/api/embed", json={"input": LONG}, headers={"Origin": "https://app.example"})
    exposed = {h.strip().lower() for h in response.headers["access-control-expose-headers"].split(",")}
    assert {h.lower() for h in schema.HEADERS} <= exposed
    assert response.headers[schema.TRUNCATED] == "0"


def test_cut_inputs_are_listed_as_runs():
    assert schema.runs([0, 1, 2, 5, 7, 8]) == "0-2,5,7-8"
    assert schema.runs([3]) == "3"
    assert len(schema.runs(list(range(0, 2048, 2)))) < 8190  # aiohttp's limit on one header line


def test_docs_page_loads_the_document(client):
    response = client.get("/docs")
    assert response.status_code == 200 and "/openapi.json" in response.text


def _check_answer(document: dict, declared: dict, response) -> None:
    """The answer's body matches the declared content's schema, and it carries every header declared required."""
    (media_type, content), = declared["content"].items()
    assert response.headers["content-type"].split(";")[0] == media_type
    if media_type == "application/json":
        _validate(document, content["schema"], response.json())
    else:
        assert response.text
    for name, header in declared.get("headers", {}).items():
        if header.get("required"):
            assert name in response.headers, f"{response.request.url.path} lacks its {name} header"


def _validate(document: dict, schema_: dict, value) -> None:
    """`value` against a schema of the document; its $refs (#/components/...) resolve within the document."""
    validator = Draft202012Validator({**schema_, "components": document["components"]})
    errors = sorted(validator.iter_errors(value), key=lambda e: e.path)
    assert not errors, "\n".join(f"{list(e.path)}: {e.message}" for e in errors)[:2000] + f"\nin {json.dumps(value)[:500]}"


def _vectors(path: str, body) -> list:
    if path in openai.EMBEDDING_PATHS:
        return [row["embedding"] for row in body["data"]]
    if path == "/api/embed":
        return body["embeddings"]
    if path == "/api/embeddings":
        return [body["embedding"]]
    return body
