"""`info`'s summary of a checkpoint, from its safetensors headers alone (local files, or the hub's headers and
file list when the weights are not downloaded): size on disk, parameters, bits per weight, quantization."""

import fnmatch
from pathlib import Path
from typing import Optional

from ..models.args import ModelArgs
from .weights import HUB_FILES, read_config, read_header


def summary(folder: Path, args: Optional[ModelArgs] = None) -> dict:
    """Size on disk, parameter count and bits per weight of a checkpoint, from safetensors headers (no loading).

    bits per weight = stored bytes * 8 / parameters, counting a quantized matrix by its unpacked size (mlx-lm's
    definition), so scales and biases are included: 4-bit, group 64 with bf16 scales gives 4.5.
    args: the decoder's numbers, whose quantization block names the bits (default: config.json's, a Qwen3's).
    """
    folder = Path(folder)
    args = args or read_config(folder)
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors in {folder}: is this a model folder?")
    headers = {}
    for f in files:
        headers |= read_header(f)
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    return _summarize(folder, args, headers, size)


def hub_summary(repo_id: str, folder: Path, revision: Optional[str] = None,
                args: Optional[ModelArgs] = None) -> dict:
    """`summary` of a hub checkpoint whose weights are not downloaded: `folder` holds its config (resolve with
    weights=False); the tensor table comes from the hub's safetensors headers (range requests) and the size from
    its file list: the size of what `resolve` would download."""
    from huggingface_hub import HfApi, get_safetensors_metadata
    from huggingface_hub.errors import NotASafetensorsRepoError, SafetensorsParsingError

    try:
        tables = get_safetensors_metadata(repo_id, revision=revision).files_metadata.values()
        files = HfApi().model_info(repo_id, revision=revision, files_metadata=True).siblings or []
    except (OSError, NotASafetensorsRepoError, SafetensorsParsingError) as e:  # offline (a ConnectionError), HTTP
        raise FileNotFoundError(f"the weights of {repo_id} are not downloaded and the hub cannot describe them "
                                f"({type(e).__name__}: {e})") from None
    headers = {key: {"shape": list(tensor.shape), "data_offsets": tensor.data_offsets}
               for table in tables for key, tensor in table.tensors.items()}
    size = sum(f.size or 0 for f in files if any(fnmatch.fnmatch(f.rfilename, p) for p in HUB_FILES))
    return _summarize(folder, args or read_config(folder), headers, size)


def _summarize(folder: Path, args, headers: dict, size: int) -> dict:
    headers = {k.removeprefix("model."): v for k, v in headers.items()}
    parameters = tensor_bytes = 0
    for key, info in headers.items():
        count = 1
        for n in info["shape"]:
            count *= n
        start, end = info["data_offsets"]
        tensor_bytes += end - start
        module, _, name = key.rpartition(".")
        if name in ("scales", "biases") and f"{module}.scales" in headers:
            continue
        if name == "weight" and f"{module}.scales" in headers:
            count = count * 32 // (args.quantization_for(module) or {}).get("bits", 4)
        parameters += count
    return {"path": str(folder), "size_bytes": size, "parameters": parameters,
            "bits_per_weight": tensor_bytes * 8 / parameters if parameters else 0.0,
            "quantization": args.quantization}
