"""Qwen3-VL in MLX: the vision tower (patches -> LLM tokens + deepstack features) and the Qwen3 decoder with
3-axis multimodal rotary positions and deepstack additions. Arrays in, arrays out: no files, tokenizers or PIL.

The decoder is models/qwen3.py's: only the rotary positions differ (each token carries a (time, height, width)
position instead of its column), so attention is a subclass that overrides `rotate`.
"""

from dataclasses import dataclass, field
from typing import Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .args import ModelArgs
from .qwen3 import Attention, Block, Kernels, PrefixCache, Qwen3, Rows


@dataclass
class VisionArgs:
    depth: int
    hidden_size: int
    intermediate_size: int
    num_heads: int
    out_hidden_size: int
    deepstack_visual_indexes: list = field(default_factory=list)
    patch_size: int = 16
    temporal_patch_size: int = 2
    spatial_merge_size: int = 2
    in_channels: int = 3
    num_position_embeddings: int = 2304
    rope_theta: float = 10_000.0

    @classmethod
    def from_dict(cls, config: dict) -> "VisionArgs":
        known = {k: config[k] for k in cls.__dataclass_fields__ if k in config}
        theta = (config.get("rope_parameters") or {}).get("rope_theta")
        if theta is not None:
            known["rope_theta"] = theta
        missing = [k for k in ("depth", "hidden_size", "intermediate_size", "num_heads", "out_hidden_size")
                   if k not in known]
        if missing:
            raise ValueError(f"config.json's vision_config lacks {', '.join(missing)}")
        return cls(**known)


@dataclass
class VLArgs:
    """The numbers of a Qwen3-VL checkpoint: the text decoder's (as for Qwen3), the vision tower's, the tokens."""
    text: ModelArgs
    vision: VisionArgs
    mrope_section: list           # rotary frequencies given to (time, height, width), e.g. [24, 20, 20]
    image_token_id: int = 151655
    video_token_id: int = 151656
    vision_start_token_id: int = 151652
    vision_end_token_id: int = 151653
    quantization: Optional[dict] = None

    @classmethod
    def from_dict(cls, config: dict) -> "VLArgs":
        if config.get("model_type") != "qwen3_vl":
            raise ValueError(f"expected a Qwen3-VL checkpoint (model_type 'qwen3_vl'), "
                             f"got model_type {config.get('model_type')!r}")
        text = dict(config.get("text_config") or {})
        rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
        if "rope_theta" not in text and "rope_theta" in rope:
            text["rope_theta"] = rope["rope_theta"]
        quantization = config.get("quantization")
        text_args = ModelArgs.from_dict({**text, "model_type": "qwen3", "quantization": quantization})
        ids = {k: config[k] for k in ("image_token_id", "video_token_id", "vision_start_token_id",
                                      "vision_end_token_id") if k in config}
        return cls(text=text_args, vision=VisionArgs.from_dict(config.get("vision_config") or {}),
                   mrope_section=list(rope.get("mrope_section", [24, 20, 20])), quantization=quantization, **ids)


def rotate_half(x: mx.array) -> mx.array:
    half = x.shape[-1] // 2
    return mx.concatenate([-x[..., half:], x[..., :half]], axis=-1)


# ---------------------------------------------------------------------------------------------- vision tower

class PatchEmbed(nn.Module):
    def __init__(self, args: VisionArgs):
        super().__init__()
        p, t = args.patch_size, args.temporal_patch_size
        # the checkpoint's Conv3d, kept in MLX's (out, t, h, w, in) layout; stride == kernel, so it is a matmul
        self.proj = nn.Conv3d(args.in_channels, args.hidden_size, (t, p, p), stride=(t, p, p), bias=True)
        self.in_channels = args.in_channels

    def __call__(self, pixels: mx.array) -> mx.array:
        """pixels (N, C * t * p * p) in (C, t, p, p) order -> (N, hidden)."""
        N = pixels.shape[0]
        weight = self.proj.weight
        x = pixels.reshape(N, self.in_channels, -1).swapaxes(1, 2).reshape(N, -1)  # -> (t, p, p, C) order
        return x @ weight.reshape(weight.shape[0], -1).T + self.proj.bias


