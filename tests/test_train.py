"""jsoft.train end to end on tiny offline models: config and data errors before training, NaN stops with the
last good checkpoint kept, SIGKILL / SIGTERM and resume bit for bit, rematerialisation and gradient
accumulation, token classification with entity F1, the workdir files."""

import json
import os
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import safetensors.numpy

import jsoft
from jsoft import build, export, optim, train
from tests import train_utils as tu

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return tu.write_jsonl(d / "train.jsonl", tu.sentiment(48)), tu.write_jsonl(d / "eval.jsonl", tu.sentiment(19, 1))


@pytest.fixture
def bert(tiny_dir):
    return tu.model_dir(tiny_dir, "bert", "seq_cls", num_labels=2)


# ------------------------------------------------------------------------------------ config errors


def _cli(args, capsys):
    rc = train.main(["jsoft.train", *args])
    return rc, capsys.readouterr().err


def test_typo_on_the_command_line_names_the_key(tmp_path, capsys):
    rc, err = _cli(["--config", str(ROOT / "configs/quickstart.py"), "--config.train.learnig_rate=3e-2",
                    "--workdir", str(tmp_path)], capsys)
    assert rc == 2 and "learnig_rate" in err and "learning_rate" in err, err
    assert not list(tmp_path.iterdir())


def test_typo_in_a_config_file_names_the_key(tmp_path, capsys):
    (tmp_path / "bad.py").write_text(
        "from jsoft.build import default_config\n"
        "def get_config():\n    c = default_config()\n    c.train.warmup_step = 10\n    return c\n")
    rc, err = _cli(["--config", str(tmp_path / "bad.py"), "--workdir", str(tmp_path / "wd")], capsys)
    assert rc == 2 and "warmup_step" in err, err


def test_check_config_names_unknown_keys(bert, files):
    c = tu.config(bert, *files).to_dict()
    c["train"]["learnig_rate"] = 1.0
    import ml_collections

    with pytest.raises(ValueError, match=r"unknown config key train\.learnig_rate; did you mean train\.learning_rate"):
        build.check_config(ml_collections.ConfigDict(c))


@pytest.mark.parametrize("peft,match", [
    (dict(peft_type="PREFIX_TUNING", num_virtual_token=4), r"peft\.num_virtual_token is not a field of "
                                                           r"PrefixTuningConfig.*peft\.num_virtual_tokens"),
    (dict(peft_type="LORA", num_virtual_tokens=4), r"^peft\.peft_type='LORA' is not valid"),
    (dict(num_virtual_tokens=4), r"peft\.peft_type is required"),
    (dict(peft_type="PROMPT_TUNING", num_virtual_tokens=0), r"peft: num_virtual_tokens=0"),
    (dict(peft_type="P_TUNING", num_virtual_tokens=4, encoder_reparameterization_type="GRU"),
     r"encoder_reparameterization_type='GRU'"),
    (dict(peft_type="PREFIX_TUNING", num_virtual_tokens=4, task_type="CAUSAL_LM"), r"peft\.task_type"),
    # another method's field, left over when a config's peft_type is switched on the command line
    (dict(peft_type="PROMPT_TUNING", num_virtual_tokens=4, prefix_projection=False),
     r"^peft\.prefix_projection is not a field of PromptTuningConfig \(peft_type=PROMPT_TUNING\); unset it "
     r"\(--config\.peft\.prefix_projection=None\) or drop it; valid: \["),
])
def test_peft_errors_name_the_field(bert, files, peft, match):
    with pytest.raises(ValueError, match=match):
        build.check_config(tu.config(bert, *files, peft=peft))


@pytest.mark.parametrize("sections,match", [
    (dict(train=dict(num_epochs=2)), "exactly one of train.num_steps and train.num_epochs"),
    (dict(train=dict(batch_size=6, grad_accum_steps=4)), r"train\.batch_size=6 is not a multiple"),
    (dict(model=dict(task="seq_classification")), r"model\.task='seq_classification'"),
    (dict(model=dict(dtype="float8")), r"model\.dtype='float8'"),
    (dict(mesh=dict(data=3)), r"mesh=.* needs 3 devices"),
    (dict(train=dict(remat=True, remat_policy="dots")), r"train\.remat_policy='dots' is not valid"),
    (dict(model=dict(problem_type="multi_label")), r"model\.problem_type='multi_label' is not valid; .*regression"),
    (dict(model=dict(task="token_cls", problem_type="regression")), r"only seq_cls has one"),
    (dict(model=dict(name_or_path="/no/such/model")), r"^model\.name_or_path='/no/such/model': no such directory"),
    (dict(model=dict(tokenizer="./no-such-tokenizer")), r"^model\.tokenizer='\./no-such-tokenizer': no such dir"),
])
def test_config_value_errors(bert, files, sections, match):
    with pytest.raises(ValueError, match=match):
        build.check_config(tu.config(bert, *files, **sections))


