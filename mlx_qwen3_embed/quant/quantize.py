"""Original Hugging Face Qwen3-Embedding weights -> an mlx-community style quantized folder, written atomically.

`convert` = `load_float` -> `quantize` -> [`distill.distill`, with dwq=True] -> `save`. The folder it
writes is the one mlx-lm's own `quantize_model`/`save_model`/`save_config` write (keys with `model.`, a
"quantization" block with per-module overrides mirrored as "quantization_config", `format: mlx` safetensors
metadata, an index json), so mlx-lm and `mlx_qwen3_embed.load` both read it.
"""

import copy
import json
import shutil
from pathlib import Path
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_map, tree_unflatten

from ..atomic import building_folder, refuse_existing
from ..checkpoint import open_checkpoint
from ..checkpoint.summary import read_header, summary  # noqa: F401  (read_header: tests import it from here)
from ..device import DTYPES, plan
from .conversion import (TOKENIZER_FILES, check_quantization, copy_files, output_dtype, quantizable, refuse_quantized,
                         with_quantization)
from .distill import distill, read_calibration
from .distill_memory import plan_dwq_memory
from ..models.args import ModelArgs
from ..models.qwen3 import Qwen3
from .stream import write_streamed
from ..tokenizer import EOS, Tokenizer
from ..checkpoint.weights import KIND_KEY, check, read_config, read_tensors, safetensors_files

# Files of a model folder that are not weights and travel unchanged (tokenizer.json may be patched, see below)
EXTRA_FILES = [*TOKENIZER_FILES, "modules.json", "sentence_bert_config.json", "config_sentence_transformers.json"]


# Mixed-precision recipes: module path (without `model.`) and layer count -> bits of that module.
# Sensitivity follows llama.cpp's Q4_K_M / mlx-lm's mixed_3_6: v_proj and down_proj of the first and last
# eighth of the layers (and every third in between) matter most; the token table is read for every token.
def _sensitive(path: str, num_layers: int) -> bool:
    if path == "embed_tokens":
        return True
    if not path.startswith("layers.") or not path.endswith(("v_proj", "down_proj")):
        return False
    i = int(path.split(".")[1])
    return i < num_layers // 8 or i >= 7 * num_layers // 8 or (i - num_layers // 8) % 3 == 2


def mixed_4_6(path: str, num_layers: int) -> int:
    """4 bits; 6 for embed_tokens and the sensitive v_proj/down_proj (5.22 bits per weight on 0.6B, 4.50 uniform)."""
    return 6 if _sensitive(path, num_layers) else 4


def mixed_4_8(path: str, num_layers: int) -> int:
    """4 bits; 8 for embed_tokens, every down_proj, and all of the first and last layer (6.30 bits/weight on 0.6B)."""
    if path == "embed_tokens" or path.endswith("down_proj"):
        return 8
    if path.startswith("layers."):
        i = int(path.split(".")[1])
        if i in (0, num_layers - 1):
            return 8
    return 4


RECIPES: dict[str, Callable[[str, int], int]] = {"mixed_4_6": mixed_4_6, "mixed_4_8": mixed_4_8}


def load_float(src: str, dtype: Optional[str] = None) -> tuple[Qwen3, dict, Path]:
    """Hub id or folder of original (unquantized) weights -> (Qwen3 in `dtype`, its config.json dict, folder).

    dtype: "bfloat16" | "float16" | "float32"; default the checkpoint's own (`torch_dtype`), as mlx-lm does.
    """
    args, config, folder, tensors = open_float(src, dtype)
    model = Qwen3(args)
    model.update(tree_unflatten([(k, v.astype(DTYPES[config["torch_dtype"]])) for k, v in tensors.items()]))
    mx.eval(model.parameters())
    return model, config, folder


def open_float(src: str, dtype: Optional[str] = None) -> tuple[ModelArgs, dict, Path, dict[str, mx.array]]:
    """The checks of load_float, and the tensors as mx.load gives them: lazy, each read when first computed.
    The config's torch_dtype becomes `dtype` (default: the checkpoint's own)."""
    source = open_checkpoint(src)
    folder, config = source.folder, copy.deepcopy(source.config)
    args = read_config(folder, config)
    dtype = output_dtype(dtype, config)
    tensors = read_tensors(folder)
    refuse_quantized(source.name, config, tensors, "Qwen/Qwen3-Embedding-0.6B")
    config["torch_dtype"] = dtype  # the dtype of the scales, biases and norms we write
    check(Qwen3(args), tensors, folder)  # shapes only: nothing is read
    return args, config, folder, tensors


