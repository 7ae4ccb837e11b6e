"""Video over HTTP with Qwen3-VL: `/v1/embeddings` items and Jina's `/v1/rerank` documents and query take
{"video": [frame data URLs or base64]} and {"video": "data:video/mp4;base64,..."}; vectors and scores equal the
library's for the same frames and file; each limit (frames, the pixel cap per frame, decoded pixels per request,
decode time, the body cap) and each bad video is refused naming it; decoding never runs on the event loop."""

import asyncio
import base64
import io
import sys

import fastapi.testclient
import numpy as np
import pytest
from PIL import Image

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.serve.app import create_app
from mlx_qwen3_embed.vision import video
from vl_fixtures import vl_model, vl_reranker_model  # noqa: F401  (session fixtures)

av = pytest.importorskip("av")
from test_vl_media import write_clip  # noqa: E402  (needs av)

ATOL = 1e-5
INSTALL = "pip install 'mlx-qwen3-embed[video]'"


def png(height: int, width: int, seed: int) -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def data_url(raw: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64," + base64.b64encode(raw).decode()


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@pytest.fixture(scope="module")
def frames() -> list[bytes]:
    return [png(60, 80, seed) for seed in range(4)]


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return write_clip(tmp_path_factory.mktemp("clips") / "small.mp4", 120, 160, 25, 75)


@pytest.fixture(scope="module")
def embedder(vl_model):
    return mqe.load(str(vl_model), dtype="float32")


@pytest.fixture(scope="module")
def reranker(vl_reranker_model):
    return mqe.load_reranker(str(vl_reranker_model), dtype="float32")


@pytest.fixture(scope="module")
def client(embedder, reranker):
    with fastapi.testclient.TestClient(create_app(embedder, reranker=reranker)) as c:
        yield c


def serve(embedder, reranker=None, **options):
    return fastapi.testclient.TestClient(create_app(embedder, reranker=reranker, **options))


def vectors(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def refusal(response) -> str:
    """The 400's message, in OpenAI's shape (/v1/embeddings) or Cohere's (/v1/rerank)."""
    assert response.status_code == 400, response.text
    body = response.json()
    return body["message"] if "message" in body else body["error"]["message"]


# ------------------------------------------------------------------------------------------ equal to the library

def test_frame_lists_equal_the_library(client, embedder, frames):
    body = {"input": [{"video": [data_url(f) for f in frames]}, {"video": [b64(f) for f in frames[:3]],
                                                                   "text": "a caption"}]}
    expected = embedder.embed([{"video": frames}, {"video": frames[:3], "text": "a caption"}])
    np.testing.assert_allclose(vectors(client.post("/v1/embeddings", json=body)), expected, atol=ATOL)


def test_video_files_equal_the_library(client, embedder, clip):
    raw = clip.read_bytes()
    body = {"input": [{"video": data_url(raw, "video/mp4")}, {"video": b64(raw), "text": "moving discs"}],
            "dimensions": 32}
    expected = embedder.embed([{"video": str(clip)}, {"video": str(clip), "text": "moving discs"}], dim=32)
    np.testing.assert_allclose(vectors(client.post("/v1/embeddings", json=body)), expected, atol=ATOL)


def test_the_library_takes_a_video_files_bytes(embedder, clip):
    np.testing.assert_allclose(embedder.embed({"video": clip.read_bytes()}), embedder.embed({"video": str(clip)}),
                               atol=ATOL)


def test_rerank_video_documents_and_query_equal_the_library(client, reranker, frames, clip):
    raw = clip.read_bytes()
    documents = ["a plain text", {"video": data_url(raw, "video/mp4")},
                 {"text": "a caption", "video": [b64(f) for f in frames]}]
    answer = client.post("/v1/rerank", json={"query": {"video": [data_url(f) for f in frames[:2]]},
                                             "documents": documents})
    assert answer.status_code == 200, answer.text
    expected = reranker.score({"video": frames[:2]}, ["a plain text", {"video": str(clip)},
                                                      {"text": "a caption", "video": frames}])
    results = answer.json()["results"]
    assert sorted(r["index"] for r in results) == [0, 1, 2]
    assert all(abs(r["relevance_score"] - expected[r["index"]]) <= 1e-6 for r in results)
    assert results[[r["index"] for r in results].index(1)]["document"] == documents[1]  # as it came


# ------------------------------------------------------------------------------------------ limits

def test_more_frames_than_the_limit_is_a_400_before_decoding(client, monkeypatch):
    tiny = b64(png(8, 8, 0))
    decoded = []
    monkeypatch.setattr(video.images, "open_image", lambda *a: decoded.append(a))
    message = refusal(client.post("/v1/embeddings", json={"input": ["fine", {"video": [tiny] * 65}]}))
    assert message.startswith("input[1].video") and "65 frames" in message and "--max-video-frames" in message
    assert decoded == []


def test_a_video_files_sample_over_the_frame_limit_is_a_400(embedder, clip):
    with serve(embedder, max_video_frames=2) as c:  # the clip's sample is 4 frames
        message = refusal(c.post("/v1/embeddings", json={"input": {"video": b64(clip.read_bytes())}}))
    assert message.startswith("input[0].video") and "--max-video-frames" in message


def test_a_frame_over_the_pixel_cap_is_a_400(client, frames):
    buffer = io.BytesIO()
    Image.new("RGB", (9000, 8000)).save(buffer, format="PNG")
    body = {"input": {"video": [b64(frames[0]), b64(buffer.getvalue())]}}
    message = refusal(client.post("/v1/embeddings", json=body))
    assert message.startswith("input[0].video") and "frame 1" in message and "over the cap" in message


def test_decoded_pixels_are_counted_over_the_whole_request(embedder, frames):
    per_video = 4 * 60 * 80
    with serve(embedder, max_video_pixels=per_video + 100) as c:
        one = [b64(f) for f in frames]
        assert c.post("/v1/embeddings", json={"input": [{"video": one}]}).status_code == 200
        message = refusal(c.post("/v1/embeddings", json={"input": [{"video": one}, {"video": one}]}))
    assert message.startswith("input[1].video") and "--max-video-pixels" in message


def test_a_video_files_pixels_count_from_its_header(embedder, clip):
    with serve(embedder, max_video_pixels=3 * 120 * 160) as c:  # its 4 sampled frames of 160x120 need more
        message = refusal(c.post("/v1/embeddings", json={"input": {"video": b64(clip.read_bytes())}}))
    assert message.startswith("input[0].video") and "--max-video-pixels" in message


@pytest.mark.parametrize("kind", ["file", "frames"])
def test_decoding_past_the_deadline_is_a_400(embedder, clip, frames, kind):
    given = b64(clip.read_bytes()) if kind == "file" else [b64(f) for f in frames]
    with serve(embedder, video_timeout=1e-9) as c:
        message = refusal(c.post("/v1/embeddings", json={"input": {"video": given}}))
    assert message.startswith("input[0].video") and "--video-timeout" in message


def test_a_video_over_the_body_cap_is_a_413(embedder, clip):
    with serve(embedder, max_request_bytes=2_000) as c:
        answer = c.post("/v1/embeddings", json={"input": {"video": b64(clip.read_bytes())}})
    assert answer.status_code == 413 and answer.json()["error"]["code"] == "request_too_large"


def test_decoding_runs_off_the_event_loop(client, clip, frames, monkeypatch):
    loops = []

    def record(original):
        def decode(*args, **kwargs):
            try:
                loops.append(asyncio.get_running_loop())
            except RuntimeError:  # no loop running in this thread: a worker thread
                loops.append(None)
            return original(*args, **kwargs)
        return decode

    monkeypatch.setattr(video, "decode_video", record(video.decode_video))
    monkeypatch.setattr(video, "open_frames", record(video.open_frames))
    item = {"video": b64(clip.read_bytes())}
    assert client.post("/v1/embeddings", json={"input": [item]}).status_code == 200
    rerank = {"query": {"video": [b64(f) for f in frames]}, "documents": [item]}
    assert client.post("/v1/rerank", json=rerank).status_code == 200
    assert loops == [None, None, None]


def test_without_pyav_a_video_file_is_a_400_naming_the_extra(client, clip, monkeypatch):
    monkeypatch.setitem(sys.modules, "av", None)
    message = refusal(client.post("/v1/embeddings", json={"input": {"video": b64(clip.read_bytes())}}))
    assert message.startswith("input[0].video") and INSTALL in message


# ------------------------------------------------------------------------------------------ bad videos

@pytest.mark.parametrize("given, words", [
    ("https://example.com/clip.mp4", "does not download videos"),
    (["https://example.com/a.png"], "input[0].video[0] is a remote URL"),
    ("data:image/png;base64,aGk=", "must be data:video/"),
    ("/etc/hostname", "neither a data URL nor valid base64"),
    (base64.b64encode(b"not a video at all").decode(), "not a readable video"),
    ([base64.b64encode(b"not an image").decode()], "frame 0 is not a readable image"),
    ([7], "input[0].video[0] must be a data URL or base64 string"),
    (7, "a list of frames"),
])
def test_bad_videos_are_400s_naming_them(client, given, words):
    message = refusal(client.post("/v1/embeddings", json={"input": {"video": given}}))
    assert message.startswith("input[0].video") and words in message


def test_rerank_refusals_name_the_document_or_the_query(client, frames):
    tiny = b64(png(8, 8, 0))
    too_many = client.post("/v1/rerank", json={"query": "q", "documents": ["a", {"video": [tiny] * 65}]})
    assert refusal(too_many).startswith("documents[1].video") and "--max-video-frames" in refusal(too_many)
    junk = client.post("/v1/rerank", json={"query": {"video": b64(b"junk")}, "documents": ["a"]})
    assert refusal(junk).startswith("query.video") and "not a readable video" in refusal(junk)


@pytest.mark.parametrize("path, body", [
    ("/v2/rerank", {"query": "q", "documents": ["a", {"video": ["aGk="]}]}),
    ("/v2/rerank", {"query": {"video": ["aGk="]}, "documents": ["a"]}),
    ("/rerank", {"query": "q", "texts": ["a", {"video": ["aGk="]}]}),
])
def test_text_rerank_routes_refuse_videos_naming_the_jina_route(client, path, body):
    answer = client.post(path, json=body)
    assert answer.status_code == 400
    assert "/v1/rerank" in (answer.json().get("message") or answer.json()["error"])


def test_video_limit_options_are_checked_naming_them(embedder):
    from mlx_qwen3_embed.cli.serve import check_flags

    with pytest.raises(ValueError, match="--video-timeout must be a positive number of seconds"):
        check_flags(port=0, cache_size=0, video_timeout=0.0)
    with pytest.raises(ValueError, match="--max-video-frames must be a positive int"):
        check_flags(port=0, cache_size=0, max_video_frames=0)
    with pytest.raises(ValueError, match="max_video_pixels must be a positive int"):
        create_app(embedder, max_video_pixels=0)
