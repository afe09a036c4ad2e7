"""Llama specifics beyond the shared parity matrix: config variants, RoPE scaling, KV prefixes."""

import json

import jax
import numpy as np
import peft
import pytest
import torch
import transformers as tf
from flax import nnx

import jsoft
from jsoft.models import llama, llama_config, rotary
from tests import tiny
from tests.models.test_parity import batch

LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

VARIANTS = {
    # short original context, so positions < 40 cross all three llama3 frequency bands
    "llama3_rope": {"rope_parameters": LLAMA3_ROPE},
    "linear_rope": {"rope_parameters": {"rope_type": "linear", "rope_theta": 100.0, "factor": 4.0}},
    "tied": {"tie_word_embeddings": True},
    "head_dim_bias_mha": {"head_dim": 12, "attention_bias": True, "mlp_bias": True, "num_key_value_heads": 6},
}


def saved(tmp_path_factory, task, overrides):
    """Like the `tiny_dir` fixture, which cannot take a dict override (its cache key hashes them)."""
    path = tmp_path_factory.mktemp("llama")
    tiny.save("llama", task, path, **overrides)
    return path


@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_logits_match_transformers(tmp_path_factory, variant):
    overrides = VARIANTS[variant]
    path = saved(tmp_path_factory, "causal_lm", overrides)
    ids, mask = batch("llama", T=40, side="left")
    with torch.no_grad():
        ref = tiny.build("llama", "causal_lm", **overrides)(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model = jsoft.from_pretrained(path, task="causal_lm")
    if variant == "tied":
        assert not hasattr(model, "lm_head")
    got = np.asarray(model(input_ids=ids, attention_mask=mask).logits)
    keep = mask.astype(bool)
    np.testing.assert_allclose(got[keep], ref[keep], atol=1e-4, rtol=0)


def hf_dict(**kw) -> dict:
    return tiny.CONFIGS["llama"](**kw).to_dict()


def test_config_reads_old_and_new_rope_spellings():
    new = llama.Config.from_hf(hf_dict(rope_parameters=dict(LLAMA3_ROPE)))
    old = hf_dict()
    old.pop("rope_parameters")
    old.update(rope_theta=5e5, rope_scaling={k: v for k, v in LLAMA3_ROPE.items() if k != "rope_theta"})
    assert llama.Config.from_hf(old) == new
    assert (new.rope_type, new.rope_theta, new.rope_original_max_positions) == ("llama3", 5e5, 16)
    legacy_linear = llama.Config.from_hf({**old, "rope_scaling": {"type": "linear", "factor": 2.0}})
    assert (legacy_linear.rope_type, legacy_linear.rope_factor) == ("linear", 2.0)
    plain = llama.Config.from_hf({**old, "rope_scaling": None})
    assert (plain.rope_type, plain.rope_theta) == ("default", 5e5)


@pytest.mark.parametrize("inv_freq_config", [{}, {"rope_parameters": LLAMA3_ROPE},
                                             {"rope_parameters": VARIANTS["linear_rope"]["rope_parameters"]}])
def test_inverse_frequencies_match_transformers(inv_freq_config):
    hf = tiny.CONFIGS["llama"](**inv_freq_config)
    ref = tf.models.llama.modeling_llama.LlamaRotaryEmbedding(hf).inv_freq.numpy()
    np.testing.assert_allclose(rotary.inv_freq(llama.Config.from_hf(hf.to_dict())), ref, rtol=1e-6)


def test_unknown_rope_type_names_key_and_valid_values():
    hf = hf_dict()
    hf["rope_parameters"] = {"rope_type": "longrope", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(ValueError, match="rope_parameters of rope_type 'longrope' lacks 'short_factor'"):
        llama.Config.from_hf(hf)
    hf["rope_parameters"] |= {"short_factor": [1.0] * 3, "long_factor": [2.0] * 3}  # head_dim 48 / 6: 4 pairs
    with pytest.raises(ValueError, match=r"rope_parameters\['short_factor'\] has 3 entries; .* needs .*: 4"):
        llama.Config.from_hf(hf)
    hf["rope_parameters"] = {"rope_type": "longrope2", "rope_theta": 1e4, "factor": 2.0}
    with pytest.raises(ValueError, match=r"rope_parameters\['rope_type'\]='longrope2'.*'llama3'"):
        llama.Config.from_hf(hf)
    hf.pop("rope_parameters")
    hf["rope_scaling"] = {"type": "proportional", "factor": 2.0}
    with pytest.raises(ValueError, match=r"rope_scaling\['type'\]='proportional'.*'linear'"):
        llama.Config.from_hf(hf)


@pytest.mark.parametrize("side", ["right", "left"])
def test_prefix_matches_transformers_cache_and_peft(tiny_dir, side):
    """A prefix `[L, 2, B, V, G, K]` equals HF's past_key_values filled with it, as PEFT passes it
    (DynamicCache of `[B, G, V, K]` per layer, V ones in front of the mask), and PEFT's own
    prefix-tuning forward with the same prefix as its `prompt_embeddings`."""
    c = tiny.CONFIGS["llama"]()
    L, G, K, V = c.num_hidden_layers, c.num_key_value_heads, c.head_dim, 4
    ids, mask = batch("llama", side=side)
    B = ids.shape[0]
    table = np.random.default_rng(3).normal(size=(V, L * 2 * G * K)).astype(np.float32)  # PEFT layout
    prefix_LxTwoxVxGxK = table.reshape(V, L, 2, G, K).transpose(1, 2, 0, 3, 4)
    prefix_kv = np.broadcast_to(prefix_LxTwoxVxGxK[:, :, None], (L, 2, B, V, G, K))

    ref_model = tiny.build("llama", "causal_lm")
    kv = torch.tensor(np.ascontiguousarray(prefix_kv.transpose(0, 1, 2, 4, 3, 5)))  # [L, 2, B, G, V, K]
    full_mask = torch.tensor(np.concatenate([np.ones((B, V), np.int64), mask], axis=1))
    past = tf.DynamicCache([(kv[i, 0], kv[i, 1]) for i in range(L)])
    peft_config = peft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=V)
    with torch.no_grad():
        ref = ref_model(input_ids=torch.tensor(ids), attention_mask=full_mask, past_key_values=past)
        ref = ref.logits.numpy()
        pm = peft.get_peft_model(ref_model, peft_config)
        pm.prompt_encoder["default"].embedding.weight.copy_(torch.tensor(table))
        ref_peft = pm(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()

    model = jsoft.from_pretrained(tiny_dir("llama", "causal_lm"), task="causal_lm")
    got = np.asarray(model(input_ids=ids, attention_mask=mask, prefix_kv=prefix_kv).logits)
    keep = mask.astype(bool)
    np.testing.assert_allclose(got[keep], ref[keep], atol=1e-4, rtol=0)
    np.testing.assert_allclose(got[keep], ref_peft[keep], atol=1e-4, rtol=0)


def test_mistral_and_qwen2_windows_and_biases(tiny_dir):
    """Mistral and Qwen2 load as Llama with their own defaults: Qwen2 has query/key/value biases and no output
    bias; which layers slide follows transformers' reading of config.json (logits past the window:
    tests/models/test_parity.py)."""
    qwen = jsoft.from_pretrained(tiny_dir("qwen2", "causal_lm"), task="causal_lm")
    attn = qwen.model.layers[0].self_attn
    assert attn.q_proj.bias is not None and attn.v_proj.bias is not None and attn.o_proj.bias is None
    assert qwen.config.sliding_window is None and qwen.config.model_type == "qwen2"
    windowed = llama.Config.from_hf(
        tiny.CONFIGS["qwen2"](use_sliding_window=True, sliding_window=8, max_window_layers=1).to_dict())
    assert windowed.sliding_window == 8 and windowed.sliding_layers == (False, True)
    assert llama.Config.from_hf(tiny.CONFIGS["qwen2"](sliding_window=8).to_dict()).sliding_window is None
    older = dict(model_type="qwen2", num_hidden_layers=3, use_sliding_window=True, sliding_window=8,
                 max_window_layers=2)  # a config.json from before transformers wrote layer_types
    assert llama_config.sliding_layers(older) == (False, False, True)
    mistral = jsoft.from_pretrained(tiny_dir("mistral", "seq_cls"), task="seq_cls", num_labels=3)
    assert mistral.config.sliding_window == 64 and mistral.config.sliding_layers == (True, True)
    mistral(input_ids=np.ones((1, 65), np.int32))  # past the window: it slides


def test_gemma3_config_spellings():
    """Gemma 3's config.json as transformers 4 wrote it (`rope_local_base_freq`, `sliding_window_pattern`,
    top-level `rope_scaling`) reads as transformers 5's (`layer_types`, per-kind `rope_parameters`); kinds of layer
    or local RoPE jsoft lacks are refused, naming the key."""
    base = dict(model_type="gemma3_text", vocab_size=11, hidden_size=8, num_hidden_layers=7, num_attention_heads=2,
                intermediate_size=16, head_dim=4, sliding_window=512, query_pre_attn_scalar=4)
    old = llama.Config.from_hf(base | dict(rope_theta=1e6, rope_local_base_freq=1e4, sliding_window_pattern=3,
                                           rope_scaling={"rope_type": "linear", "factor": 8.0}))
    new = llama.Config.from_hf(base | dict(
        layer_types=["sliding_attention", "sliding_attention", "full_attention"] * 2 + ["sliding_attention"],
        rope_parameters={"full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                         "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}))
    assert old == new
    assert new.sliding_layers == (True, True, False, True, True, False, True) and new.sliding_window == 512
    assert (new.rope_type, new.rope_factor, new.rope_theta, new.local_rope_theta) == ("linear", 8.0, 1e6, 1e4)
    assert new.qk_norm == "head" and new.norm_placement == "sandwich"
    assert new.norm_offset == 1.0 and new.attn_softcap is None
    with pytest.raises(ValueError, match="layer_types=.*'chunked_attention'"):
        llama.Config.from_hf(base | dict(layer_types=["chunked_attention"] * 7))
    with pytest.raises(ValueError, match=r"rope_parameters\['sliding_attention'\]\['rope_type'\]='yarn'"):
        llama.Config.from_hf(base | dict(rope_parameters={"sliding_attention": {"rope_type": "yarn"}}))


def test_phi3_residual_and_embedding_dropout_train_only(tiny_dir):
    """Phi-3's resid_pdrop / embd_pdrop drop in training (a dropout key given) and nowhere else."""
    path = tiny_dir("phi3", "causal_lm", resid_pdrop=0.3, embd_pdrop=0.2)
    pm = jsoft.get_peft_model(jsoft.from_pretrained(path, task="causal_lm"),
                              jsoft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3), seed=1)
    assert (pm.base_model.config.resid_dropout, pm.base_model.config.embd_dropout) == (0.3, 0.2)
    ids = np.random.default_rng(0).integers(3, 100, (2, 7))
    run = lambda key=None: np.asarray(pm(input_ids=ids, dropout_rng=key).logits)
    key = jax.random.key(0)
    np.testing.assert_array_equal(run(key), run(key))
    assert not np.allclose(run(key), run())
    np.testing.assert_array_equal(run(), run())


@pytest.mark.parametrize("hf,sliding", [
    # config.json files from before transformers wrote layer_types: each family's own default
    (dict(model_type="qwen2", use_sliding_window=True, sliding_window=8, max_window_layers=2), (False, False, True)),
    (dict(model_type="qwen2_moe", use_sliding_window=True, sliding_window=8, max_window_layers=2),
     (True, False, False)),
    (dict(model_type="qwen3_moe", use_sliding_window=True, sliding_window=8), (True, True, True)),
    (dict(model_type="qwen3_moe", use_sliding_window=False, sliding_window=8), ()),
    (dict(model_type="mixtral", sliding_window=8), (True, True, True)),
    (dict(model_type="gemma2", sliding_window=8), (True, False, True)),
    (dict(model_type="gemma3_text", sliding_window=8, sliding_window_pattern=2), (True, False, True)),
    (dict(model_type="llama", sliding_window=8), ()),
    # SmolLM3: its NoPE layers (every no_rope_layer_interval-th, or no_rope_layers' zeros) slide
    (dict(model_type="smollm3", use_sliding_window=True, sliding_window=8, no_rope_layer_interval=2),
     (False, True, False)),
    (dict(model_type="smollm3", use_sliding_window=True, sliding_window=8, no_rope_layers=[0, 1, 1]),
     (True, False, False)),
    (dict(model_type="smollm3", sliding_window=8, no_rope_layers=[0, 1, 1]), ()),
    (dict(model_type="cohere2", sliding_window=8), (True, True, True)),  # all but every 4th
    (dict(model_type="cohere2", sliding_window=8, sliding_window_pattern=2), (True, False, True)),
    (dict(model_type="olmo3", sliding_window=8), (True, True, True)),  # all but every 4th
    (dict(model_type="ministral", sliding_window=8), (True, True, True)),  # no layer_types: every layer
    (dict(model_type="ministral", sliding_window=None), ()),
    (dict(model_type="ministral3", sliding_window=8), (True, True, True)),
    (dict(model_type="vaultgemma", sliding_window=8), (True, False, True)),  # every other, from the first
    (dict(model_type="cwm", sliding_window=8), (False, True, True)),  # all but every 4th, from the first
    (dict(model_type="exaone4", sliding_window=8), (True, True, True)),  # all but every 4th
    (dict(model_type="exaone4", sliding_window=8, sliding_window_pattern="LG"), (True, False, True)),
    (dict(model_type="exaone4", sliding_window=None, layer_types=["full_attention"] * 3), ()),
    (dict(model_type="ministral", sliding_window=8, layer_types=["sliding_attention"] + ["full_attention"] * 2),
     (True, False, False)),
])
def test_which_layers_slide(hf, sliding):
    assert llama_config.sliding_layers(dict(hf, num_hidden_layers=3)) == sliding


def test_smollm3_nope_layers():
    hf = dict(model_type="smollm3", num_hidden_layers=4)
    assert llama_config.nope_layers(hf) == (False, False, False, True)  # transformers' default: every 4th
    assert llama_config.nope_layers(dict(hf, no_rope_layers=[1, 0, 1, 1])) == (False, True, False, False)
    assert llama_config.nope_layers(dict(hf, no_rope_layers=[1, 1, 1, 1])) == ()
    with pytest.raises(ValueError, match="no_rope_layers has 3 entries; expected 4"):
        llama_config.nope_layers(dict(hf, no_rope_layers=[1, 1, 1]))


def test_olmo3_rope_spellings():
    hf = dict(model_type="olmo3", vocab_size=11, hidden_size=32, intermediate_size=40, num_hidden_layers=4,
              num_attention_heads=2, sliding_window=8)
    older = llama.Config.from_hf(dict(hf, rope_theta=5e5))  # one base for both kinds of layer
    assert (older.rope_theta, older.local_rope_theta) == (5e5, 5e5)
    assert older.sliding_layers == (True, True, True, False) and older.norm_placement == "post"
    newer = llama.Config.from_hf(dict(hf, rope_parameters={
        "full_attention": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 5e5},
        "sliding_attention": {"rope_type": "default", "rope_theta": 1e4}}))
    assert (newer.rope_type, newer.rope_theta, newer.local_rope_theta) == ("yarn", 5e5, 1e4)
    with pytest.raises(ValueError, match=r"\['sliding_attention'\]\['rope_type'\]='linear'.*olmo3"):
        llama.Config.from_hf(dict(hf, rope_parameters={"sliding_attention": {"rope_type": "linear", "factor": 2.0}}))


