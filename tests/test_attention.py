"""Shared-prefix attention equals softmax attention over the prefix and the rows' own keys put together."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from rlaif.attention import additive_mask, shared_prefix, shared_prefix_attention


def test_matches_attention_over_concatenated_keys():
    torch.manual_seed(0)
    batch, heads, kv_heads, q_len, dim, n_prefix, n_own = 3, 6, 2, 4, 8, 5, 7
    query = torch.randn(batch, heads, q_len, dim)
    key, value = torch.randn(batch, kv_heads, n_own, dim), torch.randn(batch, kv_heads, n_own, dim)
    prefix = SimpleNamespace(keys=torch.randn(1, kv_heads, n_prefix, dim), values=torch.randn(1, kv_heads, n_prefix, dim))
    real = torch.ones(batch, n_own, dtype=torch.long)
    real[1, :2] = 0  # row 1 has padding in front of its own tokens
    mask = additive_mask(real, q_len, torch.float32)
    got, _ = shared_prefix_attention(SimpleNamespace(layer_idx=0), query, key, value, mask, scaling=0.3,
                                     shared_prefix=SimpleNamespace(layers=[prefix]))
    # Reference: every row gets its own copy of the prefix, heads repeat their kv head, plain softmax.
    keys = torch.cat([prefix.keys.expand(batch, -1, -1, -1), key], 2).repeat_interleave(heads // kv_heads, 1)
    values = torch.cat([prefix.values.expand(batch, -1, -1, -1), value], 2).repeat_interleave(heads // kv_heads, 1)
    full_mask = torch.cat([torch.zeros(batch, 1, q_len, n_prefix), mask], -1)
    weights = torch.softmax(query @ keys.transpose(-1, -2) * 0.3 + full_mask, -1)
    expected = (weights @ values).transpose(1, 2)
    assert got.shape == (batch, q_len, heads, dim)
    assert torch.allclose(got, expected, atol=1e-5)


def test_additive_mask_is_causal_over_the_last_queries():
    real = torch.tensor([[0, 1, 1, 1]])
    allowed = additive_mask(real, 2, torch.float32)[0, 0] == 0
    assert allowed.tolist() == [[False, True, True, False], [False, True, True, True]]


def test_other_model_families_keep_their_attention():
    model = SimpleNamespace(config=SimpleNamespace(model_type="gemma2", _attn_implementation="sdpa"))
    with shared_prefix(model) as shared:
        assert shared is False and model.config._attn_implementation == "sdpa"
    model = SimpleNamespace(config=SimpleNamespace(model_type="llama", _attn_implementation="sdpa"))
    with shared_prefix(model) as shared:
        assert shared is True and model.config._attn_implementation != "sdpa"
    assert model.config._attn_implementation == "sdpa"