def _no_model(monkeypatch):
    def fail(*a, **k):
        raise AssertionError("the model was loaded before the data was checked")

    monkeypatch.setattr(build, "build_model", fail)


@pytest.mark.parametrize("case,match", [
    ("missing_column", r"data\.text_columns: \['sentence'\] not in data\.train"),
    ("label_range", r"data\.train row 3: label 5 is outside the valid range \[0, 2\)"),
    ("empty_text", r"data\.train row 2: column 'text' is empty"),
    ("too_small", r"train\.batch_size=8 is larger than the training set \(5 rows\)"),
    ("eval_label", r"data\.eval row 1: label -1 is outside"),
    ("problem_type", r"model\.problem_type='multi_label_classification', but the labels of data\.train make it "
                     r"'single_label_classification'"),
])
def test_data_errors_before_training(bert, tmp_path, monkeypatch, case, match):
    rows = tu.sentiment(16)
    sections, eval_rows = {}, tu.sentiment(4, 1)
    if case == "missing_column":
        sections = dict(data=dict(text_columns=("sentence",)))
    elif case == "label_range":
        rows[3]["label"] = 5
    elif case == "empty_text":
        rows[2]["text"] = "  "
    elif case == "too_small":
        rows = rows[:5]
    elif case == "problem_type":
        sections = dict(model=dict(problem_type="multi_label_classification"))
    else:
        eval_rows[1]["label"] = -1
    c = tu.config(bert, tu.write_jsonl(tmp_path / "t.jsonl", rows), tu.write_jsonl(tmp_path / "e.jsonl", eval_rows),
                  **sections)
    _no_model(monkeypatch)
    with pytest.raises(ValueError, match=match):
        train.train(c, tmp_path / "wd")


@pytest.mark.parametrize("max_length,virtual,hint", [(60, 20, r"set data\.max_length <= 44$"),
                                                      (32, 70, r"set peft\.num_virtual_tokens <= 32$"),
                                                      (64, 64, r"lower both$")])
def test_inputs_longer_than_the_position_table_are_refused_before_training(tiny_dir, files, tmp_path, max_length,
                                                                            virtual, hint):
    model = tu.model_dir(tiny_dir, "gpt2", "seq_cls", num_labels=2)  # 64 learned positions
    c = tu.config(model, *files, peft=dict(peft_type="PROMPT_TUNING", num_virtual_tokens=virtual),
                  data=dict(max_length=max_length))
    with pytest.raises(ValueError, match=rf"^data\.max_length={max_length} \+ peft\.num_virtual_tokens={virtual} "
                                         rf"positions exceed the 64 position embeddings .*; {hint}"):
        train.train(c, tmp_path / "wd")
    assert not (tmp_path / "wd" / "checkpoints").exists()


def test_token_ids_outside_the_vocabulary_are_refused_before_training(tiny_dir, files, tmp_path):
    model = tu.model_dir(tiny_dir, "gpt2", "seq_cls", num_labels=2, vocab_size=20)  # the tokenizer has 40 words
    c = tu.config(model, *files, peft=dict(peft_type="PROMPT_TUNING", num_virtual_tokens=4))
    with pytest.raises(ValueError, match=r"data\.train row \d+: token id \d+ is outside the model's vocabulary of "
                                         r"20 .* the tokenizer \(model\.tokenizer\) does not match"):
        train.train(c, tmp_path / "wd")
    assert not (tmp_path / "wd" / "checkpoints").exists()
    # a BERT tokenizer's text pairs on RoBERTa, which has one token type
    roberta = tu.model_dir(tiny_dir, "roberta", "seq_cls", num_labels=2)
    tu.tokenizer("bert").save_pretrained(tmp_path / "bert_tokenizer")
    pairs = tu.write_jsonl(tmp_path / "pairs.jsonl", [{"text": r["text"], "other": r["text"], "label": r["label"]}
                                                      for r in tu.sentiment(16)])
    c = tu.config(roberta, pairs, None, model=dict(tokenizer=str(tmp_path / "bert_tokenizer")),
                  data=dict(text_columns=("text", "other")))
    with pytest.raises(ValueError, match=r"data\.train row 0: token type id 1 is outside the model's 1 token types"):
        train.train(c, tmp_path / "wd2")


