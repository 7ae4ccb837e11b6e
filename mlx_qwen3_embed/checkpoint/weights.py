"""Path or hub id -> a loaded Qwen3: safetensors shards, key clean-up, strict checks, the quantized layout."""

import json
import os
from pathlib import Path
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..models.args import ModelArgs
from ..device import GB, DevicePlan, fit_memory
from ..models.qwen3 import Qwen3
from ..models.upcast import upcast_layers

# What a model folder needs; the hub repos also hold ONNX/GGUF copies we must not download.
HUB_FILES = ["*.json", "*.safetensors", "*.txt", "tokenizer.model", "1_Pooling/*"]
METADATA_FILES = [pattern for pattern in HUB_FILES if pattern != "*.safetensors"]  # all but the weights


def resolve(path_or_id: str, revision: Optional[str] = None, *, weights: bool = True) -> Path:
    """A local model folder, or a hub id fetched through huggingface_hub (its cache and HF_HUB_OFFLINE apply).

    weights=False fetches a hub id's config, tokenizer and index files only (weights already cached stay there).
    """
    if not isinstance(path_or_id, (str, os.PathLike)):
        raise TypeError(f"model must be a folder path or a hub id (str), got {type(path_or_id).__name__}")
    path = Path(path_or_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_id)
    if path.exists() or text.startswith(("/", ".", "~")) or text.count("/") != 1:
        raise FileNotFoundError(f"no model folder at {text}: give a folder holding config.json and *.safetensors, "
                                "or a hub id such as mlx-community/Qwen3-Embedding-0.6B-4bit-DWQ")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        return Path(snapshot_download(text, revision=revision, allow_patterns=HUB_FILES if weights else METADATA_FILES))
    except LocalEntryNotFoundError:
        raise FileNotFoundError(f"{text} is not in the Hugging Face cache and the hub cannot be reached "
                                "(offline?): download it once with network, or give a local folder") from None
    except RepositoryNotFoundError:
        raise FileNotFoundError(f"no hub repository {text}: check the id, or give a local folder") from None
    except HfHubHTTPError as e:
        raise FileNotFoundError(f"could not fetch {text} from the hub: {e}") from None


def has_weights(folder: Path) -> bool:
    """Whether every safetensors file of the checkpoint is in `folder` (all shards its index names)."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return all((folder / name).is_file() for name in set(json.loads(index.read_text())["weight_map"].values()))
    return any(folder.glob("*.safetensors"))


def read_config_json(folder: Path) -> dict:
    """config.json of `folder` as a dict, or an error naming the file and the fix."""
    path = folder / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}: is this a model folder?")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{path} is not JSON ({e}): the download is damaged; delete it and download again") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path} is not a JSON object: not a model config")
    return config


def read_config(folder: Path, config: Optional[dict] = None) -> ModelArgs:
    """The decoder's numbers: from `config` (config.json already read, see checkpoint.open_checkpoint) or the file."""
    return ModelArgs.from_dict(config if config is not None else read_config_json(folder))


def stored_dtype(config: dict) -> Optional[str]:
    """The dtype config.json says the weights are stored in (`torch_dtype`, transformers >= 5's `dtype`), or None."""
    return config.get("torch_dtype") or config.get("dtype")


def stored_dtype_size(config: dict) -> int:
    """Bytes per stored float of a checkpoint (2, the hub's bf16, when config.json does not say)."""
    return ITEMSIZE.get(stored_dtype(config), 2)


def read_tensors(folder: Path) -> dict[str, mx.array]:
    """All tensors of the checkpoint, keys without the `model.` prefix, lm_head dropped (embeddings need none)."""
    tensors = {}
    for f in safetensors_files(folder):
        for key, value in mx.load(str(f)).items():
            key = key.removeprefix("model.")
            if not key.startswith("lm_head."):
                tensors[key] = value
    return tensors


def safetensors_files(folder: Path, prefixes: tuple[str, ...] = ()) -> list[Path]:
    """The checkpoint's safetensors files: those its index names (all present), else every *.safetensors.

    prefixes: only the shards holding a tensor whose name (without `model.`) starts with one of them.
    """
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        names = sorted({file for key, file in weight_map.items()
                        if not prefixes or key.removeprefix("model.").startswith(prefixes)})
        files = [folder / n for n in names]
        for f in files:
            if not f.is_file():
                raise FileNotFoundError(f"{index} names {f.name}, which is missing: the download is incomplete")
    else:
        files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}: is this a model folder?")
    for f in files:
        read_header(f)  # a cut-short or empty file is an error naming it, before mx.load reads it
    return files


