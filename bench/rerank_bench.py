"""Rerank latency and pairs/s, side by side in one process: this package's shared-prefix path, its whole-pair path
(share_prefix=False, the path before it: the gain measured, not inferred), sentence-transformers' CrossEncoder (a
Qwen3ForCausalLM folder loads there as Transformer + LogitScore(yes, no)) and, given a build, llama.cpp's server,
on the same random-weight checkpoint with the real Qwen3-Reranker-0.6B shape. Workloads: one query against 100
RAG passages, Q queries against the same 100, one query against a few long documents, one query against 100
passages of mixed length (3 words to a page); each with the share of its tokens in a prefix that pairs share.
Systems run in alternating rounds (rotating order), so a change in the machine's load falls on all of them.
Writes bench/results/rerank.md.

    python bench/rerank_bench.py --llama-cpp DIR    # everything (~4 hours on 2 cores; without llama.cpp ~3)
    python bench/rerank_bench.py --queries 1 --rounds 1 --systems shared,whole   # the gain alone (~15 minutes)
    python bench/rerank_bench.py --queries 20 --many-only --out /tmp/many.md   # 20 x 100 alone (~1 hour)
    python bench/rerank_bench.py --queries 2 --passages 6 --long-documents 2 --long-words 200 --rounds 1 \
        --out /tmp/rerank.md                        # a check that it runs (a few minutes)

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


def workloads(options) -> dict[str, list[tuple[str, list[str]]]]:
    """Name -> [(query, its documents)]: 1 x N and Q x N RAG passages, a few long documents, and passages of
    mixed length (a few words to a page), the common case where padding shows."""
    passages = (texts("document") * 2)[: options.passages]
    queries = (texts("query") * 2)[: options.queries]
    words = " ".join(texts("document")).split()
    # long: pages of ~long_words words; mixed: lengths log-uniform from 3 words to a page (deterministic)
    long_documents = [" ".join(words[i * options.long_words:(i + 1) * options.long_words])
                      for i in range(options.long_documents)]
    spans = [int(round(3 * (options.long_words / 3) ** (i / max(options.passages - 1, 1))))
             for i in range(options.passages)]
    mixed = [" ".join((words * 2)[(31 * i) % len(words):][:n]) for i, n in enumerate(spans[::-1])]
    many = {f"{len(queries)} x {len(passages)}": [(q, passages) for q in queries]} if len(queries) > 1 else {}
    if options.many_only:
        return many
    runs = {f"1 x {len(passages)}": [(queries[0], passages)], **many}
    if options.long_documents:
        runs[f"1 x {len(long_documents)} long ({options.long_words} words)"] = [(queries[1 % len(queries)],
                                                                                 long_documents)]
    runs[f"1 x {len(mixed)} mixed (3-{options.long_words} words)"] = [(queries[2 % len(queries)], mixed)]
    return runs


def prefix_share(ours, work: list[tuple[str, list[str]]]) -> tuple[int, float, float]:
    """Tokens of a workload as ours tokenizes it, the share of them in a prefix that pairs share, and the share
    left to compute with sharing (batching.shared_prefixes, as score_pairs groups them)."""
    from mlx_qwen3_embed.batching import shared_prefixes

    sequences = ours.tokenize_pairs([(q, d) for q, documents in work for d in documents])
    tokens = sum(map(len, sequences))
    groups = shared_prefixes([s[:-1] for s in sequences])
    in_prefix = sum(P * len(members) for P, members in groups)
    saved = sum(P * (len(members) - 1) for P, members in groups)
    return tokens, in_prefix / tokens, (tokens - saved) / tokens


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=20, help="queries of the many-query run; 1: skip it")
    parser.add_argument("--passages", type=int, default=100)
    parser.add_argument("--long-documents", type=int, default=10, help="documents of the long run; 0: skip it")
    parser.add_argument("--long-words", type=int, default=800, help="words of a long document (and the longest "
                        "mixed one)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of every system (median)")
    parser.add_argument("--many-rounds", type=int, default=1, help="rounds of the many-query run (it is long)")
    parser.add_argument("--many-only", action="store_true", help="run only the many-query workload")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "rerank.md"))
    parser.add_argument("--llama-cpp", type=Path, help="a llama.cpp source tree with build/bin/llama-server built")
    parser.add_argument("--systems", help="comma-separated, of: shared, whole, st, llama.cpp (default: all given)")
    options = parser.parse_args()
    known = ["shared", "whole", "st", "llama.cpp"]
    chosen = (options.systems or "shared,whole,st" + (",llama.cpp" if options.llama_cpp else "")).split(",")
    if set(chosen) - set(known) or ("llama.cpp" in chosen and not options.llama_cpp):
        parser.error(f"--systems {options.systems}: choose among {', '.join(known)} (llama.cpp needs --llama-cpp)")
    if options.many_only and options.queries < 2:
        parser.error("--many-only needs --queries 2 or more")
    env = reexec_env()
    if env is not None:  # preload OpenBLAS like the CLI does
        os.execve(sys.executable, [sys.executable, *sys.argv], env)

    import torch
    from sentence_transformers import CrossEncoder

    import mlx_qwen3_embed as mqe
    from mlx_qwen3_embed.reranker import PREFIX, SUFFIX, pair_body

    torch.set_num_threads(os.cpu_count())
    runs = workloads(options)
    with tempfile.TemporaryDirectory() as workdir:
        folder = make_checkpoint(Path(workdir) / "Qwen3-Reranker-0.6B-shape")
        ours = mqe.load_reranker(str(folder))  # always: it counts the tokens
        shares = {name: prefix_share(ours, work) for name, work in runs.items()}
        warm = [(runs[next(iter(runs))][0][0], runs[next(iter(runs))][0][1][:8])]  # a few pairs

        def mlx(share: bool):
            def run(work):
                ours.share_prefix = share  # the same loaded model either way: only the path differs
                ours.score_pairs([(q, d) for q, documents in work for d in documents], instruction=INSTRUCTION)
            return run

        systems = {"shared": ("mlx-qwen3-embed, shared prefix (fp32, CPU)", mlx(True)),
                   "whole": ("mlx-qwen3-embed, whole pairs (share_prefix=False)", mlx(False))}
        if "st" in chosen:
            peer = CrossEncoder(str(folder), device="cpu", model_kwargs={"dtype": torch.float32})
            systems["st"] = ("sentence-transformers CrossEncoder (torch fp32, CPU)", lambda work: peer.predict(
                [(PREFIX + pair_body(INSTRUCTION, q), d + SUFFIX) for q, documents in work for d in documents],
                batch_size=32))
        llama = None
        if "llama.cpp" in chosen:
            llama = LlamaServer(options.llama_cpp.resolve(), folder, Path(workdir))
            check_llama(llama, ours, *runs[next(iter(runs))][0])
            systems["llama.cpp"] = ("llama.cpp llama-server /v1/rerank (f32 GGUF, CPU)",
                                    lambda work: [llama.rerank(q, documents) for q, documents in work])
        systems = {key: systems[key] for key in chosen}
        times = {(key, name): [] for key in systems for name in runs}
        try:
            for _, run in systems.values():
                run(warm)  # compiles, allocates, loads BLAS
            # rounds alternate the systems (in a rotating order) so a change in the machine's load falls on all;
            # the table is rewritten after each measurement, so a run stopped part way keeps what it measured
            for name, work in runs.items():
                rounds = options.many_rounds if len(work) > 1 else options.rounds
                for r in range(rounds):
                    for key in list(systems)[r % len(systems):] + list(systems)[:r % len(systems)]:
                        start = time.perf_counter()
                        systems[key][1](work)
                        times[key, name].append(time.perf_counter() - start)
                        report(options, systems, runs, shares, times, torch)
        finally:
            if llama is not None:
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

def report(options, systems: dict, runs: dict, shares: dict, times: dict, torch):
    """Write the Markdown tables of what is measured so far (and print them)."""
    median = {k: statistics.median(v) for k, v in times.items() if v}
    lines = [
        "# Rerank: shared prefix against whole pairs and peers (bench/rerank_bench.py)", "",
        f"Random weights, Qwen3-Reranker-0.6B shape (28 layers, hidden 1024, 151,669-row tied head), 8,000-entry "
        f"BPE tokenizer; passages from mlx_qwen3_embed/data/calibration; {platform.machine()}, {os.cpu_count()} "
        f"cores, MLX CPU backend with OpenBLAS; torch {torch.__version__}. All systems in one process (llama.cpp "
        f"as a local server), in alternating rounds after a warm-up on 8 pairs: median of {options.rounds} "
        f"round(s), the many-query run {options.many_rounds}. The instruction is the card's default.", "",
        "| workload | pairs | tokens | in a shared prefix | left to compute with sharing |", "|---|---|---|---|---|"]
    for name, work in runs.items():
        tokens, in_prefix, left = shares[name]
        lines.append(f"| {name} | {sum(len(d) for _, d in work)} | {tokens} | {in_prefix:.1%} | {left:.1%} |")
    lines += ["", "| system | " + " | ".join(f"{name}: time | pairs/s" for name in runs) + " |",
              "|---|" + "---|---|" * len(runs)]
    for key, (label, _) in systems.items():
        cells = []
        for name, work in runs.items():
            t = median.get((key, name))
            cells.append(f"{t:.2f} s | {sum(len(d) for _, d in work) / t:.2f}" if t else "not run |")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    ratios = []
    for key in ("whole", "st", "llama.cpp"):
        if key in systems:
            row = [f"{median[key, n] / median['shared', n]:.2f}x" if ("shared", n) in median and (key, n) in median
                   else "" for n in runs]
            ratios.append(f"| shared prefix / {key} | " + " | ".join(row) + " |")
    if "shared" in systems and ratios:
        lines += ["", "| pairs/s ratio | " + " | ".join(runs) + " |", "|---|" + "---|" * len(runs), *ratios]
    Path(options.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
