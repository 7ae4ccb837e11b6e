"""Tiny random-weight Qwen3-Embedding checkpoints on disk, in the hub layout and the mlx-community layout.

Shapes are small (hidden 64, 2 layers) but every structural feature is real: GQA, q/k norms, tied embeddings,
a byte-level BPE tokenizer with Qwen's special tokens, the sentence-transformers files, safetensors shards.
"""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

TEXTS = [
    "MLX is an array framework for machine learning on Apple silicon.",
    "The quick brown fox jumps over the lazy dog.",
    "Le renard brun rapide saute par-dessus le chien paresseux.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "快速的棕色狐狸跳过了懒狗。",
    "def embed(texts):\n    return model.encode(texts)",
    "import numpy as np",
    "",
    "a",
    "Retrieval-augmented generation combines a search index with a language model; the retriever ranks "
    "passages by cosine similarity of their embeddings, and the generator reads the best ones.",
]

CORPUS = TEXTS + [
    "Embeddings map text to vectors so that similar meanings lie close together.",
    "Qwen3 is a decoder-only transformer with grouped-query attention and rotary position embeddings.",
    "Instruct: Given a web search query, retrieve relevant passages that answer the query\nQuery:what is MLX?",
    "Les modèles de langage apprennent des représentations du texte.",
    "Sprachmodelle lernen Darstellungen von Text.",
    "机器学习模型把文本变成向量。",
    "for i in range(10): print(i)",
] * 3

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rms_norm_eps=1e-6,
            rope_theta=1_000_000.0, tie_word_embeddings=True)
# The real Qwen3-Embedding-0.6B / Qwen3-Reranker-0.6B decoder shape (../shared/REFERENCE.md), vocabulary apart:
# the benchmarks' random checkpoints and the FLOP-count test
QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, max_position_embeddings=32768)


