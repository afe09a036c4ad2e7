"""Adapters move both ways between jsoft and PEFT with the same logits, for every method x
backbone x task PEFT supports; trainable-parameter counts equal PEFT's."""

import numpy as np
import peft
import pytest

import jsoft
from tests.tuners import peft_ref

CASES = [(kind, task, method) for kind, task in peft_ref.MATRIX for method in peft_ref.METHODS
         if not (kind in peft_ref.NO_PEFT_PREFIX + peft_ref.NO_PREFIX and method.startswith("prefix"))]
# what PEFT itself can make: not a prefix where its derived width does not fit the model
PEFT_MADE = [(kind, task, method) for kind, task, method in CASES
             if not (kind in peft_ref.PEFT_PREFIX_DOES_NOT_FIT and method.startswith("prefix"))]


@pytest.mark.parametrize("kind,task,method", CASES, ids=lambda x: str(x))
def test_jsoft_adapter_loads_in_peft_with_the_same_logits_and_loss(tiny_dir, tmp_path, kind, task, method):
    """PEFT runs the adapter jsoft saves with jsoft's logits, and the training loss from `labels` equals PEFT's,
    virtual-token label padding included (causal LM computes its loss from its own LM head on the predicting
    positions only)."""
    _assert_logits_and_loss_match_peft(tiny_dir(kind, task), tmp_path, kind, task, method)


@pytest.mark.parametrize("kind,task,method", PEFT_MADE, ids=lambda x: str(x))
def test_peft_adapter_loads_in_jsoft_and_trainable_counts_match(tiny_dir, tmp_path, kind, task, method):
    """jsoft runs the adapter PEFT saves with PEFT's logits; the same config trains as many parameters in jsoft as
    in PEFT, of as many in all."""
    model_dir = tiny_dir(kind, task)
    jconfig, pconfig = peft_ref.configs(method, task, kind)
    ref = peft.get_peft_model(peft_ref.hf_base(kind, task, model_dir), pconfig)
    made = jsoft.get_peft_model(jsoft.from_pretrained(model_dir, task=task, num_labels=3), jconfig)
    assert made.get_nb_trainable_parameters() == ref.get_nb_trainable_parameters()
    ref.save_pretrained(tmp_path / "adapter")
    ref.eval()
    pm = jsoft.PeftModel.from_pretrained(jsoft.from_pretrained(model_dir, task=task, num_labels=3),
                                         tmp_path / "adapter")
    inputs = peft_ref.batch(kind)
    got = peft_ref.jsoft_logits(pm, inputs)
    want = peft_ref.peft_logits(peft.PeftModel.from_pretrained(peft_ref.hf_base(kind, task, model_dir),
                                                                tmp_path / "adapter").eval(), inputs)
    peft_ref.compare(got, want, task, inputs, jconfig.num_virtual_tokens)


TRAINED = [("gpt2", "causal_lm", "ptuning_lstm"), ("gpt2", "causal_lm", "prefix_proj"), ("bert", "seq_cls", "prefix"),
           ("llama", "seq_cls", "prompt")]


@pytest.mark.parametrize("kind,task,method", TRAINED, ids=lambda x: str(x))
def test_adapter_trained_in_peft_loads_in_jsoft(tiny_dir, tmp_path, kind, task, method):
    import torch

    model_dir = tiny_dir(kind, task)
    jconfig, pconfig = peft_ref.configs(method, task, kind)
    ref = peft.get_peft_model(peft_ref.hf_base(kind, task, model_dir), pconfig)
    inputs = {k: torch.tensor(v) for k, v in peft_ref.batch(kind).items()}
    labels = inputs["input_ids"] if task == "causal_lm" else torch.tensor([0, 2, 1])
    opt = torch.optim.AdamW([p for p in ref.parameters() if p.requires_grad], lr=0.05)
    for _ in range(3):
        opt.zero_grad()
        ref(**inputs, labels=labels).loss.backward()
        opt.step()
    ref.save_pretrained(tmp_path / "adapter")
    pm = jsoft.PeftModel.from_pretrained(jsoft.from_pretrained(model_dir, task=task, num_labels=3),
                                         tmp_path / "adapter")
    reloaded = peft.PeftModel.from_pretrained(peft_ref.hf_base(kind, task, model_dir), tmp_path / "adapter").eval()
    batch = peft_ref.batch(kind)
    peft_ref.compare(peft_ref.jsoft_logits(pm, batch), peft_ref.peft_logits(reloaded, batch), task, batch,
                     jconfig.num_virtual_tokens)


