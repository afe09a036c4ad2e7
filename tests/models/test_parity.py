"""Backbone x head parity against transformers' PyTorch models, on padded batches."""

import json

import numpy as np
import pytest
import torch

import jsoft
from tests import tiny


def batch(kind, B=3, T=11, side="right", seed=0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, tiny.VOCAB, size=(B, T))
    mask = np.ones((B, T), np.int64)
    for b, n in enumerate([0, 3, 6][:B]):  # rows of different lengths
        if n:
            if side == "right":
                mask[b, T - n:] = 0
                ids[b, T - n:] = 0
            else:
                mask[b, :n] = 0
                ids[b, :n] = 0
    return ids, mask


def hf_out(model, task, ids, mask, dec_ids=None):
    kw = dict(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask))
    if dec_ids is not None:
        kw["decoder_input_ids"] = torch.tensor(dec_ids)
    with torch.no_grad():
        out = model(**kw)
    return (out.logits if task else out.last_hidden_state).numpy()


def jsoft_out(path, task, ids, mask, dec_ids=None):
    model = jsoft.from_pretrained(path, task=task, num_labels=3)
    kw = dict(input_ids=ids, attention_mask=mask)
    if dec_ids is not None:
        kw["decoder_input_ids"] = dec_ids
    out = model(**kw)
    return np.asarray(out.logits if task else out.last_hidden_state)


@pytest.mark.parametrize("kind,task", tiny.TASK_MATRIX, ids=lambda x: str(x))
@pytest.mark.parametrize("side", ["right", "left"])
def test_logits_match_transformers(tiny_dir, kind, task, side):
    if side == "left" and kind in ("bert", "t5", "umt5", "deberta", "deberta-v2", "electra", "albert"):
        pytest.skip("encoders with relative positions or no causal mask: left padding tests nothing new")
    if side == "left" and (kind, task) == ("modernbert", "seq_cls"):
        pytest.skip("a left-padded classifier reads a pad, whose local window may hold only pads: transformers "
                    "then averages every key, jsoft none")
    path = tiny_dir(kind, task)
    ref_model = tiny.build(kind, task)
    ids, mask = batch(kind, side=side)
    dec = np.random.default_rng(1).integers(0, tiny.VOCAB, size=(3, 5)) if kind in tiny.ENCODER_DECODER else None
    ref = hf_out(ref_model, task, ids, mask, dec)
    got = jsoft_out(path, task, ids, mask, dec)
    assert got.shape == ref.shape
    if task in (None, "causal_lm", "token_cls") and kind not in tiny.ENCODER_DECODER:  # real tokens only
        keep = mask.astype(bool)
        got, ref = got[keep], ref[keep]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_bf16_weights_stay_close_to_fp32(tiny_dir, kind):
    """bf16 storage and compute (dots accumulate in fp32, layers.dense): logits near fp32's."""
    path = tiny_dir(kind, "causal_lm")
    ids = np.random.default_rng(0).integers(3, 90, size=(2, 9))
    full = np.asarray(jsoft.from_pretrained(path, task="causal_lm")(input_ids=ids).logits)
    half_model = jsoft.from_pretrained(path, task="causal_lm", dtype="bfloat16")
    assert half_model.word_embeddings.embedding[...].dtype == np.dtype("bfloat16")
    half = np.asarray(half_model(input_ids=ids).logits, np.float32)
    scale = np.abs(full).max()
    assert np.abs(half - full).max() < 0.03 * scale
    assert (half.argmax(-1) == full.argmax(-1)).mean() > 0.8


