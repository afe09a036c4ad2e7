"""Generation-based evaluation: ROUGE-L, exact match and BLEU, and their place in the training eval."""

import types

import numpy as np
import pytest

import jsoft
from jsoft import build, data, metrics, train
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
    _, c = tu.summarize_config(tiny_dir, tmp_path, train=dict(num_steps=2, learning_rate=0.1,
                                                                 eval_generate_tokens=4, eval_generate_options=dict(
                                                                     num_beams=2, no_repeat_ngram_size=2)),
                                  peft=dict(peft_type="PROMPT_TUNING", num_virtual_tokens=3))
    summary = train.train(c, tmp_path / "wd")
    ev = summary["eval"]
    assert {"rouge_l", "exact_match", "bleu", "loss"} <= set(ev)
    assert 0.0 <= ev["rouge_l"] <= 1.0 and 0.0 <= ev["exact_match"] <= 1.0


def test_causal_training_eval_reports_generation_metrics(tiny_dir, tmp_path):
    _, c = tu.gpt2_data_to_text_config(tiny_dir, tmp_path, train=dict(num_steps=2, eval_generate_tokens=4))
    ev = train.train(c, tmp_path / "wd")["eval"]
    assert {"rouge_l", "exact_match", "bleu", "loss", "perplexity"} <= set(ev)
    assert 0.0 <= ev["rouge_l"] <= 1.0 and 0.0 <= ev["exact_match"] <= 1.0


def _causal_eval_rows(tiny_dir, tmp_path):
    model_dir, c = tu.gpt2_data_to_text_config(tiny_dir, tmp_path)
    tok = build.load_tokenizer(c)
    feat = build.featurizer(c, tok)
    ds = data.load(c.data.eval)
    return model_dir, tok, ds, data.generation_rows(feat(ds, key="data.eval"))


def test_causal_generation_eval_scores_each_prompt_against_its_target(tiny_dir, tmp_path):
    model_dir, tok, ds, rows = _causal_eval_rows(tiny_dir, tmp_path)
    targets = {tuple(tok(r["text"] + " :")["input_ids"]): tok(r["target"])["input_ids"] + [tok.eos_token_id]
               for r in ds}
    base = jsoft.from_pretrained(model_dir, task="causal_lm")

    def oracle(ids, mask, max_new_tokens, **kw):  # a model that answers every prompt with its target
        out = [list(row[m.astype(bool)]) for row, m in zip(ids, mask)]
        new = [(targets[tuple(x)] + [0] * max_new_tokens)[:max_new_tokens] for x in out]
        return np.concatenate([ids, np.asarray(new)], 1)

    perfect = train.generation_eval(types.SimpleNamespace(base_model=base, generate=oracle), rows, 4, tok, 6)
    assert perfect == metrics.generation(list(ds["target"]), list(ds["target"]))
    assert perfect["rouge_l"] == perfect["exact_match"] == 1.0

    # a real model: the same scores as generating for each prompt alone (batching, left padding, EOS cut)
    pm = jsoft.get_peft_model(base, jsoft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=3), seed=1)
    for options in ({}, {"num_beams": 3, "repetition_penalty": 1.5}):  # greedy; train.eval_generate_options
        got = train.generation_eval(pm, rows, 4, tok, 5, options)
        preds = []
        for r in ds:
            prompt = np.asarray([tok(r["text"] + " :")["input_ids"]])
            new = np.asarray(pm.generate(prompt, max_new_tokens=5, eos_token_id=[tok.eos_token_id], **options)
                             )[0, prompt.shape[1]:]
            new = new[:np.argmax(new == tok.eos_token_id)] if (new == tok.eos_token_id).any() else new
            preds.append(tok.decode(new, skip_special_tokens=True))
        assert got == pytest.approx(metrics.generation(preds, list(ds["target"])))


@pytest.mark.parametrize("options,match", [
    (dict(num_beam=2), r"train\.eval_generate_options\.num_beam is not an option; valid: \['length_penalty'"),
    (dict(num_beams=0), r"train\.eval_generate_options\.num_beams=0 must be an integer >= 1"),
    (dict(repetition_penalty=-1.0), r"repetition_penalty=-1.0 must be a number > 0"),
])
def test_eval_generate_options_are_checked_before_training(tiny_dir, tmp_path, options, match):
    _, c = tu.gpt2_data_to_text_config(tiny_dir, tmp_path, train=dict(eval_generate_tokens=4,
                                                                        eval_generate_options=options))
    with pytest.raises(ValueError, match=match):
        build.check_config(c)
