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

llama.cpp's server (`--llama-cpp DIR`, a llama.cpp source tree with build/bin/llama-server built) gets the same
folder converted by its own convert_hf_to_gguf.py to an f32 GGUF (its Qwen3-Reranker path: rank pooling, the two
head rows as the classifier) and the same passages through `POST /v1/rerank`, one request per query. The converter
does not know this tokenizer's hash, so it is told its pre-tokenizer, "gpt-2" (the byte-level regex it was trained
with; bench/compare.py). llama.cpp ships inside the llama-cpp-python sdist, the one place it is reachable from here:

    pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 && tar xzf llama_cpp_python-0.3.36.tar.gz
    cd llama_cpp_python-0.3.36/vendor/llama.cpp && cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF && cmake --build build \
        --target llama-server -j 2 && cd -
    python bench/rerank_bench.py --llama-cpp llama_cpp_python-0.3.36/vendor/llama.cpp --systems llama.cpp \
        --out bench/results/rerank_llamacpp.md
"""

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mlx_qwen3_embed.blas import reexec_env  # noqa: E402  (ctypes only: MLX is not imported yet)

INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"


def texts(kind: str) -> list[str]:
    path = ROOT / "mlx_qwen3_embed" / "data" / "calibration" / "calibration.jsonl"
    return [r["text"] for r in map(json.loads, path.read_text().splitlines()) if r["kind"] == kind]


def make_checkpoint(folder: Path) -> Path:
    """A Qwen3-Reranker-0.6B-shaped folder (hub layout, fp32, tied head) with the real vocabulary size."""
    from conftest import QWEN3_06B, SPECIAL, hub_config, save_safetensors
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


class LlamaServer:
    """llama.cpp's llama-server reranking the folder (converted to an f32 GGUF) on a free loopback port."""

    def __init__(self, llama: Path, folder: Path, workdir: Path):
        from compare import convert_gguf  # bench/compare.py: llama.cpp's converter, told this BPE is GPT-2's

        gguf = convert_gguf(llama, folder, Path(workdir) / "reranker-f32.gguf", "f32")
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(Path(workdir) / "llama-server.log", "wb")
        # rank pooling needs a whole pair in one micro-batch: 4,096 tokens, 4 slots of 4,096 (passages are shorter)
        self.process = subprocess.Popen(
            [str(llama / "build" / "bin" / "llama-server"), "-m", str(gguf), "--reranking", "--host", "127.0.0.1",
             "--port", str(port), "-t", str(os.cpu_count()), "-c", "16384", "-np", "4", "-b", "4096", "-ub", "4096"],
            stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=5) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.close()
        raise RuntimeError(f"llama-server did not start: see {self.log.name}")

    def rerank(self, query: str, documents: list[str]) -> dict:
        body = json.dumps({"query": query, "documents": documents, "top_n": len(documents)}).encode()
        request = urllib.request.Request(self.url + "/v1/rerank", body, {"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=3600) as answer:
            return json.load(answer)

    def close(self):
        self.process.terminate()
        self.process.wait(30)
        self.log.close()


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
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp source tree with build/bin/llama-server built")
    parser.add_argument("--systems", help="comma-separated, of: ours, st, llama.cpp (default: all that are given)")
    options = parser.parse_args()
    chosen = set((options.systems or "ours,st" + (",llama.cpp" if options.llama_cpp else "")).split(","))
    if chosen - {"ours", "st", "llama.cpp"} or ("llama.cpp" in chosen and not options.llama_cpp):
        parser.error(f"--systems {options.systems}: choose among ours, st, llama.cpp (llama.cpp needs --llama-cpp)")
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
        ours = mqe.load_reranker(str(folder))  # always: it counts the tokens
        pairs_one = [(queries[0], d) for d in passages]
        pairs_many = [(q, d) for q in queries for d in passages]
        tokens_one = sum(map(len, ours.tokenize_pairs(pairs_one)))
        tokens_many = sum(map(len, ours.tokenize_pairs(pairs_many)))
        systems = []
        if "ours" in chosen:
            systems.append(("mlx-qwen3-embed (fp32, CPU)", lambda: ours.score(queries[0], passages),
                            lambda: ours.score_pairs(pairs_many), lambda: ours.score(queries[0], passages[:8])))
        if "st" in chosen:
            peer = CrossEncoder(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})

            def peer_pairs(query_list):
                return [(PREFIX + pair_body(INSTRUCTION, q), d + SUFFIX) for q in query_list for d in passages]

            systems.append(("sentence-transformers CrossEncoder (torch fp32, CPU)",
                            lambda: peer.predict(peer_pairs(queries[:1]), batch_size=32),
                            lambda: peer.predict(peer_pairs(queries), batch_size=32),
                            lambda: peer.predict(peer_pairs(queries[:1])[:8], batch_size=32)))
        if "llama.cpp" in chosen:
            llama = LlamaServer(options.llama_cpp.resolve(), folder, Path(workdir))
            check_llama(llama, ours, queries[0], passages)
            systems.append(("llama.cpp llama-server /v1/rerank (f32 GGUF, CPU)",
                            lambda: llama.rerank(queries[0], passages),
                            lambda: [llama.rerank(q, passages) for q in queries],
                            lambda: llama.rerank(queries[0], passages[:8])))
        rows = {name: [None, None] for name, *_ in systems}
        try:
            # every 1 x N figure first, then the long runs; the table is rewritten after each measurement, so a
            # run stopped part way (a timeout) keeps what it measured
            for name, one, _, warm_up in systems:
                rows[name][0] = statistics.median(timed(one, options.rounds, warm_up))
                report(options, rows, len(pairs_one), len(pairs_many), len(queries), tokens_one, tokens_many, torch)
            for name, _, many, _ in systems if len(queries) > 1 else ():
                rows[name][1] = timed(many, 1, lambda: None)[0]
                report(options, rows, len(pairs_one), len(pairs_many), len(queries), tokens_one, tokens_many, torch)
        finally:
            if "llama.cpp" in chosen:
                llama.close()


def check_llama(llama: LlamaServer, ours, query: str, passages: list[str]):
    """Print how llama.cpp's scores and token count compare with ours (same weights, so the same ranking)."""
    import numpy as np

    answer = llama.rerank(query, passages)
    theirs = np.zeros(len(passages))
    for result in answer["results"]:
        theirs[result["index"]] = result["relevance_score"]
    mine = ours.score(query, passages).astype(np.float64)
    logits = np.log(mine) - np.log1p(-mine)  # which llama.cpp returns: P(yes) (measured: corr 0.99993) or a logit
    print(f"llama.cpp vs ours on 1 x {len(passages)}: corr(score, logit) {np.corrcoef(theirs, logits)[0, 1]:.6f}, "
          f"corr(score, p) {np.corrcoef(theirs, mine)[0, 1]:.6f}, tokens {answer.get('usage')} vs "
          f"{sum(map(len, ours.tokenize_pairs([(query, d) for d in passages])))}", flush=True)

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
        f"| system | 1 x {options.passages}: latency | pairs/s | tokens/s |"
        + (f" {n_queries} x {options.passages}: time | pairs/s | tokens/s |" if n_queries > 1 else ""),
        "|---|---|---|---|" + ("---|---|---|" if n_queries > 1 else "")]
    for name, (one, many) in rows.items():
        lines.append(f"| {name} | "
                     + (f"{one:.2f} s | {n_one / one:.2f} | {tokens_one / one:.0f} |" if one else "not run | | |")
                     + ("" if n_queries == 1 else f" {many:.1f} s | {n_many / many:.2f} | {tokens_many / many:.0f} |"
                        if many else " not run | | |"))
    Path(options.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
