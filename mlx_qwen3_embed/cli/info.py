"""`mlx-embed info`: what a checkpoint holds and how it would run here."""

import json
from pathlib import Path

import typer

from .options import MODEL_HELP, friendly_errors, one_model


@friendly_errors
def info(
    model: str | None = typer.Argument(None, help=MODEL_HELP + " Also as --model."),
    model_flag: str | None = typer.Option(None, "--model", "-m", help=MODEL_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
    device: str | None = typer.Option(None, help="Show the plan for cpu or gpu (default: MLX's default)."),
    dtype: str | None = typer.Option(None, help="Show the plan with this compute dtype."),
):
    """Architecture, dims, quantization, size on disk, max length and the compute plan of a checkpoint (a Qwen3
    embedding model or reranker, or a Qwen3-VL model)."""
    from ..blas import blas
    from ..checkpoint import open_checkpoint
    from ..checkpoint.summary import hub_summary, summary
    from ..checkpoint.weights import has_weights
    from ..device import plan

    name = one_model(model, model_flag)
    checkpoint = open_checkpoint(name, weights=False)  # a hub model's weights are not downloaded to describe it
    folder, config = checkpoint.folder, checkpoint.config
    args, extra = decoder(checkpoint)
    local = Path(name).expanduser().is_dir() or has_weights(folder)
    disk = summary(folder, args) if local else hub_summary(name, folder, args=args)
    quantization = args.quantization or {}
    compute = plan(device, dtype)
    facts = {
        "model": name, "folder": str(folder),
        # Qwen3 embedding models and rerankers are both Qwen3ForCausalLM: weights.model_kind reads the files around
        "kind": checkpoint.kind or "unknown (a Qwen3 decoder; no file says embedding or reranker)",
        "architecture": (config.get("architectures") or ["?"])[0],
        "model_type": config.get("model_type"), "dim": args.hidden_size, "layers": args.num_hidden_layers,
        "heads": args.num_attention_heads, "kv_heads": args.num_key_value_heads, "head_dim": args.head_dim,
        "intermediate_size": args.intermediate_size, "vocab_size": args.vocab_size,
        "max_length": extra.pop("max_length"), "max_position_embeddings": args.max_position_embeddings, **extra,
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


def decoder(checkpoint) -> tuple:
    """(the text decoder's ModelArgs, facts of this kind: its default max_length, a Qwen3-VL's vision tower)."""
    if checkpoint.vision:
        from ..checkpoint.vl_weights import read_vl_config
        from ..vision import embedder, reranker

        args = read_vl_config(checkpoint.folder, checkpoint.config)
        vision = args.vision
        limit = reranker.MAX_LENGTH if checkpoint.kind == "qwen3_vl_reranker" else embedder.MAX_LENGTH
        return args.text, {"max_length": limit, "vision": {
            "depth": vision.depth, "hidden_size": vision.hidden_size, "patch_size": vision.patch_size,
            "spatial_merge_size": vision.spatial_merge_size}}
    from ..checkpoint import decoder_args

    args = decoder_args(checkpoint)
    if checkpoint.kind == "reranker":
        from ..reranker import MAX_LENGTH

        return args, {"max_length": min(MAX_LENGTH, args.max_position_embeddings)}
    from ..embedder import _default_max_length

    return args, {"max_length": _default_max_length(checkpoint.folder, args)}
