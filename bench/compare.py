"""Side by side, one process, alternating rounds: this package, sentence-transformers, mlx-embeddings and llama.cpp
(f16 and Q4_K_M GGUF, through llama-cpp-python) on the same random-weight checkpoint with the real
Qwen3-Embedding-0.6B shape and the same 64 RAG-like passages. Writes bench/results/compare.md and .json.

    pip install -r bench/requirements.txt
    python bench/compare.py                  # ~10-15 minutes on 2 cores; --rounds 1 for a quick look

Speed does not depend on the weights' values, so random weights stand in for the real ones (which cannot be
downloaded here). Every system sees the same texts; tokens/s uses this package's token count for all of them
(the GGUF carries the same tokenizer, so llama.cpp reads the same ids; it adds no <|endoftext|>, one token less).
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tarfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from mlx_qwen3_embed.blas import reexec_env  # noqa: E402  (ctypes only: MLX is not imported yet)

INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
ST = "sentence-transformers"


def build_checkpoint(workdir: Path) -> Path:
    """The 0.6B-shaped random checkpoint in the hub layout (fp32), made once with tests/conftest.py's helpers: the
    real decoder shape, the tiny test tokenizer's vocabulary."""
    from conftest import QWEN3_06B, make_hub_checkpoint

    folder = workdir / "qwen3-embedding-0.6b-random"
    if not (folder / "model.safetensors").is_file():
        tmp = workdir / "qwen3-embedding-0.6b-random.partial"
        make_hub_checkpoint(tmp, **QWEN3_06B)
        tmp.rename(folder)
    return folder


def llama_cpp_source(workdir: Path) -> Path:
    """llama.cpp's own converter, from the sdist of the installed llama-cpp-python (PyPI), unpacked once."""
    import llama_cpp

    version = llama_cpp.__version__
    folder = workdir / f"llama_cpp_python-{version}" / "vendor" / "llama.cpp"
    if not (folder / "convert_hf_to_gguf.py").is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps",
                        "--no-binary", ":all:", "-d", str(workdir)], check=True, capture_output=True)
        with tarfile.open(workdir / f"llama_cpp_python-{version}.tar.gz") as archive:
            archive.extractall(workdir, filter="data")
    return folder


# The converter identifies a BPE pre-tokenizer by hashing its output on a test string, and the tiny test
# tokenizer is unknown to it. It IS GPT-2's byte-level regex (tests/conftest.py), so we name it that.
CONVERT = """
import runpy, sys
src = sys.argv[1]
sys.path[:0] = [src, src + "/gguf-py"]
from conversion.base import TextModel
TextModel.get_vocab_base_pre = lambda self, tokenizer: "gpt-2"
sys.argv = [src + "/convert_hf_to_gguf.py", sys.argv[2], "--outtype", sys.argv[4], "--outfile", sys.argv[3]]
runpy.run_path(src + "/convert_hf_to_gguf.py", run_name="__main__")
"""


def convert_gguf(src: Path, checkpoint: Path, out: Path, outtype: str) -> Path:
    """A hub-layout folder -> a GGUF file of `outtype` (f32, f16, ...) with the converter in llama.cpp tree `src`."""
    subprocess.run([sys.executable, "-c", CONVERT, str(src), str(checkpoint), f"{out}.partial", outtype],
                   check=True, capture_output=True)
    os.replace(f"{out}.partial", out)
    return out


def make_ggufs(checkpoint: Path, workdir: Path) -> dict[str, Path]:
    """f16 GGUF with llama.cpp's converter, then Q4_K_M with llama.cpp's quantizer (as Ollama's are made)."""
    import llama_cpp

    f16, q4 = workdir / "qwen3-0.6b-random-f16.gguf", workdir / "qwen3-0.6b-random-Q4_K_M.gguf"
    if not f16.is_file():
        convert_gguf(llama_cpp_source(workdir), checkpoint, f16, "f16")
    if not q4.is_file():
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        params.nthread = os.cpu_count() or 1
        partial = str(q4) + ".partial"
        if llama_cpp.llama_model_quantize(str(f16).encode(), partial.encode(), params) != 0:
            raise RuntimeError(f"llama_model_quantize failed on {f16}")
        os.replace(partial, q4)
    return {"f16": f16, "Q4_K_M": q4}


