"""Random Qwen3-Embedding checkpoints whose tokenizer is wide enough that held-out texts use tokens the DWQ
calibration set never does, as the real 151,669-token vocabulary does (tests/test_dwq_heldout.py,
bench/quality.py). The 400-entry tokenizer of conftest.py splits every text into the same few hundred
byte pairs, so a held-out set measured with it cannot show overfitting to the calibration tokens."""

import json
from pathlib import Path

from conftest import CORPUS, SPECIAL, hub_config, random_weights, save_safetensors, write_sentence_transformers_files

from mlx_qwen3_embed.quant.distill import CALIBRATION, read_calibration

HELDOUT = CALIBRATION.parent / "heldout.jsonl"
VOCAB = 4000


def write_wide_tokenizer(folder: Path, texts: list[str], vocab: int = VOCAB) -> int:
    """A byte-level BPE trained on `texts` with `vocab` entries, appending <|endoftext|> like the hub's."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab, special_tokens=SPECIAL, show_progress=False,
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>", pair="$A <|endoftext|> $B:1 "
                                                       "<|endoftext|>:1", special_tokens=[("<|endoftext|>", eos)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"}))
    return tok.get_vocab_size(with_added_tokens=True)


def make_wide_checkpoint(folder: Path, seed: int = 0, **config_overrides) -> Path:
    """A hub-layout fp32 checkpoint (conftest's tiny shape unless overridden) with the wide tokenizer, trained on
    the tests' corpus, the calibration set and the held-out set (so held-out words get tokens of their own)."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_wide_tokenizer(folder, CORPUS + read_calibration() + read_calibration(HELDOUT))
    config = hub_config(vocab, **config_overrides)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    save_safetensors(folder, random_weights(config, seed))
    write_sentence_transformers_files(folder, config["hidden_size"])
    return folder
