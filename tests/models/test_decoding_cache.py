"""KV-cache decoding: a prefill then one token per jitted step gives the full forward's logits."""

import numpy as np
import pytest
from flax import nnx

import jsoft
from tests.models.test_parity import batch


@nnx.jit
def step(model, ids, mask, cache, prefix_kv):
    out = model(input_ids=ids, attention_mask=mask, cache=cache, prefix_kv=prefix_kv)
    return out.logits, out.cache


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bloom"])
@pytest.mark.parametrize("with_prefix", [False, True], ids=["plain", "prefix"])
def test_cached_decoding_matches_full_forward(tiny_dir, kind, with_prefix):
    model = jsoft.from_pretrained(tiny_dir(kind, "causal_lm"), task="causal_lm")
    c = model.config
    ids, mask = batch(kind, side="left")  # generation pads on the left
    B, T = ids.shape
    prefill, spare = 4, 3
    S = T + spare  # more slots than tokens: unwritten slots must stay invisible
    prefix_kv = None
    if with_prefix:  # positions then start at V, as PEFT's past_key_values make them
        prefix_kv = np.random.default_rng(5).normal(size=(c.num_layers, 2, B, 3, c.num_kv_heads, c.head_dim))
        prefix_kv = prefix_kv.astype(np.float32)
    full = np.asarray(model(input_ids=ids, attention_mask=mask, prefix_kv=prefix_kv).logits)

    mask_S = np.concatenate([mask, np.ones((B, spare), mask.dtype)], axis=1)
    cache = jsoft.KVCache.zeros(c.num_layers, B, S, c.num_kv_heads, c.head_dim, np.float32)
    logits, cache = step(model, ids[:, :prefill], mask_S, cache, prefix_kv)
    pieces = [np.asarray(logits)]
    for t in range(prefill, T):
        logits, cache = step(model, ids[:, t:t + 1], mask_S, cache, prefix_kv)
        pieces.append(np.asarray(logits))
    assert int(cache.index) == T
    got = np.concatenate(pieces, axis=1)
    keep = mask.astype(bool)
    np.testing.assert_allclose(got[keep], full[keep], atol=1e-5, rtol=0)
