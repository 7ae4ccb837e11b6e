"""Tiny random Qwen3-VL checkpoints on disk in the real repository layout (Qwen3VLForConditionalGeneration keys
`model.language_model.*` / `model.visual.*`, an embedding matrix with more rows than the tokenizer has ids, the
vision tokens, a chat template), and the transformers reference that the tests compare with."""

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from conftest import CORPUS

VL_SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
              "<|image_pad|>", "<|video_pad|>"]
# Qwen3-VL's template, reduced to what the recipe uses: system and user turns whose content is a list of
# text / image / video parts, and the generation prompt
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
EXTRA_ROWS = 37  # the real embedding has 151,936 rows for 151,669 ids


def write_vl_tokenizer(folder: Path) -> dict:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=420, special_tokens=VL_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS + ["Represent the user's input.", "<0.5 seconds>"], trainer)
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "padding_side": "right", "model_max_length": 8192, "add_bos_token": False}))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return {name: tok.token_to_id(name) for name in VL_SPECIAL} | {"size": tok.get_vocab_size()}


def vl_config(ids: dict, vision_overrides: dict | None = None, **text_overrides) -> dict:
    text = dict(model_type="qwen3_vl_text", hidden_size=64, intermediate_size=128, num_hidden_layers=3,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, rms_norm_eps=1e-6, hidden_act="silu",
                max_position_embeddings=8192, vocab_size=ids["size"] + EXTRA_ROWS, attention_bias=False,
                rope_scaling={"rope_type": "default", "mrope_interleaved": True, "mrope_section": [2, 3, 3]},
                rope_theta=5_000_000.0, dtype="float32", tie_word_embeddings=True) | text_overrides
    vision = dict(model_type="qwen3_vl", depth=3, hidden_size=32, intermediate_size=64, num_heads=2,
                  out_hidden_size=64, hidden_act="gelu_pytorch_tanh", patch_size=16, temporal_patch_size=2,
                  spatial_merge_size=2, in_channels=3, num_position_embeddings=2304,
                  deepstack_visual_indexes=[0, 1]) | (vision_overrides or {})
    return {"architectures": ["Qwen3VLForConditionalGeneration"], "model_type": "qwen3_vl",
            "text_config": text, "vision_config": vision, "tie_word_embeddings": True, "dtype": "float32",
            "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"],
            "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"]}


def randomize(model, seed: int = 0) -> None:
    """Every weight at a scale where each layer changes the result (transformers' init is nearly an identity)."""
    import torch

    rng = np.random.default_rng(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            shape = tuple(p.shape)
            if name.endswith("norm.weight") or ".norm1." in name or ".norm2." in name:
                value = 1 + 0.2 * rng.standard_normal(shape)
            elif name.endswith("bias"):
                value = 0.1 * rng.standard_normal(shape)
            elif "embed_tokens" in name or "pos_embed" in name:
                value = rng.standard_normal(shape) * (1.0 if "embed_tokens" in name else 0.5)
            else:
                value = rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))
            p.copy_(torch.from_numpy(value.astype(np.float32)))


