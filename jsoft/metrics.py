"""Evaluation metrics and the run's metric files.

Classification: accuracy and macro-F1 from a confusion matrix (rows: true class, columns: predicted).
Regression: MSE, Pearson and Spearman correlations. Multi-label: micro-/macro-F1, subset accuracy.
Token classification: entity-level precision/recall/F1 over BIO / IOB2 / IOBES spans, micro-averaged,
as seqeval computes them in its default (non-strict) mode. Language modelling: token-mean loss and
perplexity. `Writer` appends to `metrics.jsonl` and writes TensorBoard events (process 0 only).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

# ------------------------------------------------------------------------------------ classification


def confusion_matrix(labels: np.ndarray, preds: np.ndarray, num_classes: int,
                     weights: np.ndarray | None = None) -> np.ndarray:
    """`[C, C]` float64 counts; rows are true classes. Rows with weight 0 (eval padding) do not count."""
    labels, preds = np.asarray(labels).reshape(-1), np.asarray(preds).reshape(-1)
    w = np.ones(labels.shape, np.float64) if weights is None else np.asarray(weights, np.float64).reshape(-1)
    out = np.zeros((num_classes, num_classes), np.float64)
    np.add.at(out, (labels, preds), w)
    return out


def classification(confusion: np.ndarray) -> dict[str, float]:
    """Accuracy and macro-F1 (the mean of per-class F1 over classes with a true or predicted example,
    like scikit-learn's `f1_score(average="macro")` over the labels present)."""
    c = np.asarray(confusion, np.float64)
    total = c.sum()
    tp = np.diag(c)
    true, pred = c.sum(1), c.sum(0)
    present = (true + pred) > 0
    denom = true + pred
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-300), 0.0)
    return {"accuracy": float(tp.sum() / total) if total else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0}


def multi_label(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, exact: float, rows: float) -> dict[str, float]:
    """Multi-label classification from per-class true/false positive and false negative counts: micro-F1,
    macro-F1 (over classes with a true or predicted example, as `classification`) and subset accuracy
    (rows whose every label is right, scikit-learn's `accuracy_score`)."""
    tp, fp, fn = (np.asarray(x, np.float64) for x in (tp, fp, fn))
    denom = 2 * tp + fp + fn
    f1 = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-300), 0.0)
    present = denom > 0
    return {"micro_f1": float(2 * tp.sum() / denom.sum()) if denom.sum() else 0.0,
            "macro_f1": float(f1[present].mean()) if present.any() else 0.0,
            "accuracy": float(exact / rows) if rows else 0.0}


def regression(preds: np.ndarray, targets: np.ndarray) -> dict[str, float]:
    """Mean squared error, and Pearson's and Spearman's correlations (GLUE's STS-B metrics, as scipy's
    pearsonr and spearmanr: ranks of ties averaged); a correlation of constant values is 0."""
    p, t = np.asarray(preds, np.float64).reshape(-1), np.asarray(targets, np.float64).reshape(-1)
    return {"mse": float(np.mean((p - t) ** 2)) if p.size else 0.0,
            "pearson": _correlation(p, t), "spearman": _correlation(_ranks(p), _ranks(t))}