# ------------------------------------------------------------------------------------ NaN


def _nan_after(step: int):
    """An optimizer whose update at `step` (1-based) makes the parameters NaN."""
    make = optim.make

    def patched(cfg, num_steps):
        tx, lr = make(cfg, num_steps)

        def update(updates, state, params=None):
            inner, count = state
            new, inner = tx.update(updates, inner, params)
            poison = jnp.where(count == step - 1, jnp.nan, 0.0)
            return jax.tree.map(lambda u: u + poison, new), (inner, count + 1)

        return optax.GradientTransformation(lambda p: (tx.init(p), jnp.zeros((), jnp.int32)), update), lr

    return patched


def test_nan_stops_with_the_step_and_keeps_the_last_good_checkpoint(bert, files, tmp_path, monkeypatch):
    monkeypatch.setattr(optim, "make", _nan_after(5))
    c = tu.config(bert, *files, train=dict(num_steps=8, checkpoint_every=2))
    with pytest.raises(FloatingPointError, match=r"parameters are not finite at step 5.*last good checkpoint "
                                                 r"is step 4"):
        train.train(c, tmp_path)
    steps = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
    assert steps[-1] == 4
    saved = _saved_state(tmp_path / "checkpoints" / "4")
    assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(saved))


def test_nan_loss_stops_with_the_step(bert, files, tmp_path, monkeypatch):
    from jsoft.tuners import losses

    real = losses.task_loss
    monkeypatch.setattr(losses, "task_loss", lambda *a, **k: real(*a, **k) * jnp.nan)
    with pytest.raises(FloatingPointError, match=r"loss is nan at step 1; stopping\. The last good checkpoint is none"):
        train.train(tu.config(bert, *files), tmp_path)


def test_cli_reports_errors_without_a_traceback(bert, files, tmp_path, capsys):
    cfg = tmp_path / "c.py"
    cfg.write_text(f"""
from tests import train_utils as tu
import pathlib
def get_config():
    return tu.config(pathlib.Path({str(bert)!r}), pathlib.Path({str(files[0])!r}), None,
                     data=dict(text_columns=("review",)))
""")
    rc, err = _cli(["--config", str(cfg), "--workdir", str(tmp_path / "wd")], capsys)
    assert rc == 1 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith("error: data.text_columns: ['review'] not in data.train"), err


def test_cli_overrides_unset_keys_and_switch_methods(bert, files, tmp_path, capsys):
    """The command line can set keys the config file left unset (None defaults, new keys of the peft and data
    sections), unset one with =None, and so switch from steps to epochs or from P-Tuning v2 to Prompt Tuning."""
    cfg = tmp_path / "c.py"
    cfg.write_text(f"""
from tests import train_utils as tu
import pathlib
def get_config():
    return tu.config(pathlib.Path({str(bert)!r}), pathlib.Path({str(files[0])!r}), pathlib.Path({str(files[1])!r}))
""")
    rc, err = _cli(["--config", str(cfg), "--workdir", str(tmp_path / "wd"), "--config.train.num_steps=None",
                    "--config.train.num_epochs=1", "--config.train.eval_batch_size=4",
                    "--config.peft.peft_type=PROMPT_TUNING", "--config.peft.prompt_tuning_init=TEXT",
                    "--config.peft.prompt_tuning_init_text=good or bad", "--config.peft.num_virtual_tokens=3",
                    "--config.data.eval.split=train[:8]", "--config.data.label_names=('neg', 'pos')"], capsys)
    assert rc == 0, err
    saved = build.load_config(tmp_path / "wd")
    assert saved.train.num_steps is None and saved.train.num_epochs == 1 and saved.train.eval_batch_size == 4
    assert saved.peft.to_dict() == {"peft_type": "PROMPT_TUNING", "prompt_tuning_init": "TEXT", "num_virtual_tokens": 3,
                                    "prompt_tuning_init_text": "good or bad"}
    assert saved.data.eval.split == "train[:8]" and list(saved.data.label_names) == ["neg", "pos"]
    summary = json.loads((tmp_path / "wd" / "summary.json").read_text())
    assert summary["step"] == summary["num_steps"] == 6  # one epoch of 48 rows in batches of 8
    rc, err = _cli(["--config", str(cfg), "--workdir", str(tmp_path / "wd2"), "--config.train.num_steps=None"], capsys)
    assert rc == 1 and "set exactly one of train.num_steps and train.num_epochs" in err, err
    rc, err = _cli(["--config", str(cfg), "--workdir", str(tmp_path / "wd2"), "--config.train.num_stepz=None"], capsys)
    assert rc == 2 and "unknown config key train.num_stepz" in err, err


