"""GPT-J's interleaved rotary embeddings, GPT-Neo's local layers, Cohere's config, Falcon's checkpoint generations,
multi-query prefixes and the RoBERTa-shaped CamemBERT: what the parity matrix (tests/models/test_parity.py) does
not reach."""

import jax.numpy as jnp
import numpy as np
import pytest
import torch
import transformers as tf
from transformers.models.falcon import modeling_falcon
from transformers.models.gptj import modeling_gptj

import jsoft
from jsoft.models import bloom, codegen, cohere, falcon, gpt_neo, gptj, rotary
from tests import tiny
from tests.models.test_parity import batch

GPTJ = dict(model_type="gptj", vocab_size=11, n_embd=32, n_layer=1, n_head=2, n_positions=16)


@pytest.mark.parametrize("rotary_dim", [8, 12])
def test_interleaved_rope_matches_gptj(rotary_dim):
    """Pairs (2i, 2i + 1) turned by frequency i, on the leading `rotary_dim` dims, as transformers' GPT-J."""
    B, T, N, K = 2, 5, 3, 12
    x = np.random.default_rng(0).normal(size=(B, T, N, K)).astype(np.float32)
    positions = np.array([[0, 1, 2, 3, 4], [7, 8, 9, 10, 11]])
    sincos = modeling_gptj.create_sinusoidal_positions(16, rotary_dim)[torch.tensor(positions)]
    sin, cos = torch.split(sincos, rotary_dim // 2, dim=-1)
    rotated = modeling_gptj.apply_rotary_pos_emb(torch.tensor(x[..., :rotary_dim]), sin, cos)
    want = np.concatenate([rotated.numpy(), x[..., rotary_dim:]], axis=-1)
    c = gptj.Config.from_hf({**GPTJ, "n_embd": N * K, "n_head": N, "rotary_dim": rotary_dim})
    got = rotary.apply(x, *rotary.cos_sin(c, positions, np.float32), interleaved=True)
    np.testing.assert_allclose(np.asarray(got), want, atol=1e-6)
    assert not np.allclose(np.asarray(rotary.apply(x, *rotary.cos_sin(c, positions, np.float32))), want)


def test_gptj_config():
    assert gptj.Config.from_hf({**GPTJ, "rotary_dim": None}).rope_dim == 16  # old config.json: every dim rotated
    assert gptj.Config.from_hf({**GPTJ, "rotary_dim": 4}).rope_dim == 4
    with pytest.raises(ValueError, match="tie_word_embeddings"):
        gptj.Config.from_hf({**GPTJ, "tie_word_embeddings": True})
    with pytest.raises(ValueError, match="rotary_dim=5"):
        gptj.Config.from_hf({**GPTJ, "rotary_dim": 5})


NEO = dict(model_type="gpt_neo", vocab_size=11, hidden_size=32, num_layers=4, num_heads=2)


def test_gpt_neo_layer_kinds():
    c = gpt_neo.Config.from_hf({**NEO, "attention_types": [[["global", "local"], 2]]})
    assert c.local_layers == (False, True, False, True) and c.window_size == 256 and not c.scale_attn_weights
    assert gpt_neo.Config.from_hf({**NEO, "attention_layers": ["local"] * 4,
                                   "attention_types": [[["global"], 4]]}).local_layers == (True,) * 4
    with pytest.raises(ValueError, match="expected 4 entries"):
        gpt_neo.Config.from_hf({**NEO, "attention_types": [[["global", "local"], 3]]})
    with pytest.raises(ValueError, match="'sparse'"):
        gpt_neo.Config.from_hf({**NEO, "attention_types": [[["global", "sparse"], 2]]})
    with pytest.raises(ValueError, match="attention_types="):
        gpt_neo.Config.from_hf({**NEO, "attention_types": ["global", "local"]})


def test_gpt_neo_local_layers_matter(tiny_dir):
    """The tiny model's 4-slot windows change its logits (so the parity tests check them), and match."""
    ref_model = tiny.build("gpt_neo", "causal_lm", initializer_range=0.3)
    model = jsoft.from_pretrained(tiny_dir("gpt_neo", "causal_lm", initializer_range=0.3), task="causal_lm")
    ids, mask = batch("gpt_neo")
    with torch.no_grad():
        want = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model(input_ids=ids, attention_mask=mask).logits)[keep], want[keep],
                               atol=1e-4)
    model.config.local_layers = (False,) * 3
    assert np.abs(np.asarray(model(input_ids=ids, attention_mask=mask).logits)[keep] - want[keep]).max() > 1e-2


