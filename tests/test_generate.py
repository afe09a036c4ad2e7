"""Generation: token-for-token parity with PEFT's `generate`, left padding, mixed-adapter batches,
the prompt cache, sampling, beam search, and the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
import transformers as tf
from flax import nnx

import jsoft
from jsoft import generate as jgen
from tests import tiny
from tests.tuners import peft_ref

# larger random weights than the parity tests, so greedy decoding does not collapse to one token
DIVERSE = {"gpt2": {"initializer_range": 0.3}, "llama": {"initializer_range": 0.3}, "t5": {"initializer_factor": 5.0},
           "bloom": {"initializer_range": 0.3}, "gemma": {"initializer_range": 0.3},
           "gemma2": {"initializer_range": 0.3, "tie_word_embeddings": False},  # tied, it repeats its input
           "gemma3_text": {"initializer_range": 0.3, "tie_word_embeddings": False},
           # within the original length: transformers recomputes the whole cache once generation passes it
           "phi3": {"initializer_range": 0.3, "original_max_position_embeddings": 64},
           "olmo2": {"initializer_range": 0.3}, "granite": {"initializer_range": 0.3},
           "mixtral": {"initializer_range": 0.3}, "qwen3_moe": {"initializer_range": 0.3},
           "gemma3": {"initializer_range": 0.3, "tie_word_embeddings": False},
           "gpt_neox": {"initializer_range": 0.3, "num_attention_heads": 3},  # head dim 16: 4 rotary dims
           "qwen3": {"initializer_range": 0.3}, "phi": {"initializer_range": 0.3}, "bart": {"init_std": 0.1},
           "opt": {"init_std": 0.3}, "mbart": {"init_std": 0.2, "scale_embedding": False},
           "gptj": {"initializer_range": 0.3}, "gpt_neo": {"initializer_range": 0.3},
           "stablelm": {"initializer_range": 0.3}, "starcoder2": {"initializer_range": 0.3},
           "smollm3": {"initializer_range": 0.3}, "cohere": {"initializer_range": 0.3, "logit_scale": 1.0},
           "cohere2": {"initializer_range": 0.3, "tie_word_embeddings": False}, "olmo3": {"initializer_range": 0.3},
           "ministral": {"initializer_range": 0.3}, "glm": {"initializer_range": 0.3},
           "glm4": {"initializer_range": 0.3}, "exaone4": {"initializer_range": 0.3},
           "seed_oss": {"initializer_range": 0.3}, "helium": {"initializer_range": 0.3},
           "arcee": {"initializer_range": 0.3}, "nemotron": {"initializer_range": 0.3},
           "ernie4_5": {"initializer_range": 0.3, "tie_word_embeddings": False},
           "falcon": {"initializer_range": 0.3}, "gpt_bigcode": {"initializer_range": 0.3},
           "olmo": {"initializer_range": 0.3}, "codegen": {"initializer_range": 0.3},
           "gpt_oss": {"initializer_range": 0.3, "tie_word_embeddings": False},
           "m2m_100": {"init_std": 1.0}, "marian": {"init_std": 2.0},  # post-norm: it repeats itself below that
           "pegasus": {"init_std": 0.5, "scale_embedding": False}, "umt5": {"initializer_factor": 5.0},
           "xglm": {"init_std": 0.5, "scale_embedding": False},
           "biogpt": {"initializer_range": 0.5, "scale_embedding": False}, "granitemoe": {},
           "granitemoeshared": {}, "granitemoehybrid": {"initializer_range": 0.5},
           "bamba": {"initializer_range": 0.4}, "nemotron_h": {"initializer_range": 0.4},
           "mamba2": {"initializer_range": 0.4}, "mamba": {"initializer_range": 0.4},
           "falcon_mamba": {"initializer_range": 0.4}, "jamba": {"initializer_range": 0.4},
           "deepseek_v3": {"initializer_range": 0.3}, "glm4_moe": {"initializer_range": 0.3},
           "dots1": {"initializer_range": 0.3}, "glm4_moe_lite": {"initializer_range": 0.3},
           "deepseek_v2": {"initializer_range": 0.3}, "minimax_m2": {"initializer_range": 0.3},
           "exaone_moe": {"initializer_range": 0.3}, "llama4_text": {"initializer_range": 0.3},
           "ernie4_5_moe": {"initializer_range": 0.3}, "hunyuan_v1_dense": {"initializer_range": 0.3},
           "hunyuan_v1_moe": {"initializer_range": 0.3}, "mistral3": {"initializer_range": 0.3},
           "ministral3": {"initializer_range": 0.3}, "internlm3": {"initializer_range": 0.3},
           "iquestcoder": {"initializer_range": 0.3},
           "vaultgemma": {"initializer_range": 0.3, "tie_word_embeddings": False},
           "cwm": {"initializer_range": 0.3}, "apertus": {"initializer_range": 0.3},
           "mistral4": {"initializer_range": 0.3}, "youtu": {"initializer_range": 0.3},
           # within LongRoPE's original length, as Phi-3's above
           "minicpm3": {"initializer_range": 0.3, "rope_parameters": {
               "rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0, 1.5, 2.0, 3.0],
               "long_factor": [2.0, 3.0, 4.0, 6.0], "original_max_position_embeddings": 64}},
           "jais2": {"initializer_range": 0.3}, "nanochat": {"initializer_range": 0.3},
           "qwen3_5_text": {"initializer_range": 0.3}, "qwen3_next": {"initializer_range": 0.3},
           "qwen3_5_moe_text": {"initializer_range": 0.3}, "qwen3_5": {"initializer_range": 0.4}}
TASK = {"gpt2": "causal_lm", "llama": "causal_lm", "t5": "seq2seq_lm", "bloom": "causal_lm", "gemma": "causal_lm",
        "gemma2": "causal_lm", "gemma3_text": "causal_lm", "phi3": "causal_lm", "gpt_neox": "causal_lm",
        "olmo2": "causal_lm", "granite": "causal_lm", "mixtral": "causal_lm", "qwen3_moe": "causal_lm",
        "gemma3": "causal_lm",
        "qwen3": "causal_lm", "phi": "causal_lm", "bart": "seq2seq_lm", "opt": "causal_lm", "mbart": "seq2seq_lm",
        "gptj": "causal_lm", "gpt_neo": "causal_lm", "stablelm": "causal_lm", "starcoder2": "causal_lm",
        "smollm3": "causal_lm", "cohere": "causal_lm", "cohere2": "causal_lm", "olmo3": "causal_lm",
        "ministral": "causal_lm", "glm": "causal_lm", "glm4": "causal_lm", "exaone4": "causal_lm",
        "seed_oss": "causal_lm", "helium": "causal_lm", "arcee": "causal_lm",
        "nemotron": "causal_lm", "ernie4_5": "causal_lm", "falcon": "causal_lm",
        "gpt_bigcode": "causal_lm", "olmo": "causal_lm", "codegen": "causal_lm", "gpt_oss": "causal_lm",
        "m2m_100": "seq2seq_lm", "marian": "seq2seq_lm", "pegasus": "seq2seq_lm", "umt5": "seq2seq_lm",
        "xglm": "causal_lm", "biogpt": "causal_lm", "granitemoe": "causal_lm", "deepseek_v3": "causal_lm",
        "granitemoeshared": "causal_lm", "granitemoehybrid": "causal_lm", "bamba": "causal_lm",
        "nemotron_h": "causal_lm", "mamba2": "causal_lm", "mamba": "causal_lm", "falcon_mamba": "causal_lm",
        "jamba": "causal_lm",
        "glm4_moe": "causal_lm", "dots1": "causal_lm", "glm4_moe_lite": "causal_lm",
        "deepseek_v2": "causal_lm", "minimax_m2": "causal_lm", "exaone_moe": "causal_lm",
        "llama4_text": "causal_lm", "ernie4_5_moe": "causal_lm", "hunyuan_v1_dense": "causal_lm",
        "hunyuan_v1_moe": "causal_lm", "mistral3": "causal_lm", "ministral3": "causal_lm", "internlm3": "causal_lm",
        "iquestcoder": "causal_lm", "vaultgemma": "causal_lm", "cwm": "causal_lm",
        "apertus": "causal_lm", "mistral4": "causal_lm", "youtu": "causal_lm",
        "minicpm3": "causal_lm", "jais2": "causal_lm", "nanochat": "causal_lm", "qwen3_5_text": "causal_lm",
        "qwen3_next": "causal_lm", "qwen3_5_moe_text": "causal_lm", "qwen3_5": "causal_lm"}
NEW = 8


def model_dir(tiny_dir, kind):
    return tiny_dir(kind, TASK[kind], **DIVERSE[kind])


def jsoft_model(tiny_dir, kind, method, seed=1):
    config, _ = peft_ref.configs(method, TASK[kind])
    return jsoft.get_peft_model(jsoft.from_pretrained(model_dir(tiny_dir, kind), task=TASK[kind]), config, seed=seed)


def peft_model(tiny_dir, kind, pm, path):
    pm.save_pretrained(path)
    return peft.PeftModel.from_pretrained(peft_ref.hf_base(kind, TASK[kind], model_dir(tiny_dir, kind)), path).eval()


def peft_generate(ref, ids, mask=None, width=None, pad=0, **kw) -> np.ndarray:
    """PEFT's output, padded with `pad` to `width` (transformers stops once every row is done)."""
    mask = np.ones_like(ids) if mask is None else mask
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(mask), max_new_tokens=NEW,
                           do_sample=False, **kw).numpy()
    return np.pad(out, ((0, 0), (0, (width or out.shape[1]) - out.shape[1])), constant_values=pad)