HEAD_VARIANTS = [("gpt2", dict(tie_word_embeddings=False)), ("llama", dict(tie_word_embeddings=True, head_dim=16))]


@pytest.mark.parametrize("kind,overrides", HEAD_VARIANTS, ids=lambda x: str(x))
@pytest.mark.parametrize("method", ["prompt", "prefix_proj", "ptuning_lstm"])
def test_logits_and_loss_match_peft_with_the_other_lm_head(tiny_dir, tmp_path, kind, overrides, method):
    """Untied GPT-2 and tied Llama heads: the causal LM logits and loss from jsoft's own head equal PEFT's."""
    _assert_logits_and_loss_match_peft(tiny_dir(kind, "causal_lm", **overrides), tmp_path, kind, "causal_lm",
                                       method)


def _assert_logits_and_loss_match_peft(model_dir, tmp_path, kind, task, method):
    import torch

    config, _ = peft_ref.configs(method, task, kind)
    pm = jsoft.get_peft_model(jsoft.from_pretrained(model_dir, task=task, num_labels=3), config, seed=1)
    assert pm.save_pretrained(tmp_path / "adapter") == "peft"
    ref = peft.PeftModel.from_pretrained(peft_ref.hf_base(kind, task, model_dir), tmp_path / "adapter").eval()
    inputs = peft_ref.batch(kind)
    peft_ref.compare(peft_ref.jsoft_logits(pm, inputs), peft_ref.peft_logits(ref, inputs), task, inputs,
                     config.num_virtual_tokens)
    labels = peft_ref.task_labels(kind, task, inputs)
    got = float(pm(**inputs, labels=labels).loss)
    with torch.no_grad():
        torch_inputs = {k: torch.tensor(v) for k, v in inputs.items()}
        if task == "token_cls" and (not method.startswith("prefix") or kind == "biogpt"):
            # PEFT passes the labels on unpadded, and transformers then fails on the length mismatch;
            # jsoft pads them with -100 for the virtual tokens: the loss over PEFT's real-token logits. (BioGPT's
            # loss masks labels with the attention mask, which PEFT has extended by the prefix: it fails too.)
            logits = ref(**torch_inputs).logits[:, -labels.shape[1]:]
            want = float(torch.nn.functional.cross_entropy(logits.reshape(-1, 3), torch.tensor(labels).reshape(-1)))
        else:
            want = float(ref(**torch_inputs, labels=torch.tensor(labels)).loss)
    np.testing.assert_allclose(got, want, rtol=1e-5)


SEQ_CLS_PROBLEMS = [  # (config.json problem_type, labels): transformers' three seq_cls losses
    (None, np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0], [0.0, 1.0, 1.0]], np.float32)),  # float: multi-label
    ("multi_label_classification", np.array([[1, 0, 1], [0, 0, 0], [0, 1, 1]], np.float32)),
    ("regression", np.array([[0.5, -1.0, 2.0], [0.0, 0.3, 1.0], [1.5, 0.0, -0.2]], np.float32)),
    ("single_label_classification", np.array([2, -100, 1])),
]


@pytest.mark.parametrize("kind", ["bert", "llama"])
@pytest.mark.parametrize("problem_type,labels", SEQ_CLS_PROBLEMS, ids=lambda x: str(x)[:20])
def test_seq_cls_loss_follows_problem_type_as_peft(tiny_dir, tmp_path, kind, problem_type, labels):
    import torch

    model_dir = tiny_dir(kind, "seq_cls", **({} if problem_type is None else {"problem_type": problem_type}))
    config, _ = peft_ref.configs("prefix", "seq_cls")
    pm = jsoft.get_peft_model(jsoft.from_pretrained(model_dir, task="seq_cls"), config, seed=1)
    assert pm.base_model.config.problem_type == problem_type
    pm.save_pretrained(tmp_path / "adapter")
    ref = peft.PeftModel.from_pretrained(peft_ref.hf_base(kind, "seq_cls", model_dir), tmp_path / "adapter").eval()
    inputs = peft_ref.batch(kind)
    got = float(pm(**inputs, labels=labels).loss)
    with torch.no_grad():
        want = float(ref(**{k: torch.tensor(v) for k, v in inputs.items()}, labels=torch.tensor(labels)).loss)
    np.testing.assert_allclose(got, want, rtol=1e-5)


