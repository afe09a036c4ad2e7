"""T5 beyond the shared parity matrix: v1.1 variants, PEFT's decoder prefix, KV-cache decoding,
the encoder / cross-attention prefixes."""

import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf
from flax import nnx
from safetensors.numpy import load_file, save_file

import jsoft
from jsoft.models.layers import KVCache
from tests import tiny
from tests.models.test_parity import batch


def dec_batch(B=3, T=6, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, tiny.VOCAB, size=(B, T))
    mask = np.ones((B, T), np.int64)
    mask[1, T - 2:] = 0
    return ids, mask


def hf_logits(model, ids, mask, dec, dec_mask=None, **kw):
    with torch.no_grad():
        out = model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                    decoder_input_ids=torch.tensor(dec),
                    decoder_attention_mask=None if dec_mask is None else torch.tensor(dec_mask), **kw)
    return out.logits.numpy()


@pytest.mark.parametrize("overrides", [
    {"feed_forward_proj": "gated-gelu", "tie_word_embeddings": False},  # v1.1 / FLAN
    {"feed_forward_proj": "gated-silu"},
])
def test_v11_variants_match_transformers(tiny_dir, overrides):
    ids, mask = batch("t5")
    dec, dec_mask = dec_batch()
    ref = hf_logits(tiny.build("t5", "seq2seq_lm", **overrides), ids, mask, dec, dec_mask)
    model = jsoft.from_pretrained(tiny_dir("t5", "seq2seq_lm", **overrides), task="seq2seq_lm")
    got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    np.testing.assert_allclose(np.asarray(got.logits), ref, atol=1e-4, rtol=0)


def test_untied_lm_head_checkpoint(tiny_dir, tmp_path):
    """A FLAN-style checkpoint as the Hub has them: tie_word_embeddings false, its own lm_head.weight
    (transformers 5 re-ties a model built with tie_word_embeddings=False, so write one by hand)."""
    src = tiny_dir("t5", "seq2seq_lm", feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    shutil.copytree(src, tmp_path, dirs_exist_ok=True)
    config = json.loads((tmp_path / "config.json").read_text())
    config["tie_word_embeddings"] = False
    config.pop("scale_decoder_outputs", None)
    (tmp_path / "config.json").write_text(json.dumps(config))
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = np.random.default_rng(0).normal(size=tensors["shared.weight"].shape).astype(
        np.float32)
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})

    ref_model = tf.T5ForConditionalGeneration.from_pretrained(tmp_path).eval()
    assert not torch.equal(ref_model.lm_head.weight, ref_model.shared.weight)
    ids, mask = batch("t5")
    dec, dec_mask = dec_batch()
    model = jsoft.from_pretrained(tmp_path, task="seq2seq_lm")
    assert hasattr(model, "lm_head")
    got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    np.testing.assert_allclose(np.asarray(got.logits), hf_logits(ref_model, ids, mask, dec, dec_mask),
                               atol=1e-4, rtol=0)


def test_mt5_with_hub_mapping(tiny_dir, tmp_path):
    cfg = tiny.CONFIGS["t5"](feed_forward_proj="gated-gelu").to_dict()
    cfg.pop("model_type", None)
    torch.manual_seed(0)
    ref_model = tf.MT5ForConditionalGeneration(tf.MT5Config(**cfg)).eval()
    ref_model.save_pretrained(tmp_path)
    ids, mask = batch("t5")
    dec, dec_mask = dec_batch()
    model = jsoft.from_pretrained(tmp_path, task="seq2seq_lm")
    got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    np.testing.assert_allclose(np.asarray(got.logits), hf_logits(ref_model, ids, mask, dec, dec_mask),
                               atol=1e-4, rtol=0)


def random_prefix(c, num_layers, B, V, seed):
    shape = (num_layers, 2, B, V, c.num_heads, c.head_dim)
    return jax.random.normal(jax.random.key(seed), shape, jnp.float32)


def test_decoder_prefix_matches_peft_past_key_values(tiny_dir):
    """PEFT 0.21 passes a T5 prefix as an EncoderDecoderCache: per decoder layer (k, v, k, v),
    then an empty cross-attention cache; decoder_attention_mask gets V ones in front."""
    ref_model = tiny.build("t5", "seq2seq_lm")
    model = jsoft.from_pretrained(tiny_dir("t5", "seq2seq_lm"), task="seq2seq_lm")
    c = model.config
    ids, mask = batch("t5")
    dec, dec_mask = dec_batch()
    B, V = ids.shape[0], 4
    prefix = random_prefix(c, c.num_decoder_layers, B, V, seed=0)

    layers = []
    for i in range(c.num_decoder_layers):
        k, v = (torch.tensor(np.asarray(prefix[i, j])).permute(0, 2, 1, 3) for j in (0, 1))  # [B, H, V, K]
        layers.append((k, v, k, v))
    past = tf.EncoderDecoderCache(tuple(layers))
    past.cross_attention_cache = tf.DynamicCache()
    for key in past.is_updated:
        past.is_updated[key] = False
    hf_mask = np.concatenate([np.ones((B, V), np.int64), dec_mask], axis=1)
    ref = hf_logits(ref_model, ids, mask, dec, hf_mask, past_key_values=past)

    got = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask,
                prefix_kv=prefix, prefix_mask=jnp.ones((B, V)))
    np.testing.assert_allclose(np.asarray(got.logits), ref, atol=1e-4, rtol=0)
    no_prefix = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec,
                      decoder_attention_mask=dec_mask)
    assert not np.allclose(np.asarray(no_prefix.logits), ref, atol=1e-3)


