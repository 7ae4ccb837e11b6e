"""Qwen3-VL-Embedding: pixels equal the processor's, vectors equal transformers' model driven by the official
recipe (fp32, cosine >= 0.99999) for text, images and both, in any batch; bad items name their index."""

import io
import shutil

import numpy as np
import pytest
from PIL import Image

import mlx_qwen3_embed as mqe
from mlx_qwen3_embed.vision import images
from mlx_qwen3_embed.vision.embedder import VLEmbedder, format_instruction
from vl_fixtures import vl_instruct_model, vl_model, vl_reference  # noqa: F401  (session fixtures)

COSINE = 0.99999


def picture(height: int, width: int, seed: int) -> Image.Image:
    """A smooth random picture (noise would make the bicubic resize a poor test of the filter)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BILINEAR)


@pytest.fixture(scope="module")
def embedder(vl_model) -> VLEmbedder:
    return mqe.load(str(vl_model), dtype="float32")


@pytest.fixture(scope="module")
def pictures() -> dict:
    return {"square": picture(64, 64, 1), "odd": picture(77, 131, 2), "tall": picture(300, 40, 3),
            "big": picture(1500, 1300, 4)}


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = np.atleast_2d(a), np.atleast_2d(b)
    return (a * b).sum(-1) / np.linalg.norm(a, axis=-1) / np.linalg.norm(b, axis=-1)


def reference_item(item) -> dict:
    item = {"text": item} if isinstance(item, str) else dict(item)
    image = item.pop("image", None)
    if image is not None:
        item["images"] = image if isinstance(image, list) else [image]
    return item


# ------------------------------------------------------------------------------------------ preprocessing

@pytest.mark.parametrize("name", ["square", "odd", "tall", "big"])
def test_pixels_equal_the_processor(vl_reference, pictures, name):
    ref = vl_reference.image_processor(images=[pictures[name]], return_tensors="np")
    ours = images.preprocess(images.open_image(pictures[name]))
    assert ours.grid == tuple(ref["image_grid_thw"][0])
    assert ours.pixels.shape == ref["pixel_values"].shape
    np.testing.assert_array_equal(ours.pixels, ref["pixel_values"])


def test_smart_resize_keeps_within_the_recipe_bounds():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    for height, width in [(10, 10), (77, 131), (4000, 3000), (32, 6000), (1000, 1000)]:
        h, w = images.smart_resize(height, width)
        assert (h, w) == smart_resize(height, width, 32, images.MIN_PIXELS, images.MAX_PIXELS)
        assert h % 32 == 0 and w % 32 == 0 and images.MIN_PIXELS <= h * w <= images.MAX_PIXELS


def test_rgba_is_composited_on_white():
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)  # fully transparent black
    assert (np.asarray(images.open_image(rgba)) == 255).all()


def test_image_sources_agree(pictures, tmp_path):
    img = pictures["odd"]
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    import base64
    data_url = "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
    expected = np.asarray(img)
    for source in (img, expected, buffer.getvalue(), str(tmp_path / "a.png"), tmp_path / "a.png", data_url):
        np.testing.assert_array_equal(np.asarray(images.open_image(source)), expected)


# ------------------------------------------------------------------------------------------ parity

def test_instruction_format():
    assert format_instruction(None) == "Represent the user's input."
    assert format_instruction("  Find the photo ") == "Find the photo."
    assert format_instruction("Find the photo?") == "Find the photo?"
    assert format_instruction("   ") == "Represent the user's input."


def test_text_equals_reference(embedder, vl_reference):
    texts = ["The quick brown fox jumps over the lazy dog.", "", "快速的棕色狐狸"]
    ours = embedder.embed(texts)
    ref = vl_reference.embed([reference_item(t) for t in texts])
    assert ours.shape == (3, embedder.dim) and ours.dtype == np.float32
    assert cosines(ours, ref).min() >= COSINE


@pytest.mark.parametrize("name", ["square", "odd"])
def test_image_equals_reference(embedder, vl_reference, pictures, name):
    item = {"image": pictures[name]}
    assert cosines(embedder.embed(item), vl_reference.embed([reference_item(item)]))[0] >= COSINE


def test_text_and_image_equal_reference(embedder, vl_reference, pictures):
    items = [{"text": "a brown fox", "image": pictures["odd"], "instruction": "Retrieve matching photos"},
             {"text": "two pictures", "image": [pictures["square"], pictures["tall"]]}]
    ours = embedder.embed(items)
    ref = vl_reference.embed([reference_item(i) for i in items])
    assert cosines(ours, ref).min() >= COSINE


def test_images_change_the_vector(embedder, pictures):
    a, b = embedder.embed([{"image": pictures["square"]}, {"image": pictures["odd"]}])
    assert cosines(a, b)[0] < 0.99


def test_mixed_batch_equals_each_item_alone(embedder, pictures):
    items = ["short", {"image": pictures["odd"]}, "a much longer text that pads the batch " * 6,
             {"text": "caption", "image": pictures["square"]}, {"image": pictures["tall"], "text": "x"}]
    together = embedder.embed(items)
    for budget in (None, 60):  # one batch (packed rows), and several
        np.testing.assert_allclose(embedder.embed(items, batch_tokens=budget), together, atol=1e-5)
    alone = np.stack([embedder.embed(item) for item in items])
    assert cosines(together, alone).min() >= COSINE


def test_dim_and_instruction_argument(embedder):
    full = embedder.embed("query text", instruction="Find images")
    small = embedder.embed("query text", instruction="Find images", dim=16)
    assert small.shape == (16,)
    np.testing.assert_allclose(small, full[:16] / np.linalg.norm(full[:16]), atol=1e-6)
    assert cosines(full, embedder.embed("query text"))[0] < 0.9999  # the instruction is the system turn


# ------------------------------------------------------------------------------------------ bad input

def test_bad_items_name_their_index(embedder, tmp_path, pictures):
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    cases = [
        ({"text": "x", "image": str(tmp_path / "missing.png")}, FileNotFoundError, "no image file"),
        ({"image": str(tmp_path / "notes.txt")}, ValueError, "not a readable image"),
        ({"image": str(tmp_path / "broken.png")}, ValueError, "not a readable image"),
        ({"instruction": "only this"}, ValueError, "none of text, image and video"),
        ({"txt": "typo"}, ValueError, "unknown key 'txt'"),
        ({"image": np.zeros((8, 8), dtype=np.float32)}, ValueError, "uint8"),
        ({"image": "https://example.com/a.png"}, ValueError, "not in the image cache"),
        (42, TypeError, "must be a str or a dict"),
    ]
    for item, error, words in cases:
        with pytest.raises(error, match=rf"item 1.*{words}"):
            embedder.embed(["fine", item])


def test_image_over_the_pixel_cap_is_refused(embedder, tmp_path):
    path = tmp_path / "huge.png"
    Image.new("RGB", (9000, 8000)).save(path)
    with pytest.raises(ValueError, match=r"item 0: image of 9000x8000 px is over the cap"):
        embedder.embed({"image": str(path)})


def test_image_given_to_a_text_only_model(hub_model, pictures):
    with pytest.raises(TypeError, match=r"texts\[1\].*text-only.*Qwen3-VL"):
        mqe.load(str(hub_model)).embed(["fine", {"image": pictures["square"]}])


def test_bad_layer_and_dim(vl_model, embedder):
    with pytest.raises(ValueError, match="layer must be between"):
        mqe.load(str(vl_model), layer=9)
    with pytest.raises(ValueError, match="dim must be between"):
        embedder.embed("x", dim=0)



def test_tokenizer_without_the_pad_token_is_refused(vl_model, tmp_path):
    folder = tmp_path / "no-pad"
    shutil.copytree(vl_model, folder)
    tokenizer = folder / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace("<|endoftext|>", "<|end-of-text|>"))
    with pytest.raises(ValueError, match=r"no-pad/tokenizer.json has no <\|endoftext\|> token"):
        mqe.load(str(folder))

# ------------------------------------------------------------------------------------------ instruct-model mode

@pytest.fixture(scope="module")
def instruct(vl_instruct_model):
    from vl_fixtures import Reference

    return Reference(vl_instruct_model)


def test_instruct_checkpoint_has_its_own_lm_head(vl_instruct_model):
    from safetensors import safe_open

    with safe_open(str(vl_instruct_model / "model.safetensors"), "np") as f:
        assert "lm_head.weight" in f.keys()  # loading drops it: embeddings need none


@pytest.mark.parametrize("pooling", ["mean", "first", "max", "last"])
@pytest.mark.parametrize("layer", [None, 0, 1, 2, -2, -4])
def test_pooling_and_layer_equal_transformers_hidden_states(vl_instruct_model, instruct, pictures, pooling, layer):
    """hidden_states[0] is the embeddings, [k] block k's output before its deepstack addition, [-1] the
    final-normed output (the default)."""
    import torch

    items = [{"text": "The quick brown fox jumps over the lazy dog"}, {"text": "a dog", "image": pictures["odd"]}]
    inputs = instruct.inputs([reference_item(i) for i in items])
    with torch.no_grad():
        hidden = instruct.model(**inputs, output_hidden_states=True).hidden_states[-1 if layer is None else layer]
    mask = inputs["attention_mask"].bool()
    lengths = mask.sum(1)
    if pooling == "mean":
        ref = (hidden * mask[..., None]).sum(1) / lengths[:, None]
    elif pooling == "first":
        ref = hidden[:, 0]
    elif pooling == "max":
        ref = hidden.masked_fill(~mask[..., None], -torch.inf).max(1).values
    else:
        ref = hidden[torch.arange(len(items)), lengths - 1]
    ours = mqe.load(str(vl_instruct_model), pooling=pooling, layer=layer).embed(items)
    assert cosines(ours, ref.numpy()).min() >= COSINE


# ------------------------------------------------------------------------------------------ video

@pytest.fixture(scope="module")
def frames() -> list:
    return [picture(90, 120, 10 + i) for i in range(5)]


def test_video_preprocessing_follows_the_recipe(frames):
    """5 frames of 90x120: to multiples of 64 with >= 16,384 px (128x192), padded to 6, then to multiples of
    32 with >= 128x32^2 px (320x448); 3 temporal patches stamped at the middle of their 2 frames at 2 fps."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    patches, stamps = images.preprocess_video(frames)
    h, w = smart_resize(90, 120, 64, 4 * 64 * 64, 16384 * 64 * 64)
    h, w = smart_resize(h, w, 32, 128 * 32 * 32, 768 * 32 * 32)
    assert patches.grid == (3, h // 16, w // 16) and stamps == [0.25, 1.25, 2.25]
    assert patches.pixels.shape == (3 * (h // 16) * (w // 16), 3 * 2 * 16 * 16)
    # the last temporal patch holds frame 4 twice (the padding repeats the last frame)
    last = patches.pixels[-(h // 16) * (w // 16):].reshape(-1, 3, 2, 256)
    np.testing.assert_array_equal(last[:, :, 0], last[:, :, 1])


def test_many_frames_are_sampled_down(frames):
    patches, stamps = images.preprocess_video(frames * 20)
    assert patches.grid[0] == images.MAX_FRAMES // 2 and len(stamps) == images.MAX_FRAMES // 2


def test_video_equals_reference(embedder, vl_reference, frames, pictures):
    """transformers' model fed our pixel_values_videos / video_grid_thw and the recipe's timestamped prompt."""
    patches, _ = images.preprocess_video(frames)
    items = [{"video": frames}, {"video": frames, "image": pictures["square"], "text": "a clip"}]
    ref = vl_reference.embed([{"videos": [patches]}, {"videos": [patches], "images": [pictures["square"]],
                                                       "text": "a clip"}])
    assert cosines(embedder.embed(items), ref).min() >= COSINE
    alone = np.stack([embedder.embed(item) for item in items])
    assert cosines(alone, ref).min() >= COSINE


def test_bad_videos_name_their_index(embedder, tmp_path):
    for video, error, words in [([], ValueError, "video has no frames"),
                                (str(tmp_path / "clip.mp4"), FileNotFoundError, "no video file"),
                                ([picture(64, 64, 0), picture(128, 64, 1)], ValueError, "one size"),
                                ([b"not an image"], ValueError, "not a readable image")]:
        with pytest.raises(error, match=rf"item 1.*{words}"):
            embedder.embed(["fine", {"video": video}])