def quantize(model: Qwen3, config: dict, bits: Optional[int] = None, group_size: int = 64,
             recipe: Optional[str] = None, evaluate: bool = True) -> dict:
    """Quantize `model` in place (affine, nn.quantize) and return the config with mlx-lm's quantization block.

    bits: 2..8 for every Linear and the Embedding; or recipe: a name in RECIPES choosing bits per module.
    A layer whose input size `group_size` does not divide stays float, as in mlx-lm. evaluate=False leaves the
    quantized parameters lazy (stream.py reads only their shapes).
    """
    bits = check_settings(bits, group_size, recipe)
    choose = RECIPES[recipe] if recipe else (lambda path, num_layers: bits)
    num_layers = len(model.layers)
    # the bits most modules get go in the top-level block; the others become per-module overrides
    chosen = [choose(path, num_layers) for path, m in model.named_modules() if hasattr(m, "to_quantized")]
    base = max(set(chosen), key=chosen.count)
    block = {"group_size": group_size, "bits": base, "mode": "affine"}

    def predicate(path: str, module: nn.Module):
        if not quantizable(module, group_size):
            return False
        module_bits = choose(path, num_layers)
        if module_bits == base:
            return True
        block[f"model.{path}"] = {"group_size": group_size, "bits": module_bits, "mode": "affine"}
        return {"group_size": group_size, "bits": module_bits, "mode": "affine"}

    nn.quantize(model, group_size, base, mode="affine", class_predicate=predicate)
    if evaluate:
        mx.eval(model.parameters())
    config = with_quantization(config, block)
    # The 8B says untied but ships no lm_head; an embedding model needs none, and "tied" lets mlx-lm load it
    config["tie_word_embeddings"] = True
    return config


class _Prefixed(nn.Module):
    """Our Qwen3 under the attribute `model`, so its parameters flatten to mlx-lm's `model.`-prefixed keys;
    with a reranker's own head beside it as `lm_head`, mlx-lm's Qwen3ForCausalLM layout."""

    def __init__(self, model: Qwen3, lm_head: Optional[nn.Module] = None):
        super().__init__()
        self.model = model
        if lm_head is not None:
            self.lm_head = lm_head


def load_lm_head(folder: Path, config: dict) -> Optional[nn.Linear]:
    """A reranker's untied `lm_head.weight` as a float Linear (V, D), or None when the head is tied."""
    for f in safetensors_files(folder, ("lm_head.",)):
        weights = mx.load(str(f))
        if "lm_head.weight" in weights:
            head = nn.Linear(config["hidden_size"], config["vocab_size"], bias=False)
            head.weight = weights["lm_head.weight"].astype(DTYPES[config["torch_dtype"]])
            return head
    return None


def save(model: Qwen3, config: dict, src_folder: Path, dst: str, dtype: Optional[str] = None,
         lm_head: Optional[nn.Module] = None, reranker: bool = False,
         write: Optional[Callable[[Path], None]] = None) -> dict:
    """Write `model` + `config` + the tokenizer and sentence-transformers files of `src_folder` to `dst`, atomically.

    Builds everything in a hidden folder next to `dst` and renames it at the end (atomic.building_folder), so an
    interrupted run leaves nothing at `dst` (and what a killed one left beside it goes on the next run to `dst`).
    Refuses an existing `dst` (FileExistsError). Returns `summary(dst)`. A reranker keeps its `lm_head` (if
    untied) and its files as they are: no sentence-transformers pooling files, no <|endoftext|> added by the
    tokenizer.
    write(folder): writes the weights instead of mlx-lm's save_model (the streamed conversion).
    """
    from mlx_lm.utils import save_config, save_model

    dst = Path(dst).expanduser()
    refuse_existing(dst)
    if dtype is not None:  # scales, biases and norms in the output dtype (the packed uint32 weights stay)
        model.update(tree_map(lambda a: a.astype(DTYPES[dtype]) if mx.issubdtype(a.dtype, mx.floating) else a,
                              model.parameters()))
    with building_folder(dst) as tmp:
        if write is not None:
            write(tmp)
        else:
            save_model(tmp, _Prefixed(model, lm_head))
        save_config(dict(config), tmp / "config.json")
        copy_extra_files(src_folder, tmp, config["hidden_size"], reranker)
    return summary(dst)


