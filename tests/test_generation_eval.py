"""Generation-based evaluation: ROUGE-L, exact match and BLEU, and their place in the training eval."""

import pytest

from jsoft import metrics, train
from tests import train_utils as tu


def test_rouge_l_and_exact_match():
    assert metrics.rouge_l("the cat sat", "the cat sat") == 1.0
    assert metrics.rouge_l("dog", "the cat sat") == 0.0
    # LCS("the cat sat on the mat", "the cat is on the mat") = 5 -> P = R = 5/6
    assert metrics.rouge_l("the cat sat on the mat", "the cat is on the mat") == pytest.approx(5 / 6)
    g = metrics.generation(["a b", "c"], ["a b", "d"])
    assert g["exact_match"] == 0.5


def test_bleu_known_values():
    assert metrics.bleu(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert metrics.bleu(["completely different words here"], ["the cat sat on the mat"]) == 0.0
    # 1-4 gram precisions 5/6, 3/5, 1/4, 0/3 -> 0 without smoothing; shorter candidate: brevity < 1
    assert metrics.bleu(["the cat sat on the mat"], ["the cat is on the mat"]) == 0.0
    hyp, ref = "the quick brown fox jumps over the dog", "the quick brown fox jumps over the lazy dog"
    # precisions 8/8, 6/7, 5/6, 4/5; brevity exp(1 - 9/8)
    import math
    want = math.exp(1 - 9 / 8) * math.exp((math.log(1) + math.log(6 / 7) + math.log(5 / 6) + math.log(4 / 5)) / 4)
    assert metrics.bleu([hyp], [ref]) == pytest.approx(want)


def test_seq2seq_training_eval_reports_generation_metrics(tiny_dir, tmp_path):
    _, c = tu.t5_summarize_config(tiny_dir, tmp_path, train=dict(num_steps=2, learning_rate=0.1,
                                                                 eval_generate_tokens=4),
                                  peft=dict(peft_type="PROMPT_TUNING", num_virtual_tokens=3))
    summary = train.train(c, tmp_path / "wd")
    ev = summary["eval"]
    assert {"rouge_l", "exact_match", "bleu", "loss"} <= set(ev)
    assert 0.0 <= ev["rouge_l"] <= 1.0 and 0.0 <= ev["exact_match"] <= 1.0