def assert_logits_close(got, want):
    """1e-5 at the logits' own scale (these diverse tiny models have logits up to ~10)."""
    np.testing.assert_allclose(got, want, atol=1e-5 * max(1.0, np.abs(want).max()), rtol=0)


def ids_batch(B=2, T=7, seed=0):
    return np.random.default_rng(seed).integers(3, tiny.VOCAB, size=(B, T))


def left_padded(seed=0):
    ids = ids_batch(3, 9, seed)
    mask = np.ones_like(ids)
    for b, n in enumerate([0, 3, 5]):
        ids[b, :n], mask[b, :n] = 0, 0
    return ids, mask


def width(kind, T):
    return 1 + NEW if kind in tiny.ENCODER_DECODER else T + NEW


PARITY = ([("gpt2", m) for m in peft_ref.METHODS] + [("llama", "prompt"), ("llama", "prefix")]
          + [("t5", "prompt"), ("t5", "prefix")] + [("bloom", m) for m in ("prompt", "prefix_proj", "ptuning_lstm")]
          + [("gemma", "prompt"), ("gemma", "prefix"), ("gemma2", "prompt"), ("gemma2", "prefix_proj")]
          # past the 5-key window of its sliding layers while decoding
          + [("gemma3_text", "prompt"), ("gemma3_text", "prefix"), ("phi3", "prompt"), ("phi3", "prefix_proj")]
          + [("olmo2", "prefix"), ("granite", "prompt"), ("granite", "ptuning_lstm")]
          + [("mixtral", "prefix_proj"), ("qwen3_moe", "prompt"), ("gemma3", "prompt")]
          + [("gpt_neox", "prompt"), ("gpt_neox", "prefix"), ("qwen3", "prefix_proj")]
          + [("phi", "prompt"), ("phi", "prefix")]
          # GPT-Neo: past its 4-slot local window while decoding
          + [("gptj", "prompt"), ("gptj", "prefix_proj"), ("gpt_neo", "prompt"), ("gpt_neo", "prefix")]
          + [("stablelm", "prefix"), ("stablelm", "ptuning_mlp"), ("starcoder2", "prompt"), ("starcoder2", "prefix")]
          + [("smollm3", "prefix"), ("cohere", "prompt"), ("cohere", "prefix"), ("cohere2", "prompt")]
          + [("cohere2", "prefix"), ("olmo3", "prompt"), ("olmo3", "prefix")]
          + [("ministral", "prefix"), ("glm", "prompt"), ("glm", "prefix"), ("glm4", "prefix_proj")]
          + [("exaone4", "prompt"), ("exaone4", "prefix"), ("seed_oss", "prefix"), ("helium", "prefix")]
          + [("arcee", "prompt"), ("nemotron", "prefix"), ("ernie4_5", "prompt"), ("ernie4_5", "prefix")]
          + [("falcon", "prompt"), ("falcon", "prefix"), ("gpt_bigcode", "prompt"), ("gpt_bigcode", "prefix")]
          + [("olmo", "prompt"), ("olmo", "prefix_proj"), ("codegen", "prompt"), ("codegen", "prefix")]
          # GPT-OSS: sinks in every decoding step's softmax, past the 3-slot window of its sliding layers
          + [("gpt_oss", "prompt"), ("gpt_oss", "prefix")]
          + [("bart", "prompt"), ("bart", "prefix_proj"), ("bart", "ptuning_lstm")]
          + [("opt", "prompt"), ("opt", "prefix"), ("opt", "ptuning_mlp"), ("mbart", "prompt"), ("mbart", "prefix")]
          # NLLB's positions over non-pad tokens; Marian's and Pegasus's unscaled prompt inputs
          + [("m2m_100", "prompt"), ("m2m_100", "prefix"), ("marian", "prompt"), ("marian", "prefix_proj")]
          + [("pegasus", "ptuning_lstm"), ("pegasus", "prefix"), ("umt5", "prompt"), ("umt5", "prefix")]
          + [("xglm", "prompt"), ("xglm", "prefix"), ("biogpt", "prompt"), ("biogpt", "prefix_proj")]
          + [("granitemoe", "prompt"), ("granitemoe", "prefix")]
          # Granite 4.0-H: Mamba-2 layers' recurrent states beside attention
          + [("granitemoeshared", "prefix_proj"), ("granitemoehybrid", "prompt"), ("granitemoehybrid", "ptuning_mlp")]
          # Nemotron-H: MLP and expert layers that cache nothing between Mamba-2 and attention layers
          + [("nemotron_h", "prompt"), ("nemotron_h", "ptuning_lstm"), ("jamba", "prompt"), ("jamba", "ptuning_mlp")]
          # (Mamba / Mamba-2 stacks: not against PEFT's generate, test_a_mamba_stack_decodes_what_peft_full_passes_pick)
          # (Bamba: not against PEFT, which drops position_ids in generate; Bamba's forward then numbers each decoded
          # token 0, as it adds no cache offset. jsoft's Bamba decoding follows transformers' own generate, below)
          # DeepSeek-V3: latent attention's compressed cache (embedding prompts only); dots.llm1: past its window
          + [("deepseek_v3", "prompt"), ("deepseek_v3", "ptuning_lstm"), ("glm4_moe", "prompt")]
          + [("glm4_moe", "prefix_proj"), ("dots1", "prompt"), ("dots1", "prefix"), ("glm4_moe_lite", "prompt")]
          + [("deepseek_v2", "ptuning_mlp"), ("minimax_m2", "prompt"), ("minimax_m2", "prefix")]
          + [("exaone_moe", "prefix_proj")]
          # Llama 4: decoding across its 4-slot chunks, NoPE queries tempered by their slot
          + [("llama4_text", "prompt"), ("llama4_text", "prefix"), ("ernie4_5_moe", "prefix")]
          + [("hunyuan_v1_dense", "prompt"), ("hunyuan_v1_dense", "prefix"), ("hunyuan_v1_moe", "prefix_proj")]
          + [("mistral3", "prompt")]
          # Ministral 3: decoding past the position where its query scale steps, and past its 6-key window
          + [("ministral3", "prompt"), ("ministral3", "prefix"), ("internlm3", "prefix_proj")]
          + [("iquestcoder", "prompt"), ("vaultgemma", "prompt"), ("vaultgemma", "prefix")]
          + [("cwm", "prompt"), ("cwm", "prefix"), ("apertus", "prompt"), ("apertus", "prefix_proj")]
          # Mistral 4: latent attention's compressed cache, queries scaled past 4 positions (embedding prompts only)
          + [("mistral4", "prompt"), ("mistral4", "ptuning_lstm"), ("youtu", "prompt"), ("minicpm3", "prompt")]
          + [("jais2", "prompt"), ("jais2", "prefix"), ("nanochat", "prompt"), ("nanochat", "prefix_proj")]
          # Gated DeltaNet: decoding carries each linear layer's convolution inputs and memory (embedding prompts only)
          + [("qwen3_5_text", "prompt"), ("qwen3_5_text", "ptuning_lstm"), ("qwen3_next", "prompt")]
          + [("qwen3_5_moe_text", "ptuning_mlp"), ("qwen3_5", "prompt")])


