"""Memory of the real 4B and 8B shapes on CPU: random bf16 checkpoints written shard by shard in the hub layout,
their 4-bit conversions, then load time, peak RSS and tokens/s of each (every measurement in a fresh process).

    python bench/memory.py --shape 4B --dir /tmp/mem        # ~8 GB of disk for 4B, ~16 GB for 8B
    python bench/memory.py --shape 0.6B --memory 1.5GB      # force the stored-weights plan (speed cost)

Writes bench/results/memory_<shape>.json and prints a Markdown row per measurement. Run with
LD_PRELOAD=/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0 on Linux.
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from conftest import QWEN3_06B  # noqa: E402

SHAPES = {  # ../shared/REFERENCE.md
    "0.6B": dict(QWEN3_06B, vocab_size=151669),
    "4B": dict(hidden_size=2560, num_hidden_layers=36, intermediate_size=9728, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=151665, max_position_embeddings=40960),
    "8B": dict(hidden_size=4096, num_hidden_layers=36, intermediate_size=12288, num_attention_heads=32,
               num_key_value_heads=8, head_dim=128, vocab_size=151665, max_position_embeddings=40960,
               tie_word_embeddings=False),
}


def write_checkpoint(folder: Path, shape: dict, shard_bytes: int = 4 << 30) -> None:
    """Hub layout, bf16, keys without `model.`: one shard at a time (random normal / sqrt(fan-in))."""
    import mlx.core as mx

    from conftest import hub_config, write_sentence_transformers_files, write_tokenizer

    from mlx_qwen3_embed.models.args import ModelArgs
    from mlx_qwen3_embed.checkpoint.weights import matrices

    folder.mkdir(parents=True, exist_ok=True)
    write_tokenizer(folder)
    config = hub_config(**{**shape, "torch_dtype": "bfloat16"})
    args = ModelArgs.from_dict(config)
    tensors = [(f"{path}.weight", (rows, columns)) for path, rows, columns in matrices(args)]
    for i in range(args.num_hidden_layers):
        tensors += [(f"layers.{i}.input_layernorm.weight", (args.hidden_size,)),
                    (f"layers.{i}.post_attention_layernorm.weight", (args.hidden_size,)),
                    (f"layers.{i}.self_attn.q_norm.weight", (args.head_dim,)),
                    (f"layers.{i}.self_attn.k_norm.weight", (args.head_dim,))]
    tensors.append(("norm.weight", (args.hidden_size,)))
    shards, size = [], 0
    for key, dims in tensors:
        nbytes = 2 * (dims[0] * (dims[1] if len(dims) > 1 else 1))
        if not shards or size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((key, dims))
        size += nbytes
    weight_map = {}
    for n, shard in enumerate(shards, 1):
        name = f"model-{n:05d}-of-{len(shards):05d}.safetensors"
        data = {}
        for key, dims in shard:
            if len(dims) == 1:
                data[key] = mx.ones(dims, mx.bfloat16)
            else:
                scale = 1.0 if key.startswith("embed_tokens") else dims[1] ** -0.5
                data[key] = (mx.random.normal(dims) * scale).astype(mx.bfloat16)
        mx.save_safetensors(str(folder / name), data, metadata={"format": "pt"})
        weight_map |= {key: name for key, _ in shard}
        del data
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    write_sentence_transformers_files(folder, args.hidden_size)


MEASURE = """
import json, sys, time
def peak():  # VmHWM: this process's own high-water mark (ru_maxrss would include the parent's RSS at fork)
    line = next(l for l in open("/proc/self/status") if l.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
start = time.time()
if sys.argv[1] == "convert":
    from mlx_qwen3_embed.quant import quantize
    quantize.convert(sys.argv[2], sys.argv[3], bits=4)
    print(json.dumps({"seconds": time.time() - start, "peak_rss": peak()}))
else:
    import mlx_qwen3_embed as mqe
    model = mqe.load(sys.argv[2])
    loaded, load_rss = time.time() - start, peak()
    texts = ["word " * 126] * int(sys.argv[3])  # 128 tokens each with <|endoftext|>
    model.embed(texts[:1])  # warm-up
    start = time.time()
    model.embed(texts, batch_tokens=1024)
    seconds = time.time() - start
    print(json.dumps({"load_seconds": loaded, "load_peak_rss": load_rss, "peak_rss": peak(),
                      "tokens_per_second": sum(map(len, model.tokenize(texts))) / seconds,
                      "upcast": model.device.upcast, "dequantize": model.device.dequantize}))
"""


def measure(*argv: str) -> dict:
    out = subprocess.run([sys.executable, "-c", MEASURE, *argv], capture_output=True, text=True)
    if out.returncode:
        return {"error": out.stderr.strip().splitlines()[-1] if out.stderr.strip() else f"exit {out.returncode}"}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", choices=SHAPES, default="4B")
    parser.add_argument("--dir", default="/tmp/mlx-qwen3-embed-memory")
    parser.add_argument("--texts", type=int, default=8, help="texts of 128 tokens to embed")
    parser.add_argument("--memory", help="set MLX_QWEN3_EMBED_MEMORY (e.g. 1.5GB) to force the stored-weights plan")
    opts = parser.parse_args()
    if opts.memory:
        os.environ["MLX_QWEN3_EMBED_MEMORY"] = opts.memory
    base = Path(opts.dir)
    src, q4 = base / f"random-{opts.shape}-bf16", base / f"random-{opts.shape}-4bit"
    result = {"shape": opts.shape, "memory_override": opts.memory}
    if not (src / "config.json").is_file():
        start = time.time()
        write_checkpoint(src, SHAPES[opts.shape])
        result["write_seconds"] = time.time() - start
    result["bf16_bytes"] = sum(f.stat().st_size for f in src.glob("*.safetensors"))
    if not q4.exists():
        result["convert"] = measure("convert", str(src), str(q4))
        print("convert", result["convert"], flush=True)
    result["q4_bytes"] = sum(f.stat().st_size for f in q4.glob("*.safetensors"))
    for name, folder in (("4bit", q4), ("bf16", src)):
        result[name] = measure("embed", str(folder), str(opts.texts))
        print(name, result[name], flush=True)
    out = ROOT / "bench" / "results" / f"memory_{opts.shape}{'_' + opts.memory if opts.memory else ''}.json"
    out.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
