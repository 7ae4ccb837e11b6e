"""The Qwen3 decoder up to its final norm: token ids in, hidden states out. No lm_head: embeddings need none."""

from typing import Optional

import mlx.core as mx
import mlx.nn as nn

from .config import ModelArgs


CHUNK = 64  # query rows per attention call on CPU; measured best of 32/64/128/all at L=256


def causal_attention(q: mx.array, k: mx.array, v: mx.array, scale: float) -> mx.array:
    """q (B, H, L, hd), k and v (B, KV, L, hd) -> (B, H, L, hd), causal.

    In blocks of CHUNK queries, each against only the keys up to its own end: the masked upper triangle is
    then mostly never computed (on CPU the softmax's exp is single-threaded and costs as much as the matmul).
    MLX aligns a "causal" mask to the bottom right when there are more keys than queries, as needed here.
    """
    L = q.shape[2]
    if L <= CHUNK or mx.default_device() != mx.cpu:
        return mx.fast.scaled_dot_product_attention(q, k, v, scale=scale, mask="causal")
    blocks = []
    for start in range(0, L, CHUNK):
        end = min(start + CHUNK, L)
        blocks.append(mx.fast.scaled_dot_product_attention(q[:, :, start:end], k[:, :, :end], v[:, :, :end],
                                                           scale=scale, mask="causal"))
    return mx.concatenate(blocks, axis=2)


class Attention(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
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

    def __call__(self, x: mx.array, last: Optional[mx.array] = None) -> mx.array:
        """x (B, L, D) -> (B, L, D); with `last` (B,) positions, only those tokens' queries: -> (B, 1, D)."""
        B, L, D = x.shape
        k = self.k_norm(self.k_proj(x).reshape(B, L, self.n_kv_heads, -1)).transpose(0, 2, 1, 3)
        v = self.v_proj(x).reshape(B, L, self.n_kv_heads, -1).transpose(0, 2, 1, 3)
        k = self.rope(k)
        if last is None:
            q = self.q_norm(self.q_proj(x).reshape(B, L, self.n_heads, -1)).transpose(0, 2, 1, 3)
            q = self.rope(q)
            # Right padding + causal mask: real tokens never see the pads after them, so no padding mask is needed
            out = causal_attention(q, k, v, self.scale)
            return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, L, -1))
        x = mx.take_along_axis(x, last.reshape(B, 1, 1), axis=1)
        q = self.q_norm(self.q_proj(x).reshape(B, 1, self.n_heads, -1)).transpose(0, 2, 1, 3)
        q = self.rope(q, offset=last)  # each text's query sits at its own position
        # one query per text: it sees the keys up to itself, (B, 1, 1, L), never the pads after it
        mask = (mx.arange(L)[None, :] <= last[:, None]).reshape(B, 1, 1, L)
        out = mx.fast.scaled_dot_product_attention(q, k, v, scale=self.scale, mask=mask)
        return self.o_proj(out.transpose(0, 2, 1, 3).reshape(B, 1, -1))


class MLP(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.gate_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.up_proj = nn.Linear(args.hidden_size, args.intermediate_size, bias=False)
        self.down_proj = nn.Linear(args.intermediate_size, args.hidden_size, bias=False)

    def __call__(self, x: mx.array) -> mx.array:
        gate = self.gate_proj(x)
        # SwiGLU; silu(g) written as g / (1 + exp(-g)): MLX's CPU exp kernel beats its sigmoid (+3-6% end to end)
        return self.down_proj(gate / (1 + mx.exp(-gate)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, args: ModelArgs):
        super().__init__()
        self.input_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.self_attn = Attention(args)
        self.post_attention_layernorm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)
        self.mlp = MLP(args)

    def __call__(self, x: mx.array, last: Optional[mx.array] = None) -> mx.array:
        """x (B, L, D) -> (B, L, D); with `last` (B,) positions, only those tokens: -> (B, 1, D)."""
        residual = x if last is None else mx.take_along_axis(x, last.reshape(-1, 1, 1), axis=1)
        h = residual + self.self_attn(self.input_layernorm(x), last)
        return h + self.mlp(self.post_attention_layernorm(h))


class Qwen3(nn.Module):
    """Attribute names are the checkpoint's keys (without `model.`), so weights load with no renaming."""

    def __init__(self, args: ModelArgs):
        super().__init__()
        self.args = args
        self.embed_tokens = nn.Embedding(args.vocab_size, args.hidden_size)
        self.layers = [Block(args) for _ in range(args.num_hidden_layers)]
        self.norm = nn.RMSNorm(args.hidden_size, eps=args.rms_norm_eps)

    def __call__(self, input_ids: mx.array) -> mx.array:
        """input_ids (B, L) right-padded -> final-normed hidden states (B, L, D)."""
        h = self.embed_tokens(input_ids)
        for layer in self.layers:
            h = layer(h)
        return self.norm(h)

    def last_token(self, input_ids: mx.array, lengths: mx.array) -> mx.array:
        """input_ids (B, L) right-padded, lengths (B,) -> final-normed hidden state of each last token (B, D).

        Equal to `self(input_ids)` taken at lengths-1, cheaper: every token's keys and values are needed in each
        block, but the final block's query, output projection and MLP only at the pooled token.
        """
        h = self.embed_tokens(input_ids)
        for layer in self.layers[:-1]:
            h = layer(h)
        return self.norm(self.layers[-1](h, lengths - 1)[:, 0])