# ------------------------------------------------------------------------------------ resume


def _saved_state(step_dir: pathlib.Path) -> dict:
    import orbax.checkpoint as ocp

    return ocp.PyTreeCheckpointer().restore(step_dir / "state")


CONFIG_FILE = """
import pathlib
from tests import train_utils as tu
def get_config():
    return tu.config(pathlib.Path({model!r}), pathlib.Path({train!r}), pathlib.Path({eval!r}),
                     train=dict(num_steps=12, checkpoint_every=3, eval_every=6, log_every=2, batch_size=8,
                                dropout=True))
"""


def _launch(cfg, workdir, signal_at=None):
    # resumed runs load the programs the first runs compiled (the same executables, so bits are unchanged)
    cache = pathlib.Path(cfg).parent / "xla_cache"
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_COMPILATION_CACHE_DIR=str(cache),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0", JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="0")
    env.pop("JSOFT_DEBUG_SIGNAL_AT_STEP", None)
    if signal_at:
        env["JSOFT_DEBUG_SIGNAL_AT_STEP"] = signal_at
    return subprocess.Popen([sys.executable, "-m", "jsoft.train", "--config", str(cfg), "--workdir", str(workdir)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait(proc):
    out, err = proc.communicate(timeout=600)
    return proc.returncode, err


def test_killed_and_preempted_runs_resume_bit_for_bit(bert, files, tmp_path):
    cfg = tmp_path / "cfg.py"
    cfg.write_text(CONFIG_FILE.format(model=str(bert), train=str(files[0]), eval=str(files[1])))
    # SIGKILL right after the save of step 6 started (it may be half written), uninterrupted run alongside
    ref, killed = _launch(cfg, tmp_path / "ref"), _launch(cfg, tmp_path / "run", signal_at="9:6")
    rc, err = _wait(killed)
    assert rc == -9, err[-3000:]
    rc, err = _wait(ref)
    assert rc == 0, err[-3000:]
    # resume; SIGTERM (preemption) at step 8 saves before exiting
    rc, err = _wait(_launch(cfg, tmp_path / "run", signal_at="15:8"))
    assert rc == 128 + 15, err[-3000:]
    # step 6 was being written when the process died: resumed from it if it made it to disk, else from 3
    assert re.search(r"resumed from step [36]\b", err) and "stopped by signal 15 at step 8" in err, err[-3000:]
    assert (tmp_path / "run" / "checkpoints" / "8").is_dir()
    rc, err = _wait(_launch(cfg, tmp_path / "run"))
    assert rc == 0 and "resumed from step 8" in err, err[-3000:]

    want, got = _saved_state(tmp_path / "ref/checkpoints/12"), _saved_state(tmp_path / "run/checkpoints/12")
    flat_want, flat_got = jax.tree_util.tree_leaves_with_path(want), jax.tree_util.tree_leaves_with_path(got)
    assert [p for p, _ in flat_want] == [p for p, _ in flat_got]
    for (path, a), (_, b) in zip(flat_want, flat_got):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=jax.tree_util.keystr(path))
    s_ref, s_run = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("ref", "run"))
    assert s_ref["eval"] == s_run["eval"] and s_run["step"] == 12
    # the workdir files
    wd = tmp_path / "ref"
    assert json.loads((wd / "config.json").read_text())["train"]["num_steps"] == 12
    lines = [json.loads(x) for x in (wd / "metrics.jsonl").read_text().splitlines()]
    assert {x["split"] for x in lines} == {"train", "eval"}
    assert [x["step"] for x in lines if x["split"] == "eval"] == [6, 12]
    assert list((wd / "tb").iterdir())
    for key in ("eval", "tokens_per_second", "trainable_params", "peak_host_rss_bytes", "compiled", "best_step"):
        assert key in s_ref


