"""`mlx-embed info`: what a checkpoint holds and how it would run here."""

import json
from pathlib import Path

import typer

from .options import MODEL_HELP, default_model, friendly_errors


@friendly_errors
def info(
    model: str | None = typer.Argument(None, help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str | None = typer.Option(None, help="Show the plan for cpu or gpu (default: MLX's default)."),
    dtype: str | None = typer.Option(None, help="Show the plan with this compute dtype."),
):
    """Architecture, dims, quantization, size on disk, max length and the compute plan of a checkpoint."""
    from ..blas import blas
    from ..device import plan
    from ..embedder import _default_max_length
    from ..quant.quantize import hub_summary, summary
    from ..checkpoint.weights import has_weights, model_kind, read_config, resolve

    name = model or default_model()
    folder = resolve(name, weights=False)  # a hub model's weights are not downloaded just to describe them
    disk = summary(folder) if Path(name).expanduser().is_dir() or has_weights(folder) else hub_summary(name, folder)
    args, config = read_config(folder), json.loads((folder / "config.json").read_text())
    quantization = args.quantization or {}
    compute = plan(device, dtype)
    facts = {
        "model": name, "folder": str(folder),
        # both kinds are Qwen3ForCausalLM: weights.model_kind reads the files around the decoder
        "kind": model_kind(folder) or "unknown (a Qwen3 decoder; no file says embedding or reranker)",
        "architecture": (config.get("architectures") or ["?"])[0],
        "model_type": config.get("model_type"), "dim": args.hidden_size, "layers": args.num_hidden_layers,
        "heads": args.num_attention_heads, "kv_heads": args.num_key_value_heads, "head_dim": args.head_dim,
        "intermediate_size": args.intermediate_size, "vocab_size": args.vocab_size,
        "max_length": _default_max_length(folder, args), "max_position_embeddings": args.max_position_embeddings,
        "parameters": disk["parameters"], "size_bytes": disk["size_bytes"],
        "bits_per_weight": round(disk["bits_per_weight"], 3),
        "quantization": {k: v for k, v in quantization.items() if not isinstance(v, (dict, bool))} or None,
        "quantization_overrides": {k: v for k, v in quantization.items() if isinstance(v, (dict, bool))},
        "compute": {"device": compute.device, "dtype": str(compute.dtype).removeprefix("mlx.core."),
                    "dequantize": compute.dequantize, "batch_tokens": compute.batch_tokens,
                    "kernels": compute.kernels.describe()},
        "blas": blas() if compute.device == "cpu" else "n/a (Metal)",
    }
    if as_json:
        typer.echo(json.dumps(facts, indent=2))
        return
    for key, value in facts.items():
        if key == "size_bytes":
            value = f"{value / 2**20:.1f} MiB"
        elif key == "quantization_overrides":  # often dozens: count them per bits, --json lists them
            bits = [v.get("bits") if isinstance(v, dict) else "float" for v in value.values()]
            value = ", ".join(f"{bits.count(b)} modules at {b} bits" for b in sorted(set(bits), key=str)) or "none"
        elif isinstance(value, dict):
            value = ", ".join(f"{k} {v}" for k, v in value.items())
        typer.echo(f"{key}: {'float (not quantized)' if value is None and key == 'quantization' else value}")