CONFIG_VARIANTS = [  # (kind, task, config overrides): options real checkpoints set, each against transformers
    ("gpt2", "causal_lm", dict(tie_word_embeddings=False)),
    ("gpt2", "causal_lm", dict(scale_attn_weights=False, activation_function="quick_gelu")),
    ("gpt2", "seq_cls", dict(scale_attn_by_inverse_layer_idx=True, reorder_and_upcast_attn=True, n_inner=100)),
    ("bert", "seq_cls", dict(hidden_act="gelu_new", type_vocab_size=1, num_labels=1)),
    ("t5", "seq2seq_lm", dict(feed_forward_proj="gated-gelu", tie_word_embeddings=False, d_kv=6)),
    # untied: encoder, decoder and LM head each read their own table, none of them `shared`
    ("bart", "seq2seq_lm", dict(scale_embedding=True, tie_word_embeddings=False, activation_function="relu")),
    ("llama", "causal_lm", dict(head_dim=16, num_key_value_heads=1, attention_bias=True, mlp_bias=True)),
    ("llama", "causal_lm", dict(tie_word_embeddings=True, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8})),
    # YaRN (Qwen2.5 / Qwen3 long context): frequencies ramped between interpolated and kept, cos / sin scaled; and
    # DeepSeek's mscale / mscale_all_dim ratio, other betas, an unrounded ramp
    ("qwen2", "causal_lm", dict(rope_scaling={"rope_type": "yarn", "factor": 4.0,
                                              "original_max_position_embeddings": 8})),
    ("llama", "causal_lm", dict(rope_scaling={
        "rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 64, "mscale": 0.9,
        "mscale_all_dim": 0.5, "beta_fast": 4, "beta_slow": 1, "truncate": False})),
    ("gpt_neox", "causal_lm", dict(rope_parameters={
        "rope_type": "yarn", "factor": 4.0, "rope_theta": 100.0, "partial_rotary_factor": 0.5,
        "original_max_position_embeddings": 32})),
    # dynamic NTK: the batch's 11 positions outgrow the 8 of max_position_embeddings, so the base is scaled
    ("llama", "causal_lm", dict(max_position_embeddings=8, rope_scaling={"rope_type": "dynamic", "factor": 3.0})),
    # sliding windows narrower than the batch: every Mistral layer; Qwen2's from max_window_layers on; Gemma 2's
    # every other layer (Gemma 3's: the tiny default)
    ("mistral", "seq_cls", dict(sliding_window=4)),
    ("qwen2", "causal_lm", dict(use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    ("gemma2", "causal_lm", dict(sliding_window=4)),
    ("qwen2_moe", "causal_lm", dict(use_sliding_window=True, sliding_window=3, max_window_layers=1)),
    ("qwen3_moe", "causal_lm", dict(use_sliding_window=True, sliding_window=3)),
    ("gemma3_text", "causal_lm", dict(layer_types=None, sliding_window_pattern=2, rope_scaling=None)),
    # Phi-3-mini-4k's shape: short LongRoPE factors within the original length, the whole head rotated, no window
    ("phi3", "causal_lm", dict(original_max_position_embeddings=64, partial_rotary_factor=1.0, sliding_window=None,
                               rope_scaling={"rope_type": "longrope", "short_factor": [1.0, 1.2, 1.5, 2.0, 2.5, 3.0],
                                             "long_factor": [4.0] * 6}, tie_word_embeddings=True)),
    ("bloom", "causal_lm", dict(n_head=12, apply_residual_connection_post_layernorm=True, tie_word_embeddings=False)),
    # opt-350m: post-LN layers, no final LayerNorm, 32-wide word embeddings projected in and out of the 48-wide stack
    ("opt", "causal_lm", dict(do_layer_norm_before=False, word_embed_proj_dim=32, activation_function="gelu")),
    ("opt", "seq_cls", dict(do_layer_norm_before=False, word_embed_proj_dim=32, num_labels=2)),
    ("opt", "causal_lm", dict(enable_bias=False, _remove_final_layer_norm=True, tie_word_embeddings=False)),
    # DeBERTa-v2 (v3 is the tiny default): separate position projections, unbucketed distances clamped to 6, absolute
    # positions and token types; xlarge's convolution beside the first layer; ALBERT-style narrower embeddings;
    # c2p alone; no relative attention at all
    ("deberta-v2", "token_cls", dict(share_att_key=False, position_buckets=-1, max_relative_positions=6,
                                     position_biased_input=True, type_vocab_size=2)),
    ("deberta-v2", "token_cls", dict(conv_kernel_size=3, conv_act="gelu", attention_head_size=8)),
    ("deberta-v2", "seq_cls", dict(conv_kernel_size=5, conv_groups=4, num_hidden_layers=1)),
    ("deberta-v2", "token_cls", dict(embedding_size=24, pos_att_type="c2p", share_att_key=False)),
    ("deberta-v2", "seq_cls", dict(relative_attention=False, position_biased_input=True, pooler_hidden_act="tanh",
                                   num_labels=2)),
    ("deberta", "token_cls", dict(max_relative_positions=-1, position_biased_input=True, type_vocab_size=2,
                                  pos_att_type="p2c", embedding_size=24)),
    ("distilbert", "seq_cls", dict(sinusoidal_pos_embds=True, activation="relu", num_labels=2)),
    ("electra", "token_cls", dict(embedding_size=24, hidden_act="gelu_new")),  # electra-small's projected embeddings
    # GPT-OSS: full attention first, one expert per token
    ("gpt_oss", "causal_lm", dict(layer_types=["full_attention", "sliding_attention"], num_experts_per_tok=1)),
    # ALBERT with 2 groups of 2 layers, each group run for 2 of the 4 steps
    ("albert", "seq_cls", dict(num_hidden_layers=4, num_hidden_groups=2, inner_group_num=2, hidden_act="gelu")),
    # mean pooling; biases everywhere; every layer global
    ("modernbert", "seq_cls", dict(classifier_pooling="mean", norm_bias=True, attention_bias=True, mlp_bias=True,
                                   classifier_bias=True, classifier_activation="silu")),
    ("modernbert", "token_cls", dict(global_attn_every_n_layers=1, hidden_activation="gelu_new")),
    # DeepSeek-V2-Lite's queries (q_proj, no latent), biases, unrotated RoPE layout; values wider than queries /
    # keys (the keys padded); YaRN with mscale_all_dim, which also scales the scores
    ("deepseek_v3", "causal_lm", dict(q_lora_rank=None, attention_bias=True, rope_interleave=False, v_head_dim=16,
                                      rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 10000.0,
                                                       "original_max_position_embeddings": 16, "mscale": 0.8,
                                                       "mscale_all_dim": 0.6})),
    # DeepSeek-V2-Lite's layout: queries without a latent, greedy top-k over every expert
    ("deepseek_v2", "causal_lm", dict(q_lora_rank=None, topk_method="greedy", n_group=None, topk_group=None,
                                      mlp_bias=False)),
    # no shared experts: transformers still runs a 0-wide shared MLP, whose output is its down_proj bias
    ("deepseek_v2", "causal_lm", dict(n_shared_experts=0)),
    ("mistral3", "causal_lm", dict(tie_word_embeddings=True)),  # tied at the top level of config.json
    # ERNIE 4.5 MoE's default: the LM head tied to the embeddings, with a bias of its own
    ("ernie4_5_moe", "causal_lm", dict(tie_word_embeddings=True, moe_layer_interval=1, moe_layer_end_index=2)),
    # Granite 4.0 micro's layout: attention only, RoPE, no experts (the shared MLP alone)
    ("granitemoehybrid", "causal_lm", dict(num_local_experts=0, num_hidden_layers=2, position_embedding_type="rope",
                                           layer_types=["attention", "attention"])),
    # Mamba-2 with biases on its projections, no convolution bias, one group, a clamped step size
    ("granitemoehybrid", "causal_lm", dict(mamba_proj_bias=True, mamba_conv_bias=False, mamba_n_groups=1,
                                           time_step_limit=(0.5, 2.0))),
    # Nemotron 3's experts in a latent width, biases on the MLPs and latent projections; Mamba-2 with projection
    # biases, no convolution bias, one group, its chunked steps clamped below at time_step_min
    ("nemotron_h", "causal_lm", dict(moe_latent_size=16, mlp_bias=True)),
    ("nemotron_h", "causal_lm", dict(time_step_min=0.7, use_bias=True, use_conv_bias=False, n_groups=1)),
    # a pure Mamba-2 stack: the LM head tied, projection biases, one group, its chunked steps clamped to
    # time_step_limit
    ("mamba2", "causal_lm", dict(tie_word_embeddings=True, use_bias=True, n_groups=1, time_step_limit=(0.3, 1.5))),
    # Jamba without experts, attention first, Mamba with projection biases, no convolution bias, its own step rank
    ("jamba", "causal_lm", dict(num_experts=1, attn_layer_offset=0, mamba_dt_rank=5, mamba_proj_bias=True,
                                mamba_conv_bias=False)),
    # Mamba with projection biases, no convolution bias, its own step rank, an untied LM head
    ("mamba", "causal_lm", dict(use_bias=True, use_conv_bias=False, time_step_rank=5, tie_word_embeddings=False)),
    # one group (no group limit), weights as scored, no query / key norms, every layer sparse, no shared expert
    ("glm4_moe", "causal_lm", dict(n_group=1, topk_group=1, norm_topk_prob=False, use_qk_norm=False,
                                   first_k_dense_replace=0, n_shared_experts=0, partial_rotary_factor=0.25)),
]


