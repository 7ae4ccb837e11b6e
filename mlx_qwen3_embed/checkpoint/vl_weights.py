"""A Qwen3-VL folder -> a loaded models.qwen3_vl.Qwen3VL: config, key clean-up (hub and mlx-vlm layouts), checks."""

from pathlib import Path
from typing import Optional

import mlx.core as mx

from ..device import DevicePlan
from ..models.qwen3_vl import Qwen3VL, VLArgs
from .weights import (head_rows, load_weights, plan_memory, read_config_json, read_prefixed, read_tensors,
                      stored_bytes, stored_dtype_size)


def read_vl_config(folder: Path, config: Optional[dict] = None) -> VLArgs:
    """The numbers of a Qwen3-VL checkpoint: from `config` (config.json already read) or the file."""
    config = dict(config if config is not None else read_config_json(folder))
    if isinstance(config.get("quantization"), dict):  # mlx-vlm names per-module overrides by its own keys
        config["quantization"] = {_hub_key(k): v for k, v in config["quantization"].items()}
    return VLArgs.from_dict(config)


def _hub_key(key: str) -> str:
    """An mlx-vlm module path -> the hub's (`language_model.model.` -> `model.language_model.`,
    `vision_tower.` -> `model.visual.`)."""
    if key.startswith("language_model.model."):
        return "model.language_model." + key.removeprefix("language_model.model.")
    if key.startswith("vision_tower."):
        return "model.visual." + key.removeprefix("vision_tower.")
    return key


def clean_keys(tensors: dict[str, mx.array], head: bool = False) -> dict[str, mx.array]:
    """Keys as Qwen3VL names them: the hub's `language_model.*`/`visual.*` (read_tensors already dropped
    `model.`), or mlx-vlm's `language_model.model.*`/`vision_tower.*`; lm_head (and a converted reranker's
    score_head) dropped (embeddings need none), or with `head` kept as `lm_head.*` (`score_head.*`); the patch embedding's Conv3d in MLX's (out, t, h, w, in)
    layout."""
    out = {}
    for key, value in tensors.items():
        if key.startswith("language_model.model."):
            key = "language_model." + key.removeprefix("language_model.model.")
        elif key.startswith("vision_tower."):
            key = "visual." + key.removeprefix("vision_tower.")
        if key.startswith(("language_model.lm_head.", "lm_head.", "score_head.")):
            if head:
                out[key.removeprefix("language_model.")] = value
            continue
        if key == "visual.patch_embed.proj.weight" and value.ndim == 5 and value.shape[1] == 3 != value.shape[4]:
            value = value.transpose(0, 2, 3, 4, 1)  # PyTorch's (out, in, t, h, w)
        out[key] = value
    return out


VISION_KEYS = ("visual.", "vision_tower.")  # the vision tower's tensors, in the hub's and mlx-vlm's layouts


def plan_vl_memory(folder: Path, plan: DevicePlan, config: dict, args: VLArgs) -> DevicePlan:
    """`plan` fitted to the memory left (weights.plan_memory): the decoder from its config, plus the vision
    tower as stored (its headers), scaled to the compute dtype when it is dequantized."""
    return plan_memory(folder, plan, config=config, args=args.text, extra=vision_memory(folder, plan, config, args))


def vision_memory(folder: Path, plan: DevicePlan, config: dict, args: VLArgs) -> tuple[int, int]:
    """The vision tower's (bytes as `plan` holds it, bytes as stored), beside the decoder's."""
    vision = stored_bytes(folder, VISION_KEYS)
    planned = vision if plan.upcast else vision * plan.dtype.size // stored_dtype_size(config)
    if args.quantization and plan.dequantize:  # an 8-bit tower dequantized: about 1 byte a weight -> compute dtype
        planned = vision * plan.dtype.size
    return planned, vision


def load_vl_model(folder: Path, plan: DevicePlan, config: Optional[dict] = None) -> tuple[Qwen3VL, VLArgs]:
    """Build the Qwen3VL of `folder` and load its weights, dequantized or not as `plan` says (fitted to the
    memory already: plan_vl_memory). config: config.json already read."""
    args = read_vl_config(folder, config)
    tensors = clean_keys(read_tensors(folder))
    model = Qwen3VL(args, plan.kernels)
    load_weights(model, tensors, args.text, plan, folder)  # args.text carries the quantization block
    return model, args


HEAD_KEYS = ("lm_head.", "language_model.lm_head.", "language_model.embed_tokens.", "language_model.model.embed_tokens.",
             "score_head.")
SCORE_HEAD_KEY = "mlx_qwen3_embed_score_head"  # config.json: the token ids ("no", "yes") of score_head.weight's rows


def read_vl_head(folder: Path) -> dict[str, mx.array]:
    """The LM head's tensors (`lm_head.*`, any layout) and the embedding's (`language_model.embed_tokens.*`) only,
    keys as clean_keys(head=True) names them, and the rows `convert` keeps (`score_head.*`): what a reranker's
    two rows come from."""
    return clean_keys(read_prefixed(folder, HEAD_KEYS), head=True)


def read_vl_head_rows(folder: Path, config: dict, args: VLArgs, ids: list[int]) -> mx.array:
    """Rows `ids` of a Qwen3-VL LM head, float32 (len(ids), D): `lm_head.weight` when the checkpoint has one
    (the 8B), else the tied `embed_tokens.weight` (2B). As weights.read_head_rows: a quantized matrix's groups run
    along D, so only the rows are dequantized, never the (V, D) head."""
    tensors = read_vl_head(folder)
    if "score_head.weight" in tensors:  # a conversion's float rows, exact where a 4-bit head would not be
        if config.get(SCORE_HEAD_KEY) != list(ids):
            raise ValueError(f"{folder}'s score_head rows are for token ids {config.get(SCORE_HEAD_KEY)}, its "
                             f"tokenizer's are {list(ids)}: the tokenizer was changed after convert; convert again")
        rows = tensors["score_head.weight"].astype(mx.float32)
        mx.eval(rows)
        return rows
    module = "lm_head" if "lm_head.weight" in tensors else "language_model.embed_tokens"
    tied = config.get("tie_word_embeddings", args.text.tie_word_embeddings)
    if module != "lm_head" and not tied:
        raise ValueError(f"{folder} has no lm_head.weight but config.json says tie_word_embeddings false: the "
                         "checkpoint is incomplete (its LM head, which the reranker's score reads, is missing)")
    return head_rows(tensors, module, ids, args.text, folder)