def dequantize(tensors: dict[str, mx.array], args: ModelArgs, dtype: mx.Dtype) -> dict[str, mx.array]:
    """Replace each quantized (weight, scales, biases) triple by its float weight."""
    out = {}
    for key, value in tensors.items():
        module, _, name = key.rpartition(".")
        if name in ("scales", "biases") and f"{module}.scales" in tensors:
            continue
        if name == "weight" and f"{module}.scales" in tensors:
            q = args.quantization_for(module) or {}
            scales = tensors[f"{module}.scales"].astype(mx.float32)
            biases = tensors.get(f"{module}.biases")
            value = mx.dequantize(value, scales, None if biases is None else biases.astype(mx.float32),
                                  group_size=q.get("group_size", 64), bits=q.get("bits", 4),
                                  mode=q.get("mode", "affine"))
        out[key] = value.astype(dtype) if mx.issubdtype(value.dtype, mx.floating) else value
    return out


def check(model: nn.Module, tensors: dict[str, mx.array], folder: Path) -> None:
    """Raise, naming the tensor and the folder, unless `tensors` match the model's parameters exactly."""
    expected = dict(tree_flatten(model.parameters()))
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing:
        raise ValueError(f"{folder} lacks tensor {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
                         + ": the checkpoint is incomplete or not a Qwen3-Embedding model")
    if unexpected:
        raise ValueError(f"{folder} holds unexpected tensor {unexpected[0]}"
                         + (f" (and {len(unexpected) - 1} more)" if len(unexpected) > 1 else "")
                         + ": config.json does not describe these weights")
    for key, value in expected.items():
        if value.shape != tensors[key].shape:
            raise ValueError(f"tensor {key} in {folder} has shape {tuple(tensors[key].shape)}, "
                             f"config.json implies {tuple(value.shape)}")


ITEMSIZE = {"float32": 4, "bfloat16": 2, "float16": 2}


def matrices(args: ModelArgs) -> list[tuple[str, int, int]]:
    """(module path, rows, columns) of every weight matrix of the decoder: the token table, then each block's."""
    D, F, H, KV, hd = (args.hidden_size, args.intermediate_size, args.num_attention_heads,
                       args.num_key_value_heads, args.head_dim)
    out = [("embed_tokens", args.vocab_size, D)]
    for i in range(args.num_hidden_layers):
        p = f"layers.{i}."
        out += [(p + "self_attn.q_proj", H * hd, D), (p + "self_attn.k_proj", KV * hd, D),
                (p + "self_attn.v_proj", KV * hd, D), (p + "self_attn.o_proj", D, H * hd),
                (p + "mlp.gate_proj", F, D), (p + "mlp.up_proj", F, D), (p + "mlp.down_proj", D, F)]
    return out


def memory_need(args: ModelArgs, plan: DevicePlan, storage: int = 2) -> tuple[int, int, int]:
    """Bytes a model of shape `args` needs, from config.json alone: (weights as `plan` holds them, weights as the
    checkpoint stores them, working memory). storage: bytes per stored float (2 for bf16, the hub's dtype).

    Quantized matrices store bits/8 bytes a weight plus a scale and a bias per group; working memory is one
    block's matrices in the compute dtype (rebuilt there under plan.upcast), the activations of a batch of
    plan.batch_tokens tokens, and 1 GB for the runtime (Python, MLX, tokenizer).
    """
    compute = plan.dtype.size
    planned = stored = 0
    for path, rows, columns in matrices(args):
        n = rows * columns
        q = args.quantization_for(path) if args.quantization else None
        if q and columns % q["group_size"] == 0:  # mlx-lm leaves a matrix it cannot group as it is
            packed, groups = n * q["bits"] // 8, n // q["group_size"]
            stored += packed + 2 * groups * storage
            planned += n * compute if plan.dequantize else packed + 2 * groups * compute
        else:
            stored += n * storage
            planned += n * compute
    norms = (2 * args.hidden_size + 2 * args.head_dim) * args.num_hidden_layers + args.hidden_size
    planned, stored = planned + norms * compute, stored + norms * compute
    if plan.upcast:
        planned = stored
    block = sum(rows * columns for path, rows, columns in matrices(args)[1:8]) * compute
    per_token = (8 * args.hidden_size + 2 * args.num_attention_heads * args.head_dim
                 + 4 * args.intermediate_size) * 4
    return planned, stored, block + plan.batch_tokens * per_token + GB


