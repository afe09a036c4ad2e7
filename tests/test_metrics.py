"""jsoft.metrics: accuracy / macro-F1 (against scikit-learn), seqeval-style entity spans and F1, perplexity,
and the metric files."""

import json
import math

import numpy as np
import pytest

from jsoft import metrics


def test_classification_matches_sklearn():
    sk = pytest.importorskip("sklearn.metrics")
    rng = np.random.default_rng(0)
    labels, preds = rng.integers(0, 4, 200), rng.integers(0, 4, 200)
    preds[:60] = labels[:60]
    got = metrics.classification(metrics.confusion_matrix(labels, preds, 4))
    assert got["accuracy"] == pytest.approx(sk.accuracy_score(labels, preds))
    assert got["macro_f1"] == pytest.approx(sk.f1_score(labels, preds, average="macro"))


def test_multi_label_matches_sklearn():
    true = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    pred = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 1], [0, 0, 0]])
    tp, fp, fn = (true & pred).sum(0), ((1 - true) & pred).sum(0), (true & (1 - pred)).sum(0)
    m = metrics.multi_label(tp, fp, fn, exact=float((true == pred).all(-1).sum()), rows=4.0)
    # sklearn: f1_score(average="micro") = 0.6667, average="macro" = (1 + 2/3 + 0) / 3, accuracy_score = 0.5
    assert m == pytest.approx({"micro_f1": 2 / 3, "macro_f1": (1 + 2 / 3 + 0) / 3, "accuracy": 0.5})


def test_regression_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    targets = rng.integers(0, 6, 300).astype(np.float64)  # STS-B-like scores with many ties
    preds = targets + rng.normal(0, 1.5, 300)
    preds[:40] = np.round(preds[:40])  # ties among the predictions too
    m = metrics.regression(preds, targets)
    assert m["mse"] == pytest.approx(np.mean((preds - targets) ** 2))
    assert m["pearson"] == pytest.approx(stats.pearsonr(preds, targets)[0])
    assert m["spearman"] == pytest.approx(stats.spearmanr(preds, targets)[0])
    assert 0.3 < m["spearman"] < 0.95
    assert metrics.regression(np.ones(4), np.arange(4.0))["pearson"] == 0.0  # constant: no correlation


def test_confusion_ignores_weight_zero_rows():
    c = metrics.confusion_matrix([0, 1, 1, 0], [0, 1, 0, 1], 2, weights=[1, 1, 0, 0])
    assert metrics.classification(c) == {"accuracy": 1.0, "macro_f1": 1.0}


def test_macro_f1_over_classes_present():
    # class 2 never occurs nor is predicted: it does not count (scikit-learn over the labels present)
    c = metrics.confusion_matrix([0, 0, 1, 1], [0, 1, 1, 1], 3)
    assert metrics.classification(c)["macro_f1"] == pytest.approx((2 / 3 + 0.8) / 2)


@pytest.mark.parametrize("tags,spans", [
    (["B-PER", "I-PER", "O", "B-LOC"], [("PER", 0, 1), ("LOC", 3, 3)]),
    (["I-PER", "I-PER", "O"], [("PER", 0, 1)]),  # IOB1 / sloppy: I- after O starts an entity
    (["B-PER", "I-LOC", "I-LOC"], [("PER", 0, 0), ("LOC", 1, 2)]),  # a type change starts a new one
    (["B-PER", "B-PER", "I-PER"], [("PER", 0, 0), ("PER", 1, 2)]),
    (["S-LOC", "B-ORG", "E-ORG", "O"], [("LOC", 0, 0), ("ORG", 1, 2)]),  # IOBES
    (["O", "O"], []),
    (["B-MISC"], [("MISC", 0, 0)]),
])
def test_entity_spans(tags, spans):
    assert metrics.entity_spans(tags) == spans


def test_entity_f1():
    true = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O"]]
    pred = [["B-PER", "I-PER", "O", "O"], ["B-ORG", "B-LOC"]]
    # correct: PER, ORG; predicted: PER, ORG, LOC; true: PER, LOC, ORG
    got = metrics.entity_f1(metrics.entity_counts(true, pred))
    assert got == pytest.approx({"precision": 2 / 3, "recall": 2 / 3, "f1": 2 / 3})
    # a partially matching span is wrong
    got = metrics.entity_f1(metrics.entity_counts([["B-PER", "I-PER"]], [["B-PER", "O"]]))
    assert got == {"precision": 0.0, "recall": 0.0, "f1": 0.0}


def test_token_tags_keep_labelled_positions_and_real_rows():
    labels = np.array([[-100, 1, 2, -100, 0], [-100, 1, -100, -100, -100]])
    preds = np.array([[0, 1, 0, 2, 0], [0, 1, 0, 0, 0]])
    names = {0: "O", 1: "B-PER", 2: "I-PER"}
    true, pred = metrics.token_tags(labels, preds, names, weights_B=np.array([1.0, 0.0]))
    assert true == [["B-PER", "I-PER", "O"]] and pred == [["B-PER", "O", "O"]]


def test_language_model():
    got = metrics.language_model(nll_sum=6.0, tokens=3.0)
    assert got["loss"] == 2.0 and got["perplexity"] == pytest.approx(math.exp(2.0))
    assert metrics.mode("perplexity") == "min" and metrics.mode("f1") == "max"


def test_writer(tmp_path):
    w = metrics.Writer(tmp_path)
    w.write(3, "train", {"loss": 0.5, "lr": np.float32(0.1)})
    w.write(4, "eval", {"accuracy": 1.0, "loss": float("nan")})
    w.close()
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines[0] == {"step": 3, "split": "train", "loss": 0.5, "lr": pytest.approx(0.1)}
    assert lines[1]["loss"] == "nan" and lines[1]["split"] == "eval"
    assert list((tmp_path / "tb").iterdir())  # TensorBoard events
    off = metrics.Writer(tmp_path / "other", enabled=False)
    off.write(1, "train", {"loss": 1.0})
    off.close()
    assert not (tmp_path / "other").exists()
