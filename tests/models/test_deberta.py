"""DeBERTa (v1, v2, v3) beyond the parity matrix: transformers' log buckets exactly, P-Tuning v2 prefixes against
Liu et al.'s definition (content scores only for prefix keys) built on transformers' own attention, the refusal of
a PEFT export for a prefix PEFT cannot run, and the pooler that v3's checkpoints lack travelling with adapters."""

import math

import numpy as np
import pytest
import torch
from transformers.models.deberta import modeling_deberta as hf_deberta_v1
from transformers.models.deberta_v2 import modeling_deberta_v2 as hf_deberta

import jsoft
from jsoft.models.deberta import log_bucket
from tests import tiny
from tests.tuners import peft_ref


@pytest.mark.parametrize("buckets,max_position", [(256, 512), (8, 20), (64, 128), (32, 512), (7, 33)])
def test_log_buckets_equal_transformers(buckets, max_position):
    rel = np.arange(-5000, 5001)
    want = hf_deberta.make_log_bucket_position(torch.tensor(rel), buckets, max_position).long().numpy()
    np.testing.assert_array_equal(log_bucket(rel, buckets, max_position), want)


def _attend(scores, values, attention_mask, pmask):
    """Softmax over `[prefix | tokens]` scores `[B, H, T, V + T]` (prefix mask `[B, V]`), then the values."""
    B, H, T, S = scores.shape
    mask = torch.cat([pmask[:, None, None, :].expand(B, 1, T, S - T).bool(), attention_mask.bool()], -1)
    probs = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), -1)
    return (probs @ values).permute(0, 2, 1, 3).reshape(B, T, -1), None


def _prefix_attention_v2(self, hidden_states, attention_mask, output_attentions=False, query_states=None,
                         relative_pos=None, rel_embeddings=None):
    """transformers' DeBERTa-v2 DisentangledSelfAttention.forward with `self.prefix = (k, v [B, H, V, hd],
    mask [B, V])` in front of its keys, scored by content only: P-Tuning v2's DeBERTa (THUDM/P-tuning-v2,
    model/deberta*.py)."""
    pk, pv, pmask = self.prefix
    B, T, _ = hidden_states.shape
    H, V = self.num_attention_heads, pk.shape[2]
    q, k, v = (self.transpose_for_scores(f(hidden_states), H) for f in (self.query_proj, self.key_proj,
                                                                         self.value_proj))  # [B * H, T, hd]
    hd = q.shape[-1]
    factor = 1 + len(self.pos_att_type)
    rel = self.disentangled_attention_bias(q, k, relative_pos, self.pos_dropout(rel_embeddings), factor)
    keys = torch.cat([pk.reshape(B * H, V, hd), k], 1)
    values = torch.cat([pv.reshape(B * H, V, hd), v], 1).view(B, H, V + T, hd)
    scores = q @ keys.transpose(-1, -2) / math.sqrt(hd * factor) + torch.cat([torch.zeros(B * H, T, V), rel], -1)
    return _attend(scores.view(B, H, T, V + T), values, attention_mask, pmask)


def _prefix_attention_v1(self, hidden_states, attention_mask, output_attentions=False, query_states=None,
                         relative_pos=None, rel_embeddings=None):
    """The same for DeBERTa v1's attention (fused in_proj, query and value biases, the query scaled first)."""
    pk, pv, pmask = self.prefix
    q, k, v = self.transpose_for_scores(self.in_proj(hidden_states)).chunk(3, dim=-1)  # [B, H, T, hd]
    q = q + self.transpose_for_scores(self.q_bias[None, None, :])
    v = v + self.transpose_for_scores(self.v_bias[None, None, :])
    factor = 1 + len(self.pos_att_type)
    q = q / math.sqrt(q.shape[-1] * factor)
    rel = self.disentangled_att_bias(q, k, relative_pos, self.pos_dropout(rel_embeddings), factor)
    scores = q @ torch.cat([pk, k], 2).transpose(-1, -2) + torch.cat([torch.zeros(*rel.shape[:3], pk.shape[2]), rel],
                                                                       -1)
    return _attend(scores, torch.cat([pv, v], 2), attention_mask, pmask)