# ------------------------------------------------------------------------------------ the step


@pytest.mark.parametrize("kind,task", [("bert", "seq_cls"), ("bloom", "causal_lm"), ("gpt_neox", "seq_cls"),
                                       ("opt", "causal_lm"), ("bart", "seq2seq_lm"), ("deberta-v2", "seq_cls"),
                                       ("phi3", "causal_lm"), ("gpt_neo", "seq_cls"), ("cohere2", "causal_lm"),
                                       ("albert", "seq_cls")])  # ALBERT: one layer module run at every step
def test_remat_gives_the_same_loss_and_gradients(tiny_dir, kind, task):
    from flax import nnx

    import jsoft

    dropouts = {"phi3": dict(resid_pdrop=0.3, embd_pdrop=0.2, num_hidden_layers=3),
                "albert": dict(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.1)}.get(kind, {})

    def grads(remat: str | None, kind, task, config, key):
        path = tiny_dir(kind, task, num_labels=2, **dropouts)
        pm = jsoft.get_peft_model(jsoft.from_pretrained(path, task=task, num_labels=2), config, seed=3)
        if remat:  # every layer of every stack (BART: 3 encoder and 2 decoder layers; ALBERT: its one shared layer)
            assert train.remat_layers(pm.base_model, remat) == {"bart": 5, "albert": 1}.get(kind, 3)
        graphdef, params, frozen = nnx.split(pm, jsoft.Trainable, ...)
        ids = jnp.asarray(np.random.default_rng(0).integers(3, 100, (2, 7)), jnp.int32)
        labels = jnp.asarray([0, 1]) if task == "seq_cls" else ids

        def loss(params):
            model = nnx.merge(graphdef, params, frozen)
            return model(input_ids=ids, attention_mask=jnp.ones_like(ids), labels=labels,
                         dropout_rng=key).loss

        jaxpr = str(jax.make_jaxpr(jax.grad(loss))(params))
        return jax.jit(jax.value_and_grad(loss))(params), ("checkpoint" in jaxpr or "remat" in jaxpr)

    # prefix tuning (which PEFT cannot rematerialise), with dropout: the masks must not change
    config, key = jsoft.PrefixTuningConfig(num_virtual_tokens=3), jax.random.key(1)
    (l0, g0), has0 = grads(None, kind, task, config, key)
    assert not has0
    for policy in build.REMAT_POLICIES:
        (l1, g1), has1 = grads(policy, kind, task, config, key)
        assert has1, policy
        np.testing.assert_allclose(l1, l0, rtol=1e-6)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), g1, g0)
    with pytest.raises(ValueError, match="remat policy 'dots' is not valid"):
        grads("dots", kind, task, config, key)


def _losses(workdir) -> list[float]:
    return [x["loss"] for x in map(json.loads, (pathlib.Path(workdir) / "metrics.jsonl").read_text().splitlines())
            if x["split"] == "train"]


def test_gradient_accumulation_matches_one_big_batch(bert, files, tmp_path):
    """Also a P-Tuning v1 run (MLP encoder) with rematerialisation."""
    common = dict(num_steps=3, checkpoint_every=0, async_checkpoints=False)
    peft = dict(peft_type="P_TUNING", num_virtual_tokens=3, encoder_hidden_size=8)
    train.train(tu.config(bert, files[0], None, peft=peft, train=dict(grad_accum_steps=1, **common)), tmp_path / "a")
    train.train(tu.config(bert, files[0], None, peft=peft, train=dict(grad_accum_steps=2, remat=True, **common)),
                tmp_path / "b")
    assert _losses(tmp_path / "b") == pytest.approx(_losses(tmp_path / "a"), rel=1e-5)


