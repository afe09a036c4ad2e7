"""Method behaviour beyond PEFT parity: initialisers, gradients, folding, mixed-adapter batches,
jsoft-only forms, and bad input."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from flax import nnx

import jsoft
from tests import tiny
from tests.tuners import peft_ref


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    tiny.tokenizer(post="gpt").save_pretrained(path)
    return str(path)


def gpt2(tiny_dir, task="causal_lm"):
    return jsoft.from_pretrained(tiny_dir("gpt2", task), task=task, num_labels=3)


# ------------------------------------------------------------------ initialisers


@pytest.mark.parametrize("kind", ["gpt2", "gemma"])  # Gemma's lookups are scaled by sqrt(hidden_size), PEFT's init too
def test_text_init_matches_peft(tiny_dir, tok_dir, kind):
    kw = dict(task_type="CAUSAL_LM", num_virtual_tokens=7, prompt_tuning_init="TEXT",
              prompt_tuning_init_text="the movie was good", tokenizer_name_or_path=tok_dir)
    model = jsoft.from_pretrained(tiny_dir(kind, "causal_lm"), task="causal_lm")
    pm = jsoft.get_peft_model(model, jsoft.PromptTuningConfig(**kw))
    ref = peft.get_peft_model(peft_ref.hf_base(kind, "causal_lm", tiny_dir(kind, "causal_lm")),
                              peft.PromptTuningConfig(**kw))
    want = ref.prompt_encoder["default"].embedding.weight.detach().numpy()
    np.testing.assert_allclose(np.asarray(pm.adapters["default"].prompt.embedding[...]), want, atol=1e-6)


def test_class_label_init_is_mean_label_embedding(tiny_dir, tok_dir):
    model = gpt2(tiny_dir)
    cfg = jsoft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=5, prompt_tuning_init="CLASS_LABEL",
                                   prompt_tuning_class_labels=["good", "very bad"], tokenizer_name_or_path=tok_dir)
    prompt = np.asarray(jsoft.get_peft_model(model, cfg).adapters["default"].prompt.embedding[...])
    tok = tiny.tokenizer(post="gpt")
    emb = np.asarray(model.word_embeddings.embedding[...])
    np.testing.assert_allclose(prompt[0], emb[tok("good", add_special_tokens=False)["input_ids"]].mean(0), atol=1e-6)
    np.testing.assert_allclose(prompt[1], emb[tok("very bad", add_special_tokens=False)["input_ids"]].mean(0),
                               atol=1e-6)
    vocab_rows = {tuple(np.round(r, 5)) for r in emb}
    assert all(tuple(np.round(r, 5)) in vocab_rows for r in prompt[2:])  # the rest: sampled vocabulary


def test_sample_vocab_rows_come_from_the_vocabulary(tiny_dir):
    model = gpt2(tiny_dir)
    cfg = jsoft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=6, prompt_tuning_init="SAMPLE_VOCAB")
    prompt = np.asarray(jsoft.get_peft_model(model, cfg).adapters["default"].prompt.embedding[...])
    emb = np.asarray(model.word_embeddings.embedding[...])
    assert all(np.abs(emb - row).max(-1).min() < 1e-6 for row in prompt)


# ------------------------------------------------------------------ training state


@pytest.mark.parametrize("method", list(peft_ref.METHODS))
@pytest.mark.parametrize("kind,task", [("gpt2", "causal_lm"), ("bert", "seq_cls")])
def test_gradients_reach_every_trainable_leaf_and_only_them(tiny_dir, kind, task, method):
    config, _ = peft_ref.configs(method, task)
    pm = jsoft.get_peft_model(jsoft.from_pretrained(tiny_dir(kind, task), task=task, num_labels=3), config)
    inputs = peft_ref.batch(kind)
    labels = inputs["input_ids"] if task == "causal_lm" else np.array([0, 1, 2])
    graphdef, trainable, frozen = nnx.split(pm, jsoft.Trainable, ...)
    assert all(type(v) is nnx.Param for v in jax.tree.leaves(frozen, is_leaf=lambda x: isinstance(x, nnx.Variable))
               if isinstance(v, nnx.Variable))

    def loss(t):
        return nnx.merge(graphdef, t, frozen)(**inputs, labels=labels, dropout_rng=jax.random.key(0)).loss

    grads = jax.jit(jax.grad(loss))(trainable)
    for path, g in nnx.to_flat_state(grads):
        assert np.abs(np.asarray(g.get_value())).sum() > 0, f"no gradient reaches {path}"
    n_trainable, n_all = pm.get_nb_trainable_parameters()
    assert n_trainable == sum(x.size for x in jax.tree.leaves(trainable)) < n_all


# every backbone once (its layers hold the half matmuls; heads are shared code), and per-token heads on GPT-2 and BERT
BF16_CASES = [*dict(reversed(peft_ref.MATRIX)).items(), ("gpt2", "token_cls"), ("bert", "token_cls")]
# The backbones that place or bias prefix slots in their own code, and one of each other attention layout (GPT-2,
# BERT, Llama, Phi-3's fused projections, Cohere's parallel block, Mixtral's experts). A prefix meets the half keys and
# values in one shared cast (`layers.with_prefix`), so it runs in bf16 on these; the fp32 prefix of every backbone is
# in the PEFT matrix
LAYOUT_KINDS = ("gpt2", "bert", "t5", "bart", "llama", "bloom", "falcon", "gpt_bigcode", "opt", "deberta",
                "deberta-v2", "modernbert", "mpnet", "albert", "gemma2", "gpt_neo", "gpt_oss", "cohere", "phi3",
                "mixtral")
BF16_METHOD_CASES = [(kind, task, method) for kind, task in BF16_CASES for method in ("prompt", "prefix")
                     if method == "prompt" or kind in LAYOUT_KINDS]


@pytest.mark.parametrize("kind,task,method", BF16_METHOD_CASES, ids=lambda x: str(x))
def test_bf16_backbone_gradients_follow_fp32(tiny_dir, kind, task, method):
    """bf16 frozen weights (half matmuls with fp32 accumulation, forward and backward, on every backbone):
    the fp32 trainable leaves get gradients that point where fp32's do."""
    config, _ = peft_ref.configs(method, task)
    inputs = peft_ref.batch(kind)
    labels = _task_labels(kind, task, inputs)

    def grads(dtype):
        base = jsoft.from_pretrained(tiny_dir(kind, task), task=task, num_labels=3, dtype=dtype)
        graphdef, trainable, frozen = nnx.split(jsoft.get_peft_model(base, config, seed=1), jsoft.Trainable, ...)
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(trainable))

        def loss(t):
            return nnx.merge(graphdef, t, frozen)(**inputs, labels=labels).loss

        return jax.tree.leaves(jax.jit(jax.grad(loss))(trainable))

    for half, full in zip(grads("bfloat16"), grads("float32")):
        assert half.dtype == jnp.float32
        half, full = np.ravel(half), np.ravel(full)
        assert half @ full / np.linalg.norm(half) / np.linalg.norm(full) > 0.98