PREFIX_CASES = {"v3": ("deberta-v2", {}),
                "v2": ("deberta-v2", dict(share_att_key=False, position_buckets=-1, max_relative_positions=6)),
                "v1": ("deberta", {})}


@pytest.mark.parametrize("task", ["seq_cls", "token_cls"])
@pytest.mark.parametrize("case", list(PREFIX_CASES))
def test_prefix_keys_take_the_content_score_only(tiny_dir, monkeypatch, task, case):
    kind, overrides = PREFIX_CASES[case]
    path = tiny_dir(kind, task, **overrides)
    ref = tiny.CLASSES[(kind, task)].from_pretrained(path).eval()
    c = ref.config
    L, H, V, hd = c.num_hidden_layers, c.num_attention_heads, 4, c.hidden_size // c.num_attention_heads
    inputs = peft_ref.batch(kind)
    B = inputs["input_ids"].shape[0]
    rng = np.random.default_rng(0)
    prefix = rng.normal(size=(L, 2, B, V, H, hd)).astype(np.float32)
    prefix[:, 0] *= 30.0  # keys that draw attention against the tiny model's small queries
    prefix_mask = np.ones((B, V), np.int32)
    prefix_mask[2, :2] = 0  # a shorter prefix, left-padded (a mixed-adapter batch)
    hf_module = hf_deberta if kind == "deberta-v2" else hf_deberta_v1
    monkeypatch.setattr(hf_module.DisentangledSelfAttention, "forward",
                        _prefix_attention_v2 if kind == "deberta-v2" else _prefix_attention_v1)
    for i, layer in enumerate(ref.deberta.encoder.layer):
        kv = torch.tensor(prefix[i]).permute(0, 1, 3, 2, 4)  # [2, B, H, V, hd]
        layer.attention.self.prefix = (kv[0], kv[1], torch.tensor(prefix_mask))
    want = peft_ref.peft_logits(ref, inputs)
    model = jsoft.from_pretrained(path, task=task, num_labels=3)
    got = np.asarray(model(**inputs, prefix_kv=prefix, prefix_mask=prefix_mask).logits)
    without = np.asarray(model(**inputs).logits)
    if task == "token_cls":
        keep = inputs["attention_mask"].astype(bool)
        got, want, without = got[keep], want[keep], without[keep]
    assert np.abs(got - without).max() > 1e-3  # the prefix changes the outputs (100x the tolerance)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_prefix_adapters_save_in_jsoft_format(tiny_dir, tmp_path):
    path = tiny_dir("deberta-v2", "seq_cls")
    pm = jsoft.get_peft_model(jsoft.from_pretrained(path, task="seq_cls", num_labels=3),
                              jsoft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5), seed=1)
    with pytest.raises(ValueError, match="deberta-v2, whose transformers model takes no past_key_values"):
        pm.save_pretrained(tmp_path / "peft", format="peft")
    assert not (tmp_path / "peft").exists()
    assert pm.save_pretrained(tmp_path / "a") == "jsoft"
    back = jsoft.PeftModel.from_pretrained(jsoft.from_pretrained(path, task="seq_cls", num_labels=3), tmp_path / "a")
    inputs = peft_ref.batch("deberta-v2")
    np.testing.assert_array_equal(np.asarray(back(**inputs).logits), np.asarray(pm(**inputs).logits))
    prompt = jsoft.get_peft_model(jsoft.from_pretrained(path, task="seq_cls", num_labels=3),
                                  jsoft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5))
    assert prompt.save_pretrained(tmp_path / "b") == "peft"