def test_integer_labels_without_num_labels_count_their_classes(tiny_dir, tmp_path):
    """A JSON set of class ids 0..2 and no model.num_labels: three classes (run_glue counts a plain label column
    too); the resolved count is saved with the run, so its export has a three-class head."""
    model = tu.model_dir(tiny_dir, "bert", "seq_cls", num_labels=3)
    rows = [{"text": r["text"], "label": i % 3} for i, r in enumerate(tu.sentiment(24))]
    c = tu.config(model, tu.write_jsonl(tmp_path / "t.jsonl", rows), tu.write_jsonl(tmp_path / "e.jsonl", rows[:7]),
                  model=dict(num_labels=None), train=dict(num_steps=2))
    train.train(c, tmp_path / "wd")
    assert build.load_config(tmp_path / "wd").model.num_labels == 3
    export.export(tmp_path / "wd", tmp_path / "adapter")
    head = safetensors.numpy.load_file(tmp_path / "adapter/adapter_model.safetensors")
    assert {k: v.shape for k, v in head.items() if k.endswith("classifier.weight")} == {
        "base_model.classifier.weight": (3, 40)}


@pytest.mark.parametrize("kind,task,side,template", [
    ("gpt2", "causal_lm", "right", "[P][P] [X] the movie was [P]"),
    ("gpt2", "causal_lm", "left", "[P] [X] [P]"),
    ("bert", "seq_cls", "right", "[P][P] [X] it was [P]"),
    ("llama", "seq_cls", "right", "[P] [X] it was [P]"),  # a decoder-only classifier reads the last virtual token
])
def test_p_tuning_templates_train_and_score_as_each_row_alone(tiny_dir, tmp_path, kind, task, side, template):
    """peft.template (P-Tuning's virtual tokens inside the input): the run's eval loss equals the exported adapter's
    on each eval row alone, built by `p_tuning.apply_template` (a causal LM: the row, then its verbalizer word)."""
    from jsoft import data
    from jsoft.tuners.p_tuning import apply_template

    model = tu.model_dir(tiny_dir, kind, task, **({"num_labels": 2} if task == "seq_cls" else {}))
    verbalizer = ("negative", "positive") if task == "causal_lm" else None
    c = tu.config(model, tu.write_jsonl(tmp_path / "t.jsonl", tu.sentiment(24)),
                  tu.write_jsonl(tmp_path / "e.jsonl", tu.sentiment(9, 1)), task=task,
                  peft=dict(peft_type="P_TUNING", num_virtual_tokens=template.count("[P]"), encoder_hidden_size=16,
                            template=template),
                  data=dict(max_length=24, template="{text} :" if verbalizer else None, verbalizer=verbalizer),
                  train=dict(num_steps=3, learning_rate=0.1))
    c.model.num_labels = 2 if task == "seq_cls" else None
    with c.unlocked():
        c.model.tokenizer = str(tmp_path / "tok")
    tok = tu.tokenizer(kind)
    tok.padding_side = side
    tok.save_pretrained(tmp_path / "tok")
    summary = train.train(c, tmp_path / "wd")
    assert export.export(tmp_path / "wd", tmp_path / "adapter")["format"] == "jsoft"  # PEFT only prepends
    pm = jsoft.PeftModel.from_pretrained(jsoft.from_pretrained(model, task=task, num_labels=c.model.num_labels),
                                         tmp_path / "adapter")
    feat = build.featurizer(build.load_config(tmp_path / "wd"), tok)
    nll = []
    for row in data.load(c.data.eval, "data.eval"):
        ids, _, pos = apply_template(template, [feat.template.format(**row) if verbalizer else row["text"]], tok)
        if verbalizer:
            ids = np.concatenate([ids, [feat.verbalizer_token_ids()[row["label"]]]], axis=1)
        logits = np.asarray(pm(input_ids=ids, prompt_positions=pos).logits, np.float64)[0]
        logp = logits - logits.max(-1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
        nll.append(-logp[-2, ids[0, -1]] if verbalizer else -logp[row["label"]])
    assert summary["eval"]["loss"] == pytest.approx(np.mean(nll), rel=1e-5)


def test_token_classification_reports_entity_f1(tiny_dir, tmp_path):
    model = tu.model_dir(tiny_dir, "bert", "token_cls", num_labels=5)
    c = tu.config(model, tu.write_jsonl(tmp_path / "t.jsonl", tu.ner(32)), tu.write_jsonl(tmp_path / "e.jsonl",
                                                                                          tu.ner(11, 1)),
                  task="token_cls", data=dict(label_names=tu.TAGS), train=dict(num_steps=4, learning_rate=0.1))
    s = train.train(c, tmp_path / "wd")
    assert {"precision", "recall", "f1", "accuracy", "loss"} <= set(s["eval"])
    assert s["best_metric"] == "f1" and 0.0 <= s["eval"]["f1"] <= 1.0


SHIPPED_CONFIGS = sorted((ROOT / "configs").glob("*.py"))


def _shipped_config(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    module = _shipped_config(path)
    assert "python -m jsoft.train --config configs/" + path.name in module.__doc__
    config = module.get_config()
    build.check_config(config)
    assert config.is_locked


# a tests/tiny.py family for each shipped config's backbone (the quickstart, on the real MiniLM, is the README's
# first command)
FAMILY = {"gpt2": "gpt2", "gpt2-medium": "gpt2", "google/flan-t5-base": "t5", "Qwen/Qwen3-0.6B": "qwen3",
          "FacebookAI/roberta-large": "roberta", "bert-base-cased": "bert", "bert-base-uncased": "bert",
          "microsoft/deberta-v3-large": "deberta-v2"}


def _rows_like(config, feat, n: int, seed: int) -> list[dict]:
    """Rows in the columns a config reads (`feat`, its featurizer, knows the defaults): text (words for token_cls),
    and class ids, tags or target text (no ClassLabel feature: the class count comes from the ids or
    model.num_labels)."""
    task, texts, label = config.model.task, feat.text_columns, feat.label_column
    rng = np.random.default_rng(seed)
    words = lambda: [str(w) for w in rng.choice(tu.WORDS, size=int(rng.integers(2, 12)))]
    rows = []
    for i in range(n):
        row = {c: (words() if task == "token_cls" else " ".join(words())) for c in texts}
        if task == "token_cls":
            row[label] = [int(t) for t in rng.integers(0, config.model.num_labels, len(row[texts[0]]))]
        elif task == "seq_cls" or feat.verbalizer:
            row[label] = i % (len(feat.verbalizer) if feat.verbalizer else 2)
        else:
            row[label] = " ".join(words()[:4])
        rows.append(row)
    return rows


@pytest.mark.parametrize("path", [p for p in SHIPPED_CONFIGS if p.stem != "quickstart"], ids=lambda p: p.name)
def test_shipped_configs_train_and_export_on_a_tiny_model_of_their_family(tiny_dir, tmp_path, path):
    """Each recipe as shipped (its method, template, verbalizer, labels, eval generation, dtype), on a tiny model
    of its backbone's family and rows in its data set's columns, for two steps with an eval, then exported."""
    config = _shipped_config(path).get_config()
    kind = FAMILY[config.model.name_or_path]
    classes = {"num_labels": config.model.num_labels or 2} if config.model.task in ("seq_cls", "token_cls") else {}
    model = tu.model_dir(tiny_dir, kind, config.model.task, **classes)
    feat = build.featurizer(config, tu.tokenizer(kind))
    with config.unlocked():
        config.model.name_or_path = str(model)
        for key, n, seed in (("train", 16, 0), ("eval", 5, 1)):
            rows = tu.write_jsonl(tmp_path / f"{key}.jsonl", _rows_like(config, feat, n, seed))
            config.data[key] = dict(path="json", data_files=str(rows), split="train")
        config.data.max_length = 24
        config.data.target_max_length = config.data.target_max_length and 8
        config.peft.num_virtual_tokens = min(config.peft.num_virtual_tokens, 8)
        config.train.update(num_steps=2, num_epochs=None, batch_size=8, warmup_steps=0, eval_every=0,
                            checkpoint_every=0, progress=False, dropout=False,
                            eval_generate_tokens=config.train.eval_generate_tokens and 3)
    summary = train.train(config, tmp_path / "wd")
    assert summary["step"] == 2 and np.isfinite(summary["eval"]["loss"])
    best = summary["best_metric"]  # the config's, or the task's default
    assert best in summary["eval"] and best == (config.train.best_metric or best)
    result = export.export(tmp_path / "wd", tmp_path / "adapter")
    assert (tmp_path / "adapter/adapter_config.json").is_file()
    assert result["format"] == ("jsoft" if kind == "deberta-v2" else "peft")  # transformers' DeBERTa takes no prefixes