@pytest.mark.parametrize("with_prefix", [False, True])
def test_kv_cache_decoding_matches_full_forward(tiny_dir, with_prefix):
    model = jsoft.from_pretrained(tiny_dir("t5", "seq2seq_lm"), task="seq2seq_lm")
    c = model.config
    ids, mask = batch("t5")
    dec, _ = dec_batch()
    B, T = dec.shape
    prefix = random_prefix(c, c.num_decoder_layers, B, 3, seed=1) if with_prefix else None
    full = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, prefix_kv=prefix).logits

    enc = model.encode(ids, mask)
    graphdef, state = nnx.split(model)

    @jax.jit
    def step(state, tok, cache):  # cache.index is traced: positions must not need it concrete
        out = nnx.merge(graphdef, state).decode(tok, enc, mask, prefix_kv=prefix, cache=cache)
        return out.logits, out.cache

    cache = KVCache.zeros(c.num_decoder_layers, B, T + 2, c.num_heads, c.head_dim, jnp.float32)
    steps = []
    for t in range(T):
        logits, cache = step(state, dec[:, t:t + 1], cache)
        steps.append(logits[:, 0])
    assert int(cache.index) == T
    np.testing.assert_allclose(np.stack(steps, 1), np.asarray(full), atol=1e-4, rtol=0)


def test_encoder_and_cross_prefixes(tiny_dir):
    model = jsoft.from_pretrained(tiny_dir("t5", "seq2seq_lm"), task="seq2seq_lm")
    c = model.config
    ids, mask = batch("t5")
    dec, dec_mask = dec_batch()
    B, V = ids.shape[0], 5
    kw = dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
    prefixes = dict(prefix_kv=random_prefix(c, c.num_decoder_layers, B, V, 2),
                    encoder_prefix_kv=random_prefix(c, c.num_layers, B, V, 3),
                    cross_prefix_kv=random_prefix(c, c.num_decoder_layers, B, V, 4))
    base = model(**kw)
    with_all = model(**kw, **prefixes, prefix_mask=jnp.ones((B, V)))
    assert with_all.logits.shape == base.logits.shape == (B, dec.shape[1], c.vocab_size)
    assert with_all.encoder_last_hidden_state.shape == (B, ids.shape[1], c.hidden_size)
    for name in ("encoder_prefix_kv", "cross_prefix_kv"):
        alone = model(**kw, **{name: prefixes[name]})
        assert not np.allclose(np.asarray(alone.logits), np.asarray(base.logits), atol=1e-3), name
    masked = model(**kw, **prefixes, prefix_mask=jnp.zeros((B, V)))
    np.testing.assert_allclose(np.asarray(masked.logits), np.asarray(base.logits), atol=1e-5, rtol=0)


def test_encode_decode_equals_call_and_shift_right(tiny_dir):
    model = jsoft.from_pretrained(tiny_dir("t5", "seq2seq_lm"), task="seq2seq_lm")
    ids, mask = batch("t5")
    labels = np.array([[5, 6, 7, -100], [8, -100, -100, -100]])
    dec = model.shift_right(jnp.asarray(labels))
    ref = tiny.build("t5", "seq2seq_lm")._shift_right(torch.tensor(labels)).numpy()
    np.testing.assert_array_equal(np.asarray(dec), ref)
    dec = np.asarray(dec)
    ids, mask = ids[:2], mask[:2]
    key = jax.random.key(0)
    whole = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, dropout_rng=key)
    enc = model.encode(ids, mask, dropout_rng=key)
    split = model.decode(dec, enc, mask, dropout_rng=key)
    np.testing.assert_allclose(np.asarray(split.logits), np.asarray(whole.logits), atol=1e-6, rtol=0)
    eval_out = model(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)
    assert not np.allclose(np.asarray(eval_out.logits), np.asarray(whole.logits), atol=1e-3)  # dropout on


@pytest.mark.parametrize("with_prefix", [False, True])
def test_precomputed_cross_attention_matches_encoder_states(tiny_dir, with_prefix):
    """`decode(cross_kv=cross_attention_kv(...))`, as generate's loop decodes, equals decoding from the
    encoder states: padded encoder inputs, and a cross-attention prefix whose second row is left-padded."""
    model = jsoft.from_pretrained(tiny_dir("t5", "seq2seq_lm"), task="seq2seq_lm")
    c = model.config
    ids, mask = batch("t5")
    dec, dec_mask = dec_batch()
    B, V = ids.shape[0], 4
    enc = model.encode(input_ids=ids, attention_mask=mask)
    kw = {}
    if with_prefix:
        prefix_mask = np.ones((B, V), np.int32)
        prefix_mask[1, :2] = 0
        kw = dict(cross_prefix_kv=random_prefix(c, c.num_decoder_layers, B, V, seed=2), prefix_mask=prefix_mask)
    want = model.decode(decoder_input_ids=dec, decoder_attention_mask=dec_mask, encoder_hidden_states=enc,
                        attention_mask=mask, **kw).logits
    cross_kv = model.cross_attention_kv(enc, mask, kw.get("cross_prefix_kv"), kw.get("prefix_mask"))
    got = model.decode(decoder_input_ids=dec, decoder_attention_mask=dec_mask,
                       prefix_mask=kw.get("prefix_mask"), cross_kv=cross_kv).logits
    np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
    if with_prefix:  # the prefix reaches the logits through cross_kv alone
        assert not np.allclose(np.asarray(got), np.asarray(model.decode(
            decoder_input_ids=dec, decoder_attention_mask=dec_mask, encoder_hidden_states=enc,
            attention_mask=mask).logits), atol=1e-3)
