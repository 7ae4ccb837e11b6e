"""ModelArgs: the numbers of a Qwen3 decoder, read from a checkpoint's config.json."""

from dataclasses import dataclass, field
from typing import Any, Optional


@dataclass
class ModelArgs:
    hidden_size: int
    num_hidden_layers: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int
    head_dim: Optional[int] = None
    rms_norm_eps: float = 1e-6
    rope_theta: float = 1_000_000.0
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = True
    # mlx-lm's block: {"group_size": 64, "bits": 4, "mode": "affine", "<module path>": {...}, ...}
    quantization: Optional[dict] = field(default=None)

    def __post_init__(self):
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, config: dict[str, Any]) -> "ModelArgs":
        model_type = config.get("model_type")
        if model_type != "qwen3":
            raise ValueError(f"expected a Qwen3 checkpoint (model_type 'qwen3'), got model_type {model_type!r}")
        known = {k: config[k] for k in cls.__dataclass_fields__ if k in config}
        # transformers >= 5 nests rope_theta under rope_parameters
        rope = config.get("rope_parameters") or {}
        if "rope_theta" not in known and "rope_theta" in rope:
            known["rope_theta"] = rope["rope_theta"]
        missing = [k for k in ("hidden_size", "num_hidden_layers", "intermediate_size",
                               "num_attention_heads", "num_key_value_heads", "vocab_size") if k not in known]
        if missing:
            raise ValueError(f"config.json lacks {', '.join(missing)}")
        return cls(**known)

    def quantization_for(self, path: str) -> Optional[dict]:
        """The quantization of the module at `path` (without the `model.` prefix), or None if it stays float."""
        if not self.quantization:
            return None
        q = self.quantization
        for key in (f"model.{path}", path):
            if key in q:
                override = q[key]
                if override is False:
                    return None
                if isinstance(override, dict):
                    return {"group_size": override.get("group_size", q.get("group_size", 64)),
                            "bits": override.get("bits", q.get("bits", 4)),
                            "mode": override.get("mode", q.get("mode", "affine"))}
        return {"group_size": q.get("group_size", 64), "bits": q.get("bits", 4), "mode": q.get("mode", "affine")}