# --- the systems: each loader returns (embed(list of str) -> (N, D), query(str) -> (D,)) -----------------------

def load_ours(checkpoint: Path):
    import mlx_qwen3_embed as mqe

    model = mqe.load(str(checkpoint))
    return model.embed, lambda text: model.embed(text, instruction=INSTRUCTION)


def load_sentence_transformers(checkpoint: Path):
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_grad_enabled(False)
    model = SentenceTransformer(str(checkpoint), device="mps" if torch.backends.mps.is_available() else "cpu")
    # its defaults: batch_size 32, length-sorted batches, fp32
    return (lambda texts: model.encode(texts, convert_to_numpy=True, show_progress_bar=False),
            lambda text: model.encode(text, prompt_name="query", convert_to_numpy=True))


def load_mlx_embeddings(checkpoint: Path):
    import mlx.core as mx
    import numpy as np
    from mlx_embeddings.utils import load

    model, tokenizer = load(str(checkpoint))

    def embed(texts, batch_size=8):
        # length-sorted batches of 8 with the tokenizer's padding, as its README batches
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.zeros((len(texts), model.config.hidden_size), dtype=np.float32)
        for start in range(0, len(texts), batch_size):
            batch = order[start:start + batch_size]
            inputs = tokenizer.batch_encode_plus([texts[i] for i in batch], return_tensors="mlx", padding=True,
                                                 truncation=True, max_length=512)
            output = model(inputs["input_ids"], attention_mask=inputs["attention_mask"])
            out[batch] = np.array(output.text_embeds.astype(mx.float32))
        return out

    return embed, lambda text: embed([f"Instruct: {INSTRUCTION}\nQuery:{text}"])[0]


def load_llama_cpp(gguf: Path):
    import llama_cpp
    import numpy as np

    threads = os.cpu_count() or 1
    model = llama_cpp.Llama(str(gguf), embedding=True, pooling_type=llama_cpp.LLAMA_POOLING_TYPE_LAST,
                            n_ctx=2048, n_batch=2048, n_ubatch=512, n_threads=threads, n_threads_batch=threads,
                            verbose=False)
    return (lambda texts: np.array(model.embed(texts, normalize=True), dtype=np.float32),
            lambda text: np.array(model.embed(f"Instruct: {INSTRUCTION}\nQuery:{text}", normalize=True)))


# --- measurement ---------------------------------------------------------------------------------------------

def cosine(a, b):
    import numpy as np

    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.system()} {platform.machine()}, {cpu}, {os.cpu_count()} CPU cores"


