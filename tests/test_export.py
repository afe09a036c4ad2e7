"""Train -> `jsoft.export` -> Hugging Face PEFT loads the adapter, and PEFT's eval metric on the eval set equals
the one in jsoft's summary.json (tiny BERT sequence classification with P-Tuning v2; tiny GPT-2 causal LM
classification with Prompt Tuning and a verbalizer)."""

import json

import numpy as np
import peft
import pytest
import torch

from jsoft import build, data, export, train
from tests import tiny
from tests import train_utils as tu


def _eval_batches(workdir):
    config = build.load_config(workdir)
    tok = build.load_tokenizer(config)
    feat = build.featurizer(config, tok)
    enc = feat(data.load(config.data.eval, "data.eval"), "data.eval")
    return feat, list(data.Batches(enc, config.train.batch_size, train=False))


def _peft_model(kind, task, model_dir, adapter):
    base = tiny.CLASSES[(kind, task)].from_pretrained(model_dir).eval()
    return peft.PeftModel.from_pretrained(base, adapter).eval()


def _logits(model, batch, keys=("input_ids", "attention_mask", "token_type_ids")):
    with torch.no_grad():
        out = model(**{k: torch.tensor(np.asarray(batch[k], np.int64)) for k in keys if k in batch})
    return out.logits.float().numpy()


def assert_peft_classifies_the_same(ref, batches, summary, rows: int):
    """PEFT's accuracy and mean NLL over the eval batches (dummy rows weighted 0) equal jsoft's summary."""
    correct = total = nll = 0.0
    for b in batches:
        logits = _logits(ref, b)
        w = b["weights"]
        correct += float(((logits.argmax(-1) == b["labels"]) * w).sum())
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= float((logp[np.arange(len(w)), b["labels"]] * w).sum())
        total += float(w.sum())
    assert total == rows
    assert correct / total == summary["eval"]["accuracy"]
    assert nll / total == pytest.approx(summary["eval"]["loss"], rel=1e-4)