def plan_memory(folder: Path, plan: DevicePlan, available: Optional[int] = None, config: Optional[dict] = None,
                args: Optional[ModelArgs] = None, extra: tuple[int, int] = (0, 0)) -> DevicePlan:
    """`plan` as it fits the memory left for the checkpoint at `folder` (device.fit_memory): may switch to
    keeping the stored weights (plan.upcast); raises MemoryError, reading no weights, when nothing fits.
    args: the decoder's numbers (default: config.json's); extra: (planned, stored) bytes beside the decoder
    (a Qwen3-VL vision tower)."""
    planned, stored, working = memory_figures(folder, plan, config, args, extra)
    return fit_memory(plan, planned, stored, working, available, name=str(folder))


def memory_figures(folder: Path, plan: DevicePlan, config: Optional[dict] = None, args: Optional[ModelArgs] = None,
                   extra: tuple[int, int] = (0, 0)) -> tuple[int, int, int]:
    """What plan_memory weighs: (weights as `plan` holds them, weights as stored, working memory) in bytes."""
    if config is None:
        config = json.loads((folder / "config.json").read_text())
    args = args or read_config(folder, config)
    planned, stored, working = memory_need(args, plan, stored_dtype_size(config))
    return planned + extra[0], stored + extra[1], working


def load_fitted(folder: Path, plan: DevicePlan, config: dict) -> tuple[Qwen3, ModelArgs, DevicePlan]:
    """plan_memory, then load_model: (the Qwen3 of `folder`, its args, the plan it was loaded with)."""
    plan = plan_memory(folder, plan, config=config)
    model, args = load_model(folder, plan, config)
    return model, args, plan


def load_model(folder: Path, plan: DevicePlan, config: Optional[dict] = None) -> tuple[Qwen3, ModelArgs]:
    """Build the Qwen3 of `folder` and load its weights, dequantized or not as `plan` says (already fitted to
    the memory by plan_memory, which may choose plan.upcast). config: config.json already read."""
    args = read_config(folder, config)
    tensors = read_tensors(folder)
    model = Qwen3(args, plan.kernels)
    load_weights(model, tensors, args, plan, folder)
    return model, args