def test_labels_that_do_not_fit_the_problem_type_are_refused(tiny_dir):
    pm = jsoft.get_peft_model(jsoft.from_pretrained(tiny_dir("bert", "seq_cls", problem_type="regression"),
                                                    task="seq_cls"), peft_ref.configs("prefix", "seq_cls")[0])
    with pytest.raises(ValueError, match=r"regression needs labels of shape \(3, 3\)"):
        pm(**peft_ref.batch("bert"), labels=np.array([0.5, 1.0, 2.0], np.float32))
    with pytest.raises(ValueError, match="problem_type='multi-label' is not valid"):
        jsoft.from_pretrained(tiny_dir("bert", "seq_cls"), task="seq_cls", problem_type="multi-label")


KV_WIDTH_VARIANTS = [  # key/value width != hidden size, or fewer key/value heads of another head size
    ("t5", "seq2seq_lm", dict(d_kv=12)),  # d_kv * num_heads = 48 != d_model = 32, like T5-3B / 11B
    ("llama", "causal_lm", dict(head_dim=16, num_key_value_heads=6)),  # no GQA: kv width 96 != hidden size 48
    ("llama", "seq_cls", dict(head_dim=16, num_key_value_heads=3)),  # kv width 48 == hidden size, 3 heads
]


@pytest.mark.parametrize("kind,task,overrides", KV_WIDTH_VARIANTS, ids=lambda x: str(x))
@pytest.mark.parametrize("method", ["prefix", "prefix_proj"])
def test_prefix_as_wide_as_keys_and_values_both_ways(tiny_dir, tmp_path, kind, task, overrides, method):
    """Prefixes are as wide as the model's keys and values, and jsoft derives token_dim and
    num_attention_heads as PEFT does (for T5, where PEFT would derive d_model and fail, PEFT runs the
    adapter jsoft saves and one it makes with that token_dim)."""
    model_dir = tiny_dir(kind, task, **overrides)
    jconfig, pconfig = peft_ref.configs(method, task, kind)
    pm = jsoft.get_peft_model(jsoft.from_pretrained(model_dir, task=task, num_labels=3), jconfig, seed=1)
    mc = pm.base_model.config
    assert pm.active_peft_config.token_dim == mc.kv_width
    assert pm.active_peft_config.num_attention_heads == mc.num_kv_heads
    pm.save_pretrained(tmp_path / "jsoft")
    batch = peft_ref.batch(kind)
    ref = peft.PeftModel.from_pretrained(peft_ref.hf_base(kind, task, model_dir), tmp_path / "jsoft").eval()
    peft_ref.compare(peft_ref.jsoft_logits(pm, batch), peft_ref.peft_logits(ref, batch), task, batch, 0)
    if kind == "t5":
        pconfig.token_dim = mc.kv_width
    made = peft.get_peft_model(peft_ref.hf_base(kind, task, model_dir), pconfig).eval()
    made.save_pretrained(tmp_path / "peft")
    loaded = jsoft.PeftModel.from_pretrained(jsoft.from_pretrained(model_dir, task=task, num_labels=3),
                                             tmp_path / "peft")
    peft_ref.compare(peft_ref.jsoft_logits(loaded, batch), peft_ref.peft_logits(made, batch), task, batch, 0)


NARROW_EMBEDDINGS = [("opt", "causal_lm", dict(word_embed_proj_dim=32, do_layer_norm_before=False)),
                     ("electra", "seq_cls", dict(embedding_size=24))]


@pytest.mark.parametrize("kind,task,overrides", NARROW_EMBEDDINGS, ids=lambda x: str(x))
@pytest.mark.parametrize("method", ["prompt", "ptuning_lstm"])
def test_prompt_as_wide_as_projected_word_embeddings(tiny_dir, tmp_path, kind, task, overrides, method):
    """OPT-350m's and electra-small's word embeddings are narrower than their stacks (512 projected to 1024, 128 to
    256): an embedding prompt takes their width (PEFT derives the hidden size there and fails; it runs the adapter
    jsoft saves)."""
    model_dir = tiny_dir(kind, task, **overrides)
    config, _ = peft_ref.configs(method, task)
    pm = jsoft.get_peft_model(jsoft.from_pretrained(model_dir, task=task, num_labels=3), config, seed=1)
    narrow = next(iter(overrides.values()))
    assert pm.active_peft_config.token_dim == narrow < pm.base_model.config.hidden_size
    pm.save_pretrained(tmp_path / "adapter")
    ref = peft.PeftModel.from_pretrained(peft_ref.hf_base(kind, task, model_dir), tmp_path / "adapter").eval()
    batch = peft_ref.batch(kind)
    peft_ref.compare(peft_ref.jsoft_logits(pm, batch), peft_ref.peft_logits(ref, batch), task, batch,
                     config.num_virtual_tokens)