@pytest.fixture(scope="module")
def bert_run(tiny_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bert_run")
    model = tu.model_dir(tiny_dir, "bert", "seq_cls", num_labels=2)
    c = tu.config(model, tu.write_jsonl(tmp / "t.jsonl", tu.sentiment(48)),
                  tu.write_jsonl(tmp / "e.jsonl", tu.sentiment(27, 1)),
                  train=dict(num_steps=8, eval_every=4, checkpoint_every=4, learning_rate=0.1))
    summary = train.train(c, tmp / "wd")
    return model, tmp / "wd", summary


def test_bert_seq_cls_adapter_gives_the_same_accuracy_in_peft(bert_run, tmp_path):
    model, workdir, summary = bert_run
    result = export.export(workdir, tmp_path / "adapter")
    assert result == {"step": 8, "format": "peft", "out": str(tmp_path / "adapter")}
    assert json.loads((tmp_path / "adapter/adapter_config.json").read_text())["peft_type"] == "PREFIX_TUNING"
    ref = _peft_model("bert", "seq_cls", model, tmp_path / "adapter")
    _, batches = _eval_batches(workdir)
    assert_peft_classifies_the_same(ref, batches, summary, 27)


def test_a_run_saved_before_newer_config_keys_exports(bert_run, tmp_path):
    """A workdir whose config.json predates keys added since (model.problem_type, ...) exports with their
    defaults: load_config reads the saved config over today's."""
    import shutil

    _, workdir, _ = bert_run
    old = tmp_path / "old"
    shutil.copytree(workdir, old)
    saved = json.loads((old / "config.json").read_text())
    for section, key in (("model", "problem_type"), ("model", "ignore_mismatched_sizes"),
                         ("train", "eval_generate_options")):
        del saved[section][key]
    (old / "config.json").write_text(json.dumps(saved))
    config = build.load_config(old)
    assert config.model.problem_type is None and config.model.ignore_mismatched_sizes is False
    assert config.train.num_steps == saved["train"]["num_steps"] and config.peft.to_dict() == saved["peft"]
    assert export.export(old, tmp_path / "adapter")["step"] == 8


def test_export_step_best_and_format(bert_run, tmp_path, capsys):
    _, workdir, summary = bert_run
    assert export.main(["--workdir", str(workdir), "--step", "4", "--out", str(tmp_path / "s4")]) == 0
    assert "from step 4" in capsys.readouterr().out
    assert export.main(["--workdir", str(workdir), "--best", "--out", str(tmp_path / "best"),
                        "--format", "jsoft"]) == 0
    out = capsys.readouterr().out
    assert f"from step {summary['best_step']}" in out and "wrote jsoft adapter" in out
    assert (tmp_path / "best/jsoft_adapter.safetensors").is_file()
    assert export.main(["--workdir", str(workdir), "--step", "5", "--out", str(tmp_path / "x")]) == 1
    assert "no checkpoint step 5" in capsys.readouterr().err
    assert export.main(["--workdir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 1
    assert "has no config.json" in capsys.readouterr().err


def test_gpt2_prompt_tuning_with_a_verbalizer_gives_the_same_accuracy_in_peft(tiny_dir, tmp_path):
    model = tu.model_dir(tiny_dir, "gpt2", "causal_lm")
    c = tu.config(model, tu.write_jsonl(tmp_path / "t.jsonl", tu.sentiment(32)),
                  tu.write_jsonl(tmp_path / "e.jsonl", tu.sentiment(21, 1)), task="causal_lm",
                  peft=dict(peft_type="PROMPT_TUNING", num_virtual_tokens=5, prompt_tuning_init="TEXT",
                            prompt_tuning_init_text="the movie was"),
                  data=dict(template="{text} :", verbalizer=("negative", "positive")),
                  train=dict(num_steps=6, learning_rate=0.1))
    summary = train.train(c, tmp_path / "wd")
    assert {"accuracy", "macro_f1", "loss", "perplexity"} <= set(summary["eval"])
    # the train step's LM head reads one label slot per row (the verbalizer word is one token)
    assert [tuple(s) for s in summary["compiled"]["train_shapes"]] == [(8, 16, 1)]
    assert all(len(s) == 3 and s[2] == 1 for s in summary["compiled"]["eval_shapes"])  # eval reads it too
    assert summary["eval"]["perplexity"] == pytest.approx(np.exp(summary["eval"]["loss"]))
    export.export(tmp_path / "wd", tmp_path / "adapter")
    ref = _peft_model("gpt2", "causal_lm", model, tmp_path / "adapter")
    feat, batches = _eval_batches(tmp_path / "wd")
    first = np.asarray([ids[0] for ids in feat.verbalizer_token_ids()])
    correct = total = nll = tokens = 0.0
    for b in batches:
        logits = _logits(ref, b)[:, 5:]  # PEFT returns the virtual tokens' logits too
        labels, w = b["labels"][:, 1:], b["weights"]
        logits = logits[:, :-1]
        valid = (labels != -100) & (w[:, None] > 0)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= float(np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid].sum())
        tokens += float(valid.sum())
        pos = valid.argmax(1)
        rows = np.arange(len(w))
        pred = logits[rows, pos][:, first].argmax(-1)
        true = (labels[rows, pos][:, None] == first[None]).argmax(-1)
        correct += float(((pred == true) * w).sum())
        total += float(w.sum())
    assert total == 21
    assert correct / total == summary["eval"]["accuracy"]
    assert nll / tokens == pytest.approx(summary["eval"]["loss"], rel=1e-4)


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_seq2seq_verbalizer_accuracy_equals_peft_scored_at_the_first_telling_token(tiny_dir, tmp_path, kind):
    """Classes scored by their target's first token; a BART target starts with <s>, so the token after it."""
    model = tu.model_dir(tiny_dir, kind, "seq2seq_lm")
    c = tu.config(model, tu.write_jsonl(tmp_path / "t.jsonl", tu.sentiment(16)),
                  tu.write_jsonl(tmp_path / "e.jsonl", tu.sentiment(13, 1)), task="seq2seq_lm",
                  peft=dict(peft_type="PROMPT_TUNING", num_virtual_tokens=3),
                  data=dict(verbalizer=("negative", "positive")), train=dict(num_steps=2, learning_rate=0.1))
    summary = train.train(c, tmp_path / "wd")
    export.export(tmp_path / "wd", tmp_path / "adapter")
    ref = _peft_model(kind, "seq2seq_lm", model, tmp_path / "adapter")
    feat, batches = _eval_batches(tmp_path / "wd")
    at, firsts = feat.verbalizer_choice()
    assert at == (1 if kind == "bart" else 0)
    correct = total = 0.0
    for b in batches:
        logits = _logits(ref, b, keys=("input_ids", "attention_mask", "labels"))[:, at]
        pred = np.asarray(firsts)[logits[:, firsts].argmax(-1)]
        correct += float(((pred == b["labels"][:, at]) * b["weights"]).sum())
        total += float(b["weights"].sum())
    assert total == 13 and correct / total == summary["eval"]["accuracy"]


@pytest.mark.parametrize("kind", ["t5", "bart"])
def test_seq2seq_prefix_tuning_adapter_gives_the_same_loss_in_peft(tiny_dir, tmp_path, kind):
    model, c = tu.summarize_config(tiny_dir, tmp_path, kind, train=dict(num_steps=2, learning_rate=0.1),
                                      peft=dict(peft_type="PREFIX_TUNING", num_virtual_tokens=4,
                                                prefix_projection=True, encoder_hidden_size=16))
    summary = train.train(c, tmp_path / "wd")
    export.export(tmp_path / "wd", tmp_path / "adapter")
    ref = _peft_model(kind, "seq2seq_lm", model, tmp_path / "adapter")
    _, batches = _eval_batches(tmp_path / "wd")
    nll = tokens = 0.0
    for b in batches:
        labels = b["labels"]
        with torch.no_grad():
            logits = ref(input_ids=torch.tensor(b["input_ids"], dtype=torch.long),
                         attention_mask=torch.tensor(b["attention_mask"], dtype=torch.long),
                         labels=torch.tensor(labels, dtype=torch.long)).logits.float().numpy()
        valid = (labels != -100) & (b["weights"][:, None] > 0)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll -= float(np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0][valid].sum())
        tokens += float(valid.sum())
    assert nll / tokens == pytest.approx(summary["eval"]["loss"], rel=1e-4)


def _multi_label_rows(n, seed):
    """Sentiment rows whose labels are lists: the sentiment, plus "long" for rows of more than five words."""
    return [{"text": r["text"], "labels": (["positive"] if r["label"] else ["negative"])
             + (["long"] if len(r["text"].split()) > 5 else [])} for r in tu.sentiment(n, seed)]


def test_multi_label_training_gives_the_same_metrics_in_peft(tiny_dir, tmp_path):
    """A label column of lists trains multi-label classification (transformers' BCE; micro-F1 ranks steps);
    the exported adapter gives PEFT the same micro-F1, subset accuracy and loss on the eval set."""
    model = tu.model_dir(tiny_dir, "bert", "seq_cls", num_labels=3)
    c = tu.config(model, tu.write_jsonl(tmp_path / "t.jsonl", _multi_label_rows(48, 0)),
                  tu.write_jsonl(tmp_path / "e.jsonl", _multi_label_rows(21, 1)),
                  data=dict(label_column="labels"), train=dict(num_steps=6, learning_rate=0.1))
    c.model.num_labels = None
    summary = train.train(c, tmp_path / "wd")
    assert summary["best_metric"] == "micro_f1" and build.load_config(tmp_path / "wd").model.num_labels == 3
    assert build.load_config(tmp_path / "wd").data.label_names == ["long", "negative", "positive"]
    export.export(tmp_path / "wd", tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter/jsoft_labels.json").read_text()) == {  # for the server
        "id2label": {"0": "long", "1": "negative", "2": "positive"}, "problem_type": "multi_label_classification"}
    ref = _peft_model("bert", "seq_cls", model, tmp_path / "adapter")
    _, batches = _eval_batches(tmp_path / "wd")
    tp = fp = fn = exact = total = nll = 0.0
    for b in batches:
        w, true = b["weights"], b["labels"]
        assert true.dtype == np.float32 and true.shape[1] == 3
        logits = _logits(ref, b)
        pred = (logits > 0).astype(np.float32)
        keep = w > 0
        bce = np.maximum(logits, 0) - logits * true + np.log1p(np.exp(-np.abs(logits)))  # BCEWithLogitsLoss
        nll += float(bce.mean(-1)[keep].sum())
        tp += float((pred * true)[keep].sum())
        fp += float((pred * (1 - true))[keep].sum())
        fn += float(((1 - pred) * true)[keep].sum())
        exact += float((pred == true).all(-1)[keep].sum())
        total += float(keep.sum())
    assert total == 21
    assert summary["eval"]["micro_f1"] == pytest.approx(2 * tp / (2 * tp + fp + fn)) and tp > 0
    assert summary["eval"]["accuracy"] == pytest.approx(exact / total)
    assert summary["eval"]["loss"] == pytest.approx(nll / total, rel=1e-4)


def _similarity_rows(n, seed):
    """STS-B-like text pairs with a float score: 2.5 per positive sentence."""
    first, second = tu.sentiment(n, seed), tu.sentiment(n, seed + 7)
    return [{"sentence1": a["text"], "sentence2": b["text"], "score": 2.5 * (a["label"] + b["label"])}
            for a, b in zip(first, second)]


def test_regression_training_gives_the_same_metrics_in_peft(tiny_dir, tmp_path):
    """A float label column trains regression (one output, transformers' MSE; run_glue's rule for STS-B); the
    exported adapter gives PEFT the same MSE and Pearson / Spearman correlations on text pairs."""
    stats = pytest.importorskip("scipy.stats")
    model = tu.model_dir(tiny_dir, "bert", "seq_cls", num_labels=1)
    c = tu.config(model, tu.write_jsonl(tmp_path / "t.jsonl", _similarity_rows(48, 0)),
                  tu.write_jsonl(tmp_path / "e.jsonl", _similarity_rows(21, 1)),
                  data=dict(text_columns=("sentence1", "sentence2"), label_column="score"),
                  train=dict(num_steps=6, learning_rate=0.1))
    c.model.num_labels = None
    summary = train.train(c, tmp_path / "wd")
    assert summary["best_metric"] == "mse" and build.load_config(tmp_path / "wd").model.num_labels == 1
    export.export(tmp_path / "wd", tmp_path / "adapter")
    assert json.loads((tmp_path / "adapter/jsoft_labels.json").read_text()) == {"id2label": {},
                                                                                "problem_type": "regression"}
    ref = _peft_model("bert", "seq_cls", model, tmp_path / "adapter")
    _, batches = _eval_batches(tmp_path / "wd")
    preds, targets = [], []
    for b in batches:
        assert b["labels"].dtype == np.float32 and "token_type_ids" in b
        keep = b["weights"] > 0
        preds.append(_logits(ref, b)[keep, 0])
        targets.append(b["labels"][keep])
    preds, targets = np.concatenate(preds), np.concatenate(targets)
    assert len(preds) == 21 and np.std(preds) > 0
    assert summary["eval"]["mse"] == pytest.approx(np.mean((preds - targets) ** 2), rel=1e-4)
    assert summary["eval"]["loss"] == summary["eval"]["mse"]
    assert summary["eval"]["pearson"] == pytest.approx(stats.pearsonr(preds, targets)[0], abs=1e-4)
    assert summary["eval"]["spearman"] == pytest.approx(stats.spearmanr(preds, targets)[0], abs=1e-4)


@pytest.mark.parametrize("kind", ["gpt2", "llama", "bloom", "gemma", "gpt_neox"])
def test_decoder_only_classification_pads_left_and_matches_peft(tiny_dir, tmp_path, kind):
    """A decoder-only classifier reads the last position when PEFT feeds it embeddings (prompt tuning): the
    run pads on the left, so that is every row's last real token, in jsoft and in PEFT alike."""
    model = tu.model_dir(tiny_dir, kind, "seq_cls", num_labels=2)
    c = tu.config(model, tu.write_jsonl(tmp_path / "t.jsonl", tu.sentiment(48)),
                  tu.write_jsonl(tmp_path / "e.jsonl", tu.sentiment(27, 1)),
                  peft=dict(peft_type="PROMPT_TUNING", num_virtual_tokens=4), train=dict(learning_rate=0.1))
    summary = train.train(c, tmp_path / "wd")
    export.export(tmp_path / "wd", tmp_path / "adapter")
    ref = _peft_model(kind, "seq_cls", model, tmp_path / "adapter")
    _, batches = _eval_batches(tmp_path / "wd")
    for b in batches:
        assert b["attention_mask"][:, -1].all() and not b["attention_mask"][:, 0].all()  # left-padded
    assert_peft_classifies_the_same(ref, batches, summary, 27)


def test_roberta_p_tuning_v2_gives_the_same_metrics_in_peft(tiny_dir, tmp_path):
    """RoBERTa, P-Tuning v2's main backbone: deep prefixes and its two-layer classification head (dense, tanh,
    out_proj on <s>) train, export with PEFT's tensor names, and give PEFT the same accuracy and loss on text
    pairs."""
    model = tu.model_dir(tiny_dir, "roberta", "seq_cls", num_labels=2)
    rows = lambda n, seed: [{"premise": a["text"], "hypothesis": b["text"], "label": a["label"]}
                            for a, b in zip(tu.sentiment(n, seed), tu.sentiment(n, seed + 5))]
    c = tu.config(model, tu.write_jsonl(tmp_path / "t.jsonl", rows(48, 0)),
                  tu.write_jsonl(tmp_path / "e.jsonl", rows(27, 1)),
                  data=dict(text_columns=("premise", "hypothesis")), train=dict(learning_rate=0.1))
    summary = train.train(c, tmp_path / "wd")
    export.export(tmp_path / "wd", tmp_path / "adapter")
    from safetensors.numpy import load_file

    assert {"base_model.classifier.dense.weight", "base_model.classifier.out_proj.bias"} <= set(
        load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
    ref = _peft_model("roberta", "seq_cls", model, tmp_path / "adapter")
    _, batches = _eval_batches(tmp_path / "wd")
    assert not any("token_type_ids" in b for b in batches)
    assert_peft_classifies_the_same(ref, batches, summary, 27)


@pytest.mark.parametrize("method", ["PROMPT_TUNING", "PREFIX_TUNING"])
@pytest.mark.parametrize("kind", ["deberta-v2", "distilbert"])
def test_encoders_without_past_key_values_train_and_export(tiny_dir, tmp_path, kind, method):
    """DeBERTa-v3 and DistilBERT on text pairs: Prompt Tuning exports a PEFT adapter with PEFT's accuracy and loss
    (DistilBERT's two-layer head, pre_classifier and classifier, under their names); P-Tuning v2 (prefixes, which
    transformers' models cannot take) exports in jsoft's format and reloads with the run's accuracy."""
    model = tu.model_dir(tiny_dir, kind, "seq_cls", num_labels=2)
    rows = lambda n, seed: [{"premise": a["text"], "hypothesis": b["text"], "label": a["label"]}
                            for a, b in zip(tu.sentiment(n, seed), tu.sentiment(n, seed + 5))]
    c = tu.config(model, tu.write_jsonl(tmp_path / "t.jsonl", rows(48, 0)),
                  tu.write_jsonl(tmp_path / "e.jsonl", rows(27, 1)), peft=dict(peft_type=method, num_virtual_tokens=4),
                  data=dict(text_columns=("premise", "hypothesis")), train=dict(learning_rate=0.1))
    summary = train.train(c, tmp_path / "wd")
    written = export.export(tmp_path / "wd", tmp_path / "adapter")
    _, batches = _eval_batches(tmp_path / "wd")
    # the second text's segment (DeBERTa's tokenizer gives token types, DistilBERT's does not)
    assert all(b["token_type_ids"].any() if "token_type_ids" in b else kind == "distilbert" for b in batches)
    if method == "PROMPT_TUNING":
        assert written["format"] == "peft"
        if kind == "distilbert":
            from safetensors.numpy import load_file

            assert {"base_model.pre_classifier.weight", "base_model.classifier.weight"} <= set(
                load_file(tmp_path / "adapter" / "adapter_model.safetensors"))
        assert_peft_classifies_the_same(_peft_model(kind, "seq_cls", model, tmp_path / "adapter"), batches,
                                        summary, 27)
        return
    import jsoft

    assert written["format"] == "jsoft"
    pm = jsoft.PeftModel.from_pretrained(jsoft.from_pretrained(model, task="seq_cls", num_labels=2),
                                         tmp_path / "adapter")
    keys = ("input_ids", "attention_mask", "token_type_ids")
    correct = sum(float(((np.asarray(pm(**{k: b[k] for k in keys if k in b}).logits).argmax(-1) == b["labels"])
                         * b["weights"]).sum()) for b in batches)
    assert correct / 27 == summary["eval"]["accuracy"]