@pytest.mark.parametrize("cls", [tf.CamembertForSequenceClassification, tf.XLMRobertaForTokenClassification])
def test_roberta_shaped_checkpoints(tmp_path, cls):
    """CamemBERT and XLM-RoBERTa checkpoints are RoBERTa's under their own model_type."""
    config_cls = {"camembert": tf.CamembertConfig, "xlm-roberta": tf.XLMRobertaConfig}[cls.config_class.model_type]
    roberta = {k: v for k, v in tiny.CONFIGS["roberta"]().to_dict().items()
               if k not in ("model_type", "id2label", "label2id")}
    config = config_cls(**roberta, num_labels=3)
    torch.manual_seed(0)
    ref_model = cls(config).eval()
    ref_model.save_pretrained(tmp_path)
    task = "seq_cls" if "Sequence" in cls.__name__ else "token_cls"
    model = jsoft.from_pretrained(tmp_path, task=task)
    assert model.config.model_type == config.model_type
    ids, mask = batch("roberta")
    with torch.no_grad():
        want = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(model(input_ids=ids, attention_mask=mask).logits)
    keep = mask.astype(bool) if task == "token_cls" else slice(None)
    np.testing.assert_allclose(got[keep], want[keep], atol=1e-4)


def test_cohere2_rotates_only_in_sliding_layers():
    hf = dict(model_type="cohere2", vocab_size=11, hidden_size=32, intermediate_size=40, num_hidden_layers=4,
              num_attention_heads=2, sliding_window=8, logit_scale=0.25)
    c = cohere.Config.from_hf(hf)
    assert c.sliding_layers == (True, True, True, False) and c.nope_layers == (False, False, False, True)
    assert c.logits_scaling == 4.0 and c.rope_interleaved and not c.head_layernorm
    every_layer_full = cohere.Config.from_hf(dict(hf, layer_types=["full_attention"] * 4))
    assert every_layer_full.sliding_layers == () and every_layer_full.nope_layers == (True,) * 4
    assert cohere.Config.from_hf(dict(hf, model_type="cohere", use_qk_norm=True)).nope_layers == ()


# the tiny Falcon is the new architecture (two key / value groups, ln_attn and ln_mlp); its other generations:
FALCON_GENERATIONS = {
    "falcon-7b": dict(new_decoder_architecture=False, multi_query=True, bias=False),  # one key / value head
    "falcon-rw": dict(new_decoder_architecture=False, multi_query=False, num_kv_heads=None, parallel_attn=False,
                      alibi=True),
    "falcon2-11b": dict(num_ln_in_parallel_attn=1, bias=False),  # the new architecture with one norm
}


@pytest.mark.parametrize("generation", FALCON_GENERATIONS)
@pytest.mark.parametrize("task", ["causal_lm", "seq_cls"])
def test_falcon_generations_match_transformers(tiny_dir, generation, task):
    overrides = FALCON_GENERATIONS[generation]
    ref_model = tiny.build("falcon", task, **overrides)
    model = jsoft.from_pretrained(tiny_dir("falcon", task, **overrides), task=task, num_labels=3)
    ids, mask = batch("falcon", side="left", T=13)
    with torch.no_grad():
        want = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(model(input_ids=ids, attention_mask=mask).logits)
    keep = mask.astype(bool) if task == "causal_lm" else slice(None)
    np.testing.assert_allclose(got[keep], want[keep], atol=1e-4)
    c = model.config
    assert (c.kv_groups, c.num_kv_heads, c.alibi) == {"falcon-7b": (1, 1, False), "falcon-rw": (6, 6, True),
                                                      "falcon2-11b": (2, 6, False)}[generation]