@pytest.mark.parametrize("hf,nope", [
    (dict(sliding_window=8, sliding_window_pattern=2), (False, True, False)),  # full layers skip RoPE
    (dict(sliding_window=8, layer_types=["full_attention"] * 3), (True, True, True)),
    (dict(sliding_window=None, layer_types=["full_attention"] * 3), ()),  # no window: every layer rotates
])
def test_exaone4_full_layers_skip_rope_when_it_slides(hf, nope):
    assert llama_config.nope_layers(dict(hf, model_type="exaone4", num_hidden_layers=3)) == nope


def test_olmo_weightless_norms_and_clipping_matter(tiny_dir):
    """OLMo's LayerNorms (no weight, no bias) and its clip_qkv both change the tiny model's logits, which match
    transformers' (so the parity matrix checks both)."""
    ref_model = tiny.build("olmo", "causal_lm")
    model = jsoft.from_pretrained(tiny_dir("olmo", "causal_lm"), task="causal_lm")
    assert not jax.tree.leaves(nnx.state(model.model.norm)) and model.config.clip_qkv == 0.1
    ids, mask = batch("olmo")
    keep = mask.astype(bool)
    with torch.no_grad():
        want = ref_model(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()[keep]

    def logits():
        return np.asarray(model(input_ids=ids, attention_mask=mask).logits)[keep]

    np.testing.assert_allclose(logits(), want, atol=1e-4)
    model.config.clip_qkv = None
    assert np.abs(logits() - want).max() > 1e-3
    model.config.clip_qkv = 0.1
    for layer in model.model.layers:  # RMS norms of weight one in their place
        layer.input_layernorm = layer.post_attention_layernorm = llama.RMSNorm(48, 1e-5, llama.Precision())
    model.model.norm = llama.RMSNorm(48, 1e-5, llama.Precision())
    assert np.abs(logits() - want).max() > 1e-3


def test_gpt_oss_mxfp4_experts_load_as_transformers_dequantizes_them(tmp_path):
    """OpenAI's GPT-OSS checkpoints store the experts as MXFP4 blocks and scales: jsoft reads them as the bf16
    tensors transformers' `convert_moe_packed_tensors` makes, and the model's logits match transformers' with those
    weights. A quantization jsoft cannot read is refused by name."""
    from safetensors.torch import load_file, save_file
    from transformers.integrations.mxfp4 import convert_moe_packed_tensors

    ref = tiny.build("gpt_oss", "causal_lm", initializer_range=0.3, intermediate_size=32)  # whole 32-input groups
    ref.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    g = torch.Generator().manual_seed(0)
    for name in [n for n in tensors if n.endswith(("gate_up_proj", "down_proj"))]:
        E, inputs, outputs = tensors.pop(name).shape  # [experts, in, out]; MXFP4 groups 32 inputs per block
        blocks = torch.randint(0, 256, (E, outputs, inputs // 32, 16), dtype=torch.uint8, generator=g)
        scales = torch.randint(123, 128, (E, outputs, inputs // 32), dtype=torch.uint8, generator=g)
        tensors[name + "_blocks"], tensors[name + "_scales"] = blocks, scales
        with torch.no_grad():
            ref.get_parameter(name).copy_(convert_moe_packed_tensors(blocks, scales).float())
    save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": ["router", "self_attn"]}
    (tmp_path / "config.json").write_text(json.dumps(config))

    model = jsoft.from_pretrained(tmp_path, task="causal_lm")
    assert not model.initialised_params
    ids, mask = batch("gpt_oss", T=13)
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model(input_ids=ids, attention_mask=mask).logits)[keep], want[keep],
                               atol=1e-4, rtol=0)

    config["quantization_config"] = {"quant_method": "bitsandbytes"}
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="quant_method='bitsandbytes' is not supported"):
        jsoft.from_pretrained(tmp_path, task="causal_lm")


def test_deepseek_v3_config_defaults_and_router_errors(tmp_path):
    """DeepSeek-V3's config.json read as transformers reads it (its class's defaults where a key is absent; MLA
    heads all key / value heads; the cache width the wider of query / key and value), the router's correction bias
    in fp32 under bf16 weights, and a router config that cannot choose experts refused by key."""
    hf = tiny.CONFIGS["deepseek_v3"]().to_dict()
    c = llama.Config.from_hf(hf)
    assert (c.num_kv_heads, c.head_dim, c.rotary_dim, c.v_head_dim) == (4, 12, 4, 6)
    assert (c.moe_layers, c.moe_groups, c.moe_topk_groups, c.routed_scaling_factor) == ((False, True), 4, 2, 2.5)
    assert c.shared_expert_intermediate_size == 16 and c.rope_interleaved and c.query_scale == 12 ** -0.5
    bare = {k: v for k, v in hf.items() if k not in ("n_group", "topk_group", "routed_scaling_factor",
                                                     "first_k_dense_replace", "n_shared_experts")}
    d = llama.Config.from_hf(bare | dict(num_hidden_layers=4, n_routed_experts=16))
    assert (d.moe_layers, d.moe_groups, d.moe_topk_groups, d.routed_scaling_factor) == (
        (False, False, False, True), 8, 4, 2.5)
    tiny.save("deepseek_v3", "causal_lm", tmp_path)
    router = jsoft.from_pretrained(tmp_path, task="causal_lm", dtype="bfloat16").model.layers[1].mlp.gate
    assert router.kernel[...].dtype == jax.numpy.bfloat16  # the correction bias stays fp32, as in transformers
    assert router.e_score_correction_bias[...].dtype == jax.numpy.float32
    for bad, match in [(dict(n_group=3), "n_group=3 must split the 8 experts"),
                       (dict(topk_group=5), "topk_group=5 must be between 1 and n_group=4"),
                       (dict(num_experts_per_tok=5), "num_experts_per_tok=5 .* the 4 experts of the topk_group=2")]:
        (tmp_path / "config.json").write_text(json.dumps(hf | bad))
        with pytest.raises(ValueError, match=match):
            jsoft.from_pretrained(tmp_path, task="causal_lm")
    v2 = tiny.CONFIGS["deepseek_v2"]().to_dict()
    greedy = llama.Config.from_hf(v2 | dict(topk_method="greedy", norm_topk_prob=True))
    assert (greedy.moe_kind, greedy.moe_groups, greedy.moe_topk_groups, greedy.norm_topk_prob) == (
        "grouped_softmax", 1, 1, False)  # transformers' DeepSeek-V2 never renormalises
    with pytest.raises(ValueError, match="topk_method='noaux_tc' is not supported .* 'group_limited_greedy'"):
        llama.Config.from_hf(v2 | dict(topk_method="noaux_tc"))
    lite = tiny.CONFIGS["glm4_moe_lite"]().to_dict()
    assert llama.Config.from_hf(lite).moe_layers == (True, False, True)
    with pytest.raises(ValueError, match="mlp_layer_types=.*expected 3 entries .* 'dense' or 'sparse'"):
        llama.Config.from_hf(lite | dict(mlp_layer_types=["dense", "moe", "sparse"]))
    with pytest.raises(ValueError, match="dots1 model needs n_routed_experts"):
        llama.Config.from_hf({k: v for k, v in tiny.CONFIGS["dots1"]().to_dict().items() if k != "n_routed_experts"})


def _fp8_blocks(w: torch.Tensor, block: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`w` in FP8 (e4m3) with one scale per block x block tile, as DeepSeek-V3's checkpoints store it."""
    rows, cols = w.shape
    tiles = w.reshape(rows // block, block, cols // block, block)
    scale = tiles.abs().amax(dim=(1, 3)).clamp(min=1e-12) / 448.0
    return (tiles / scale[:, None, :, None]).to(torch.float8_e4m3fn).reshape(rows, cols), scale.float()


def test_block_scaled_fp8_checkpoint_loads_as_transformers_dequantizes_it(tmp_path):
    """DeepSeek-V3's released checkpoints: every projection (experts included) in FP8 with a `weight_scale_inv`
    per 4 x 4 block here (128 x 128 there). jsoft's logits equal transformers' loading the same files (it
    dequantizes them on a CPU), and differ from the unquantized model's; FP8 without its scales is refused."""
    from safetensors.torch import load_file, save_file

    tiny.save("deepseek_v3", "causal_lm", tmp_path)
    unquantized = jsoft.from_pretrained(tmp_path, task="causal_lm")
    tensors = load_file(tmp_path / "model.safetensors")
    quantized = {}
    for name, w in tensors.items():
        if name.endswith("proj.weight") and w.ndim == 2 and not (w.shape[0] % 4 or w.shape[1] % 4):
            quantized[name], quantized[name + "_scale_inv"] = _fp8_blocks(w, 4)
        else:
            quantized[name] = w
    assert sum(n.endswith("_scale_inv") for n in quantized) > 20  # attention, dense MLP and every expert
    save_file(quantized, tmp_path / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((tmp_path / "config.json").read_text())
    config["quantization_config"] = {"quant_method": "fp8", "fmt": "e4m3", "activation_scheme": "dynamic",
                                     "weight_block_size": [4, 4]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ids, mask = batch("deepseek_v3")
    ref = tf.AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32).eval()
    with torch.no_grad():
        want = ref(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    got = np.asarray(jsoft.from_pretrained(tmp_path, task="causal_lm")(input_ids=ids, attention_mask=mask).logits)
    keep = mask.astype(bool)
    np.testing.assert_allclose(got[keep], want[keep], atol=1e-4, rtol=0)
    plain = np.asarray(unquantized(input_ids=ids, attention_mask=mask).logits)
    assert np.abs(plain[keep] - got[keep]).max() > 1e-3  # FP8's rounding shows: the scales were applied
    del quantized["model.layers.0.self_attn.o_proj.weight_scale_inv"]
    save_file(quantized, tmp_path / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="o_proj.weight' is stored in float8_e4m3fn without a .*_scale_inv"):
        jsoft.from_pretrained(tmp_path, task="causal_lm")


def test_minimax_m2_reads_its_released_rotary_dim():
    """MiniMax-M2's released config.json states partial RoPE as `rotary_dim` (transformers converts it)."""
    hf = {k: v for k, v in tiny.CONFIGS["minimax_m2"]().to_dict().items() if k != "rope_parameters"}
    c = llama.Config.from_hf(hf | dict(rope_theta=5e6, rotary_dim=4))
    assert (c.rotary_dim, c.rope_theta, c.qk_norm, c.moe_groups, c.norm_topk_prob) == (4, 5e6, "width", 1, True)
    assert llama.Config.from_hf(hf | dict(rotary_dim=None)).rotary_dim is None


def test_hunyuan_moe_per_layer_values_must_agree():
    """Hunyuan's `num_experts` / `moe_topk` may be lists, one per layer: equal ones are read, differing refused."""
    hf = tiny.CONFIGS["hunyuan_v1_moe"]().to_dict()
    c = llama.Config.from_hf(hf | dict(num_experts=[6, 6], moe_topk=[2, 2]))
    assert (c.num_experts, c.experts_per_token, c.moe_layers, c.rope_type) == (6, 2, (True, True), "default")
    assert c.rope_theta == pytest.approx(10000.0 * 50.0 ** (8 / 6))  # NTK alpha: the base stretched
    with pytest.raises(ValueError, match=r"moe_topk=\[1, 2\] differs between layers"):
        llama.Config.from_hf(hf | dict(moe_topk=[1, 2]))


def test_granite4_config_reads_its_layers_and_mamba2_shape():
    """Granite 4 (granitemoehybrid): `layer_types` in both spellings (default: all Mamba-2), RoPE only when
    position_embedding_type says "rope", Mamba-2's shape from `mamba_*` (head width "auto": expand x hidden / heads),
    the step-size limit as transformers writes an infinity; shapes that do not divide refused by name."""
    hf = json.loads(tiny.CONFIGS["granitemoehybrid"]().to_json_string())
    c = llama.Config.from_hf(hf)
    assert (c.linear_layers, c.linear_kind, c.nope_layers, c.moe_layers, c.shared_mlp_intermediate_size) == (
        (True, False, True), "mamba2", (True,) * 3, (True,) * 3, 40)
    assert (c.linear_value_heads, c.linear_value_head_dim, c.linear_key_heads, c.linear_key_head_dim) == (8, 12, 2, 8)
    assert hf["time_step_limit"][1] == {"__float__": "Infinity"} and c.linear_dt_limit == (0.0, float("inf"))
    assert llama.Config.from_hf(hf | dict(position_embedding_type="rope")).nope_layers == ()
    assert llama.Config.from_hf(hf | dict(layer_types=None)).linear_layers == (True,) * 3
    spelled = llama.Config.from_hf(hf | dict(layer_types=["linear_attention", "full_attention", "attention"]))
    assert spelled.linear_layers == (True, False, False)
    with pytest.raises(ValueError, match="layer_types=.*expected 3 entries .* 'attention' / 'full_attention'"):
        llama.Config.from_hf(hf | dict(layer_types=["mamba", "sliding_attention", "mamba"]))
    with pytest.raises(ValueError, match="mamba_n_heads=8 x mamba_d_head=10 must equal mamba_expand x hidden_size=96"):
        llama.Config.from_hf(hf | dict(mamba_d_head=10))
    with pytest.raises(ValueError, match="mamba_n_groups=3 must divide mamba_n_heads=8"):
        llama.Config.from_hf(hf | dict(mamba_n_groups=3))
    with pytest.raises(ValueError, match="shared_intermediate_size=0"):
        llama.Config.from_hf(hf | dict(shared_intermediate_size=0))


def test_bamba_config_reads_its_attention_layers_and_half_rotary():
    """Bamba: attention at `attn_layer_indices`, Mamba-2 elsewhere; half of each head rotated whatever config.json
    says (BambaConfig fixes it); the final norm under its own name."""
    hf = json.loads(tiny.CONFIGS["bamba"]().to_json_string())
    c = llama.Config.from_hf(hf | dict(attn_layer_indices=[0, 2], rope_parameters={"rope_type": "default",
                                                                                    "rope_theta": 1e4}))
    assert (c.linear_layers, c.linear_kind, c.rotary_dim, c.norm_placement) == ((False, True, False), "mamba2", 6,
                                                                                "bamba")
    assert llama.Config.from_hf(hf | dict(attn_layer_indices=None)).linear_layers == (True,) * 3
    model = llama.build(c, "causal_lm", None, llama.Precision(), nnx.Rngs(0))
    assert hasattr(model.model, "final_layernorm") and not hasattr(model.model, "norm")


def test_nemotron_h_config_reads_its_blocks_in_every_spelling():
    """Nemotron-H: one block a layer from `layers_block_type` (older names "mamba" / "attention"), or from the released
    checkpoints' `hybrid_override_pattern` ("M" Mamba-2, "*" attention, "-" MLP, "E" experts); attention without
    positions or biases; Mamba-2's chunked steps clamped below at `time_step_min`; NemotronHConfig's defaults where
    config.json is silent (8 key/value heads, 128-wide heads; None key/value heads: one per query head). Layers
    without a mixer hold no norm or cache but the one before their block."""
    hf = json.loads(tiny.CONFIGS["nemotron_h"]().to_json_string())
    c = llama.Config.from_hf(hf | dict(attention_bias=True, time_step_min=0.01))
    assert (c.layer_blocks, c.linear_layers, c.moe_layers) == (("mixer", "ffn", "mixer", "ffn", "mixer"),
                                                               (True, False, False, False, True),
                                                               (False, True, False, False, False))
    assert (c.nope_layers, c.attention_bias, c.gated_mlp, c.activation, c.linear_activation) == (
        (True,) * 5, False, False, "relu2", "silu")
    assert c.linear_dt_limit == (0.01, float("inf")) and c.cacheless_layers == (False, True, False, True, False)
    released = {k: v for k, v in hf.items() if k not in ("layers_block_type", "head_dim", "num_key_value_heads")}
    c = llama.Config.from_hf(released | dict(hybrid_override_pattern="M-*E"))
    assert (c.num_layers, c.layer_blocks, c.linear_layers, c.head_dim, c.num_kv_heads) == (
        4, ("mixer", "ffn", "mixer", "ffn"), (True, False, False, False), 128, 8)
    legacy = llama.Config.from_hf(hf | dict(layers_block_type=["mamba", "attention", "mlp"], num_key_value_heads=None))
    assert (legacy.linear_layers, legacy.num_kv_heads) == ((True, False, False), 4)
    with pytest.raises(ValueError, match=r"hybrid_override_pattern='M\+': each character must be one of"):
        llama.Config.from_hf(released | dict(hybrid_override_pattern="M+"))
    with pytest.raises(ValueError, match="layers_block_type=.*'sliding_attention'.* must be one of"):
        llama.Config.from_hf(hf | dict(layers_block_type=["mamba", "sliding_attention"]))
    with pytest.raises(ValueError, match="n_groups=3 must divide mamba_num_heads=8"):
        llama.Config.from_hf(hf | dict(n_groups=3))
    model = llama.build(llama.Config.from_hf(hf), "causal_lm", None, llama.Precision(), nnx.Rngs(0))
    mlp_layer = model.model.layers[3]
    assert mlp_layer.mixer_name is None and mlp_layer.ffn_names == ("mlp",) and hasattr(mlp_layer, "norm")
    assert hasattr(model.model, "norm_f")


def test_mamba2_stack_config_reads_mamba2config_names():
    """A pure Mamba-2 stack (`mamba2`): `num_heads` x `head_dim`, `state_size`, `n_groups`, `hidden_act` are the Mamba-2
    layers'; its chunked steps clamped to `time_step_limit`; heads that do not fill expand x hidden_size refused."""
    hf = json.loads(tiny.CONFIGS["mamba2"](time_step_limit=(0.1, 2.0)).to_json_string())
    c = llama.Config.from_hf(hf)
    assert (c.layer_blocks, c.linear_layers, c.linear_kind, c.cacheless_layers) == (
        ("mixer",) * 3, (True,) * 3, "mamba2", (False,) * 3)
    assert (c.linear_value_heads, c.linear_value_head_dim, c.linear_key_heads, c.linear_key_head_dim) == (8, 12, 2, 8)
    assert (c.linear_dt_limit, c.linear_activation, c.final_norm_name) == ((0.1, 2.0), "silu", "norm_f")
    with pytest.raises(ValueError, match="num_heads=8 x head_dim=10 must equal expand x hidden_size=96"):
        llama.Config.from_hf(hf | dict(head_dim=10))


def test_ministral3_needs_its_query_scaling_keys():
    hf = tiny.CONFIGS["ministral3"]().to_dict()
    rope = {k: v for k, v in hf["rope_parameters"].items() if k != "llama_4_scaling_beta"}
    with pytest.raises(ValueError, match="ministral3 model needs 'llama_4_scaling_beta'"):
        llama.Config.from_hf(hf | dict(rope_parameters=rope))


def test_internlm3_reads_its_released_bias_names():
    """InternLM3's released config.json says `qkv_bias` and `bias` (InternLM3Config's aliases of attention_bias and
    mlp_bias); transformers 5 saves the Llama names. Either spelling reaches every projection; differing settings
    are refused, as transformers refuses them."""
    hf = {k: v for k, v in tiny.CONFIGS["internlm3"]().to_dict().items() if k not in ("attention_bias", "mlp_bias")}
    for released, want in [(dict(qkv_bias=True, bias=True), True), (dict(qkv_bias=False, bias=False), False),
                           ({}, False), (dict(attention_bias=True, mlp_bias=True), True)]:
        c = llama.Config.from_hf(hf | released)
        assert (c.attention_bias, c.attention_out_bias, c.mlp_bias) == (want,) * 3
        ref = tf.InternLM3Config(**(hf | released))
        assert (ref.attention_bias, ref.mlp_bias) == (want, want)
    with pytest.raises(ValueError, match=r"qkv_bias / attention_bias \(True\) must equal bias / mlp_bias \(False\)"):
        llama.Config.from_hf(hf | dict(qkv_bias=True, bias=False))


@pytest.mark.parametrize("text_kind", ["ministral3", "mistral4"])
def test_mistral3_checkpoint_reads_its_text_model_type(tmp_path, text_kind):
    """A `mistral3` checkpoint's language model is whatever its text_config names: Ministral 3's, Mistral Small 4's
    (latent attention, experts stored stacked under `model.language_model.`), each as transformers runs it."""
    text = tiny.CONFIGS[text_kind]().to_dict()
    tiny.save("mistral3", "causal_lm", tmp_path, **text)
    ids, mask = batch(text_kind, T=14, side="left")
    with torch.no_grad():
        ref = tiny.build("mistral3", "causal_lm", **text)(
            input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask)).logits.numpy()
    model = jsoft.from_pretrained(tmp_path, task="causal_lm")
    assert (model.config.model_type, model.config.temperature_scale, model.initialised_params) == (text_kind, 0.5, ())
    keep = mask.astype(bool)
    np.testing.assert_allclose(np.asarray(model(input_ids=ids, attention_mask=mask).logits)[keep], ref[keep],
                               atol=1e-4, rtol=0)


@pytest.mark.parametrize("rows", [4, 9])  # fewer rows than experts (each row's expert gathered), more (grouped)
def test_expert_matmuls_give_each_row_its_experts_product(rows):
    """A decoding step has fewer (token, expert) rows than experts: each row's expert's weights are gathered rather
    than run through the grouped matmul (XLA's CPU backend computes every expert there); both give each row its own
    expert's product, in either weight layout."""
    from jsoft.models import moe

    rng = np.random.default_rng(rows)
    E, I, O = 6, 5, 3
    w = rng.normal(size=(E, I, O)).astype(np.float32)
    expert = np.sort(rng.integers(0, E, rows))
    x = rng.normal(size=(rows, I)).astype(np.float32)
    groups = moe.Groups(np.bincount(expert, minlength=E).astype(np.int32), expert)
    want = np.einsum("ni,nio->no", x, w[expert])
    np.testing.assert_allclose(np.asarray(moe.grouped_matmul(x, w, groups)), want, atol=1e-5)
    np.testing.assert_allclose(np.asarray(moe.grouped_linear(x, np.swapaxes(w, 1, 2), groups)), want, atol=1e-5)