def load_weights(model: nn.Module, tensors: dict[str, mx.array], args: ModelArgs, plan: DevicePlan,
                 folder: Path) -> None:
    """Put `tensors` (model's names, lazily loaded; the dict is emptied) into `model` as `plan` holds them:
    dequantized, quantized as stored, or stored and up-cast per matrix (plan.upcast); strict checks, then
    evaluated one tensor at a time, each stored tensor freed once its converted copy exists, so that loading
    peaks near the converted weights, not stored + converted (measured on the 4B shape: bf16 -> float32 at load
    was killed for memory at 24 GB). `args` gives the quantization."""
    source = tensors
    quantized = [k.removesuffix(".scales") for k in tensors if k.endswith(".scales")]
    if quantized and not args.quantization:
        raise ValueError(f"{folder} holds quantized tensors ({quantized[0]}.scales) but config.json has no "
                         "'quantization' block: the config does not belong to these weights")
    modules = set(quantized)
    if plan.upcast:
        # matrices stay as stored (bf16 or packed), the small norms go to the compute dtype
        kept = upcast_layers(model, plan.dtype, lambda path: args.quantization_for(path) if path in modules else None)
        tensors = {k: v if k.rpartition(".")[0] in kept or not mx.issubdtype(v.dtype, mx.floating)
                   else v.astype(plan.dtype) for k, v in tensors.items()}
    elif plan.dequantize:
        tensors = dequantize(tensors, args, plan.dtype)
    else:
        tensors = {k: v.astype(plan.dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in tensors.items()}
        nn.quantize(model, class_predicate=lambda path, _: path in modules and args.quantization_for(path))
    check(model, tensors, folder)
    source.clear()  # from here only the lazy converted arrays hold their sources
    for value in tensors.values():
        mx.eval(value)  # reads this tensor's source, converts it; the source is then unreferenced
        mx.clear_cache()  # and its buffer goes back to the system rather than into MLX's cache
    model.update(tree_unflatten(list(tensors.items())))
    mx.eval(model.parameters())


def read_head_rows(folder: Path, args: ModelArgs, ids: list[int]) -> mx.array:
    """Rows `ids` of the LM head, float32 (len(ids), D): `lm_head.weight` when the checkpoint has one (the 8B
    reranker), else the tied `embed_tokens.weight` (0.6B, 4B). A quantized matrix's groups run along D, so its
    rows dequantize on their own: the full (V, D) head is never built."""
    tensors = read_prefixed(folder, ("lm_head.", "embed_tokens."))
    module = "lm_head" if "lm_head.weight" in tensors else "embed_tokens"
    if module == "embed_tokens" and not args.tie_word_embeddings:
        raise ValueError(f"{folder} has no lm_head.weight but config.json says tie_word_embeddings false: "
                         "not a reranker checkpoint (an embedding model?)")
    return head_rows(tensors, module, ids, args, folder)


def read_prefixed(folder: Path, prefixes: tuple[str, ...]) -> dict[str, mx.array]:
    """The tensors whose name (without `model.`) starts with one of `prefixes`, from the shards that hold them."""
    tensors = {}
    for f in safetensors_files(folder, prefixes):
        for key, value in mx.load(str(f)).items():
            key = key.removeprefix("model.")
            if key.startswith(prefixes):
                tensors[key] = value
    return tensors


def head_rows(tensors: dict[str, mx.array], module: str, ids: list[int], args: ModelArgs, folder: Path) -> mx.array:
    """Rows `ids` of `module`'s weight, float32 (len(ids), D). A quantized matrix's groups run along D, so its
    rows dequantize on their own: the full (V, D) matrix is never built. args: the quantization's."""
    if f"{module}.weight" not in tensors:
        raise ValueError(f"{folder} lacks tensor {module}.weight: the checkpoint is incomplete")
    index = mx.array(ids)
    rows = tensors[f"{module}.weight"][index]
    if f"{module}.scales" in tensors:
        q = args.quantization_for(module) or {}
        biases = tensors.get(f"{module}.biases")
        rows = mx.dequantize(rows, tensors[f"{module}.scales"][index].astype(mx.float32),
                             None if biases is None else biases[index].astype(mx.float32),
                             group_size=q.get("group_size", 64), bits=q.get("bits", 4), mode=q.get("mode", "affine"))
    rows = rows.astype(mx.float32)
    mx.eval(rows)
    return rows


def tensor_names(folder: Path) -> set[str]:
    """The checkpoint's tensor names as stored (with any `model.` prefix), from the index or the file headers."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text())["weight_map"])
    return set(tensor_table(folder))


def tensor_table(folder: Path) -> dict[str, dict]:
    """Every stored tensor's header entry ({"dtype", "shape", "data_offsets"}), read from the file headers only."""
    table = {}
    for f in safetensors_files(folder):
        table |= read_header(f)
    return table


def read_header(path: Path) -> dict:
    """A safetensors file's tensor table {key: {"dtype", "shape", "data_offsets"}}, without reading tensors.

    Checks the file against its own header: an empty file, a header that is not one, or a file shorter than its
    data offsets say (an interrupted download) is a ValueError naming the file, what is wrong and the fix."""
    path = Path(path)
    size = path.stat().st_size
    if size == 0:
        raise ValueError(f"{path} is empty (0 bytes): an interrupted download or copy; {_fetch_again(path)}")
    with open(path, "rb") as f:
        length = int.from_bytes(f.read(8), "little")
        if size < 8 or 8 + length > size:
            raise ValueError(f"{path} is truncated: {size} bytes, shorter than its own header says (an interrupted "
                             f"download or copy); {_fetch_again(path)}")
        try:
            header = json.loads(f.read(length))
            ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
        except (ValueError, TypeError, KeyError, IndexError, AttributeError):
            raise ValueError(f"{path} is not a safetensors file (its header is not a tensor table); "
                             f"{_fetch_again(path)}") from None
    expected = 8 + length + max(ends, default=0)
    if size < expected:
        raise ValueError(f"{path} is truncated: {size} of {expected} bytes (an interrupted download or copy); "
                         f"{_fetch_again(path)}")
    header.pop("__metadata__", None)
    return header


def _fetch_again(path: Path) -> str:
    """The fix for a damaged weights file: delete it and fetch it again (a hub cache file is a link to a blob)."""
    if path.parent.parent.name == "snapshots" and path.is_symlink():  # models--org--name/snapshots/<commit>/
        repo = path.parent.parent.parent.name.removeprefix("models--").replace("--", "/")
        return (f"delete it from the Hugging Face cache (rm {path.resolve()} {path}) and run again to download "
                f"{repo} again")
    return "delete it and download (or copy) it again"


def stored_bytes(folder: Path, contains: tuple[str, ...]) -> int:
    """Bytes the checkpoint stores for the tensors whose name contains one of `contains` (headers only)."""
    return sum(end - start for key, entry in tensor_table(folder).items() if any(c in key for c in contains)
               for start, end in [entry["data_offsets"]])


KIND_KEY = "mlx_qwen3_embed_kind"  # config.json key `convert` writes for a reranker (the decoder's config is alike)


def model_kind(folder: Path, config: Optional[dict] = None) -> Optional[str]:
    """What a Qwen3 folder holds: "embedding", "reranker", or None when nothing in it tells.

    Both kinds are the same decoder with the same config.json (architectures Qwen3ForCausalLM), so the rule looks
    at what surrounds it, first match wins:
    1. config.json's KIND_KEY: what `convert` wrote (it marks every reranker it converts).
    2. modules.json names a sentence-transformers Pooling module: "embedding" (Qwen3-Embedding ships one, and
       `convert` writes it for every embedding model; a reranker pools nothing).
    3. config_sentence_transformers.json says model_type CrossEncoder, or the weights hold `lm_head.weight`:
       "reranker" (Qwen3-Embedding is saved without an LM head; the 8B reranker has its own).
    4. The model card (README.md, which `hf download` and `convert` copy) says `pipeline_tag: text-ranking`:
       "reranker"; `feature-extraction` or `sentence-similarity`: "embedding".
    5. The folder's name (a hub id's repository name for the hub cache) contains "rerank": "reranker"; "embed":
       "embedding" (mlx-community/Qwen3-Reranker-0.6B-4bit has a tied head and no sentence-transformers files).
    """
    marked = (config if config is not None else _json(folder / "config.json")).get(KIND_KEY)
    if marked in ("embedding", "reranker"):
        return marked
    modules = folder / "modules.json"
    if modules.is_file():
        try:
            types = [m.get("type", "") for m in json.loads(modules.read_text())]
        except (ValueError, AttributeError):
            types = []
        if any(t.endswith(".Pooling") for t in types):
            return "embedding"
    if _json(folder / "config_sentence_transformers.json").get("model_type") == "CrossEncoder":
        return "reranker"
    try:
        names = tensor_names(folder)
    except FileNotFoundError:  # not a model folder: the loader says so, naming what is missing
        names = set()
    if any(name.removeprefix("model.").startswith("lm_head.") for name in names):
        return "reranker"
    tag = _card_pipeline_tag(folder / "README.md")
    if tag in CARD_KINDS:
        return CARD_KINDS[tag]
    name = folder.resolve().name
    if folder.resolve().parent.name == "snapshots":  # the hub cache: models--Qwen--Qwen3-Reranker-0.6B/snapshots/<hash>
        name = folder.resolve().parent.parent.name
    name = name.lower()
    return "reranker" if "rerank" in name else "embedding" if "embed" in name else None


CARD_KINDS = {"text-ranking": "reranker", "feature-extraction": "embedding", "sentence-similarity": "embedding"}


def _json(path: Path) -> dict:
    """A JSON object file's content; {} when it is missing or not a JSON object (the loader names a bad config)."""
    try:
        value = json.loads(path.read_text()) if path.is_file() else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _card_pipeline_tag(path: Path) -> Optional[str]:
    """`pipeline_tag` of a model card's YAML front matter (between the leading `---` lines), else None."""
    if not path.is_file():
        return None
    lines = path.read_text(errors="replace").splitlines()
    if not lines or lines[0].strip() != "---":
        return None
    for line in lines[1:]:
        if line.strip() == "---":
            return None
        key, _, value = line.partition(":")
        if key.strip() == "pipeline_tag":
            return value.strip().strip("'\"") or None
    return None