def test_falcon_alibi_is_rounded_as_transformers_rounds_it():
    """falcon-rw's biases are bf16 products of bf16 slopes and positions; at long lengths that differs from
    BLOOM's fp32 biases by more than a softmax forgives."""
    mask = np.ones((2, 700), np.int64)
    mask[0, :37] = 0
    mask[1, 300:310] = 0
    want = modeling_falcon.build_alibi_tensor(torch.tensor(mask), 12, torch.float32).reshape(2, 12, 700).numpy()
    got = np.asarray(bloom.alibi_bias(mask, 12, rounding=jnp.bfloat16))[:, :, 0]
    np.testing.assert_array_equal(got, want)
    assert np.abs(np.asarray(bloom.alibi_bias(mask, 12))[:, :, 0] - want).max() > 0.1


FALCON = dict(model_type="falcon", vocab_size=11, hidden_size=32, num_hidden_layers=2, num_attention_heads=4)


def test_falcon_config_errors():
    with pytest.raises(ValueError, match="parallel_attn=true"):
        falcon.Config.from_hf({**FALCON, "new_decoder_architecture": True, "parallel_attn": False})
    with pytest.raises(ValueError, match="num_ln_in_parallel_attn=2"):
        falcon.Config.from_hf({**FALCON, "num_ln_in_parallel_attn": 2})
    with pytest.raises(ValueError, match="num_kv_heads=3"):
        falcon.Config.from_hf({**FALCON, "new_decoder_architecture": True, "num_kv_heads": 3})
    with pytest.raises(ValueError, match="num_kv_heads=2 needs"):
        falcon.Config.from_hf({**FALCON, "multi_query": False, "num_kv_heads": 2})
    sequential = falcon.Config.from_hf({**FALCON, "multi_query": False, "parallel_attn": False, "alibi": True,
                                        "attention_dropout": 0.1})
    assert not sequential.parallel_residual and sequential.attn_dropout == 0.1 == sequential.resid_dropout
    rotary = falcon.Config.from_hf({**FALCON, "attention_dropout": 0.1})  # transformers drops no rotary probs
    assert rotary.attn_dropout == 0.0 and rotary.parallel_residual and rotary.intermediate_size == 128


@pytest.mark.parametrize("kind,overrides", [("falcon", FALCON_GENERATIONS["falcon-7b"]), ("gpt_bigcode", {})])
def test_multi_query_prefix_has_one_key_head(tiny_dir, kind, overrides):
    """falcon-7b and StarCoder cache one key / value head, so their prefix has one: PEFT's derived default (a key
    per head) does not fit the cache, and an adapter made for it is refused by name."""
    model = jsoft.from_pretrained(tiny_dir(kind, "causal_lm", **overrides), task="causal_lm")
    pm = jsoft.get_peft_model(model, jsoft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    config = pm.peft_config["default"]
    assert (config.token_dim, config.num_attention_heads) == (model.config.head_dim, 1)
    with pytest.raises(ValueError, match="token_dim=48"):
        jsoft.get_peft_model(model, jsoft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3,
                                                             token_dim=48, num_attention_heads=6))


def test_codegen_config_errors():
    hf = dict(model_type="codegen", vocab_size=11, n_embd=32, n_layer=1, n_head=4, n_positions=16, rotary_dim=4)
    assert codegen.Config.from_hf(hf).rope_dim == 4
    with pytest.raises(ValueError, match="rotary_dim is required"):
        codegen.Config.from_hf({**hf, "rotary_dim": None})
    with pytest.raises(ValueError, match="n_head=2 must be a multiple of 4"):
        codegen.Config.from_hf({**hf, "n_head": 2})