def test_a_sentencepiece_only_tokenizer_loads_for_a_run(tiny_dir, tmp_path):
    """DeBERTa-v3 checkpoints ship `spm.model` and no tokenizer.json: the run's tokenizer is converted from it,
    which needs the sentencepiece package (without it transformers fails asking for tiktoken)."""
    import json

    import sentencepiece

    from jsoft import build
    from tests import train_utils as tu

    (tmp_path / "corpus.txt").write_text("the movie was great\nthe plot was bad\ni loved it and hated this\n" * 20)
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    sentencepiece.SentencePieceTrainer.train(input=str(tmp_path / "corpus.txt"), model_prefix=str(tok_dir / "spm"),
                                             vocab_size=40, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
                                             pad_piece="[PAD]", bos_piece="[CLS]", eos_piece="[SEP]",
                                             unk_piece="[UNK]", hard_vocab_limit=False, minloglevel=2)
    (tok_dir / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "DebertaV2Tokenizer", "bos_token": "[CLS]", "eos_token": "[SEP]", "unk_token": "[UNK]",
        "sep_token": "[SEP]", "pad_token": "[PAD]", "cls_token": "[CLS]", "mask_token": "[MASK]"}))
    model = tiny_dir("deberta-v2", "seq_cls", num_labels=2)
    c = tu.config(model, tmp_path / "unused.jsonl", None)
    c.model.tokenizer = str(tok_dir)
    enc = build.load_tokenizer(c)("the movie was great", "i loved it")
    assert enc["input_ids"][0] == 1 and max(enc["input_ids"]) < 40  # [CLS] first, ids in the spm vocabulary
    assert set(enc["token_type_ids"]) == {0, 1}


def test_a_pooler_the_checkpoint_lacks_travels_with_the_adapter(tmp_path, caplog):
    """DeBERTa-v3's pretraining checkpoints hold no pooler: transformers and jsoft each initialise one at random.
    A PEFT export carries jsoft's (modules_to_save) so PEFT gives the same outputs; a jsoft base model whose own
    pooler is random takes the adapter's; one whose checkpoint holds a pooler refuses a different one."""
    import json

    import peft

    tiny.build("deberta-v2", None).save_pretrained(tmp_path / "pretrained")  # no pooler, no classifier
    base = jsoft.from_pretrained(tmp_path / "pretrained", task="seq_cls", num_labels=3)
    assert "pooler.dense.kernel" in base.initialised_params
    pm = jsoft.get_peft_model(base, jsoft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4), seed=1)
    assert pm.save_pretrained(tmp_path / "adapter") == "peft"
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert saved["modules_to_save"] == ["classifier", "pooler"]
    inputs = peft_ref.batch("deberta-v2")
    want = np.asarray(pm(**inputs).logits)
    hf = tiny.CLASSES[("deberta-v2", "seq_cls")].from_pretrained(tmp_path / "pretrained", num_labels=3).eval()
    ref = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    np.testing.assert_allclose(peft_ref.peft_logits(ref, inputs), want, atol=1e-5)

    other_seed = jsoft.from_pretrained(tmp_path / "pretrained", task="seq_cls", num_labels=3, seed=7)
    assert not np.array_equal(other_seed.pooler.dense.kernel[...], base.pooler.dense.kernel[...])
    for fmt in ("peft", "jsoft"):
        pm.save_pretrained(tmp_path / fmt, format=fmt)
        fresh = jsoft.from_pretrained(tmp_path / "pretrained", task="seq_cls", num_labels=3, seed=7)
        with caplog.at_level("INFO", logger="jsoft.interop"):
            back = jsoft.PeftModel.from_pretrained(fresh, tmp_path / fmt)
        assert "now holds the adapter's" in caplog.text
        np.testing.assert_allclose(np.asarray(back(**inputs).logits), want, atol=1e-6)

    tiny.build("deberta-v2", "seq_cls", seed=3).save_pretrained(tmp_path / "finetuned")  # holds a pooler
    with pytest.raises(ValueError, match="carries its own pooler .*which its checkpoint holds"):
        jsoft.PeftModel.from_pretrained(jsoft.from_pretrained(tmp_path / "finetuned", task="seq_cls", num_labels=3),
                                        tmp_path / "adapter")