def _task_labels(kind, task, inputs):
    ids = inputs["input_ids"]
    if task == "causal_lm":
        return ids
    if task == "token_cls":
        return ids % 3
    if task == "seq2seq_lm":
        return inputs["decoder_input_ids"]
    # one class for every row: a tiny random encoder's [CLS] output barely depends on the input, so rows of
    # different classes would nearly cancel, and the sum would be rounding noise in either precision
    return np.array([2, 2, 2])


@pytest.mark.parametrize("method", ["prefix_proj", "ptuning_mlp", "ptuning_lstm"])
def test_fold_keeps_outputs_and_drops_encoders(tiny_dir, method):
    config, _ = peft_ref.configs(method, "causal_lm")
    pm = jsoft.get_peft_model(gpt2(tiny_dir), config)
    inputs = peft_ref.batch("gpt2")
    before = np.asarray(pm(**inputs).logits)
    n_before = pm.get_nb_trainable_parameters()[0]
    pm.fold()
    np.testing.assert_allclose(np.asarray(pm(**inputs).logits), before, atol=1e-5)
    assert pm.get_nb_trainable_parameters()[0] < n_before


@pytest.mark.parametrize("method", ["ptuning_lstm", "prefix_proj"])
def test_jsoft_format_keeps_encoders_for_more_training(tiny_dir, tmp_path, method):
    config, _ = peft_ref.configs(method, "causal_lm")
    pm = jsoft.get_peft_model(gpt2(tiny_dir), config, seed=3)
    assert pm.save_pretrained(tmp_path / "a", format="jsoft") == "jsoft"
    back = jsoft.PeftModel.from_pretrained(gpt2(tiny_dir), tmp_path / "a")
    for (p1, v1), (p2, v2) in zip(nnx.to_flat_state(nnx.state(pm, jsoft.Trainable)),
                                  nnx.to_flat_state(nnx.state(back, jsoft.Trainable))):
        assert p1 == p2
        np.testing.assert_array_equal(np.asarray(v1.get_value()), np.asarray(v2.get_value()))
    assert back.get_nb_trainable_parameters() == pm.get_nb_trainable_parameters()