@pytest.mark.parametrize("kind", peft_ref.NO_PREFIX)
@pytest.mark.parametrize("method", ["prefix", "prefix_proj"])
def test_a_prefix_is_refused_where_none_fits_and_peft_fails(tiny_dir, kind, method):
    """Multi-head latent attention (DeepSeek-V3), linear attention (Qwen3.5), Mamba-2 (Granite 4.0-H): jsoft refuses
    a key/value prefix by name; PEFT makes one and fails on the first forward (Mamba: on the mask it widens for the
    prefix; a pure Mamba-2 stack takes no past_key_values and ignores that mask: PEFT's prefix there silently changes
    nothing)."""
    model_dir = tiny_dir(kind, "causal_lm")
    jconfig, pconfig = peft_ref.configs(method, "causal_lm", kind)
    refused = "PREFIX_TUNING does not fit .*(latent attention|linear-attention|Mamba).* use PROMPT_TUNING"
    with pytest.raises(ValueError, match=refused):
        jsoft.get_peft_model(jsoft.from_pretrained(model_dir, task="causal_lm"), jconfig)
    ref = peft.get_peft_model(peft_ref.hf_base(kind, "causal_lm", model_dir), pconfig)
    if kind == "mamba2":  # Mamba2ForCausalLM takes no past_key_values and ignores the longer mask: PEFT's prefix
        # silently does nothing
        inputs = peft_ref.batch(kind)
        want = peft_ref.peft_logits(peft_ref.hf_base(kind, "causal_lm", model_dir), inputs)
        np.testing.assert_allclose(peft_ref.peft_logits(ref, inputs), want, atol=1e-6)
        return
    # latent attention: the prefix's keys are narrower than the model's; linear attention: a prefix cache holds no
    # recurrent state; Mamba: the mask is wider than the tokens
    with pytest.raises((RuntimeError, ValueError),
                       match="Sizes of tensors must match|Cannot get conv state|must match the size of tensor"):
        peft_ref.peft_logits(ref, peft_ref.batch(kind))


# one of each method; a trained head (seq_cls, token_cls) and an encoder-decoder among them
TRAJECTORIES = [("gpt2", "causal_lm", "prefix_proj"), ("gpt2", "causal_lm", "ptuning_lstm"),
                ("llama", "causal_lm", "prompt"), ("bert", "seq_cls", "prefix"), ("roberta", "token_cls", "prefix"),
                ("t5", "seq2seq_lm", "ptuning_mlp")]


@pytest.mark.parametrize("kind,task,method", TRAJECTORIES, ids=lambda x: str(x))
def test_training_follows_peft_with_torch_adamw(tiny_dir, tmp_path, kind, task, method):
    """From the same start (encoders and heads included), jsoft's train step with the train config's defaults
    (AdamW, global-norm clipping at 1.0) and a linear schedule with warmup takes the steps that PEFT takes with
    torch.optim.AdamW, `clip_grad_norm_` and transformers' `get_linear_schedule_with_warmup`: the same losses
    and the same adapter (and head) at the end."""
    from jsoft import build

    model_dir = tiny_dir(kind, task)
    jconfig, pconfig = peft_ref.configs(method, task, kind)
    pm = jsoft.get_peft_model(jsoft.from_pretrained(model_dir, task=task, num_labels=3), jconfig, seed=1)
    ref = peft.get_peft_model(peft_ref.hf_base(kind, task, model_dir), pconfig)
    peft_ref.start_peft_from_jsoft(pm, ref, tmp_path)
    inputs = peft_ref.batch(kind)
    labels = peft_ref.task_labels(kind, task, inputs)
    train_config = build.default_config().train
    train_config.learning_rate, train_config.warmup_steps, train_config.schedule = 0.05, 1, "linear"
    jsoft_losses = peft_ref.train_jsoft(pm, inputs, labels, steps=4, train_config=train_config)
    peft_losses = peft_ref.train_peft(ref, inputs, labels, steps=4, train_config=train_config)
    np.testing.assert_allclose(jsoft_losses, peft_losses, rtol=1e-5)
    # the first step is warmup's (learning rate 0); each later one moves the prompt
    assert jsoft_losses[0] == jsoft_losses[1] and len(set(jsoft_losses)) == 3
    peft_ref.assert_same_adapters(pm, ref, tmp_path)
