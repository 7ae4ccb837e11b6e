"""HTTP edges through real sockets to a loopback uvicorn (listen.py's protocol) and the app: a body with both
Content-Length and Transfer-Encoding (400, closed), bodies that are not UTF-8 (400 in the dialect's shape),
requests that do not parse (JSON, not uvicorn's plain text), and server faults that tell the client a reference,
never the exception's text or a heap address."""

import json
import logging

import fastapi.testclient
import pytest

from mlx_qwen3_embed.serve import create_app
from mlx_qwen3_embed.serve.errors import error_response
from mlx_qwen3_embed.vision import images
from test_server_limits import closed_by_server, connect, read_response, serving

# a path of each dialect, a body it takes, and where its error message is
DIALECTS = {"openai": ("/v1/embeddings", {"input": "hello"}, lambda body: body["error"]["message"]),
            "ollama": ("/api/embed", {"model": "tiny", "input": "hello"}, lambda body: body["error"]),
            "tei": ("/embed", {"inputs": "hello"}, lambda body: body["error"])}


@pytest.fixture(scope="module")
def port(embedder):
    with serving(create_app(embedder)) as port:
        yield port


@pytest.fixture(scope="module")
def client(embedder):
    with fastapi.testclient.TestClient(create_app(embedder)) as client:
        yield client


# --- Content-Length with Transfer-Encoding ---------------------------------------------------------------------

@pytest.mark.parametrize("dialect", DIALECTS)
def test_content_length_with_chunked_is_400_and_closed(port, dialect):
    path, body, message = DIALECTS[dialect]
    data = json.dumps(body).encode()
    with connect(port) as conn:
        conn.sendall(f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(data)}\r\nTransfer-Encoding: chunked\r\n\r\n".encode()
                     + b"%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        status, headers, answer = read_response(conn)
        assert (status, headers["connection"]) == (400, "close")
        assert "Content-Length and Transfer-Encoding" in message(json.loads(answer))
        assert closed_by_server(conn)  # RFC 9112 6.1: close after answering


def test_chunked_alone_is_still_served(port):
    data = json.dumps({"input": "hello"}).encode()
    with connect(port) as conn:
        conn.sendall(b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n%x\r\n%s\r\n0\r\n\r\n" % (len(data), data))
        status, _, answer = read_response(conn)
    assert status == 200 and len(json.loads(answer)["data"]) == 1


# --- bodies that are not UTF-8 ---------------------------------------------------------------------------------

@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "latin-1"])
@pytest.mark.parametrize("dialect", DIALECTS)
def test_a_body_that_is_not_utf8_is_400_in_the_dialects_shape(client, dialect, encoding):
    path, body, message = DIALECTS[dialect]
    body = {k: "héllo" if v == "hello" else v for k, v in body.items()}  # latin-1's é is not UTF-8
    response = client.post(path, content=json.dumps(body, ensure_ascii=False).encode(encoding),
                           headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert "not UTF-8" in message(response.json())
    if dialect == "openai":
        assert (response.json()["error"]["code"], response.json()["error"]["param"]) == ("invalid_json", None)


def test_utf8_with_or_without_a_bom_is_served(client):
    for prefix in (b"", b"\xef\xbb\xbf"):
        response = client.post("/v1/embeddings", content=prefix + json.dumps({"input": "héllo"}).encode(),
                               headers={"Content-Type": "application/json"})
        assert response.status_code == 200, response.text


def test_malformed_json_says_what_is_wrong(client):
    response = client.post("/v1/embeddings", content=b'{"input": ', headers={"Content-Type": "application/json"})
    assert response.status_code == 400
    assert response.json()["error"]["message"] == "body: JSON decode error: Expecting value"


# --- requests that do not parse --------------------------------------------------------------------------------

@pytest.mark.parametrize("request_bytes", [b"GARBAGE\r\n\r\n", b"GET /health HTTP/1.1\r\nHost x\r\n\r\n",
                                           b"GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 1, 2\r\n\r\n"],
                         ids=["request line", "header without a colon", "two lengths"])
def test_a_request_that_does_not_parse_is_answered_in_json_and_closed(port, request_bytes):
    with connect(port) as conn:
        conn.sendall(request_bytes)
        status, headers, answer = read_response(conn)
        assert (status, headers["content-type"], headers["connection"]) == (400, "application/json", "close")
        error = json.loads(answer)["error"]
        assert error["code"] == "invalid_http_request" and error["type"] == "invalid_request_error"
        assert closed_by_server(conn)


# --- server faults ---------------------------------------------------------------------------------------------

class BrokenModel:
    """Stands in for a model that fails inside: its message holds what a client must not see."""
    name = "broken"

    def __init__(self, dim: int):
        self.dim = dim

    def embed_prepared(self, sequences, **kwargs):
        raise RuntimeError(f"kernel failed in {object()} under /home/someone/models")


class BrokenQueue:
    maxsize = 1

    def qsize(self):
        raise TypeError(f"cannot size {object()}")


def assert_internal(response, caplog, words: str) -> None:
    """A 500 naming only a reference, which the server's log has with the traceback."""
    assert response.status_code == 500
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "internal_error")
    assert error["message"].startswith("internal error (reference ")
    assert "0x" not in response.text and words not in response.text and "Error" not in error["message"]
    reference = error["message"].split()[3]
    logged = [r for r in caplog.records if reference in r.getMessage()]
    assert logged and logged[0].exc_info and words in str(logged[0].exc_info[1])


def test_a_model_failure_is_500_with_a_reference_not_its_text(embedder, caplog):
    app = create_app(embedder)
    app.state.worker.embedder = BrokenModel(embedder.dim)
    with caplog.at_level(logging.ERROR, "mlx_qwen3_embed.serve"), fastapi.testclient.TestClient(app) as c:
        response = c.post("/v1/embeddings", json={"input": "hello"})
    assert_internal(response, caplog, "kernel failed")


def test_an_unexpected_exception_is_500_with_a_reference_not_its_text(embedder, caplog):
    app = create_app(embedder)
    app.state.worker.queue = BrokenQueue()
    with caplog.at_level(logging.ERROR, "mlx_qwen3_embed.serve"):
        response = fastapi.testclient.TestClient(app, raise_server_exceptions=False).get("/health")
    assert_internal(response, caplog, "cannot size")


def test_no_error_message_carries_a_heap_address():
    body = json.loads(error_response("/v1/embeddings", 400, "bad value <foo.Bar object at 0x7f3a9c0d1e50>").body)
    assert body["error"]["message"] == "bad value"
    with pytest.raises(images.ImageError) as caught:  # PIL's own message names its BytesIO by address
        images.open_image(b"not an image")
    assert "0x" not in str(caught.value) and "cannot identify image file" in str(caught.value)