# ------------------------------------------------------------------ many adapters


# Choosing each row's adapter is shared code: it runs on the layouts above, on multi-head latent attention
# (DeepSeek-V3), Llama 4's chunked attention and every stack with a recurrent state, each with all its heads
MIXED_CASES = [(kind, task) for kind, task in peft_ref.MATRIX
               if kind in (*LAYOUT_KINDS, "deepseek_v3", "llama4_text", *peft_ref.LINEAR_ATTENTION)]


@pytest.mark.parametrize("kind,task", MIXED_CASES, ids=lambda x: str(x))
def test_mixed_adapter_batch_equals_each_row_alone(tiny_dir, kind, task):
    """Rows of different methods and virtual-token counts in one batch: each row's output equals
    that row run alone with its adapter (right-padded rows included), on every head."""
    if (kind, task) == ("gpt_neo", "seq_cls"):
        pytest.skip("a prompt row's classifier reads its last slot, here a pad whose 4-slot local window holds only "
                    "pads: transformers then averages every slot of the batch, so the result depends on the batch")
    model = jsoft.from_pretrained(tiny_dir(kind, task), task=task, num_labels=3)
    tt = peft_ref.TASK_TYPES[task]
    pm = jsoft.get_peft_model(model, jsoft.PromptTuningConfig(task_type=tt, num_virtual_tokens=4), "a", seed=1)
    b = jsoft.PromptTuningConfig if kind in peft_ref.NO_PREFIX else jsoft.PrefixTuningConfig
    pm.add_adapter("b", b(task_type=tt, num_virtual_tokens=7), seed=2)
    pm.add_adapter("c", jsoft.PromptTuningConfig(task_type=tt, num_virtual_tokens=2), seed=3)
    pm.add_adapter("d", jsoft.PromptEncoderConfig(task_type=tt, num_virtual_tokens=3), seed=4)
    for name, adapter in pm.adapters.items():  # distinct heads, so a row that reads another's head fails
        if adapter.head is not None:
            adapter.head.kernel[...] = adapter.head.kernel[...] + 0.1 * (ord(name) - ord("a"))
    inputs = peft_ref.batch(kind, B=4)
    names = ["c", "b", "a", "d"]  # the shortest prompt on the unpadded row, the prefix on a padded one
    mixed = np.asarray(pm(**inputs, adapter_names=names).logits)
    for b, name in enumerate(names):
        row = {k: v[b:b + 1] for k, v in inputs.items()}
        pm.set_adapter(name)
        alone = np.asarray(pm(**row).logits)[0]
        got = mixed[b]
        if task in ("causal_lm", "token_cls"):  # compare the real tokens (PEFT also returns prompt slots)
            T = row["input_ids"].shape[1]
            keep = row["attention_mask"][0].astype(bool)
            got, alone = got[-T:][keep], alone[-T:][keep]
        # Gated DeltaNet: the row's tokens sit elsewhere in the rule's chunks in the batch (rounding moves ~1e-5)
        atol = 1e-5 * (max(1.0, np.abs(alone).max()) if kind in peft_ref.LINEAR_ATTENTION else 1.0)
        np.testing.assert_allclose(got, alone, atol=atol, err_msg=f"row {b} (adapter {name!r})")


