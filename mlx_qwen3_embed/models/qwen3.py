"""The Qwen3 decoder up to its final norm: token ids in, hidden states out. No lm_head: embeddings need none."""

from dataclasses import dataclass
from typing import Callable, Optional

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from .args import ModelArgs


PACK_MIN_PADDING = 0.05  # pack a batch's tokens when over this fraction of its padded positions are padding
CHUNK = 64  # query rows per attention call on CPU; measured best of 32/64/128/all at L=256


def host_exp(x: mx.array) -> mx.array:
    """exp(x) by numpy's SIMD kernel. Reading x evaluates it, so: inference only (no autodiff, no mx.compile)."""
    values = np.asarray(x if x.dtype == mx.float32 else x.astype(mx.float32))  # numpy has no bfloat16
    with np.errstate(over="ignore"):  # exp(-g) of a very negative SwiGLU gate is inf, as it should be
        return mx.array(np.exp(values)).astype(x.dtype)


@dataclass(frozen=True)
class Kernels:
    """How attention and exp run. The defaults are MLX's own ops (any device, differentiable); device.py picks
    faster ones for the CPU backend, where it measured them."""
    chunked_attention: bool = False  # causal attention in blocks of CHUNK queries (skips the masked triangle)
    host_exp: bool = False           # exp of SwiGLU and of the attention softmax by numpy: inference only

    @property
    def exp(self):
        return host_exp if self.host_exp else mx.exp

    def describe(self) -> str:
        """One line for `bench` and `info`, e.g. "attention in blocks of 64 queries, exp through numpy"."""
        attention = f"attention in blocks of {CHUNK} queries" if self.chunked_attention else "MLX fused attention"
        return f"{attention}, exp through {'numpy' if self.host_exp else 'MLX'}"


def causal_attention(q: mx.array, k: mx.array, v: mx.array, scale: float,
                     kernels: Kernels = Kernels()) -> mx.array:
    """q (B, H, L, hd), k and v (B, KV, S + L, hd) -> (B, H, L, hd), causal: the L queries are the last L
    positions, so each sees all S keys before them (a shared prefix's, S = 0 without one) and its own up to itself.

    With chunked_attention, in blocks of CHUNK queries, each against only the keys up to its own end: the
    masked upper triangle is then mostly never computed (on CPU the softmax's exp costs as much as the matmul).
    """
    L = q.shape[2]
    S = k.shape[2] - L
    if not kernels.chunked_attention or L <= CHUNK:
        return _attend(q, k, v, scale, kernels)
    # k and v arrive transposed (B, L, KV, hd -> B, KV, L, hd): copied once here, not by every block's matmul
    # (one 1,221-token pair, 3 alternating rounds: 16.0/17.7/13.1 s before, 13.2/14.5/12.9 s after); a no-op for
    # the already contiguous keys of a shared prefix (PrefixCache's concatenation)
    k, v = mx.contiguous(k), mx.contiguous(v)
    blocks = []
    for start in range(0, L, CHUNK):
        end = min(start + CHUNK, L)
        blocks.append(_attend(q[:, :, start:end], k[:, :, :S + end], v[:, :, :S + end], scale, kernels))
    return mx.concatenate(blocks, axis=2)


