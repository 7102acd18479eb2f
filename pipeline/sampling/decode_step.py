"""The cb engine's decode step for Llama-family models (Llama, SmolLM2, Qwen2), written out as the
operations transformers runs, without its module machinery.

Why: on the toy models a decode step's arithmetic is small (about 2.2 MFLOP per row), and a
forward through transformers' modules spends as long again in Python: module calls and hooks,
keyword plumbing, the attention-interface lookup, output dataclasses, per-layer cache updates
(benchmarks/RESULTS.md has the profile). This step runs the same operations on the same tensors
in the same order (embedding, RMSNorm in float32, q/k/v projections, RoPE from the model's own
rotary module, the cache write, SDPA over each block's columns, o-projection, the SiLU MLP, the
final norm and the LM head), so its logits equal the module forward's bit for bit
(tests/sampling/test_engine.py checks it on the toy base, float32 and bfloat16).

`step_for(lm)` returns the step when every module is the plain one this code re-implements
(a LoRA-wrapped projection, another attention or MLP class, or a non-SiLU activation gets None,
and the engine keeps the transformers forward).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

_ATTENTION = {"LlamaAttention", "Qwen2Attention"}
_MLP = {"LlamaMLP", "Qwen2MLP"}
_NORM = {"LlamaRMSNorm", "Qwen2RMSNorm"}


def step_for(lm):
    """The decode step for `lm`, or None when it is not a plain Llama-family model."""
    m = getattr(lm, "model", None)
    if m is None or not hasattr(m, "layers") or not isinstance(getattr(lm, "lm_head", None), torch.nn.Linear):
        return None
    c = lm.config.get_text_config()
    if getattr(c, "hidden_act", None) != "silu" or type(lm.lm_head) is not torch.nn.Linear:
        return None
    if type(m.norm).__name__ not in _NORM or type(m.embed_tokens) is not torch.nn.Embedding:
        return None
    for layer in m.layers:
        a, mlp = layer.self_attn, layer.mlp
        if type(a).__name__ not in _ATTENTION or type(mlp).__name__ not in _MLP:
            return None
        if {type(layer.input_layernorm).__name__, type(layer.post_attention_layernorm).__name__} - _NORM:
            return None
        if any(type(p) is not torch.nn.Linear for p in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, mlp.gate_proj,
                                                        mlp.up_proj, mlp.down_proj)):
            return None
    return decode


def _rms(x: torch.Tensor, norm) -> torch.Tensor:
    """transformers' LlamaRMSNorm: the variance in float32, the weight times the input's dtype."""
    dtype = x.dtype
    h = x.to(torch.float32)
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
    return norm.weight * h.to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _linear(x: torch.Tensor, p: torch.nn.Linear) -> torch.Tensor:
    return F.linear(x, p.weight, p.bias)


def decode(lm, batch, ids: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """One decode step over the rows of `batch`'s blocks (the engine's `_Batch`): ids and positions
    [rows, 1]; writes each layer's keys and values into the blocks at their column t; returns the
    next-token logits [rows, vocab]."""
    m = lm.model
    rows = ids.shape[0]
    h = m.embed_tokens(ids)  # [rows, 1, hidden], as the module forward keeps a sequence axis of 1
    cos, sin = m.rotary_emb(h, position_ids=pos)  # [rows, 1, head_dim]
    cos, sin = cos[:, None], sin[:, None]  # apply_rotary_pos_emb's unsqueeze_dim=1 against [rows, heads, 1, head_dim]
    for i, layer in enumerate(m.layers):
        a = layer.self_attn
        x = _rms(h, layer.input_layernorm)
        shape = (rows, 1, -1, a.head_dim)
        q = _linear(x, a.q_proj).view(shape).transpose(1, 2)
        k = _linear(x, a.k_proj).view(shape).transpose(1, 2)
        v = _linear(x, a.v_proj).view(shape).transpose(1, 2)
        q = (q * cos) + (_rotate_half(q) * sin)
        k = (k * cos) + (_rotate_half(k) * sin)
        heads, kv_heads, out, off = q.shape[1], k.shape[1], [], 0
        for b in batch.blocks:
            r = b.rows
            b.k[i][:, :, b.t] = k[off : off + r, :, 0]
            b.v[i][:, :, b.t] = v[off : off + r, :, 0]
            qb = q[off : off + r].reshape(r, kv_heads, heads // kv_heads, a.head_dim)
            att = F.scaled_dot_product_attention(qb, b.k[i][:, :, : b.t + 1], b.v[i][:, :, : b.t + 1],
                                                 attn_mask=b.mask[:, None, None, : b.t + 1], scale=a.scaling)
            out.append(att.reshape(r, 1, heads, a.head_dim))
            off += r
        att = (torch.cat(out) if len(out) > 1 else out[0]).reshape(rows, 1, -1).contiguous()
        h = h + _linear(att, a.o_proj)
        x = _rms(h, layer.post_attention_layernorm)
        mlp = layer.mlp
        h = h + _linear(F.silu(_linear(x, mlp.gate_proj)) * _linear(x, mlp.up_proj), mlp.down_proj)
    return _linear(_rms(h, m.norm), lm.lm_head)[:, -1]
