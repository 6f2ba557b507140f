"""Attention over a prefix shared by every row of a batch, its keys and values stored once.

When every row of a batch starts with the same tokens (the constitution's few-shot block), a plain KV cache holds
one copy of that prefix per row, and each decoding step reads all the copies. Here the prefix's keys and values stay
a single batch-1 tensor that every row attends to through broadcasting, next to the row's own cache:

    s_prefix = q K_prefix^T * scale,  s_own = q K_own^T * scale + mask,  m = max(s_prefix, s_own)
    out = (exp(s_prefix - m) V_prefix + exp(s_own - m) V_own) / (sum exp(s_prefix - m) + sum exp(s_own - m))

which is softmax attention over the concatenated keys, computed without building the concatenation (the idea of
"cascade" or "shared-prefix" attention kernels; here in plain torch). Grouped-query heads and the batch are folded
into the query rows of the prefix matmul, so the prefix is read once per step, not once per row and head.

    with shared_prefix(model) as attend:          # None when the model's attention is not plain softmax attention
        model(ids, attention_mask=mask_4d, position_ids=..., cache=own_cache, shared_prefix=prefix_cache)
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

NAME = "rlaif_shared_prefix"

# Decoder families whose attention is exactly softmax(q k^T * scaling + mask) v with grouped-query heads: no logit
# soft-capping, sinks or sliding windows that this function would ignore.
SUPPORTED = {"llama", "mistral", "qwen2", "qwen3", "olmo", "olmo2", "granite", "phi3", "smollm3"}


def shared_prefix_attention(module, query, key, value, attention_mask, dropout: float = 0.0,
                            scaling: float | None = None, shared_prefix=None, **kwargs):
    """An attention function for transformers' AttentionInterface.

    query: (B, H, q, D); key, value: (B, H_kv, T, D), the rows' own cache; attention_mask: (B, 1, q, T) additive;
    shared_prefix: a batch-1 cache whose layer `module.layer_idx` holds (1, H_kv, P, D) keys and values.
    Returns (B, q, H, D) and no weights."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if shared_prefix is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    layer = shared_prefix.layers[module.layer_idx]
    batch, heads, q_len, dim = query.shape
    kv_heads = key.shape[1]
    if q_len > 8:  # a long query block (prefill): copying the prefix is cheap next to it, and SDPA's kernel wins
        keys = torch.cat([layer.keys.expand(batch, -1, -1, -1), key], dim=2)
        values = torch.cat([layer.values.expand(batch, -1, -1, -1), value], dim=2)
        if attention_mask is not None:
            visible = attention_mask.new_zeros(batch, 1, q_len, layer.keys.shape[2])
            attention_mask = torch.cat([visible, attention_mask], dim=-1)
        return sdpa_attention_forward(module, query, keys, values, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    rows = heads // kv_heads * q_len  # grouped query heads folded into the query length: head h reads kv head h // g
    scaling = dim**-0.5 if scaling is None else scaling
    q = query.reshape(batch, kv_heads, rows, dim)
    own = torch.matmul(q, key.transpose(-1, -2)).float() * scaling  # (B, H_kv, rows, T)
    if attention_mask is not None:
        groups = heads // kv_heads
        mask = attention_mask[:, :, None].expand(batch, 1, groups, q_len, attention_mask.shape[-1])
        own = own + mask.reshape(batch, 1, rows, -1)
    # The prefix part as one matmul per kv head, the batch folded into the rows: no per-row copy of the prefix.
    folded = q.transpose(0, 1).reshape(kv_heads, batch * rows, dim)
    prefix = torch.bmm(folded, layer.keys[0].transpose(-1, -2)).float() * scaling  # (H_kv, B * rows, P)
    prefix = prefix.reshape(kv_heads, batch, rows, -1).transpose(0, 1)  # (B, H_kv, rows, P), a view
    # softmax over [prefix, own] without concatenating: shared maximum, summed normalisers.
    top = torch.maximum(own.amax(-1, keepdim=True), prefix.amax(-1, keepdim=True))
    e_own, e_prefix = torch.exp(own - top), torch.exp(prefix - top)
    total = e_own.sum(-1, keepdim=True) + e_prefix.sum(-1, keepdim=True)
    e_prefix = e_prefix.transpose(0, 1).reshape(kv_heads, batch * rows, -1).to(query.dtype)
    out = torch.matmul(e_own.to(query.dtype), value).float() + \
        torch.bmm(e_prefix, layer.values[0]).reshape(kv_heads, batch, rows, dim).transpose(0, 1).float()
    out = (out / total).to(query.dtype)
    return out.reshape(batch, heads, q_len, dim).transpose(1, 2).contiguous(), None


@contextmanager
def shared_prefix(model):
    """Switch `model` to shared-prefix attention for the block; yields False (and changes nothing) if the model's
    family is not known to use plain softmax attention, in which case the caller repeats the prefix per row."""
    from transformers import AttentionInterface

    config = model.config
    if config.model_type not in SUPPORTED or config._attn_implementation not in ("sdpa", "eager"):
        yield False
        return
    AttentionInterface.register(NAME, shared_prefix_attention)
    before = config._attn_implementation
    config._attn_implementation = NAME
    try:
        yield True
    finally:
        config._attn_implementation = before


def additive_mask(mask: torch.Tensor, q_len: int, dtype: torch.dtype) -> torch.Tensor:
    """A (B, T) 0/1 mask of real columns -> the (B, 1, q, T) additive mask of the last q columns' queries: each sees
    the real columns up to itself. Masked entries get the dtype's lowest value, not -inf, so a padding query that
    sees nothing stays finite."""
    total = mask.shape[1]
    causal = torch.ones(q_len, total, dtype=torch.bool, device=mask.device).tril(total - q_len)
    allowed = causal[None, None] & mask[:, None, None, :].bool()
    return torch.zeros(allowed.shape, dtype=dtype, device=mask.device).masked_fill(~allowed, torch.finfo(dtype).min)