@pytest.mark.parametrize("kind,method", PARITY, ids=lambda x: str(x))
def test_greedy_matches_peft(tiny_dir, tmp_path, kind, method):
    pm = jsoft_model(tiny_dir, kind, method)
    ref = peft_model(tiny_dir, kind, pm, tmp_path / "adapter")
    ids = ids_batch()
    got = np.asarray(pm.generate(ids, max_new_tokens=NEW))
    want = peft_generate(ref, ids, width=width(kind, ids.shape[1]))
    np.testing.assert_array_equal(got, want)
    assert len(set(got[:, -NEW:].ravel())) > 2, "degenerate output proves little"
    # stop at an EOS that occurs mid-way: that row then emits pad, like transformers
    eos = int(got[0, -NEW + 2])
    got = np.asarray(pm.generate(ids, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0))
    want = peft_generate(ref, ids, width=width(kind, ids.shape[1]), eos_token_id=eos, pad_token_id=0)
    np.testing.assert_array_equal(got, want)
    assert (got[0, -NEW + 3:] == 0).all()


HEAD_VARIANTS = [  # the other LM head layout each causal backbone can have, with a few more config options
    ("gpt2", dict(tie_word_embeddings=False, scale_attn_by_inverse_layer_idx=True, activation_function="quick_gelu")),
    ("llama", dict(tie_word_embeddings=True, head_dim=16, num_key_value_heads=1, rope_scaling={
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8})),
    ("bloom", dict(tie_word_embeddings=False, apply_residual_connection_post_layernorm=True, n_head=5, hidden_size=40)),
    ("phi", dict(qk_layernorm=False, num_attention_heads=3, num_key_value_heads=3, rope_parameters={
        "rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.25})),
    ("gpt_neox", dict(tie_word_embeddings=True, use_parallel_residual=False, rope_parameters={
        "rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5})),
    ("gpt_neo", dict(tie_word_embeddings=False, attention_types=[[["local"], 3]], window_size=6)),
    ("gptj", dict(rotary_dim=16, n_head=3, activation_function="gelu")),  # every dim of a 16-dim head rotated
    ("stablelm", dict(tie_word_embeddings=True, use_parallel_residual=True, qk_layernorm=False, use_qkv_bias=False,
                      rope_parameters={"rope_type": "default", "rope_theta": 500.0, "partial_rotary_factor": 0.5})),
    ("starcoder2", dict(tie_word_embeddings=False, use_bias=False, sliding_window=None)),
    # falcon-7b: one key / value head (PEFT runs the prefix jsoft saves for it; it derives a wider one and fails)
    ("falcon", dict(new_decoder_architecture=False, multi_query=True, bias=False, tie_word_embeddings=False)),
    # falcon-rw: ALiBi, sequential layers
    ("falcon", dict(new_decoder_architecture=False, multi_query=False, num_kv_heads=None, parallel_attn=False,
                    alibi=True)),
    ("gpt_bigcode", dict(multi_query=False, tie_word_embeddings=False, scale_attn_weights=False)),
]


@pytest.mark.parametrize("kind,overrides", HEAD_VARIANTS, ids=lambda x: str(x))
def test_greedy_matches_peft_with_the_other_lm_head(tiny_dir, tmp_path, kind, overrides):
    path = tiny_dir(kind, TASK[kind], **DIVERSE[kind], **overrides)
    config, _ = peft_ref.configs("prefix_proj", TASK[kind])
    pm = jsoft.get_peft_model(jsoft.from_pretrained(path, task=TASK[kind]), config, seed=1)
    pm.save_pretrained(tmp_path / "adapter")
    ref = peft.PeftModel.from_pretrained(peft_ref.hf_base(kind, TASK[kind], path), tmp_path / "adapter").eval()
    ids = ids_batch(3, 11)
    got = np.asarray(pm.generate(ids, max_new_tokens=NEW))
    np.testing.assert_array_equal(got, peft_generate(ref, ids, width=width(kind, ids.shape[1])))
    assert len(set(got[:, -NEW:].ravel())) > 2, "degenerate output proves little"


@pytest.mark.parametrize("kind,method", [("mamba2", "prompt"), ("mamba2", "ptuning_mlp"), ("mamba", "prompt"),
                                         ("falcon_mamba", "ptuning_lstm")])
def test_a_mamba_stack_decodes_what_peft_full_passes_pick(tiny_dir, tmp_path, kind, method):
    """A stack of Mamba-2 (Mamba2ForCausalLM) or Mamba layers only (MambaForCausalLM, FalconMambaForCausalLM) with a
    soft prompt: each greedy token is the argmax of PEFT's full forward pass over the prompt and the tokens before it
    (one pass over jsoft's output gives every step). PEFT's own generate differs: it injects the prompt whenever
    `past_key_values` is empty, which these models never fill (their cache is `cache_params`), so every decoding step
    feeds the prompt into the recurrent states again."""
    pm = jsoft_model(tiny_dir, kind, method)
    ref = peft_model(tiny_dir, kind, pm, tmp_path / "adapter")
    ids = ids_batch()
    T = ids.shape[1]
    got = np.asarray(pm.generate(ids, max_new_tokens=NEW, eos_token_id=[]))
    with torch.no_grad():
        logits = ref(input_ids=torch.tensor(got), attention_mask=torch.ones(got.shape, dtype=torch.long)).logits
    V = logits.shape[1] - got.shape[1]  # the virtual tokens in front
    np.testing.assert_array_equal(got[:, T:], logits.numpy()[:, V + T - 1:-1].argmax(-1))
    assert len(set(got[:, T:].ravel())) > 2, "degenerate output proves little"
    assert not np.array_equal(peft_generate(ref, ids, eos_token_id=None), got)


@pytest.mark.parametrize("kind,method", [("gpt2", "prompt"), ("gpt2", "prefix_proj"), ("llama", "ptuning_mlp"),
                                         ("llama", "prefix"), ("bloom", "prompt"), ("bloom", "prefix"),
                                         ("gemma2", "prompt"), ("gemma3_text", "prefix"), ("opt", "prompt"),
                                         ("opt", "prefix_proj"), ("gpt_neo", "prefix"), ("gptj", "prompt"),
                                         ("qwen3_5_text", "prompt"), ("qwen3_next", "ptuning_lstm"),
                                         ("granitemoehybrid", "prompt")],
                         ids=lambda x: str(x))
def test_left_padded_rows_equal_rows_alone(tiny_dir, tmp_path, kind, method):
    """The soft prompt sits right before each row's first real token (PEFT would put it before the
    pads, peft#1093): every row of a left-padded batch equals PEFT on that row alone."""
    pm = jsoft_model(tiny_dir, kind, method)
    ref = peft_model(tiny_dir, kind, pm, tmp_path / "adapter")
    ids, mask = left_padded()
    got, scores = pm.generate(ids, mask, max_new_tokens=NEW, output_scores=True)
    for b in range(ids.shape[0]):
        row = ids[b:b + 1, mask[b].astype(bool)]
        want = peft_generate(ref, row, width=row.shape[1] + NEW)
        np.testing.assert_array_equal(np.asarray(got)[b, -NEW:], want[0, -NEW:])
    _, alone = pm.generate(row, max_new_tokens=NEW, output_scores=True)  # the most padded row
    assert_logits_close(np.asarray(scores)[-1], np.asarray(alone)[0])


@nnx.jit
def embedding_path_logits(pm, ids, mask):
    return pm(input_ids=ids, attention_mask=mask).logits


@nnx.jit
def prefix_path_logits(pm, ids, mask, positions):
    prefix = jnp.repeat(pm.prompt_cache(), ids.shape[0], axis=2)
    return pm.base_model(input_ids=ids, attention_mask=mask, position_ids=positions, prefix_kv=prefix).logits


def test_generate_program_returns_only_the_sequences(tiny_dir, monkeypatch):
    """The compiled generate program takes the model's state and returns the sequences alone. One that
    also returned the state (as `nnx.jit` does) made XLA copy every weight at each call; and equal
    models share the compiled function."""
    calls = []
    jitted = jgen._jitted

    def recording(graphdef):
        fn = jitted(graphdef)
        return lambda *a, **k: calls.append((fn, a, k)) or fn(*a, **k)

    monkeypatch.setattr(jgen, "_jitted", recording)
    pm = jsoft_model(tiny_dir, "gpt2", "prompt")
    out = pm.generate(ids_batch(), max_new_tokens=NEW)
    fn, a, k = calls[-1]
    assert [o.shape for o in jax.tree.leaves(fn.lower(*a, **k).out_info)] == [out.shape]
    jsoft_model(tiny_dir, "gpt2", "prompt", seed=2).generate(ids_batch(), max_new_tokens=NEW)
    assert calls[-1][0] is fn


def test_generate_from_threads(tiny_dir):
    """Concurrent calls (a server's worker threads) on models of several structures give each call's own output."""
    import concurrent.futures

    models = [jsoft_model(tiny_dir, "gpt2", m) for m in ("prompt", "prefix", "ptuning_lstm")]
    want = [np.asarray(pm.generate(ids_batch(), max_new_tokens=NEW)) for pm in models]
    with concurrent.futures.ThreadPoolExecutor(6) as pool:
        got = list(pool.map(lambda i: np.asarray(models[i % 3].generate(ids_batch(), max_new_tokens=NEW)), range(12)))
    for i, out in enumerate(got):
        np.testing.assert_array_equal(out, want[i % 3])


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bloom", "gemma2", "deepseek_v3", "mistral4"])
@pytest.mark.parametrize("method", ["prompt", "ptuning_lstm"])
def test_prompt_cache_equals_embedding_path(tiny_dir, kind, method):
    """Decoding a left-padded batch from the prompt cache (real tokens at positions V..) gives the
    logits of PEFT's embedding path on the same rows right-padded (prompt first, positions 0..). Latent attention
    (DeepSeek-V3, Mistral 4) caches its compressed latents, one `kv_lora_rank + rotary_dim` row a token, and attends
    over them; its embedding path expands every head's keys and values, as transformers does. Those rows are its keys
    and its values: a decoding cache keeps them once."""
    pm = jsoft_model(tiny_dir, kind, method)
    V, c = pm.active_peft_config.num_virtual_tokens, pm.base_model.config
    assert pm.prompt_cache().shape == (c.num_layers, 2, 1, V, *c.cache_layout)
    latent = kind in ("deepseek_v3", "mistral4")
    if latent:
        assert c.cache_layout == (1, c.kv_lora_rank + c.rope_dim)
    for prefix in (None, pm.prompt_cache()):
        cache, _ = jgen._cache(pm.base_model, c.num_layers, 1, 6, prefix, None)
        assert all(v is None for v in cache.v) == latent and all(k.shape[-1] == c.cache_layout[1] for k in cache.k)
    ids, mask = left_padded()
    T = ids.shape[1]
    n = mask.sum(1)
    right_ids = np.stack([np.roll(r, -(T - k)) for r, k in zip(ids, n)])
    right_mask = np.stack([np.roll(r, -(T - k)) for r, k in zip(mask, n)])
    want = np.asarray(embedding_path_logits(pm, right_ids, right_mask))[:, V:]
    positions = np.maximum(V + np.arange(T)[None] - (T - n)[:, None], 0)
    got = np.asarray(prefix_path_logits(pm, ids, mask, positions))
    for b in range(ids.shape[0]):
        assert_logits_close(got[b][mask[b] == 1], want[b][right_mask[b] == 1])


@pytest.mark.parametrize("kind", ["gpt2", "t5", "bloom", "bart", "opt", "qwen3_5_text", "qwen3_next",
                                  "granitemoehybrid", "bamba", "nemotron_h"])
def test_mixed_adapter_batch_equals_rows_alone(tiny_dir, kind):
    """Qwen3.5 / Qwen3-Next / Granite 4.0-H: recurrent layers read each row's prompt in the first pass, right before
    its first real token; no prefix fits them, so a P-Tuning (LSTM) adapter takes the prefix's place."""
    pm = jsoft_model(tiny_dir, kind, "prompt")
    third = "ptuning_lstm" if kind in peft_ref.NO_PREFIX else "prefix"
    pm.add_adapter("third", peft_ref.configs(third, TASK[kind])[0], seed=2)
    pm.add_adapter("ptuning", peft_ref.configs("ptuning_mlp", TASK[kind])[0], seed=3)
    names = ["ptuning", "default", "third"]
    if kind in tiny.ENCODER_DECODER:  # encoder inputs: right padding
        ids = ids_batch(3, 9, seed=3)
        mask = np.ones_like(ids)
        mask[1, 6:], ids[1, 6:] = 0, 0
    else:
        ids, mask = left_padded(seed=3)
    got, scores = pm.generate(ids, mask, max_new_tokens=NEW, adapter_names=names, output_scores=True)
    for b, name in enumerate(names):
        pm.set_adapter(name)
        row = ids[b:b + 1, mask[b].astype(bool)]
        one, alone = pm.generate(row, max_new_tokens=NEW, output_scores=True)
        np.testing.assert_array_equal(np.asarray(got)[b, -NEW:], np.asarray(one)[0, -NEW:])
        want = np.asarray(alone)[0]
        # Gated DeltaNet's and Mamba-2's chunked fp32 sums run over the pads in front too (their decays cancel only
        # in exact arithmetic): 1e-4 of the logits' scale there
        tol = 1e-4 if kind in peft_ref.LINEAR_ATTENTION else 1e-5
        np.testing.assert_allclose(np.asarray(scores)[b], want, atol=tol * max(1.0, np.abs(want).max()), rtol=0)
    # sampling: each row draws from its own seed, so it samples what it samples alone
    kw = dict(max_new_tokens=NEW, do_sample=True, temperature=1.5, eos_token_id=[])
    seeds = [5, 6, 7]
    sampled = np.asarray(pm.generate(ids, mask, adapter_names=names, seed=seeds, **kw))[:, -NEW:]
    for b, name in enumerate(names):
        pm.set_adapter(name)
        alone = np.asarray(pm.generate(ids[b:b + 1, mask[b].astype(bool)], seed=seeds[b], **kw))[0, -NEW:]
        np.testing.assert_array_equal(sampled[b], alone)
    assert len({tuple(r) for r in sampled}) == 3


@pytest.mark.parametrize("kind", ["qwen3_5_text", "qwen3_next", "granitemoehybrid"])
def test_no_prompt_cache_holds_a_recurrent_state(tiny_dir, kind):
    pm = jsoft_model(tiny_dir, kind, "prompt")
    with pytest.raises(ValueError, match=r"recurrent layers \(linear attention, Mamba-2\) keep a recurrent state"):
        pm.prompt_cache()


def pad_after_eos(new_tokens, eos, pad=0):
    """transformers' beam search fills finished beams with `pad_token_id or eos`: a pad id of 0 is
    falsy, so it writes EOS; map everything after the first EOS to the pad id."""
    after = np.cumsum(new_tokens == eos, axis=1) - (new_tokens == eos) > 0
    return np.where(after, pad, new_tokens)


@pytest.mark.parametrize("kind,method", [("t5", "prefix"), ("t5", "prompt"), ("gpt2", "prefix"), ("bart", "prefix"),
                                         ("qwen3_5_text", "prompt"), ("granitemoehybrid", "prompt")],
                         ids=lambda x: str(x))
def test_beam_search_matches_peft(tiny_dir, tmp_path, kind, method):
    pm = jsoft_model(tiny_dir, kind, method)
    ref = peft_model(tiny_dir, kind, pm, tmp_path / "adapter")
    ids = ids_batch(3, 6, seed=4)
    lead = 1 if kind in tiny.ENCODER_DECODER else ids.shape[1]
    eos = int(np.asarray(pm.generate(ids, max_new_tokens=NEW))[0, lead + 3])  # an EOS that beams will meet
    for kw in ({}, {"eos_token_id": eos, "pad_token_id": 0}):
        got = np.asarray(pm.generate(ids, max_new_tokens=NEW, num_beams=3, **kw))
        want = peft_generate(ref, ids, width=got.shape[1], num_beams=3, **kw)
        want[:, lead:] = pad_after_eos(want[:, lead:], kw.get("eos_token_id", pm.base_model.config.eos_token_id))
        np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("num_beams", [1, 3])
def test_forced_bos_and_eos_match_peft(tiny_dir, tmp_path, num_beams):
    """BART checkpoints force their first and last new tokens (generation_config.json's forced_bos_token_id and
    forced_eos_token_id, which transformers' generate reads); jsoft reads them too, and takes them as arguments."""
    path = tiny_dir("bart", "seq2seq_lm", **DIVERSE["bart"], forced_eos_token_id=7)
    gen = json.loads((path / "generation_config.json").read_text())  # transformers 5 keeps forced_bos there only
    (path / "generation_config.json").write_text(json.dumps(gen | {"forced_bos_token_id": 5}))
    config = peft_ref.configs("prefix", "seq2seq_lm")[0]
    pm = jsoft.get_peft_model(jsoft.from_pretrained(path, task="seq2seq_lm"), config, seed=1)
    pm.save_pretrained(tmp_path / "adapter")
    ref = peft.PeftModel.from_pretrained(peft_ref.hf_base("bart", "seq2seq_lm", path), tmp_path / "adapter").eval()
    ids = ids_batch(3, 6, seed=4)
    kw = dict(num_beams=num_beams, eos_token_id=[])  # forced EOS still ends every row at max_new_tokens
    got = np.asarray(pm.generate(ids, max_new_tokens=NEW, **kw))
    assert (got[:, 1] == 5).all() and (got[:, -1] == 7).all()
    np.testing.assert_array_equal(got, peft_generate(ref, ids, width=got.shape[1], num_beams=num_beams,
                                                     eos_token_id=None))
    free = np.asarray(pm.generate(ids, max_new_tokens=NEW, forced_bos_token_id=[], forced_eos_token_id=[], **kw))
    assert not (free[:, 1] == 5).all()
    want = peft_generate(ref, ids, width=free.shape[1], num_beams=num_beams, eos_token_id=None,
                         forced_bos_token_id=None, forced_eos_token_id=None)
    np.testing.assert_array_equal(free, want)


@pytest.mark.parametrize("kind,method", [("t5", "prefix"), ("gpt2", "prompt")], ids=lambda x: str(x))
def test_return_sequences_and_max_length_match_peft(tiny_dir, tmp_path, kind, method):
    """transformers' `num_return_sequences` (the n best beams, best first) and `max_length` (the whole output's
    length: the prompt, or the decoder's start token, plus the new tokens)."""
    pm = jsoft_model(tiny_dir, kind, method)
    ref = peft_model(tiny_dir, kind, pm, tmp_path / "adapter")
    ids = ids_batch(2, 6, seed=4)
    lead = 1 if kind in tiny.ENCODER_DECODER else ids.shape[1]
    got = np.asarray(pm.generate(ids, max_length=lead + NEW, num_beams=4, num_return_sequences=3, eos_token_id=[]))
    want = peft_generate(ref, ids, width=got.shape[1], num_beams=4, num_return_sequences=3, eos_token_id=None)
    assert got.shape == (6, lead + NEW) and len({tuple(r) for r in got[:3]}) == 3
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(np.asarray(pm.generate(ids, max_length=lead + 3)),
                                  np.asarray(pm.generate(ids, max_new_tokens=3)))


def test_sampling_returns_n_sequences_per_row(tiny_dir):
    pm = jsoft_model(tiny_dir, "llama", "prompt")
    ids = ids_batch(2, 5, seed=6)
    kw = dict(max_new_tokens=NEW, do_sample=True, eos_token_id=[], num_return_sequences=3)
    out = np.asarray(pm.generate(ids, seed=[5, 7], **kw))
    assert out.shape == (6, 5 + NEW)
    np.testing.assert_array_equal(out[:, :5], np.repeat(ids, 3, 0))
    assert len({tuple(r) for r in out[:3, 5:]}) == 3  # three different samples of row 0
    np.testing.assert_array_equal(out[3:], np.asarray(pm.generate(ids[1:], seed=[7], **kw)))  # as row 1 alone
    with pytest.raises(ValueError, match="num_return_sequences=2 needs do_sample=True"):
        pm.generate(ids, num_return_sequences=2)
    with pytest.raises(ValueError, match="max_length=5 leaves no room"):
        pm.generate(ids, max_length=5)


PROCESSORS = dict(repetition_penalty=1.8, no_repeat_ngram_size=2, min_new_tokens=5)


@pytest.mark.parametrize("kind,method", [("gpt2", "prompt"), ("gpt2", "prefix_proj"), ("llama", "ptuning_mlp"),
                                         ("t5", "prefix")], ids=lambda x: str(x))
def test_logits_processors_match_peft(tiny_dir, tmp_path, kind, method):
    """repetition_penalty, no_repeat_ngram_size and min_new_tokens give PEFT's tokens in greedy and beam search,
    and PEFT's processed scores; each changes the output here (an EOS met early is held off by min_new_tokens)."""
    pm = jsoft_model(tiny_dir, kind, method)
    ref = peft_model(tiny_dir, kind, pm, tmp_path / "adapter")
    ids = ids_batch(3, 7, seed=2)
    ids[:, -1] = ids[:, 1]  # a decoder-only prompt ends as it began: (ids[1], ids[2]) is a 2-gram to block
    lead = 1 if kind in tiny.ENCODER_DECODER else ids.shape[1]
    plain = np.asarray(pm.generate(ids, max_new_tokens=NEW))
    eos = int(plain[0, lead + 1])  # row 0 would stop after two tokens
    kw = dict(max_new_tokens=NEW, eos_token_id=eos, pad_token_id=0, output_scores=True)
    base = np.asarray(pm.generate(ids, **kw)[1])[:, 0]
    for name, value in PROCESSORS.items():  # each one acts on the first token's scores (1-grams: T5's start token)
        first = np.asarray(pm.generate(ids, **kw, **{name: 1 if name == "no_repeat_ngram_size" else value})[1])[:, 0]
        assert not np.array_equal(first, base), f"{name} changes nothing here"
    assert (first[:, eos] == -np.inf).all()
    if kind != "t5":
        banned = np.asarray(pm.generate(ids, **kw, no_repeat_ngram_size=2)[1])[:, 0]
        assert (banned[np.arange(3), ids[:, 2]] == -np.inf).all()
    kw.pop("output_scores")
    got, scores = pm.generate(ids, **kw, **PROCESSORS, output_scores=True)
    with torch.no_grad():
        out = ref.generate(input_ids=torch.tensor(ids), attention_mask=torch.ones(ids.shape, dtype=torch.long),
                           do_sample=False, output_scores=True, return_dict_in_generate=True, **kw, **PROCESSORS)
    want = np.pad(out.sequences.numpy(), ((0, 0), (0, np.asarray(got).shape[1] - out.sequences.shape[1])))
    np.testing.assert_array_equal(np.asarray(got), want)
    for t, s in enumerate(out.scores):  # the processed logits each token was chosen from, while any row runs
        finite = np.isfinite(s.numpy())
        np.testing.assert_array_equal(np.isfinite(np.asarray(scores)[:, t]), finite)
        want = s.numpy()[finite]  # T5 here: logits near 80, fp32 rounding over the steps reaches 2e-5 of that
        np.testing.assert_allclose(np.asarray(scores)[:, t][finite], want, atol=5e-5 * np.abs(want).max(), rtol=0)
    beams = np.asarray(pm.generate(ids, **kw, **PROCESSORS, num_beams=3))
    want = peft_generate(ref, ids, width=beams.shape[1], num_beams=3, eos_token_id=eos, pad_token_id=0,
                         **PROCESSORS)
    want[:, lead:] = pad_after_eos(want[:, lead:], eos)
    np.testing.assert_array_equal(beams, want)


def test_repetition_penalty_skips_left_pads(tiny_dir):
    """A left-padded row gets what it gets alone: its pads are not penalised (transformers' rule)."""
    pm = jsoft_model(tiny_dir, "gpt2", "prefix")
    ids, mask = left_padded(seed=3)
    kw = dict(max_new_tokens=NEW, repetition_penalty=3.0, min_new_tokens=3)
    got = np.asarray(pm.generate(ids, mask, **kw))
    for b in range(ids.shape[0]):
        alone = np.asarray(pm.generate(ids[b:b + 1, mask[b].astype(bool)], **kw))
        np.testing.assert_array_equal(got[b, -NEW:], alone[0, -NEW:])
    assert 0 in ids[2, :5] and not np.array_equal(got, np.asarray(pm.generate(ids, mask, max_new_tokens=NEW)))


def test_dynamic_rope_generation_matches_peft(tiny_dir, tmp_path):
    """Dynamic NTK RoPE: generation that runs past max_position_embeddings rescales the frequencies at each
    new position, as transformers does; a prompt longer than max_position_embeddings is refused (transformers
    rotates all of its keys with the whole prompt's frequencies)."""
    overrides = dict(**DIVERSE["llama"], max_position_embeddings=12,
                     rope_scaling={"rope_type": "dynamic", "factor": 4.0})
    path = tiny_dir("llama", "causal_lm", **overrides)
    config, _ = peft_ref.configs("prefix", "causal_lm")
    pm = jsoft.get_peft_model(jsoft.from_pretrained(path, task="causal_lm"), config, seed=1)
    pm.save_pretrained(tmp_path / "adapter")
    ids = ids_batch(2, 4, seed=7)  # 5 prefix + 4 prompt + 8 new positions: past 12 from the fourth new token
    got = np.asarray(pm.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW))
    ref = peft.PeftModel.from_pretrained(peft_ref.hf_base("llama", "causal_lm", path), tmp_path / "adapter").eval()
    np.testing.assert_array_equal(got, peft_generate(ref, ids, min_new_tokens=NEW))
    plain = jsoft.get_peft_model(jsoft.from_pretrained(tiny_dir("llama", "causal_lm", **DIVERSE["llama"]),
                                                       task="causal_lm"), config, seed=1)
    assert not np.array_equal(got, np.asarray(plain.generate(ids, max_new_tokens=NEW, min_new_tokens=NEW)))
    with pytest.raises(ValueError, match="a prompt of 13 positions .* exceeds max_position_embeddings=12"):
        pm.generate(ids_batch(2, 8), max_new_tokens=2)


@pytest.mark.parametrize("kind", ["t5", "llama", "qwen3_next", "granitemoehybrid", "bamba", "nemotron_h", "mamba2",
                                  "mamba", "falcon_mamba", "jamba"])
def test_beam_search_on_base_model_matches_transformers(tiny_dir, kind):
    pm = jsoft.PeftModel(jsoft.from_pretrained(model_dir(tiny_dir, kind), task=TASK[kind]), None)  # no adapter
    ids = ids_batch(3, 6, seed=5)
    hf = tiny.CLASSES[(kind, TASK[kind])].from_pretrained(model_dir(tiny_dir, kind)).eval()
    got = np.asarray(pm.generate(ids, max_new_tokens=NEW, num_beams=3))
    want = peft_generate(hf, ids, width=got.shape[1], num_beams=3)
    lead = 1 if kind in tiny.ENCODER_DECODER else ids.shape[1]
    want[:, lead:] = pad_after_eos(want[:, lead:], pm.base_model.config.eos_token_id)
    np.testing.assert_array_equal(got, want)
    greedy = np.asarray(pm.generate(ids, max_new_tokens=NEW))
    np.testing.assert_array_equal(greedy, peft_generate(hf, ids, width=greedy.shape[1]))


def test_process_logits_matches_transformers_warpers():
    logits = np.random.default_rng(0).normal(size=(4, 50)).astype(np.float32) * 3
    for temperature, top_k, top_p in [(0.7, 5, 1.0), (1.0, 0, 0.8), (1.3, 10, 0.5)]:
        cfg = jgen.GenerationConfig(do_sample=True, top_k=top_k, top_p=top_p < 1)
        got = np.asarray(jgen.process_logits(logits, jgen.knobs(temperature, top_p), cfg))
        x = torch.tensor(logits)
        for warper in (tf.TemperatureLogitsWarper(temperature), tf.TopKLogitsWarper(top_k) if top_k else None,
                       tf.TopPLogitsWarper(top_p) if top_p < 1 else None):
            x = x if warper is None else warper(None, x)
        np.testing.assert_array_equal(np.isfinite(got), np.isfinite(x.numpy()))
        np.testing.assert_allclose(got[np.isfinite(got)], x.numpy()[np.isfinite(got)], rtol=1e-6)


def test_sampling_is_seeded_and_restricted(tiny_dir):
    pm = jsoft_model(tiny_dir, "llama", "prompt")
    ids = ids_batch(4, 5, seed=6)
    kw = dict(max_new_tokens=NEW, do_sample=True, eos_token_id=[], output_scores=True)
    a = np.asarray(pm.generate(ids, seed=1, top_p=0.6, **kw)[0])
    np.testing.assert_array_equal(a, np.asarray(pm.generate(ids, seed=1, top_p=0.6, **kw)[0]))
    assert not np.array_equal(a, np.asarray(pm.generate(ids, seed=2, top_p=0.6, **kw)[0]))
    for extra in ({"top_k": 3}, {"top_p": 0.6}, {"top_k": 4, "top_p": 0.5, "temperature": 0.5}):
        out, scores = pm.generate(ids, seed=4, **kw, **extra)
        new, scores = np.asarray(out)[:, -NEW:], np.asarray(scores)
        chosen = np.take_along_axis(scores, new[..., None], -1)[..., 0]
        assert np.isfinite(chosen).all()  # every token came from the allowed set
        allowed = np.isfinite(scores).sum(-1)
        assert (allowed <= extra.get("top_k", tiny.VOCAB)).all() and (allowed < tiny.VOCAB).all()
        assert len(set(new.ravel())) > 4


def test_invalid_requests_are_refused(tiny_dir):
    pm = jsoft_model(tiny_dir, "gpt2", "prompt")
    ids = ids_batch()
    mask = np.ones_like(ids)
    mask[0, -2:] = 0
    with pytest.raises(ValueError, match="left padding"):
        pm.generate(ids, mask)
    with pytest.raises(ValueError, match="num_beams"):
        pm.generate(ids, num_beams=2, do_sample=True)
    with pytest.raises(ValueError, match="positions"):
        pm.generate(ids, max_new_tokens=100)
    with pytest.raises(ValueError, match=r"repetition_penalty=0 must be > 0"):
        pm.generate(ids, repetition_penalty=0)
    with pytest.raises(ValueError, match=r"no_repeat_ngram_size=-1 must be an integer >= 0"):
        pm.generate(ids, no_repeat_ngram_size=-1)


def _word_tokenizer(path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {"[PAD]": 0, "[UNK]": 1, "[EOS]": 2, **{f"w{i}": i for i in range(3, tiny.VOCAB)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = tf.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")
    fast.save_pretrained(path)
    return fast


def test_cli_forces_the_first_token_of_a_seq2seq_output(tiny_dir, tmp_path, capsys):
    """mBART-50 translates into the language whose code the output starts with: --forced-bos-token."""
    pm = jsoft_model(tiny_dir, "bart", "prefix")
    model = tmp_path / "model"
    tiny.save("bart", "seq2seq_lm", model, **DIVERSE["bart"])
    tok = _word_tokenizer(model)
    pm.save_pretrained(tmp_path / "adapter")
    prompt = "w5 w17 w33 w8"
    args = ["--model", str(model), "--adapter", str(tmp_path / "adapter"), "--max-new-tokens", "5", "--prompt", prompt]
    jgen.main(args + ["--forced-bos-token", "w42"])
    new = np.asarray(pm.generate(np.asarray([tok(prompt)["input_ids"]]), max_new_tokens=5,
                                 forced_bos_token_id=42))[0, 1:].tolist()
    assert new[0] == 42
    want = tok.decode(new[:new.index(2)] if 2 in new else new, skip_special_tokens=True)
    assert json.loads(capsys.readouterr().out) == {"prompt": prompt, "completion": want}
    with pytest.raises(ValueError, match="--forced-bos-token='nope' is not a token"):
        jgen.main(args + ["--forced-bos-token", "nope"])


def test_cli_writes_completions(tiny_dir, tmp_path, capsys):
    pm = jsoft_model(tiny_dir, "gpt2", "prefix")
    model = tmp_path / "model"
    tiny.save("gpt2", "causal_lm", model, **DIVERSE["gpt2"])
    tok = _word_tokenizer(model)
    pm.save_pretrained(tmp_path / "adapter")
    prompts = ["w5 w17 w33", "w90 w4 w4 w61 w7 w8"]
    (tmp_path / "in.jsonl").write_text(json.dumps({"prompt": prompts[0]}) + "\n" + json.dumps(prompts[1]) + "\n")
    args = ["--model", str(model), "--adapter", str(tmp_path / "adapter"), "--max-new-tokens", "5"]
    jgen.main(args + ["--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl")])
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert [r["prompt"] for r in rows] == prompts
    for r in rows:
        ids = np.asarray([tok(r["prompt"])["input_ids"]])
        want = np.asarray(pm.generate(ids, max_new_tokens=5))[0, ids.shape[1]:]
        assert r["completion"] == tok.decode(want)
    jgen.main(args + ["--prompt", prompts[0]])
    assert json.loads(capsys.readouterr().out) == rows[0]
    jgen.main(args + ["--prompt", prompts[1], "--num-beams", "3", "--num-return-sequences", "2"])
    ids = np.asarray([tok(prompts[1])["input_ids"]])
    beams = np.asarray(pm.generate(ids, max_new_tokens=5, num_beams=3, num_return_sequences=2))[:, ids.shape[1]:]
    assert json.loads(capsys.readouterr().out) == {"prompt": prompts[1], "completions": tok.batch_decode(beams)}