def convert(src: str, dst: str, *, bits: Optional[int] = None, group_size: int = 64, recipe: Optional[str] = None,
            dtype: Optional[str] = None, dwq: bool = False, calibration: Optional[str] = None, steps: int = 300,
            lr: float = 1e-3, batch_tokens: int = 2048, checkpoint: bool = False,
            callback: Optional[Callable[[int, float], None]] = None) -> dict:
    """Original weights at `src` (folder or hub id) -> quantized mlx-community layout at `dst`.

    dwq=True tunes the quantized scales/biases so the vectors match the float model's on `calibration` texts
    (distill.py; steps, lr, batch_tokens, checkpoint are its settings, callback(step, loss) its progress).
    Returns `summary(dst)`: {"path", "size_bytes", "parameters", "bits_per_weight", "quantization"}, plus
    "dwq": the DistillReport when dwq=True.
    """
    # fail on bad settings, an existing dst or a bad calibration file before minutes of loading and quantizing
    check_settings(bits, group_size, recipe)
    refuse_existing(Path(dst).expanduser())
    texts = read_calibration(calibration) if dwq else None
    src = open_checkpoint(src)
    reranker = src.kind == "reranker"
    if reranker and dwq:
        raise ValueError(f"{src.name} is a reranker: --dwq distills embedding vectors; convert it without dwq")
    if dwq:  # refused before minutes of loading when this machine cannot hold distillation's peak (distill.py)
        plan_dwq_memory(src.folder, texts, RECIPES[recipe] if recipe else (bits or 4), group_size, batch_tokens,
                        checkpoint)
    # tensor by tensor: memory for a few of the largest tensor, not for the model (stream.py); a reranker's head
    # goes the in-memory way
    if not dwq and not reranker:
        args, config, folder, tensors = open_float(src, dtype)
        lazy = Qwen3(args)  # never computed: its quantized twin gives the layout mlx-lm would write
        lazy.update(tree_map(lambda a: a.astype(DTYPES[config["torch_dtype"]]), lazy.parameters()))
        config = quantize(lazy, config, bits, group_size, recipe, evaluate=False)
        return save(lazy, config, folder, dst, write=lambda tmp: write_streamed(tmp, _Prefixed(lazy), tensors,
                                                                               DTYPES[config["torch_dtype"]]))
    model, config, folder = load_float(src, dtype)
    lm_head = load_lm_head(folder, config) if reranker else None
    config = quantize(model, config, bits, group_size, recipe)
    if reranker:  # its config.json is an embedding model's: mark it, so no folder name is needed to tell
        config[KIND_KEY] = "reranker"
    if lm_head is not None:  # the 8B reranker's own head: quantized like any linear layer, as mlx-lm does
        q = config["quantization"]
        lm_head = lm_head.to_quantized(group_size=q["group_size"], bits=q["bits"], mode="affine")
        config["tie_word_embeddings"] = False
        mx.eval(lm_head.parameters())
    report = None
    if dwq:
        # an fp32 teacher on CPU (bf16 matmul is 30x slower there), the checkpoint's dtype on Metal; passed
        # inline so that distill frees it once its targets are computed
        teacher_dtype = "float32" if plan().dtype == mx.float32 else None
        report = distill(load_float(src, teacher_dtype)[0], model, Tokenizer(folder), texts, steps=steps, lr=lr,
                         batch_tokens=batch_tokens, checkpoint=checkpoint, callback=callback)
    result = save(model, config, folder, dst, lm_head=lm_head, reranker=reranker)
    if report is not None:
        result["dwq"] = report
    return result


def check_settings(bits: Optional[int], group_size: int, recipe: Optional[str]) -> int:
    """Raise ValueError naming a bad setting; return the bits to use (4 unless given)."""
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
    if recipe is not None and bits is not None:
        raise ValueError(f"recipe {recipe} sets its own bits per module: drop bits (--bits) or the recipe")
    return check_quantization(bits, group_size)


def copy_extra_files(src: Path, dst: Path, hidden_size: int, reranker: bool = False) -> None:
    """Tokenizer and sentence-transformers files; tokenizer.json made to append <|endoftext|> if it did not.

    A reranker's files are copied as they are: it pools nothing, and its pairs must not end in <|endoftext|>."""
    copy_files(src, dst, EXTRA_FILES)
    for sub in sorted(src.glob("[0-9]_*")):  # 1_Pooling/, 2_Normalize/ of sentence-transformers
        if sub.is_dir():
            shutil.copytree(sub, dst / sub.name)
    if reranker:
        return
    append_eos(dst / "tokenizer.json")
    if not (dst / "modules.json").is_file():
        write_sentence_transformers_files(dst, hidden_size)


def append_eos(path: Path) -> bool:
    """Make tokenizer.json end every sequence in <|endoftext|> (what the model pools); True if it was changed."""
    from tokenizers import Tokenizer, processors

    tokenizer = Tokenizer.from_file(str(path))
    eos = tokenizer.token_to_id(EOS)
    if eos is None:
        raise ValueError(f"{path} has no {EOS} token: not a Qwen3 tokenizer")
    if tokenizer.encode("a").ids[-1:] == [eos]:
        return False
    template = processors.TemplateProcessing(single=f"$A {EOS}", pair=f"$A {EOS} $B:1 {EOS}:1",
                                             special_tokens=[(EOS, eos)])
    current = tokenizer.post_processor
    tokenizer.post_processor = template if current is None else processors.Sequence([current, template])
    tokenizer.save(str(path))
    return True


def write_sentence_transformers_files(folder: Path, hidden_size: int) -> None:
    """The model card's sentence-transformers setup, for sources (fine-tunes) that lack it: last-token pooling."""
    from ..tokenizer import DEFAULT_INSTRUCTION, query_prompt

    (folder / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"}], indent=2))
    if not (folder / "config_sentence_transformers.json").is_file():
        (folder / "config_sentence_transformers.json").write_text(json.dumps({
            "prompts": {"query": query_prompt(DEFAULT_INSTRUCTION), "document": ""},
            "default_prompt_name": None, "similarity_fn_name": "cosine"}, indent=2))
    (folder / "1_Pooling").mkdir(exist_ok=True)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({
        "word_embedding_dimension": hidden_size, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
        "pooling_mode_max_tokens": False, "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False, "pooling_mode_lasttoken": True, "include_prompt": True}, indent=2))
    (folder / "2_Normalize").mkdir(exist_ok=True)