def _attend(q: mx.array, k: mx.array, v: mx.array, scale: float, kernels: Kernels) -> mx.array:
    """Causal attention of the last Lq of Lk positions (q (B, H, Lq, hd); k, v (B, KV, Lk, hd)): the mask is
    aligned to the bottom right, as MLX's "causal" mask is when there are more keys than queries. MLX's fused
    kernel, unless exp must be the host's (its softmax is then written out)."""
    if not kernels.host_exp:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
    B, H, Lq, hd = q.shape
    KV, Lk = k.shape[1], k.shape[2]
    scores = (q * scale).reshape(B, KV, H // KV, Lq, hd) @ k[:, :, None].swapaxes(-1, -2)
    scores = mx.where(mx.arange(Lk)[None, :] <= mx.arange(Lk - Lq, Lk)[:, None], scores, -mx.inf)
    weights = host_exp(scores - scores.max(axis=-1, keepdims=True))  # each query sees itself: the max is finite
    return ((weights / weights.sum(axis=-1, keepdims=True)) @ v[:, :, None]).reshape(B, H, Lq, hd)


def _index(values: np.ndarray) -> mx.array:
    return mx.array(values.reshape(-1).astype(np.int32))


class Rows:
    """Where the tokens of B right-padded texts sit, for blocks that work on a (T, ...) matrix of token rows.

    Projections, norms and the MLP (nearly all the FLOPs) act on each token alone, so they need no padding: when
    a batch's padding is worth skipping, its T real tokens are packed into T rows, and only attention sees the
    padded (B, L, ...) layout (`pad`, then `pack` back). Otherwise rows are the B*L padded positions as they are
    (reshapes only). Either way a real token's result is the same: right padding plus the causal mask means no
    real token ever attends to what sits after it (pads that `pad` fills with copies of each text's last token).

    offset: the tokens before column 0, a prefix the B texts share whose keys and values come from a PrefixCache;
    column j sits at position offset + j.
    """

    def __init__(self, lengths, L: Optional[int] = None, pack: Optional[bool] = None, offset: int = 0):
        lengths = np.asarray(lengths, dtype=np.int32).reshape(-1)
        self.B, self.L = len(lengths), int(L if L is not None else lengths.max())
        self.offset = offset
        padding = self.B * self.L - int(lengths.sum())
        # the gathers cost a few % of a forward pass: pack only when padding costs more
        self.packed = bool(padding > PACK_MIN_PADDING * self.B * self.L if pack is None else pack)
        starts = np.cumsum(lengths) - lengths if self.packed else np.arange(self.B) * self.L
        self.positions = _index(lengths - 1)  # each text's last position in its padded row
        self.last = _index(starts + lengths - 1)  # each text's last token among the rows
        if self.packed:
            columns = np.arange(self.L)[None, :]
            self._pack = _index((np.arange(self.B)[:, None] * self.L + columns)[columns < lengths[:, None]])
            self._pad = _index(starts[:, None] + np.minimum(columns, lengths[:, None] - 1))

    @classmethod
    def full(cls, B: int, L: int) -> "Rows":
        """Every one of the B x L positions is a token (no padding to skip)."""
        return cls(np.full(B, L), L, pack=False)

    def pack(self, x: mx.array) -> mx.array:
        """(B, L, ...) padded -> (T, ...) rows."""
        x = x.reshape(self.B * self.L, *x.shape[2:])
        return mx.take(x, self._pack, axis=0) if self.packed else x

    def pad(self, x: mx.array) -> mx.array:
        """(T, ...) rows -> (B, L, ...) padded."""
        if self.packed:
            x = mx.take(x, self._pad, axis=0)
        return x.reshape(self.B, self.L, *x.shape[1:])


class PrefixCache:
    """One layer's keys and values of a token prefix that a batch's texts all start with (mlx-lm's cache idiom).

    The prefix's own pass (B = 1) fills it; each batch that continues the prefix then gets the prefix's keys and
    values in front of its own. Identical token prefixes give identical keys and values (causal attention: a
    token never sees what follows it), so this is exact. Memory: 2 (keys, values) x num_key_value_heads x
    head_dim x the dtype's bytes per prefix token per layer, e.g. 8 KiB in float32 for Qwen3-0.6B's 8 x 128.
    """

    def __init__(self):
        self.keys = self.values = None

    @property
    def offset(self) -> int:
        """The prefix's length in tokens (0 until its pass has run)."""
        return 0 if self.keys is None else self.keys.shape[2]

    def update_and_fetch(self, keys: mx.array, values: mx.array) -> tuple[mx.array, mx.array]:
        """The prefix's pass: keys, values (1, KV, P, hd) are kept and returned. A continuation's (B, KV, L, hd)
        -> (B, KV, P + L, hd), the prefix's in front; they are not kept (each batch brings its own)."""
        if self.keys is None:
            self.keys, self.values = keys, values
            return keys, values
        B = keys.shape[0]
        keys = mx.concatenate([mx.broadcast_to(self.keys, (B, *self.keys.shape[1:])), keys], axis=2)
        values = mx.concatenate([mx.broadcast_to(self.values, (B, *self.values.shape[1:])), values], axis=2)
        return keys, values


class Attention(nn.Module):
    def __init__(self, args: ModelArgs, kernels: Kernels = Kernels()):
        super().__init__()
        self.kernels = kernels
        self.n_heads = args.num_attention_heads
        self.n_kv_heads = args.num_key_value_heads
        head_dim = args.head_dim
        self.scale = head_dim**-0.5
        self.q_proj = nn.Linear(args.hidden_size, self.n_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(args.hidden_size, self.n_kv_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(args.hidden_size, self.n_kv_heads * head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * head_dim, args.hidden_size, bias=False)
        # Qwen3 normalises each head of q and k before RoPE
        self.q_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
        self.k_norm = nn.RMSNorm(head_dim, eps=args.rms_norm_eps)
        self.rope = nn.RoPE(head_dim, traditional=False, base=args.rope_theta)

    def rotate(self, x: mx.array, rows: Rows, last: bool = False) -> mx.array:
        """RoPE on x (B, heads, L, hd) at each column, or with `last` on each text's last query (B, heads, 1, hd),
        both after rows.offset prefix tokens. The seam for Qwen3-VL, whose tokens carry 3-axis positions instead."""
        if last:
            return self.rope(x, offset=rows.positions + rows.offset)
        return self.rope(x, offset=rows.offset)

    def __call__(self, x: mx.array, rows: Rows, last: bool = False,
                 cache: Optional[PrefixCache] = None) -> mx.array:
        """x (T, D) token rows -> (T, D); with `last`, only each text's last token's query: -> (B, D).
        cache: a shared prefix's keys and values, which every query also sees (or, empty, where to keep them)."""
        T = x.shape[0]
        # RoPE in the padded layout: a token's position is its column there (after the prefix)
        k = self.rotate(rows.pad(self.k_norm(self.k_proj(x).reshape(T, self.n_kv_heads, -1))).transpose(0, 2, 1, 3), rows)
        v = rows.pad(self.v_proj(x).reshape(T, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)  # (B, KV, S + L, hd): the S prefix keys first
        if not last:
            q = self.rotate(rows.pad(self.q_norm(self.q_proj(x).reshape(T, self.n_heads, -1))).transpose(0, 2, 1, 3), rows)
            out = causal_attention(q, k, v, self.scale, self.kernels)
            return self.o_proj(rows.pack(out.transpose(0, 2, 1, 3)).reshape(T, -1))
        B, L = rows.B, rows.L
        S = k.shape[2] - L
        q = self.q_norm(self.q_proj(mx.take(x, rows.last, axis=0)).reshape(B, 1, self.n_heads, -1))
        q = self.rotate(q.transpose(0, 2, 1, 3), rows, last=True)  # each text's query at its own position
        # one query per text: it sees the prefix and its keys up to itself, (B, 1, 1, S + L), never the pads after it
        mask = (mx.arange(S + L)[None, :] <= (rows.positions + S)[:, None]).reshape(B, 1, 1, S + L)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.reshape(B, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs, kernels: Kernels = Kernels()):
        super().__init__()
        self.kernels = kernels
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate = self.gate_proj(x)
        # SwiGLU; silu(g) written as g / (1 + exp(-g)): MLX's CPU exp kernel beats its sigmoid (+3-6% end to end)
        return self.down_proj(gate / (1 + self.kernels.exp(-gate)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs, kernels: Kernels = Kernels()):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.self_attn = Attention(args, kernels)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.mlp = MLP(args, kernels)

    def __call__(self, x: mx.array, rows: Optional[Rows] = None, last: bool = False,
                 cache: Optional[PrefixCache] = None) -> mx.array:
        """x (T, D) token rows laid out by `rows` -> (T, D), or with `last` each text's last token: (B, D).

        Without `rows`, x is (B, L, D) and every position is a token: -> (B, L, D). cache: as Attention's.
        """
        if rows is None:
            B, L, D = x.shape
            return self(x.reshape(B * L, D), Rows.full(B, L)).reshape(B, L, D)
        residual = mx.take(x, rows.last, axis=0) if last else x
        h = residual + self.self_attn(self.input_layernorm(x), rows, last, cache)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen3(nn.Module):
    """Attribute names are the checkpoint's keys (without `model.`), so weights load with no renaming."""

    def __init__(self, args: ModelArgs, kernels: Kernels = Kernels()):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [Block(args, kernels) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, input_ids: mx.array, lengths=None) -> mx.array:
        """input_ids (B, L) right-padded, lengths (B,) (default: all L) -> final-normed hidden states (B, L, D).

        Positions past a text's length hold no token of it (with `lengths`: copies of its last token's state).
        """
        rows = Rows(lengths, input_ids.shape[1]) if lengths is not None else Rows.full(*input_ids.shape)
        h = self.embed_tokens(rows.pack(input_ids))
        return rows.pad(self.norm(self.blocks(h, rows)))

    def last_token(self, input_ids: mx.array, lengths, cache: Optional[list[PrefixCache]] = None) -> mx.array:
        """input_ids (B, L) right-padded, lengths (B,) -> final-normed hidden state of each last token (B, D).

        Equal to `self(input_ids)` taken at lengths-1, cheaper: every token's keys and values are needed in each
        block, but the final block's query, output projection and MLP only at the pooled token.
        cache: a filled prefix (`prefix`) that each of the B texts continues: input_ids then hold only what
        follows it, at positions P..P+L-1, and the result equals the whole texts' (prefix + input_ids).
        """
        rows = Rows(lengths, input_ids.shape[1], offset=cache[0].offset if cache else 0)
        h = self.embed_tokens(rows.pack(input_ids))
        return self.norm(self.blocks(h, rows, last=True, cache=cache))

    def prefix(self, input_ids: mx.array) -> list[PrefixCache]:
        """input_ids (1, P): a prefix that several texts share -> one filled PrefixCache per layer, evaluated.
        Its final block runs at the last token only: what the continuations need of it are its keys and values."""
        cache = [PrefixCache() for _ in self.layers]
        self.last_token(input_ids, [input_ids.shape[1]], cache)
        mx.eval([(c.keys, c.values) for c in cache])
        return cache

    def blocks(self, h: mx.array, rows: Optional[Rows], *, last: bool = False, stop: Optional[int] = None,
               checkpoint: bool = False, after: Optional[Callable[[int, mx.array], mx.array]] = None,
               cache: Optional[list[PrefixCache]] = None) -> mx.array:
        """The decoder loop, the one every caller runs: embeddings h (T, D) laid out by `rows` (None: (B, L, D),
        every position a token) -> the states after the blocks, not normed.

        last: the final block only at each text's last token (-> (B, D)). stop=k: only the first k blocks.
        checkpoint: each block recomputed in the backward pass (training: memory for one block's activations).
        after(i, h): applied after block i (Qwen3-VL adds its deepstack features there).
        cache: one PrefixCache per layer, of a prefix shared by the texts (or empty: filled by this pass).
        """
        layers = self.layers if stop is None else self.layers[:stop]
        for i, layer in enumerate(layers):
            if checkpoint:
                def block(params, x, layer=layer):
                    layer.update(params)
                    return layer(x, rows)
                h = mx.checkpoint(block)(layer.trainable_parameters(), h)
            else:
                h = layer(h, rows, last=last and stop is None and i == len(layers) - 1,
                          cache=None if cache is None else cache[i])
            if after is not None:
                h = after(i, h)
        return h
