"""Grouped-query attention without copying the cache: the same outputs as Hugging Face's sdpa path."""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from pastac.backend import attention
from pastac.backend.attention import grouped_sdpa, packed_attention


@pytest.mark.parametrize("queries", [1, 2, 5])
@pytest.mark.parametrize("groups", [1, 3])
def test_stacked_groups_equal_the_expanded_cache(monkeypatch, queries, groups):
    g = torch.Generator().manual_seed(queries * 10 + groups)
    kv_heads, ctx, dim = 2, 37, 16
    module = types.SimpleNamespace(num_key_value_groups=groups, training=False)
    q = torch.randn(1, kv_heads * groups, queries, dim, generator=g)
    k, v = torch.randn(2, 1, kv_heads, ctx, dim, generator=g)
    allowed = torch.rand(queries, ctx, generator=g) < 0.7
    allowed[:, 0] = True
    mask = torch.zeros(1, 1, queries, ctx).masked_fill(~allowed, torch.finfo(torch.float32).min)
    expected, _ = sdpa_attention_forward(module, q, k, v, mask, scaling=dim**-0.5)
    keys_seen = []
    real = F.scaled_dot_product_attention

    def spy(query, key, *args, **kwargs):
        keys_seen.append(key.shape[1])
        return real(query, key, *args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    with packed_attention():
        got, _ = grouped_sdpa(module, q, k, v, mask, scaling=dim**-0.5)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    assert keys_seen == [kv_heads]  # the keys went in as they are cached: never expanded per query head
    keys_seen.clear()
    outside, _ = grouped_sdpa(module, q, k, v, mask, scaling=dim**-0.5)  # not entered: Hugging Face's path
    torch.testing.assert_close(outside, expected, atol=1e-5, rtol=1e-5)
    assert keys_seen == [kv_heads * groups if groups > 1 and queries > 1 else kv_heads]


def test_the_models_sdpa_attention_is_the_grouped_one():
    assert ALL_ATTENTION_FUNCTIONS["sdpa"] is attention.grouped_sdpa