@pytest.mark.parametrize("kind,task,overrides", CONFIG_VARIANTS, ids=lambda x: str(x))
def test_config_variants_match_transformers(tiny_dir, kind, task, overrides):
    path = tiny_dir(kind, task, **overrides)
    ref_model = tiny.build(kind, task, **overrides)
    ids, mask = batch(kind)
    dec = np.random.default_rng(1).integers(0, tiny.VOCAB, size=(3, 5)) if kind in tiny.ENCODER_DECODER else None
    ref = hf_out(ref_model, task, ids, mask, dec)
    model = jsoft.from_pretrained(path, task=task, num_labels=overrides.get("num_labels", 3))
    kw = dict(input_ids=ids, attention_mask=mask) | ({} if dec is None else dict(decoder_input_ids=dec))
    got = np.asarray(model(**kw).logits)
    if task in ("causal_lm", "token_cls"):  # real tokens only
        keep = mask.astype(bool)
        got, ref = got[keep], ref[keep]
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=0)


def test_mamba2_checkpoints_before_the_embeddings_rename_load(tiny_dir, tmp_path):
    """Older Mamba-2 checkpoints name the word embeddings `backbone.embedding` (Mamba2Model's load hook renames it)."""
    from safetensors.torch import load_file, save_file

    path = tiny_dir("mamba2", "causal_lm")
    state = {k.replace("backbone.embeddings.", "backbone.embedding."): v
             for k, v in load_file(f"{path}/model.safetensors").items()}
    assert "backbone.embedding.weight" in state
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    ids, mask = batch("mamba2")
    np.testing.assert_array_equal(jsoft_out(tmp_path, "causal_lm", ids, mask), jsoft_out(path, "causal_lm", ids, mask))


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_legacy_layernorm_names_load(tmp_path, fmt):
    """The original BERT checkpoints (bert-base-uncased) store LayerNorm.gamma / .beta; transformers renames
    them on load, and so must jsoft (they were initialised to ones and zeros instead, with a warning)."""
    ref_model = tiny.build("bert", "seq_cls")
    state = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
             for k, v in ref_model.state_dict().items()}
    assert sum(k.endswith("LayerNorm.gamma") for k in state) == 7
    ref_model.config.save_pretrained(tmp_path)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors",
                  metadata={"format": "pt"})
    else:
        torch.save(state, tmp_path / "pytorch_model.bin")
    ids, mask = batch("bert")
    got = jsoft_out(tmp_path, "seq_cls", ids, mask)
    np.testing.assert_allclose(got, hf_out(ref_model, "seq_cls", ids, mask), atol=1e-5, rtol=0)