def _correlation(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a - a.mean(), b - b.mean()
    denom = math.sqrt(float((a * a).sum() * (b * b).sum())) if a.size else 0.0
    return float((a * b).sum() / denom) if denom > 0 else 0.0


def _ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given their mean rank."""
    values, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
    last = np.cumsum(counts)  # the rank of each distinct value's last copy
    return (last - (counts - 1) / 2.0)[inverse]


# ------------------------------------------------------------------------------------ entities


def _split_tag(tag: str) -> tuple[str, str]:
    """"B-PER" -> ("B", "PER"); "O" -> ("O", "_")."""
    return tag[0], tag[1:].split("-", maxsplit=1)[-1] or "_"


def _ends(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (prev_tag in ("E", "S")
            or (prev_tag in ("B", "I") and tag in ("B", "S", "O"))
            or (prev_tag not in ("O", ".") and prev_type != type_))


def _starts(prev_tag: str, tag: str, prev_type: str, type_: str) -> bool:
    return (tag in ("B", "S")
            or (prev_tag in ("E", "S", "O") and tag in ("E", "I"))
            or (tag not in ("O", ".") and prev_type != type_))


def entity_spans(tags: Sequence[str]) -> list[tuple[str, int, int]]:
    """`(type, first, last)` of each entity in one sentence's tags (seqeval's get_entities: an I- after O
    or after another type starts an entity, so IOB1 and sloppy predictions are read as seqeval reads them)."""
    out = []
    prev_tag, prev_type, begin = "O", "", 0
    for i, tag in enumerate([*tags, "O"]):
        t, type_ = _split_tag(tag)
        if _ends(prev_tag, t, prev_type, type_):
            out.append((prev_type, begin, i - 1))
        if _starts(prev_tag, t, prev_type, type_):
            begin = i
        prev_tag, prev_type = t, type_
    return out


def entity_counts(true: Sequence[Sequence[str]], pred: Sequence[Sequence[str]]) -> np.ndarray:
    """[correct, predicted, true] entity counts over sentences (to sum over batches)."""
    counts = np.zeros(3, np.int64)
    for t, p in zip(true, pred):
        if len(t) != len(p):
            raise ValueError(f"a sentence has {len(t)} true tags but {len(p)} predicted tags")
        ts, ps = set(entity_spans(t)), set(entity_spans(p))
        counts += (len(ts & ps), len(ps), len(ts))
    return counts


def entity_f1(counts: np.ndarray) -> dict[str, float]:
    correct, predicted, true = (float(x) for x in counts)
    p = correct / predicted if predicted else 0.0
    r = correct / true if true else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def token_tags(labels_BxT: np.ndarray, preds_BxT: np.ndarray, id2label: Mapping[int, str],
               weights_B: np.ndarray | None = None, ignore: int = -100):
    """Per sentence, the tag strings at labelled positions (first word pieces): (true, pred)."""
    true, pred = [], []
    for b in range(labels_BxT.shape[0]):
        if weights_B is not None and weights_B[b] == 0:
            continue
        keep = labels_BxT[b] != ignore
        true.append([id2label[int(i)] for i in labels_BxT[b][keep]])
        pred.append([id2label.get(int(i), "O") for i in preds_BxT[b][keep]])
    return true, pred


# ------------------------------------------------------------------------------------ language modelling


def language_model(nll_sum: float, tokens: float) -> dict[str, float]:
    loss = nll_sum / tokens if tokens else float("nan")
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0))}


# which way is better, for picking the best checkpoint
LOWER_IS_BETTER = ("loss", "perplexity", "mse")


def mode(metric: str) -> str:
    return "min" if metric in LOWER_IS_BETTER else "max"


# ------------------------------------------------------------------------------------ files


class Writer:
    """`metrics.jsonl` (one JSON object per line: step, split, metrics) and TensorBoard events under
    `tb/`, both in the workdir. Only the process with `enabled` writes."""

    def __init__(self, workdir: str | os.PathLike, enabled: bool = True, tensorboard: bool = True):
        self.enabled = enabled
        self._tb = None
        self._jsonl = None
        if not enabled:
            return
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self._jsonl = open(workdir / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from tensorboardX import SummaryWriter

            self._tb = SummaryWriter(str(workdir / "tb"))

    def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
        if not self.enabled:
            return
        clean = {k: _jsonable(v) for k, v in metrics.items()}
        self._jsonl.write(json.dumps({"step": int(step), "split": split, **clean}) + "\n")
        if self._tb is not None:
            for k, v in clean.items():
                if isinstance(v, int | float) and not isinstance(v, bool):
                    self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def flush(self) -> None:
        if self._tb is not None:
            self._tb.flush()

    def close(self) -> None:
        if self._jsonl is not None:
            self._jsonl.close()
            self._jsonl = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _jsonable(v):
    if isinstance(v, np.generic | np.ndarray):
        v = v.tolist()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)  # JSON has no NaN/Inf
    return v


# ============================================================================ generation


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    row = [0] * (len(b) + 1)
    for x in a:
        prev = 0
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], prev + 1 if x == y else max(row[j], row[j - 1])
    return row[-1]


def rouge_l(pred: str, ref: str) -> float:
    """ROUGE-L F-measure over lower-cased whitespace tokens (beta = 1)."""
    p, r = pred.lower().split(), ref.lower().split()
    if not p or not r:
        return float(p == r)
    lcs = _lcs(p, r)
    if lcs == 0:
        return 0.0
    prec, rec = lcs / len(p), lcs / len(r)
    return 2 * prec * rec / (prec + rec)


def bleu(preds: Sequence[str], refs: Sequence[str], max_n: int = 4) -> float:
    """Corpus BLEU-4 (uniform weights, brevity penalty, no smoothing) over whitespace tokens."""
    import collections
    import math

    matches, totals = [0] * max_n, [0] * max_n
    pred_len = ref_len = 0
    for pred, ref in zip(preds, refs):
        p, r = pred.lower().split(), ref.lower().split()
        pred_len, ref_len = pred_len + len(p), ref_len + len(r)
        for n in range(1, max_n + 1):
            pc = collections.Counter(tuple(p[i:i + n]) for i in range(len(p) - n + 1))
            rc = collections.Counter(tuple(r[i:i + n]) for i in range(len(r) - n + 1))
            matches[n - 1] += sum(min(c, rc[g]) for g, c in pc.items())
            totals[n - 1] += max(len(p) - n + 1, 0)
    if pred_len == 0 or min(matches) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matches, totals)) / max_n
    brevity = 1.0 if pred_len > ref_len else math.exp(1 - ref_len / pred_len)
    return brevity * math.exp(log_precision)


def generation(preds: Sequence[str], refs: Sequence[str]) -> dict[str, float]:
    """ROUGE-L (summarization), exact match and BLEU (data-to-text) of generated texts."""
    n = max(len(refs), 1)
    return {"rouge_l": sum(rouge_l(p, r) for p, r in zip(preds, refs)) / n,
            "exact_match": sum(p.strip() == r.strip() for p, r in zip(preds, refs)) / n,
            "bleu": bleu(preds, refs)}