def make_vl_checkpoint(folder: Path, seed: int = 0, tied: bool = True, vision_overrides: dict | None = None,
                       **text_overrides) -> Path:
    """A Qwen/Qwen3-VL-Embedding-* style folder: config, model.safetensors, tokenizer, chat template.
    tied=False: an instruct model's layout (4B/8B), with its own lm_head.weight."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    ids = write_vl_tokenizer(folder)
    torch.manual_seed(seed)
    config = vl_config(ids, vision_overrides, **{"tie_word_embeddings": tied, **text_overrides})
    config["tie_word_embeddings"] = tied
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**config)).float().eval()
    randomize(model, seed)
    model.save_pretrained(str(folder), safe_serialization=True)
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_processor_type": "Qwen2VLImageProcessor", "patch_size": 16, "temporal_patch_size": 2,
        "merge_size": 2, "image_mean": [0.5, 0.5, 0.5], "image_std": [0.5, 0.5, 0.5],
        "size": {"shortest_edge": 4096, "longest_edge": 1843200}}))
    return folder


class Reference:
    """transformers' Qwen3VLModel + the PIL image processor + the tokenizer's chat template, driven as the
    official Qwen3-VL-Embedding recipe drives them (its processor needs torchvision, so it is built from parts)."""

    def __init__(self, folder: Path):
        from transformers import AutoTokenizer, Qwen3VLModel
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        from mlx_qwen3_embed.vision import images

        self.model = Qwen3VLModel.from_pretrained(str(folder), dtype="float32").eval()
        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.tokenizer.chat_template = CHAT_TEMPLATE
        self.image_processor = Qwen2VLImageProcessorPil(
            patch_size=16, merge_size=2, temporal_patch_size=2, image_mean=[0.5] * 3, image_std=[0.5] * 3,
            min_pixels=images.MIN_PIXELS, max_pixels=images.MAX_PIXELS)
        self.config = self.model.config

    def conversation(self, item: dict) -> list:
        instruction = (item.get("instruction") or "").strip()  # the recipe: stripped, ending in punctuation
        if instruction and not unicodedata.category(instruction[-1]).startswith("P"):
            instruction += "."
        instruction = instruction or "Represent the user's input."
        content = [{"type": "video"} for _ in item.get("videos", [])]
        content += [{"type": "image"} for _ in item.get("images", [])]
        if item.get("text") is not None:
            content.append({"type": "text", "text": item["text"]})
        return [{"role": "system", "content": [{"type": "text", "text": instruction}]},
                {"role": "user", "content": content}]

    def inputs(self, items: list[dict]) -> dict:
        """items [{"text": ..., "images": [PIL, ...], "videos": [Patches], "instruction": ...}] -> the model's
        keyword arguments. Videos come preprocessed (the video processor needs torchvision): their placeholders
        are expanded as the recipe's transformers 4.57 Qwen3VLProcessor did, timestamps at 2 fps."""
        import torch
        from transformers import Qwen3VLProcessor

        texts = [self.tokenizer.apply_chat_template(self.conversation(i), add_generation_prompt=True,
                                                    tokenize=False) for i in items]
        pil = [img for i in items for img in i.get("images", [])]
        kwargs = {}
        videos = [v for i in items for v in i.get("videos", [])]
        if videos:
            kwargs["pixel_values_videos"] = torch.from_numpy(np.concatenate([v.pixels for v in videos]))
            kwargs["video_grid_thw"] = torch.tensor([list(v.grid) for v in videos])
            queue = iter(videos)
            expanded = []
            for text in texts:
                while "<|vision_start|><|video_pad|><|vision_end|>" in text:
                    v = next(queue)
                    t, h, w = v.grid
                    stamps = getattr(v, "stamps", None) or \
                        Qwen3VLProcessor._calculate_timestamps(None, list(range(2 * t)), 2.0, 2)
                    placeholder = "".join(f"<{s:.1f} seconds><|vision_start|>" + "<|video_pad|>" * (h * w // 4)
                                          + "<|vision_end|>" for s in stamps)
                    text = text.replace("<|vision_start|><|video_pad|><|vision_end|>", placeholder, 1)
                expanded.append(text)
            texts = expanded
        if pil:
            processed = self.image_processor(images=pil, return_tensors="pt")
            kwargs |= {"pixel_values": processed["pixel_values"], "image_grid_thw": processed["image_grid_thw"]}
            grids = iter(processed["image_grid_thw"].tolist())
            # the processor's placeholder expansion: one <|image_pad|> per merged 2x2 patch block
            expanded = []
            for text in texts:
                parts = text.split("<|image_pad|>")
                out = parts[0]
                for part in parts[1:]:
                    t, h, w = next(grids)
                    out += "<|image_pad|>" * (t * h * w // 4) + part
                expanded.append(out)
            texts = expanded
        batch = self.tokenizer(texts, padding=True, return_tensors="pt", add_special_tokens=False)
        types = (batch["input_ids"] == self.config.image_token_id).int() \
            + 2 * (batch["input_ids"] == self.config.video_token_id).int()
        return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
                "mm_token_type_ids": types, **kwargs}

    def embed(self, items: list[dict]) -> np.ndarray:
        """The recipe's vectors: last real token of last_hidden_state, L2-normalised. -> (N, D)"""
        import torch

        inputs = self.inputs(items)
        with torch.no_grad():
            hidden = self.model(**inputs).last_hidden_state
        last = inputs["attention_mask"].sum(1) - 1
        vectors = hidden[torch.arange(len(items)), last]
        return torch.nn.functional.normalize(vectors, dim=-1).numpy()


@pytest.fixture(scope="session")
def vl_model(tmp_path_factory) -> Path:
    return make_vl_checkpoint(tmp_path_factory.mktemp("vl") / "Qwen3-VL-Embedding-tiny")


@pytest.fixture(scope="session")
def vl_instruct_model(tmp_path_factory) -> Path:
    """An instruct model's layout: untied, lm_head.weight in the checkpoint."""
    return make_vl_checkpoint(tmp_path_factory.mktemp("vl") / "Qwen3-VL-Instruct-tiny", seed=1, tied=False)


@pytest.fixture(scope="session")
def vl_reference(vl_model) -> Reference:
    return Reference(vl_model)


# ------------------------------------------------------------------------------------------ Qwen3-VL-Reranker

RERANK_SYSTEM = ("Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
                 "Note that the answer can only be \"yes\" or \"no\".")
RERANK_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
HEAD_SCALE = 0.6  # std of the yes/no head rows, as rerank_checkpoints.py draws them: scores spread over (0, 1)


def write_vl_reranker_tokenizer(folder: Path) -> dict:
    """write_vl_tokenizer's BPE trained also on the reranker's template, so "yes" and "no" are single tokens (as
    in Qwen's vocabulary); the vision tokens listed as additional special tokens, as Qwen3-VL's config lists them
    (the recipe's truncation keeps `all_special_ids`)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=460, special_tokens=VL_SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    template = [RERANK_SYSTEM, "<Instruct>: " + RERANK_INSTRUCTION, "<Query>:", "\n<Document>:", "assistant\n"]
    tok.train_from_iterator(CORPUS + template * 3 + ["yes", "no"] * 50 + ["<0.5 seconds>"], trainer)
    assert tok.token_to_id("yes") is not None and tok.token_to_id("no") is not None
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "additional_special_tokens": [t for t in VL_SPECIAL if t not in ("<|im_end|>", "<|endoftext|>")],
        "padding_side": "left", "model_max_length": 8192, "add_bos_token": False}))
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    return {name: tok.token_to_id(name) for name in VL_SPECIAL + ["yes", "no"]} | {"size": tok.get_vocab_size()}


def make_vl_reranker_checkpoint(folder: Path, seed: int = 2, tied: bool = True) -> Path:
    """A Qwen/Qwen3-VL-Reranker-* style folder (the 2B ties its head; tied=False: the 8B's own lm_head.weight),
    its "yes" and "no" head rows drawn apart so that scores spread (rerank_checkpoints.py says why)."""
    import torch
    from transformers import Qwen3VLConfig, Qwen3VLForConditionalGeneration

    folder.mkdir(parents=True, exist_ok=True)
    ids = write_vl_reranker_tokenizer(folder)
    torch.manual_seed(seed)
    config = vl_config(ids, tie_word_embeddings=tied)
    config["tie_word_embeddings"] = tied
    model = Qwen3VLForConditionalGeneration(Qwen3VLConfig(**config)).float().eval()
    randomize(model, seed)
    rng = np.random.default_rng(seed + 1000)
    with torch.no_grad():
        if not tied:
            model.lm_head.weight.copy_(torch.from_numpy(
                (0.05 * rng.standard_normal(tuple(model.lm_head.weight.shape))).astype(np.float32)))
        rows = HEAD_SCALE * rng.standard_normal((2, config["text_config"]["hidden_size"]))
        model.lm_head.weight[[ids["no"], ids["yes"]]] = torch.from_numpy(rows.astype(np.float32))
        # every pair ends in the same tokens, so their hidden states share a large part: taken out of the
        # direction, the logits centre near 0 and the scores spread instead of all sitting near 0 or 1
        from tokenizers import Tokenizer

        sample = (f"<|im_start|>system\n{RERANK_SYSTEM}<|im_end|>\n<|im_start|>user\n<Instruct>: "
                  f"{RERANK_INSTRUCTION}<Query>:what is MLX?\n<Document>:{CORPUS[0]}<|im_end|>\n"
                  "<|im_start|>assistant\n")
        input_ids = torch.tensor([Tokenizer.from_file(str(folder / "tokenizer.json")).encode(sample).ids])
        for _ in range(3):  # tied rows are also input embeddings ("yes" and "no" are in the system turn)
            h = model.model(input_ids=input_ids).last_hidden_state[0, -1]
            W = model.lm_head.weight
            shift = (h @ (W[ids["yes"]] - W[ids["no"]])) / (h @ h) * h
            W[ids["yes"]] -= shift / 2
            W[ids["no"]] += shift / 2
    model.save_pretrained(str(folder), safe_serialization=True)
    return folder


def truncate_like_the_recipe(ids: list, max_length: int, special: set) -> list:
    """The recipe's `truncate_tokens_optimized(ids[:-5], max_length, all_special_ids) + ids[-5:]`, copied."""
    tokens = ids[:-5]
    if len(tokens) > max_length:
        keep = max_length - sum(1 for t in tokens if t in special)
        out, kept = [], 0
        for t in tokens:
            if t in special:
                out.append(t)
            elif kept < keep:
                out.append(t)
                kept += 1
        tokens = out
    return tokens + ids[-5:]


class RerankReference(Reference):
    """The official Qwen3VLReranker's scoring with transformers' parts: `format_mm_instruction`'s conversation,
    the chat template with the generation prompt, its truncation, `lm.model(...).last_hidden_state[:, -1]`
    through a one-row linear W[yes] - W[no], sigmoid; one pair at a time, as its `process` scores them."""

    def __init__(self, folder: Path):
        from transformers import Qwen3VLForConditionalGeneration

        super().__init__(folder)
        lm = Qwen3VLForConditionalGeneration.from_pretrained(str(folder), dtype="float32").eval()
        self.model = lm.model
        vocab = self.tokenizer.get_vocab()
        self.direction = (lm.lm_head.weight[vocab["yes"]] - lm.lm_head.weight[vocab["no"]]).detach()
        self.special = set(self.tokenizer.all_special_ids)

    @staticmethod
    def content(item, prefix: str) -> list:
        item = {"text": item} if isinstance(item, str) else item
        content = [{"type": "text", "text": prefix}]
        content += [{"type": "video"} for _ in item.get("videos", [])]
        content += [{"type": "image"} for _ in item.get("images", [])]
        if item.get("text") is not None:
            content.append({"type": "text", "text": item["text"]})
        return content if len(content) > 1 else content + [{"type": "text", "text": "NULL"}]

    def conversation(self, item: dict) -> list:
        query, document = item["pair"]
        user = [{"type": "text", "text": "<Instruct>: " + (item.get("instruction") or RERANK_INSTRUCTION)}]
        user += self.content(query, "<Query>:") + self.content(document, "\n<Document>:")
        return [{"role": "system", "content": [{"type": "text", "text": RERANK_SYSTEM}]},
                {"role": "user", "content": user}]

    def score(self, pairs: list, instruction: str | None = None, max_length: int = 10240) -> np.ndarray:
        """pairs [(query, document)], each a str or {"text", "images": [PIL], "videos": [Patches]} -> (N,)."""
        import torch

        scores = []
        for query, document in pairs:
            parts = [{"text": p} if isinstance(p, str) else p for p in (query, document)]
            item = {"pair": (query, document), "instruction": instruction,
                    "images": [i for p in parts for i in p.get("images", [])],
                    "videos": [v for p in parts for v in p.get("videos", [])]}
            inputs = self.inputs([item])
            ids = truncate_like_the_recipe(inputs["input_ids"][0].tolist(), max_length, self.special)
            inputs["input_ids"] = torch.tensor([ids])
            inputs["attention_mask"] = torch.ones_like(inputs["input_ids"])
            inputs["mm_token_type_ids"] = (inputs["input_ids"] == self.config.image_token_id).int() \
                + 2 * (inputs["input_ids"] == self.config.video_token_id).int()
            with torch.no_grad():
                last = self.model(**inputs).last_hidden_state[:, -1]
            scores.append(torch.sigmoid(last @ self.direction).item())
        return np.array(scores, dtype=np.float32)


@pytest.fixture(scope="session")
def vl_reranker_model(tmp_path_factory) -> Path:
    return make_vl_reranker_checkpoint(tmp_path_factory.mktemp("vl") / "Qwen3-VL-Reranker-tiny")


@pytest.fixture(scope="session")
def vl_reranker_untied(tmp_path_factory) -> Path:
    """The 8B's layout: its own lm_head.weight."""
    return make_vl_reranker_checkpoint(tmp_path_factory.mktemp("vl") / "Qwen3-VL-Reranker-untied-tiny", seed=3,
                                       tied=False)


@pytest.fixture(scope="session")
def vl_rerank_reference(vl_reranker_model) -> RerankReference:
    return RerankReference(vl_reranker_model)