def test_mixed_heads_per_row(tiny_dir):
    model = jsoft.from_pretrained(tiny_dir("bert", "seq_cls"), task="seq_cls", num_labels=3)
    pm = jsoft.get_peft_model(model, jsoft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4), "x")
    pm.add_adapter("y", jsoft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4), seed=5)
    pm.adapters["y"].head.kernel[...] = pm.adapters["y"].head.kernel[...] + 1.0
    inputs = peft_ref.batch("bert", B=2)
    mixed = np.asarray(pm(**inputs, adapter_names=["y", "x"]).logits)
    for b, name in enumerate(["y", "x"]):
        pm.set_adapter(name)
        alone = np.asarray(pm(**{k: v[b:b + 1] for k, v in inputs.items()}).logits)[0]
        np.testing.assert_allclose(mixed[b], alone, atol=1e-5)


# ------------------------------------------------------------------ P-Tuning templates


def test_template_puts_virtual_tokens_inside_the_input(tiny_dir, tmp_path):
    tok = tiny.tokenizer(post="gpt")
    cfg = jsoft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=3,
                                    template="[P][P] the movie [X] was [P]")
    pm = jsoft.get_peft_model(gpt2(tiny_dir), cfg)
    ids, mask, pos = jsoft.tuners.p_tuning.apply_template(cfg.template, ["good", "not very good"], tok)
    assert pos[0].tolist() == [0, 1, ids.shape[1] - 2 if mask[0].sum() == ids.shape[1] else pos[0][2]]
    out = pm(input_ids=ids, attention_mask=mask, prompt_positions=pos)
    assert out.logits.shape == (*ids.shape, tiny.VOCAB)
    # the prompt is really used at those positions: changing it changes the output there
    pm.adapters["default"].prompt.embedding[...] = pm.adapters["default"].prompt.embedding[...] + 1
    assert not np.allclose(np.asarray(pm(input_ids=ids, attention_mask=mask, prompt_positions=pos).logits),
                           np.asarray(out.logits))
    with pytest.raises(ValueError, match=r"inside the template .*: pass prompt_positions"):
        pm(input_ids=ids, attention_mask=mask)  # not prepended as if there were no template
    with pytest.raises(ValueError, match="PEFT cannot run"):
        pm.save_pretrained(tmp_path / "peft", format="peft")
    assert pm.save_pretrained(tmp_path / "own") == "jsoft"
    back = jsoft.PeftModel.from_pretrained(gpt2(tiny_dir), tmp_path / "own")
    np.testing.assert_array_equal(np.asarray(back(input_ids=ids, attention_mask=mask, prompt_positions=pos).logits),
                                  np.asarray(pm(input_ids=ids, attention_mask=mask, prompt_positions=pos).logits))


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize("make,match", [
    (lambda: jsoft.PromptTuningConfig(num_virtual_tokens=0), "num_virtual_tokens"),
    (lambda: jsoft.PrefixTuningConfig(num_virtual_tokens=-3), "num_virtual_tokens"),
    (lambda: jsoft.PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="TEXT",
                                      tokenizer_name_or_path="x"), "prompt_tuning_init_text"),
    (lambda: jsoft.PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="TEXT",
                                      prompt_tuning_init_text="hi"), "tokenizer_name_or_path"),
    (lambda: jsoft.PromptTuningConfig(num_virtual_tokens=4, prompt_tuning_init="FANCY"), "prompt_tuning_init"),
    (lambda: jsoft.PromptEncoderConfig(num_virtual_tokens=4, encoder_reparameterization_type="GRU"),
     "encoder_reparameterization_type.*MLP.*LSTM"),
    (lambda: jsoft.PromptTuningConfig(num_virtual_tokens=4, task_type="QA"), "task_type"),
])
def test_bad_configs_name_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_task_the_model_cannot_do(tiny_dir):
    with pytest.raises(ValueError, match="token_cls"):
        jsoft.from_pretrained(tiny_dir("gpt2", "causal_lm"), task="seq2seq_lm")
    with pytest.raises(ValueError, match="TOKEN_CLS|token_cls"):
        jsoft.get_peft_model(gpt2(tiny_dir), jsoft.PromptTuningConfig(task_type="TOKEN_CLS", num_virtual_tokens=2))


