"""Rerank latency and pairs/s, side by side in one process: this package against sentence-transformers' CrossEncoder
(a Qwen3ForCausalLM folder loads there as Transformer + LogitScore(yes, no)) on the same random-weight checkpoint
with the real Qwen3-Reranker-0.6B shape. One query against 100 passages, then Q queries against the same 100.
Writes bench/results/rerank.md.

    python bench/rerank_bench.py                    # the issue's runs: 1 x 100 and 20 x 100 (~1 hour on 2 cores)
    python bench/rerank_bench.py --queries 1 --rounds 1   # 1 x 100 only (~5 minutes)

Speed does not depend on the weights' values, so random weights stand in for the real ones (not downloadable
here). The vocabulary has the real size (151,669 rows, tied head as in the 0.6B), so CrossEncoder's full-vocabulary
head costs what it costs with the real model (we compute two rows); the tokenizer is a byte-level BPE of 8,000
entries trained on the packaged calibration texts, which splits these passages into about as many tokens as
Qwen's does (1.6 tokens per word here; Qwen's ~1.3 for English). Both read the same token ids: CrossEncoder gets
each pair as (prefix + instruction + query, document + suffix), the card's template, so token counts match within
a token or two.
"""

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mlx_qwen3_embed.blas import reexec_env  # noqa: E402  (ctypes only: MLX is not imported yet)

QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, max_position_embeddings=32768)
INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def texts(kind: str) -> list[str]:
    path = ROOT / "mlx_qwen3_embed" / "data" / "calibration" / "calibration.jsonl"
    return [r["text"] for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def make_checkpoint(folder: Path) -> Path:
    """A Qwen3-Reranker-0.6B-shaped folder (hub layout, fp32, tied head) with the real vocabulary size."""
    from conftest import SPECIAL, hub_config, save_safetensors
    from rerank_checkpoints import reranker_weights
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    from mlx_qwen3_embed.reranker import PREFIX, SUFFIX

    folder.mkdir(parents=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    corpus = texts("document") + texts("query") + [PREFIX, SUFFIX, INSTRUCTION, "yes", "no"]
    tok.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=8000, special_tokens=SPECIAL, show_progress=False,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    eos = tok.token_to_id("<|endoftext|>")
    tok.post_processor = processors.TemplateProcessing(single="$A <|endoftext|>",
                                                       special_tokens=[("<|endoftext|>", eos)])
    tok.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>",
        "padding_side": "left", "model_max_length": 8192, "add_bos_token": False}))
    config = hub_config(151669, **QWEN3_06B)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    w = reranker_weights(config, tok.token_to_id("yes"), tok.token_to_id("no"))
    save_safetensors(folder, {"model." + k: v for k, v in w.items()})
    return folder


def timed(fn, rounds: int, warm_up) -> list[float]:
    warm_up()  # a few pairs: compiles, allocates, loads BLAS
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20, help="queries of the many-query run; 1: skip it")
    parser.add_argument("--passages", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rerank.md"))
    options = parser.parse_args()
    env = reexec_env()
    if env is not None:  # preload OpenBLAS like the CLI does
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import torch
    from sentence_transformers import CrossEncoder

    import mlx_qwen3_embed as mqe
    from mlx_qwen3_embed.reranker import PREFIX, SUFFIX, pair_body

    torch.set_num_threads(os.cpu_count())
    passages = (texts("document") * 2)[: options.passages]
    queries = (texts("query") * 2)[: options.queries]
    with tempfile.TemporaryDirectory() as workdir:
        folder = make_checkpoint(Path(workdir) / "Qwen3-Reranker-0.6B-shape")
        ours = mqe.load_reranker(str(folder))
        peer = CrossEncoder(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})

        def peer_pairs(query_list):
            return [(PREFIX + pair_body(INSTRUCTION, q), d + SUFFIX) for q in query_list for d in passages]

        pairs_one = [(queries[0], d) for d in passages]
        pairs_many = [(q, d) for q in queries for d in passages]
        tokens_one = sum(map(len, ours.tokenize_pairs(pairs_one)))
        tokens_many = sum(map(len, ours.tokenize_pairs(pairs_many)))
        systems = (
            ("mlx-qwen3-embed (fp32, CPU)", lambda: ours.score(queries[0], passages),
             lambda: ours.score_pairs(pairs_many), lambda: ours.score(queries[0], passages[:8])),
            ("sentence-transformers CrossEncoder (torch fp32, CPU)",
             lambda: peer.predict(peer_pairs(queries[:1]), batch_size=32),
             lambda: peer.predict(peer_pairs(queries), batch_size=32),
             lambda: peer.predict(peer_pairs(queries[:1])[:8], batch_size=32)))
        rows = {name: [None, None] for name, *_ in systems}
        # every 1 x N figure first, then the long runs; the table is rewritten after each measurement, so a
        # run stopped part way (a timeout) keeps what it measured
        for name, one, _, warm_up in systems:
            rows[name][0] = statistics.median(timed(one, options.rounds, warm_up))
            report(options, rows, len(pairs_one), len(pairs_many), len(queries), tokens_one, tokens_many, torch)
        for name, _, many, _ in systems if len(queries) > 1 else ():
            rows[name][1] = timed(many, 1, lambda: None)[0]
            report(options, rows, len(pairs_one), len(pairs_many), len(queries), tokens_one, tokens_many, torch)


def report(options, rows: dict, n_one: int, n_many: int, n_queries: int, tokens_one: int, tokens_many: int, torch):
    """Write the Markdown table of what is measured so far (and print it)."""
    lines = [
        "# Rerank: one query x 100 passages, and many queries x 100 (bench/rerank_bench.py)", "",
        f"Random weights, Qwen3-Reranker-0.6B shape (28 layers, hidden 1024, 151,669-row tied head), 8,000-entry "
        f"BPE tokenizer; passages from "
        f"mlx_qwen3_embed/data/calibration; {platform.machine()}, {os.cpu_count()} cores, MLX CPU backend with "
        f"OpenBLAS; torch {torch.__version__}. Median of {options.rounds} round(s) after a warm-up on 8 pairs; "
        "the many-query run once. "
        f"1 x {options.passages}: {tokens_one} tokens; {n_queries} x {options.passages}: "
        f"{tokens_many} tokens.", "",
        f"| system | 1 x {options.passages}: latency | pairs/s | {n_queries} x {options.passages}: time | pairs/s |",
        "|---|---|---|---|---|"]
    for name, (one, many) in rows.items():
        lines.append(f"| {name} | "
                     + (f"{one:.2f} s | {n_one / one:.1f} | " if one else "not run | | ")
                     + (f"{many:.1f} s | {n_many / many:.1f} |" if many else "not run | |"))
    Path(options.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