def make_tokenizer(append_eos: bool):
    """A byte-level BPE like Qwen's; append_eos=True mimics current hub files (post-processor adds the EOS)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=SPECIAL, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    if append_eos:
        eos = tok.token_to_id("<|endoftext|>")
        tok.post_processor = processors.TemplateProcessing(
            single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 <|endoftext|>:1",
            special_tokens=[("<|endoftext|>", eos)])
    else:
        tok.post_processor = processors.ByteLevel(trim_offsets=False)
    return tok


def write_tokenizer(folder: Path, append_eos: bool = True) -> int:
    tok = make_tokenizer(append_eos)
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "padding_side": "left", "model_max_length": 512, "add_bos_token": False}))
    return tok.get_vocab_size(with_added_tokens=True)


def write_sentence_transformers_files(folder: Path, hidden_size: int, max_seq_length: int = 512):
    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}]))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length,
                                                                  "do_lower_case": False}))
    (folder / "config_sentence_transformers.json").write_text(json.dumps({
        "prompts": {"query": "Instruct: Given a web search query, retrieve relevant passages that answer the "
                             "query\nQuery:", "document": ""},
        "default_prompt_name": None, "similarity_fn_name": "cosine"}))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": True, "include_prompt": True}))
    (folder / "2_Normalize").mkdir(exist_ok=True)


def random_weights(config: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """Hub-layout tensors (no `model.` prefix), fp32, scaled so that every layer changes the result."""
    rng = np.random.default_rng(seed)
    D, F, V = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    H, KV, hd = config["num_attention_heads"], config["num_key_value_heads"], config["head_dim"]

    def linear(out_dim, in_dim):
        return (rng.standard_normal((out_dim, in_dim)) / np.sqrt(in_dim)).astype(np.float32)

    def norm(n):
        return (1 + 0.2 * rng.standard_normal(n)).astype(np.float32)

    w = {"embed_tokens.weight": rng.standard_normal((V, D)).astype(np.float32), "norm.weight": norm(D)}
    for i in range(config["num_hidden_layers"]):
        p = f"layers.{i}."
        w |= {p + "input_layernorm.weight": norm(D), p + "post_attention_layernorm.weight": norm(D),
              p + "self_attn.q_proj.weight": linear(H * hd, D), p + "self_attn.k_proj.weight": linear(KV * hd, D),
              p + "self_attn.v_proj.weight": linear(KV * hd, D), p + "self_attn.o_proj.weight": linear(D, H * hd),
              p + "self_attn.q_norm.weight": norm(hd), p + "self_attn.k_norm.weight": norm(hd),
              p + "mlp.gate_proj.weight": linear(F, D), p + "mlp.up_proj.weight": linear(F, D),
              p + "mlp.down_proj.weight": linear(D, F)}
    return w


def hub_config(vocab_size: int, **overrides) -> dict:
    return {"architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
            "attention_bias": False, "attention_dropout": 0.0, "initializer_range": 0.02,
            "torch_dtype": "float32", "use_cache": True, "vocab_size": vocab_size, **TINY, **overrides}


def save_safetensors(folder: Path, tensors: dict[str, np.ndarray], shards: int = 1, prefix: str = "",
                     dtype: str = "float32"):
    """Write tensors as one model.safetensors, or `shards` files plus model.safetensors.index.json."""
    import torch
    from safetensors.torch import save_file

    torch_dtype = getattr(torch, dtype)
    items = [(prefix + k, torch.from_numpy(v).to(torch_dtype).contiguous()) for k, v in sorted(tensors.items())]
    if shards == 1:
        save_file(dict(items), str(folder / "model.safetensors"), metadata={"format": "pt"})
        return
    weight_map = {}
    for s, chunk in enumerate(np.array_split(np.arange(len(items)), shards)):
        name = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        save_file({items[i][0]: items[i][1] for i in chunk}, str(folder / name), metadata={"format": "pt"})
        weight_map |= {items[i][0]: name for i in chunk}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def make_hub_checkpoint(folder: Path, *, shards: int = 1, prefix: str = "", dtype: str = "float32",
                        append_eos: bool = True, seed: int = 0, **config_overrides) -> Path:
    """A Qwen/Qwen3-Embedding-* style folder: config, safetensors, tokenizer, sentence-transformers files."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab_size = write_tokenizer(folder, append_eos)
    config = hub_config(vocab_size, torch_dtype=dtype, **config_overrides)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_safetensors(folder, random_weights(config, seed), shards=shards, prefix=prefix, dtype=dtype)
    write_sentence_transformers_files(folder, config["hidden_size"])
    return folder


def make_mlx_checkpoint(src: Path, dst: Path, *, bits: int = 4, group_size: int = 64, overrides=None,
                        append_eos: bool = False) -> Path:
    """An mlx-community style folder written by mlx-lm itself (quantize_model + save_model + save_config).

    overrides: {"model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 64}} per-module precision.
    append_eos=False mimics conversions made before the hub tokenizer gained its EOS post-processor.
    """
    import mlx.core as mx
    from mlx.utils import tree_unflatten
    from mlx_lm.models import qwen3
    from mlx_lm.utils import quantize_model, save_config, save_model

    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads((src / "config.json").read_text())
    model = qwen3.Model(qwen3.ModelArgs.from_dict(config))
    weights = {"model." + k: mx.array(v) for k, v in random_weights(config).items()}
    model.update(tree_unflatten(list(weights.items())))
    overrides = overrides or {}

    def predicate(path, module):
        return dict(overrides[path], mode="affine") if path in overrides else True

    model, config = quantize_model(model, config, group_size, bits, quant_predicate=predicate)
    save_model(dst, model)
    save_config(config, dst / "config.json")
    write_tokenizer(dst, append_eos)
    for name in ("modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"):
        shutil.copy(src / name, dst / name)
    shutil.copytree(src / "1_Pooling", dst / "1_Pooling")
    return dst


@pytest.fixture(scope="session")
def hub_model(tmp_path_factory) -> Path:
    """Original layout: one fp32 model.safetensors, keys without `model.`, tokenizer appends <|endoftext|>."""
    return make_hub_checkpoint(tmp_path_factory.mktemp("hub") / "Qwen3-Embedding-tiny")