@pytest.mark.parametrize("kind,task", [("gpt2", "causal_lm"), ("bert", "seq_cls")])
@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_input_past_the_learned_positions_is_refused(tiny_dir, kind, task, method):
    """Both tiny models have 64 learned positions; each virtual token takes one (a lookup past the table would
    otherwise read garbage without an error)."""
    config, _ = peft_ref.configs(method, task)
    pm = jsoft.get_peft_model(jsoft.from_pretrained(tiny_dir(kind, task), task=task, num_labels=3), config)
    V = pm.active_peft_config.num_virtual_tokens
    ok = np.ones((2, 64 - V), np.int32)
    assert np.isfinite(np.asarray(pm(input_ids=ok).logits)).all()
    with pytest.raises(ValueError, match=f"the input takes 65 positions .* more than this {kind} model's 64"):
        pm(input_ids=np.ones((2, 65 - V), np.int32))
    with pytest.raises(ValueError, match="takes 65 positions"):  # the backbone alone
        pm.base_model(input_ids=np.ones((2, 65), np.int32))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
@pytest.mark.parametrize("method", ["prompt", "prefix", "ptuning_lstm"])
def test_label_positions_give_the_same_loss_and_gradients(tiny_dir, kind, method):
    """The causal loss over `label_positions` slots (LM head on those only) equals the loss over every
    position, dropout on, with labels at the first token (predicted only after a prompt) and padded slots."""
    config, _ = peft_ref.configs(method, "causal_lm")
    pm = jsoft.get_peft_model(jsoft.from_pretrained(tiny_dir(kind, "causal_lm"), task="causal_lm"), config, seed=1)
    batch = peft_ref.batch(kind)
    labels = np.full_like(batch["input_ids"], -100)
    labels[0, 0], labels[0, 6:8], labels[1, 3], labels[2, 1:5] = 5, batch["input_ids"][0, 6:8], 7, 9
    positions = np.full((3, 4), -1)
    for r in range(3):
        idx = np.flatnonzero(labels[r] != -100)
        positions[r, :len(idx)] = idx
    graphdef, trainable, rest = nnx.split(pm, jsoft.Trainable, ...)

    def loss(trainable, label_positions):
        model = nnx.merge(graphdef, trainable, rest)
        return model(**batch, labels=labels, label_positions=label_positions, dropout_rng=jax.random.key(3)).loss

    full, full_grads = jax.value_and_grad(loss)(trainable, None)
    slots, slot_grads = jax.value_and_grad(loss)(trainable, positions)
    np.testing.assert_allclose(float(slots), float(full), rtol=1e-6)
    for a, b in zip(jax.tree.leaves(slot_grads), jax.tree.leaves(full_grads)):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-8)
    with pytest.raises(ValueError, match="label_positions applies to a causal_lm model"):
        seq = jsoft.get_peft_model(gpt2(tiny_dir, "seq_cls"), peft_ref.configs(method, "seq_cls")[0])
        seq(**batch, labels=np.array([0, 1, 2]), label_positions=positions)


def test_bad_model_arguments_name_themselves(tiny_dir):
    with pytest.raises(ValueError, match=r"num_labels=0 must be an integer >= 1"):
        jsoft.from_pretrained(tiny_dir("gpt2", "seq_cls"), task="seq_cls", num_labels=0)
    with pytest.raises(ValueError, match=r"attention_mask has shape \(2, 5\); expected \[batch, 4\]"):
        gpt2(tiny_dir)(input_ids=np.ones((2, 4), np.int32), attention_mask=np.ones((2, 5), np.int32))