def run(args) -> dict:
    import mlx.core as mx
    import numpy as np

    import mlx_qwen3_embed as mqe
    from mlx_qwen3_embed import bench
    from mlx_qwen3_embed.blas import blas

    workdir = Path(args.workdir).expanduser()
    workdir.mkdir(parents=True, exist_ok=True)
    checkpoint = build_checkpoint(workdir)
    ours = mqe.load(str(checkpoint))
    corpus = bench.sample_passages(args.count, count_tokens=lambda text: len(ours.tokenize(text)[0]))
    lengths = [len(ids) for ids in ours.tokenize(corpus)]
    del ours

    loaders = {"mlx-qwen3-embed": lambda: load_ours(checkpoint), ST: lambda: load_sentence_transformers(checkpoint),
               "mlx-embeddings": lambda: load_mlx_embeddings(checkpoint)}
    try:
        ggufs = make_ggufs(checkpoint, workdir)
        loaders |= {f"llama.cpp {q}": (lambda path=path: load_llama_cpp(path)) for q, path in ggufs.items()}
        gguf_error = None
    except Exception as e:  # noqa: BLE001  (a peer that cannot run is reported, not fatal)
        gguf_error = f"GGUF conversion failed: {type(e).__name__}: {e}"
    if args.only:
        loaders = {k: v for k, v in loaders.items() if k in args.only.split(",")}

    systems, results = {}, {}
    for name, loader in loaders.items():
        print(f"loading {name} ...", flush=True)
        try:
            start = time.perf_counter()
            embed, query = loader()
            load_seconds = time.perf_counter() - start
            vectors = embed(corpus[:8])  # warm-up, and the vectors compared below
            query("warm-up")
            systems[name] = (embed, query)
            results[name] = {"load_seconds": load_seconds, "corpus_seconds": [], "latency_s": [],
                             "nan_vectors": int((~np.isfinite(vectors).all(axis=1)).sum()), "warm_vectors": vectors}
        except Exception as e:  # noqa: BLE001
            results[name] = {"error": f"{type(e).__name__}: {e}".splitlines()[0][:300]}
            if os.environ.get("MLX_EMBED_DEBUG"):
                traceback.print_exc()
    if gguf_error:
        results["llama.cpp"] = {"error": gguf_error[:300]}

    for r in range(args.rounds):  # alternating: every system sees the same machine state, round by round
        for name, (embed, _) in systems.items():
            start = time.perf_counter()
            embed(corpus)
            results[name]["corpus_seconds"].append(time.perf_counter() - start)
            print(f"round {r + 1}/{args.rounds} {name}: {sum(lengths) / results[name]['corpus_seconds'][-1]:.1f} "
                  "tokens/s", flush=True)
    for _ in range(args.query_repeats):
        for text in bench.QUERIES:
            for name, (_, query) in systems.items():
                start = time.perf_counter()
                query(text)
                results[name]["latency_s"].append(time.perf_counter() - start)

    gemm = bench.gemm_gflops(seconds=3.0)
    flops_per_token = bench.forward_flops(mqe.load(str(checkpoint)).args, lengths) / sum(lengths)
    reference = results.get(ST, {}).get("warm_vectors")
    for name, result in results.items():
        if "error" in result:
            continue
        seconds = statistics.median(result.pop("corpus_seconds"))
        latency = result.pop("latency_s")
        vectors = result.pop("warm_vectors")
        result |= {"tokens_per_s": sum(lengths) / seconds, "texts_per_s": len(lengths) / seconds,
                   "query_p50_ms": 1000 * bench.percentile(latency, 50),
                   "query_p95_ms": 1000 * bench.percentile(latency, 95),
                   "roofline_fraction": flops_per_token * sum(lengths) / seconds / 1e9 / gemm}
        if reference is not None:
            result["cosine_vs_st"] = float(np.nanmean(cosine(vectors, reference)))
    if ST in results and "tokens_per_s" in results[ST]:
        for result in results.values():
            if "tokens_per_s" in result:
                result["throughput_vs_st"] = result["tokens_per_s"] / results[ST]["tokens_per_s"]
                result["latency_vs_st"] = result["query_p50_ms"] / results[ST]["query_p50_ms"]
    return {"machine": machine(), "blas": blas(), "gemm_gflops": gemm, "flops_per_token": flops_per_token,
            "texts": len(lengths), "tokens": sum(lengths), "rounds": args.rounds,
            "command": "python bench/compare.py " + " ".join(sys.argv[1:]), "mlx": mx.__version__,
            "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "systems": results}


def markdown(report: dict) -> str:
    lines = [
        f"# Side-by-side embedding speed ({report['when']})", "",
        f"- machine: {report['machine']}; MLX {report['mlx']}, BLAS: {report['blas']}",
        "- model: random weights, Qwen3-Embedding-0.6B shape (28 layers, hidden 1024), fp32 checkpoint",
        f"- corpus: {report['texts']} RAG-like passages, {report['tokens']} tokens "
        f"(mean {report['tokens'] / report['texts']:.0f}), {report['rounds']} alternating rounds (median)",
        f"- fp32 GEMM measured in the same run: {report['gemm_gflops']:.0f} GFLOP/s; "
        f"{report['flops_per_token'] / 1e9:.3f} GFLOP/token (2 x linear params + causal attention)",
        f"- command: `{report['command']}`", "",
        "| system | tokens/s | texts/s | x ST throughput | query p50 ms | p95 ms | p50 vs ST | % fp32 GEMM roofline "
        "| load s | cos vs ST |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in report["systems"].items():
        if "error" in r:
            lines.append(f"| {name} | cannot run here: {r['error']} |||||||||")
            continue
        lines.append(f"| {name} | {r['tokens_per_s']:.1f} | {r['texts_per_s']:.2f} | {r.get('throughput_vs_st', 0):.2f} "
                     f"| {r['query_p50_ms']:.0f} | {r['query_p95_ms']:.0f} | {r.get('latency_vs_st', 0):.2f} "
                     f"| {100 * r['roofline_fraction']:.0f}% | {r['load_seconds']:.1f} "
                     f"| {r.get('cosine_vs_st', float('nan')):.5f}"
                     + (f" ({r['nan_vectors']}/8 NaN)" if r["nan_vectors"] else "") + " |")
    ours = report["systems"].get("mlx-qwen3-embed", {})
    if "throughput_vs_st" in ours:
        lines += ["", "Targets of issue 5 for mlx-qwen3-embed (met / missed):",
                  f"- throughput >= 3x sentence-transformers (target 4x): {ours['throughput_vs_st']:.2f}x "
                  f"{'met' if ours['throughput_vs_st'] >= 3 else 'MISSED'}",
                  f"- single-query latency <= 0.5x sentence-transformers: {ours['latency_vs_st']:.2f}x "
                  f"{'met' if ours['latency_vs_st'] <= 0.5 else 'MISSED'}",
                  f"- >= 55% of the measured fp32 GEMM roofline (target 70%): {100 * ours['roofline_fraction']:.0f}% "
                  f"{'met' if ours['roofline_fraction'] >= 0.55 else 'MISSED'}"]
        needed = 3 * ours["roofline_fraction"] / ours["throughput_vs_st"]
        lines += [f"- 3x sentence-transformers here would take {100 * needed:.0f}% of the fp32 GEMM roofline"
                  + (": out of reach for any fp32 implementation on this machine" if needed > 1 else "")]
    lines += ["", "% roofline for llama.cpp is its tokens/s in fp32-GEMM terms: its quantized int8 kernels are not "
              "bound by the fp32 GEMM rate. cos vs ST: mean cosine to sentence-transformers' vectors of the first 8 "
              "passages, over the vectors that are not NaN (NaN count in brackets)."]
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="~/.cache/mlx-qwen3-embed-bench", help="checkpoint and GGUF files")
    parser.add_argument("--count", type=int, default=64, help="passages in the corpus")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timed passes over the corpus")
    parser.add_argument("--query-repeats", type=int, default=2, help="times each of the 8 queries is timed")
    parser.add_argument("--only", help="comma-separated system names, e.g. 'mlx-qwen3-embed,sentence-transformers'")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "compare"), help="writes OUT.md, OUT.json")
    args = parser.parse_args()

    env = reexec_env()  # MLX reads its BLAS when loaded: preload OpenBLAS before anything imports it
    if env is not None:
        os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
    report = run(args)
    text = markdown(report)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    for suffix, content in ((".md", text), (".json", json.dumps(report, indent=2) + "\n")):
        tmp = out.with_name(out.name + suffix + ".partial")
        tmp.write_text(content)
        os.replace(tmp, out.with_name(out.name + suffix))


if __name__ == "__main__":
    main()