@pytest.fixture(scope="session")
def mlx_model(hub_model, tmp_path_factory) -> Path:
    """mlx-community layout: 4-bit, layer 0's down_proj at 8 bits, quantized embed_tokens, old tokenizer."""
    return make_mlx_checkpoint(hub_model, tmp_path_factory.mktemp("mlx") / "Qwen3-Embedding-tiny-4bit",
                               overrides={"model.layers.0.mlp.down_proj": {"bits": 8, "group_size": 64}})


@pytest.fixture(scope="session")
def texts() -> list[str]:
    return list(TEXTS)


@pytest.fixture(scope="session")
def served(hub_model, tmp_path_factory):
    """A real `mlx-embed serve` of the hub model on a free loopback port: its base URL (drop-in API tests)."""
    from server_process import running_server

    log = tmp_path_factory.mktemp("served") / "serve.log"
    with running_server(["--model", str(hub_model), "--served-model-name", "tiny", "--log-level", "warning"],
                        log) as url:
        yield url


@pytest.fixture(scope="session")
def sample(texts) -> list[str]:
    """The shared texts minus the empty one, which the HTTP APIs refuse."""
    return [t for t in texts if t]


@pytest.fixture(scope="module")
def embedder(hub_model):
    """The hub model loaded with the defaults (a module may define its own)."""
    import mlx_qwen3_embed as mqe

    return mqe.load(str(hub_model))


@pytest.fixture
def runner(monkeypatch):
    """Typer's CliRunner for `mlx-embed`, with the user's model/reranker/debug variables cleared."""
    from typer.testing import CliRunner

    for name in ("MLX_EMBED_MODEL", "MLX_EMBED_RERANKER", "MLX_EMBED_DEBUG"):
        monkeypatch.delenv(name, raising=False)
    return CliRunner()


@pytest.fixture(scope="module")
def app_client(embedder):
    """The app in-process (FastAPI's TestClient) serving `embedder` as "tiny"."""
    from fastapi.testclient import TestClient

    from mlx_qwen3_embed.serve import create_app

    with TestClient(create_app(embedder, served_model_name="tiny")) as c:
        yield c


# Qwen3-Reranker checkpoints (builders in rerank_checkpoints.py)
@pytest.fixture(scope="session")
def reranker_hub(tmp_path_factory) -> Path:
    """Qwen/Qwen3-Reranker-0.6B layout: `model.` keys, head tied to embed_tokens, no sentence-transformers files."""
    from rerank_checkpoints import make_reranker_checkpoint
    return make_reranker_checkpoint(tmp_path_factory.mktemp("rerank") / "Qwen3-Reranker-tiny")


@pytest.fixture(scope="session")
def reranker_untied(tmp_path_factory) -> Path:
    """Qwen/Qwen3-Reranker-8B layout: its own lm_head.weight, in two shards; a folder name that says nothing."""
    from rerank_checkpoints import make_reranker_checkpoint
    return make_reranker_checkpoint(tmp_path_factory.mktemp("rerank") / "model", tied=False, shards=2, seed=3)


@pytest.fixture(scope="session")
def reranker_mlx(reranker_hub, tmp_path_factory) -> Path:
    """mlx-community/Qwen3-Reranker-*-4bit layout: tied embed_tokens quantized."""
    from rerank_checkpoints import make_mlx_reranker
    return make_mlx_reranker(reranker_hub, tmp_path_factory.mktemp("rerank") / "Qwen3-Reranker-tiny-4bit")


@pytest.fixture(scope="session")
def reranker_mlx_untied(reranker_untied, tmp_path_factory) -> Path:
    """mlx-lm conversion of an untied reranker: lm_head quantized like any linear layer."""
    from rerank_checkpoints import make_mlx_reranker
    return make_mlx_reranker(reranker_untied, tmp_path_factory.mktemp("rerank") / "Qwen3-Reranker-8B-tiny-8bit", bits=8)