def test_adapter_for_another_base_model_names_both_values(tiny_dir, tmp_path):
    pm = jsoft.get_peft_model(gpt2(tiny_dir), jsoft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    pm.save_pretrained(tmp_path / "a")
    other = jsoft.from_pretrained(tiny_dir("gpt2", "causal_lm", n_embd=64), task="causal_lm")
    with pytest.raises(ValueError, match="token_dim=48.*64"):
        jsoft.PeftModel.from_pretrained(other, tmp_path / "a")


def test_corrupt_adapter_is_refused_and_nothing_is_attached(tiny_dir, tmp_path):
    pm = jsoft.get_peft_model(gpt2(tiny_dir), jsoft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3))
    pm.save_pretrained(tmp_path / "a")
    weights = tmp_path / "a" / "adapter_model.safetensors"
    weights.write_bytes(weights.read_bytes()[:40])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        pm.load_adapter(tmp_path / "a", adapter_name="broken")
    assert list(pm.adapters) == ["default"]
    (tmp_path / "a" / "adapter_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        jsoft.PeftModel.from_pretrained(gpt2(tiny_dir), tmp_path / "a")


def test_save_replaces_an_existing_adapter_whole(tiny_dir, tmp_path):
    pm = jsoft.get_peft_model(gpt2(tiny_dir), peft_ref.configs("ptuning_lstm", "causal_lm")[0])
    pm.save_pretrained(tmp_path / "a", format="jsoft")
    pm.save_pretrained(tmp_path / "a")  # now as a PEFT adapter: no stale jsoft weights left behind
    files = sorted(p.name for p in (tmp_path / "a").iterdir())
    assert files == ["adapter_config.json", "adapter_model.safetensors"]
    assert json.loads((tmp_path / "a" / "adapter_config.json").read_text())["inference_mode"] is True
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".a.")]  # no temp dirs left


def test_missing_model_path_and_unsupported_type(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such directory"):
        jsoft.from_pretrained(str(tmp_path / "nope"))
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "config.json").write_text(json.dumps({"model_type": "mpt"}))
    with pytest.raises(ValueError, match="unsupported model_type 'mpt'.*bert.*gpt2.*llama.*t5"):
        jsoft.from_pretrained(tmp_path / "m")


def test_checkpoint_shape_mismatch_names_tensor(tiny_dir, tmp_path):
    model = tiny.build("gpt2", "causal_lm")
    model.save_pretrained(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["n_inner"] = 100
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    shapes = r"another shape than config.json implies: .*mlp.c_fc.(weight|bias) \(.*192,?\) \(the model's .*100,?\)"
    with pytest.raises(ValueError, match=shapes):
        jsoft.from_pretrained(tmp_path, task="causal_lm")


def test_a_head_for_other_labels_is_refused_or_replaced(tmp_path):
    """A checkpoint whose classifier was trained for other labels: refused with the label counts and the two
    ways out (transformers refuses it too), or with ignore_mismatched_sizes a new head on the loaded backbone."""
    model = tiny.build("bert", "seq_cls", num_labels=3)
    model.config.id2label = {0: "neg", 1: "neu", 2: "pos"}
    model.config.label2id = {"neg": 0, "neu": 1, "pos": 2}
    model.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"classifier.weight \(3, 40\) .*trained for 3 labels \['neg', 'neu', 'pos'\], "
                                         r"not num_labels=5: pass num_labels=3 .*ignore_mismatched_sizes=True"):
        jsoft.from_pretrained(tmp_path, task="seq_cls", num_labels=5)
    fresh = jsoft.from_pretrained(tmp_path, task="seq_cls", num_labels=5, ignore_mismatched_sizes=True, seed=1)
    loaded = jsoft.from_pretrained(tmp_path, task="seq_cls")
    flat = lambda m: {".".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(nnx.state(m))}
    fresh, loaded = flat(fresh), flat(loaded)
    head = {k for k in fresh if fresh[k].shape != loaded[k].shape}
    assert head and all("classifier" in k for k in head)
    assert all(fresh[k].shape[-1] == 5 for k in head)
    for k in fresh.keys() - head:
        np.testing.assert_array_equal(fresh[k], loaded[k])