def full_attention(q: mx.array, k: mx.array, v: mx.array, scale: float, kernels: Kernels) -> mx.array:
    """Bidirectional attention, q, k, v (1, H, n, hd) -> (1, H, n, hd): MLX's fused kernel, or with host_exp the
    softmax written out so its exp runs in numpy (MLX's CPU exp is scalar on x86, see device.py)."""
    if not kernels.host_exp:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale)
    scores = (q * scale) @ k.swapaxes(-1, -2)
    weights = kernels.exp(scores - scores.max(axis=-1, keepdims=True))
    return (weights / weights.sum(axis=-1, keepdims=True)) @ v


class VisionAttention(nn.Module):
    def __init__(self, args: VisionArgs, kernels: Kernels = Kernels()):
        super().__init__()
        self.kernels = kernels
        self.num_heads = args.num_heads
        self.scale = (args.hidden_size // args.num_heads) ** -0.5
        self.qkv = nn.Linear(args.hidden_size, 3 * args.hidden_size, bias=True)
        self.proj = nn.Linear(args.hidden_size, args.hidden_size, bias=True)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, bounds: list) -> mx.array:
        """x (N, D) rows of several images -> (N, D); each image (each video frame) attends only to itself."""
        N, D = x.shape
        q, k, v = self.qkv(x).reshape(N, 3, self.num_heads, -1).transpose(1, 2, 0, 3)  # 3 x (H, N, hd)
        q = (q * cos + rotate_half(q) * sin).astype(x.dtype)
        k = (k * cos + rotate_half(k) * sin).astype(x.dtype)
        out = [full_attention(q[None, :, s:e], k[None, :, s:e], v[None, :, s:e], self.scale, self.kernels)[0]
               for s, e in bounds]
        out = out[0] if len(out) == 1 else mx.concatenate(out, axis=1)
        return self.proj(out.transpose(1, 0, 2).reshape(N, D))


