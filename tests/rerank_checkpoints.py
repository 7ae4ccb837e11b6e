"""Tiny random-weight Qwen3-Reranker checkpoints on disk: hub layout (tied head, or an untied lm_head like the 8B)
and mlx-community layout written by mlx-lm itself. Builders for conftest's reranker fixtures.

Random weights give "yes" and "no" logits that barely differ (every score near 0.5, proving nothing), so the
two head rows are drawn apart: the scores then spread over (0, 1). The last token is the same for every pair,
so the hidden states share a large component and some seeds push every score to 0 or 1: the fixtures use seeds
that spread, and the tests check that they do.
"""

import json
from pathlib import Path

import numpy as np

from conftest import CORPUS, SPECIAL, hub_config, random_weights, save_safetensors
from mlx_qwen3_embed.reranker import PREFIX, SUFFIX

QUERIES = ["what is MLX?", "Who jumps over the dog?", "how do embeddings work", "快速的狐狸"]
DOCUMENTS = CORPUS[:17]
HEAD_SCALE = 0.6  # std of the yes/no head rows: logits differ by a few units, scores neither 0.5 nor saturated


def write_reranker_tokenizer(folder: Path, append_eos: bool) -> int:
    """A byte-level BPE like Qwen's whose vocabulary has "yes" and "no" as single tokens, as Qwen's has."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=460, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS + [PREFIX, SUFFIX] * 3 + ["yes", "no"] * 50, trainer)
    assert tok.token_to_id("yes") is not None and tok.token_to_id("no") is not None
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = (
        processors.TemplateProcessing(single="$A <|endoftext|>", special_tokens=[("<|endoftext|>", eos)])
        if append_eos else processors.ByteLevel(trim_offsets=False))
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "padding_side": "left", "model_max_length": 512, "add_bos_token": False}))
    return tok.get_vocab_size(with_added_tokens=True)


def reranker_weights(config: dict, yes: int, no: int, seed: int = 1) -> dict[str, np.ndarray]:
    """Qwen3ForCausalLM tensors (decoder keys without `model.`, plus `lm_head.weight` when untied)."""
    rng = np.random.default_rng(seed + 1000)
    w = random_weights(config, seed)
    D, V = config["hidden_size"], config["vocab_size"]
    if config["tie_word_embeddings"]:
        head = w["embed_tokens.weight"]
    else:
        head = w["lm_head.weight"] = (0.05 * rng.standard_normal((V, D))).astype(np.float32)
    head[[no, yes]] = HEAD_SCALE * rng.standard_normal((2, D)).astype(np.float32)
    return w


def make_reranker_checkpoint(folder: Path, *, tied: bool = True, append_eos: bool = True, seed: int = 1,
                             shards: int = 1, **config_overrides) -> Path:
    """A Qwen/Qwen3-Reranker-* style folder: config, safetensors with `model.` keys (+ lm_head), tokenizer."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_reranker_tokenizer(folder, append_eos)
    config = hub_config(vocab_size, **{**config_overrides, "tie_word_embeddings": tied})
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    tokens = json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]
    w = reranker_weights(config, tokens["yes"], tokens["no"], seed)
    save_safetensors(folder, {k if k.startswith("lm_head.") else "model." + k: v for k, v in w.items()}, shards=shards)
    return folder


def make_mlx_reranker(src: Path, dst: Path, *, bits: int = 4, group_size: int = 32) -> Path:
    """An mlx-community style conversion written by mlx-lm itself (quantize_model + save_model + save_config):
    the head quantized like any linear layer, or the tied embed_tokens quantized."""
    from mlx_lm.utils import load_model, quantize_model, save_config, save_model

    dst.mkdir(parents=True, exist_ok=True)
    model, config = load_model(src)
    model, config = quantize_model(model, config, group_size, bits)
    save_model(dst, model)
    save_config(config, dst / "config.json")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        (dst / name).write_bytes((src / name).read_bytes())
    return dst