def test_pythia_config_and_checkpoint_names_load(tmp_path):
    """Pythia's config.json spells RoPE `rotary_pct` / `rotary_emb_base`, and its checkpoints name the LM head
    `embed_out` (transformers 5 renames both on load)."""
    ref_model = tiny.build("gpt_neox", "causal_lm", num_attention_heads=3, rope_parameters={
        "rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5})
    config = ref_model.config.to_dict()
    del config["rope_parameters"]
    config |= {"rotary_pct": 0.5, "rotary_emb_base": 500}
    (tmp_path / "config.json").write_text(json.dumps(config))
    from safetensors.torch import save_file

    state = {k.replace("lm_head.", "embed_out."): v.contiguous() for k, v in ref_model.state_dict().items()}
    assert "embed_out.weight" in state
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    ids, mask = batch("gpt_neox")
    got = jsoft_out(tmp_path, "causal_lm", ids, mask)
    keep = mask.astype(bool)
    np.testing.assert_allclose(got[keep], hf_out(ref_model, "causal_lm", ids, mask)[keep], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["bart", "mbart", "m2m_100", "marian", "pegasus"])
def test_decoder_inputs_from_labels_match_transformers(tiny_dir, kind):
    """BART (and M2M100, Marian, Pegasus) shifts the start token in; mBART wraps each row's last non-pad label (its
    language id) to the front."""
    import importlib

    labels = np.array([[5, 6, 7, 8, 9], [11, 12, 13, -100, -100], [21, 22, 0, 0, 0]])
    hf = importlib.import_module(f"transformers.models.{kind}.modeling_{kind}")
    c = tiny.CONFIGS[kind]()
    args = (c.pad_token_id,) if kind == "mbart" else (c.pad_token_id, c.decoder_start_token_id)
    want = hf.shift_tokens_right(torch.tensor(labels), *args).numpy()
    model = jsoft.from_pretrained(tiny_dir(kind, "seq2seq_lm"), task="seq2seq_lm")
    np.testing.assert_array_equal(np.asarray(model.shift_right(labels)), want)
    assert (want[:, 0] == ([9, 13, 22] if kind == "mbart" else c.decoder_start_token_id)).all()


def test_bart_family_config_defaults_and_errors():
    """M2M100 forces no EOS unless told (its config has no forced_eos_token_id; BART's defaults to 2); a Marian
    model with its own target vocabulary is refused by name."""
    from jsoft.models import bart

    assert bart.Config.from_hf(tiny.CONFIGS["m2m_100"]().to_dict()).forced_eos_token_id is None
    assert bart.Config.from_hf({k: v for k, v in tiny.CONFIGS["bart"]().to_dict().items()
                                if k != "forced_eos_token_id"}).forced_eos_token_id == 2
    marian = tiny.CONFIGS["marian"]().to_dict()
    with pytest.raises(ValueError, match="share_encoder_decoder_embeddings=False"):
        bart.Config.from_hf({**marian, "share_encoder_decoder_embeddings": False, "decoder_vocab_size": 50})
    with pytest.raises(ValueError, match="is not BART-like"):
        bart.Config.from_hf({**marian, "model_type": "fsmt"})


def test_generation_config_supplies_what_transformers_generate_reads(tmp_path):
    """generation_config.json's eos_token_id (Llama 3 Instruct adds <|eot_id|> there) and forced tokens override
    config.json's; a from_pretrained keyword overrides both."""
    tiny.save("llama", "causal_lm", tmp_path)
    gen = json.loads((tmp_path / "generation_config.json").read_text())
    (tmp_path / "generation_config.json").write_text(json.dumps(gen | {"eos_token_id": [2, 7],
                                                                       "forced_eos_token_id": 9}))
    config = jsoft.from_pretrained(tmp_path, task="causal_lm").config
    assert config.eos_token_id == [2, 7] and config.forced_eos_token_id == 9
    assert jsoft.from_pretrained(tmp_path, task="causal_lm", eos_token_id=5).config.eos_token_id == 5


def test_decoder_only_lists_every_causal_backbone():
    """hub.DECODER_ONLY (decoder classifiers pad left, multitask serving) names each causal LM here, no encoder."""
    from jsoft.models import hub

    causal = {kind for kind, task in tiny.CLASSES if task == "causal_lm"} - set(tiny.ENCODER_DECODER)
    others = {kind for kind, _ in tiny.CLASSES} - causal
    assert causal <= set(hub.DECODER_ONLY), sorted(causal - set(hub.DECODER_ONLY))
    assert not others & set(hub.DECODER_ONLY)


def test_every_model_type_has_a_tiny_model():
    """Each model type jsoft reads is in the parity matrix above, or is another's checkpoint layout tested alone."""
    from jsoft.models import hub

    tested_alone = {"camembert", "xlm-roberta"}  # RoBERTa's (test_gpt_families), "mt5": T5's (test_t5)
    assert set(hub.ARCHITECTURES) - set(tiny.CONFIGS) == tested_alone | {"mt5"}
    assert {kind for kind, _ in tiny.CLASSES} == set(tiny.CONFIGS)