class VisionMLP(nn.Module):
    def __init__(self, args: VisionArgs, kernels: Kernels = Kernels()):
        super().__init__()
        self.kernels = kernels
        self.linear_fc1 = nn.Linear(args.hidden_size, args.intermediate_size, bias=True)
        self.linear_fc2 = nn.Linear(args.intermediate_size, args.hidden_size, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        x = self.linear_fc1(x)
        # the config's gelu_pytorch_tanh, 0.5 x (1 + tanh(z)), written as x / (1 + exp(-2z)): the same function,
        # with an exp that can run in numpy (MLX's CPU tanh and exp are scalar on x86: 8x slower here)
        z = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        return self.linear_fc2(x / (1 + self.kernels.exp(-2 * z)))


class VisionBlock(nn.Module):
    def __init__(self, args: VisionArgs, kernels: Kernels = Kernels()):
        super().__init__()
        self.norm1 = nn.LayerNorm(args.hidden_size, eps=1e-6)
        self.norm2 = nn.LayerNorm(args.hidden_size, eps=1e-6)
        self.attn = VisionAttention(args, kernels)
        self.mlp = VisionMLP(args, kernels)

    def __call__(self, x: mx.array, cos: mx.array, sin: mx.array, bounds: list) -> mx.array:
        x = x + self.attn(self.norm1(x), cos, sin, bounds)
        return x + self.mlp(self.norm2(x))


class PatchMerger(nn.Module):
    """2x2 patches (4 consecutive rows) -> one LLM token. The main merger norms each patch before the merge;
    the deepstack mergers norm the merged 4x-wide vector (`postshuffle`)."""

    def __init__(self, args: VisionArgs, postshuffle: bool):
        super().__init__()
        self.width = args.hidden_size * args.spatial_merge_size ** 2
        self.postshuffle = postshuffle
        self.norm = nn.LayerNorm(self.width if postshuffle else args.hidden_size, eps=1e-6)
        self.linear_fc1 = nn.Linear(self.width, self.width, bias=True)
        self.linear_fc2 = nn.Linear(self.width, args.out_hidden_size, bias=True)

    def __call__(self, x: mx.array) -> mx.array:
        """x (N, D) -> (N / 4, out_hidden_size)."""
        x = self.norm(x.reshape(-1, self.width)) if self.postshuffle else self.norm(x).reshape(-1, self.width)
        return self.linear_fc2(nn.gelu(self.linear_fc1(x)))  # exact GELU here (nn.GELU() in the reference)


class Vision(nn.Module):
    """Attribute names are the checkpoint's keys under `model.visual.`."""

    def __init__(self, args: VisionArgs, kernels: Kernels = Kernels()):
        super().__init__()
        self.args = args
        self.patch_embed = PatchEmbed(args)
        self.pos_embed = nn.Embedding(args.num_position_embeddings, args.hidden_size)
        self.blocks = [VisionBlock(args, kernels) for _ in range(args.depth)]
        self.merger = PatchMerger(args, postshuffle=False)
        self.deepstack_merger_list = [PatchMerger(args, postshuffle=True) for _ in args.deepstack_visual_indexes]

    def __call__(self, pixels: mx.array, grids: list) -> tuple[mx.array, list]:
        """pixels (N, C * t * p * p) of several images/videos in order, grids [(t, h, w), ...] ->
        (N / 4, out) LLM tokens and one (N / 4, out) deepstack feature per deepstack layer."""
        taps, weights, rotary, bounds = self._layout(grids)
        x = self.patch_embed(pixels.astype(self.pos_embed.weight.dtype))
        # the learned 48 x 48 position table, interpolated bilinearly to each image's patch grid
        x = x + (self.pos_embed(mx.array(taps)) * mx.array(weights)[..., None].astype(x.dtype)).sum(axis=1)
        cos, sin = mx.array(np.cos(rotary))[None], mx.array(np.sin(rotary))[None]  # (1, N, hd): for every head
        deepstack = []
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, bounds)
            if i in self.args.deepstack_visual_indexes:
                deepstack.append(self.deepstack_merger_list[self.args.deepstack_visual_indexes.index(i)](x))
        return self.merger(x), deepstack

    def _layout(self, grids: list):
        """Per patch row: the 4 position-table taps and weights, the 2-D rotary angles; per frame: its rows."""
        a = self.args
        side = int(round(a.num_position_embeddings ** 0.5))
        m = a.spatial_merge_size
        head_dim = a.hidden_size // a.num_heads
        inv_freq = 1.0 / (a.rope_theta ** (np.arange(0, head_dim // 2, 2, dtype=np.float32) / (head_dim // 2)))
        taps, weights, angles, bounds, start = [], [], [], [], 0
        for t, h, w in grids:
            # row/column of each patch, in merge-block order (block row, block column, row in block, column)
            blocks = np.zeros((h // m, w // m, m, m), dtype=np.int64)
            rows = (blocks + np.arange(h // m).reshape(-1, 1, 1, 1) * m + np.arange(m).reshape(-1, 1)).reshape(-1)
            cols = (blocks + np.arange(w // m).reshape(1, -1, 1, 1) * m + np.arange(m).reshape(1, 1, 1, -1)).reshape(-1)
            h_taps, h_weights = _bilinear(rows, h, side)
            w_taps, w_weights = _bilinear(cols, w, side)
            frame_taps = (h_taps[:, :, None] * side + w_taps[:, None, :]).reshape(-1, 4)
            frame_weights = (h_weights[:, :, None] * w_weights[:, None, :]).reshape(-1, 4)
            freqs = np.concatenate([rows[:, None] * inv_freq, cols[:, None] * inv_freq], axis=1).astype(np.float32)
            for _ in range(t):
                taps.append(frame_taps)
                weights.append(frame_weights)
                angles.append(np.concatenate([freqs, freqs], axis=1))
                bounds.append((start, start + h * w))
                start += h * w
        return (np.concatenate(taps).astype(np.int32), np.concatenate(weights).astype(np.float32),
                np.concatenate(angles), bounds)


def _bilinear(index: np.ndarray, size: int, side: int) -> tuple[np.ndarray, np.ndarray]:
    """Two taps into a `side`-long table and their weights for `index` on an axis of `size` (align_corners)."""
    src = index.astype(np.float32) * np.float32(side - 1) / np.float32(max(size - 1, 1))
    floor = np.floor(src)
    taps = floor[:, None].astype(np.int64) + np.arange(2)
    weights = np.clip(1 - np.abs(src[:, None] - taps), 0, None)
    return np.clip(taps, 0, side - 1), weights.astype(np.float32)


# ---------------------------------------------------------------------------------------------- decoder

class MRows(Rows):
    """Rows whose tokens carry Qwen3-VL's rotary angles: cos and sin (B, L, head_dim) in the padded layout."""

    def __init__(self, lengths, L: int, cos: mx.array, sin: mx.array, pack: Optional[bool] = None):
        super().__init__(lengths, L, pack)
        self.cos, self.sin = cos, sin
        lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
        # where row (b, column j) of the padded layout sits among the token rows: starts[b] + j
        self.starts = np.cumsum(lengths) - lengths if self.packed else np.arange(self.B) * self.L


class MRoPEAttention(Attention):
    """Qwen3's attention; rotary angles come from each token's 3-axis position, not from its column (so rows.offset,
    a shared prefix's length, is already in them)."""

    def rotate(self, x: mx.array, rows: Rows, last: bool = False) -> mx.array:
        cos, sin = rows.cos, rows.sin
        if last:
            cos = mx.take_along_axis(cos, rows.positions.reshape(-1, 1, 1), axis=1)
            sin = mx.take_along_axis(sin, rows.positions.reshape(-1, 1, 1), axis=1)
        cos, sin = cos[:, None].astype(x.dtype), sin[:, None].astype(x.dtype)
        return x * cos + rotate_half(x) * sin


class VLBlock(Block):
    def __init__(self, args: ModelArgs, kernels: Kernels = Kernels()):
        super().__init__(args, kernels)
        self.self_attn = MRoPEAttention(args, kernels)


class TextModel(Qwen3):
    """Qwen3's decoder with multimodal rotary positions; vision tokens and deepstack features are added in."""

    def __init__(self, args: ModelArgs, kernels: Kernels = Kernels()):
        super().__init__(args, kernels)
        self.layers = [VLBlock(args, kernels) for _ in range(args.num_hidden_layers)]

    def forward(self, input_ids: mx.array, rows: MRows, visual: Optional[tuple] = None, *, last: bool = False,
                keep: Optional[int] = None, checkpoint: bool = False,
                cache: Optional[list[PrefixCache]] = None) -> mx.array:
        """input_ids (B, L) right-padded -> final-normed hidden states as (T, D) rows, or with `last` each
        item's last token (B, D). visual: (visual_rows (V,), tokens (V, D), deepstack [(V, D), ...]) with the
        token rows of the image/video placeholders. keep=k: the hidden states after k blocks instead (0: the
        embeddings), not normed, with deepstack added only after block k (as transformers reports them).
        checkpoint: each block recomputed in the backward pass (DWQ training). cache: as Qwen3.blocks' (a
        shared prefix's keys and values; the rows' rotary angles then hold the positions after it)."""
        h = self.embed_tokens(rows.pack(input_ids))
        after = None
        if visual is not None:
            where, tokens, deepstack = visual
            h[where] = tokens.astype(h.dtype)

            def after(i: int, h: mx.array) -> mx.array:
                if i < len(deepstack) and not (keep is not None and i == keep - 1):
                    return h.at[where].add(deepstack[i].astype(h.dtype))
                return h
        h = self.blocks(h, rows, last=last, stop=keep, checkpoint=checkpoint, after=after, cache=cache)
        return self.norm(h) if keep is None else h


class Qwen3VL(nn.Module):
    """Attribute names are the checkpoint's keys (without `model.`): `visual.*`, `language_model.*`."""

    def __init__(self, args: VLArgs, kernels: Kernels = Kernels()):
        super().__init__()
        self.args = args
        self.visual = Vision(args.vision, kernels)
        self.language_model = TextModel(args.text, kernels)

    def rotary(self, positions: np.ndarray) -> tuple[mx.array, mx.array]:
        """positions (3, B, L) time/height/width -> cos, sin (B, L, head_dim), frequencies interleaved: height
        at indices 1::3 and width at 2::3 of the first 3 x section, time everywhere else."""
        head_dim = self.args.text.head_dim
        inv_freq = 1.0 / (self.args.text.rope_theta ** (np.arange(0, head_dim, 2, dtype=np.float32) / head_dim))
        freqs = positions[..., None].astype(np.float32) * inv_freq.astype(np.float32)  # (3, B, L, hd/2)
        angles = freqs[0].copy()
        for axis in (1, 2):
            span = slice(axis, 3 * self.args.mrope_section[axis], 3)
            angles[..., span] = freqs[axis][..., span]
        angles = np.concatenate([angles, angles], axis=-1)
        return mx.array(np.cos(angles)), mx.array(np.sin(angles))