def test_config_roundtrip_keeps_peft_fields():
    cfg = jsoft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4, prefix_projection=True)
    d = cfg.to_dict()
    assert d["peft_type"] == "PREFIX_TUNING" and "prefix_targets" not in d
    back = jsoft.PromptLearningConfig.from_dict(d)
    assert dataclasses.asdict(back) == dataclasses.asdict(cfg)
    assert torch is not None and jnp is not None


@pytest.mark.parametrize("kind,deeper", [("t5", dict(num_layers=1, num_decoder_layers=2)),
                                         ("bart", dict(encoder_layers=1, decoder_layers=2))])
def test_a_decoder_deeper_than_the_encoder_refuses_peft_prefixes_when_made(tiny_dir, kind, deeper):
    """PEFT sizes an encoder-decoder prefix by the encoder's layers (num_layers), so a deeper decoder's extra layers
    have none: PEFT fails there on its first forward, and jsoft refuses such a config when it is made (not at the
    first call); prefix_targets='all' gives every layer its own prefix."""
    model_dir = tiny_dir(kind, "seq2seq_lm", **deeper)
    cfg = jsoft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3)
    with pytest.raises(ValueError, match=r"^the decoder has 2 layers but the prefix stores 1 \(num_layers\); .*"
                                         r"prefix_targets='all'"):
        jsoft.get_peft_model(jsoft.from_pretrained(model_dir, task="seq2seq_lm"), cfg)
    ref = peft.get_peft_model(peft_ref.hf_base(kind, "seq2seq_lm", model_dir), peft.PrefixTuningConfig(
        task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3))
    inputs = peft_ref.batch(kind)
    with pytest.raises(IndexError):  # its cache has no layer for the decoder's second self-attention
        ref(**{k: torch.tensor(v) for k, v in inputs.items()})
    pm = jsoft.get_peft_model(jsoft.from_pretrained(model_dir, task="seq2seq_lm"),
                              dataclasses.replace(cfg, prefix_targets="all"))
    assert np.isfinite(np.asarray(pm(**inputs).logits)).all()


@pytest.mark.parametrize("kind", tiny.ENCODER_DECODER)
def test_encoder_decoder_prefixes_everywhere_paper_form(tiny_dir, tmp_path, kind):
    model_dir = tiny_dir(kind, "seq2seq_lm")
    model = jsoft.from_pretrained(model_dir, task="seq2seq_lm")
    cfg = jsoft.PrefixTuningConfig(task_type="SEQ_2_SEQ_LM", num_virtual_tokens=3, prefix_targets="all",
                                   prefix_projection=True, encoder_hidden_size=16)
    pm = jsoft.get_peft_model(model, cfg)
    c = model.config
    # one prefix per attention layer: encoder self, decoder self, decoder cross
    assert pm.adapters["default"].prompt().shape == (3, (c.num_layers + 2 * c.num_decoder_layers) * 2 * c.kv_width)
    inputs = peft_ref.batch(kind)
    out = np.asarray(pm(**inputs).logits)
    assert np.isfinite(out).all()
    enc = dict(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    generated = np.asarray(pm.generate(**enc, max_new_tokens=4, eos_token_id=[]))
    decoded = np.asarray(pm(**enc, decoder_input_ids=generated[:, :-1]).logits)  # cached loop == full forward
    np.testing.assert_array_equal(decoded.argmax(-1), generated[:, 1:])
    with pytest.raises(ValueError, match="PEFT prefixes only the decoder"):
        pm.save_pretrained(tmp_path / "p", format="peft")
    assert pm.save_pretrained(tmp_path / "own") == "jsoft"
    back = jsoft.PeftModel.from_pretrained(jsoft.from_pretrained(model_dir, task="seq2seq_lm"), tmp_path / "own")
    np.testing.assert_array_equal(np.asarray(back(**inputs).logits), out)
    decoder_only = jsoft.get_peft_model(model, dataclasses.replace(cfg, prefix_targets="decoder"))
    assert not np.allclose(np.asarray(decoder_only(**inputs).logits), out)
    with pytest.raises(ValueError, match="encoder-decoder"):
        jsoft.get_peft_model(gpt2(tiny_dir), jsoft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=2,
                                                                     prefix_targets="all"))
