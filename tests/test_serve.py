"""The multi-adapter server: answers equal PeftModel on each row alone, bad requests get clear
4xx answers while the server keeps serving, and a bounded loopback load test across 16 adapters
is answered completely, correctly and in batches."""

import asyncio
import concurrent.futures
import random
import shutil
import socket
import threading
import time

import jax
import numpy as np
import pytest
from flax import nnx

import jsoft

httpx = pytest.importorskip("httpx")  # the optional `serve` extra
uvicorn = pytest.importorskip("uvicorn")
TestClient = pytest.importorskip("fastapi.testclient").TestClient

from jsoft.multitask import MultiTaskModel, Sampling, bucket, length_bucket  # noqa: E402
from jsoft.serve import create_app  # noqa: E402
from tests import tiny  # noqa: E402
from tests.tuners import peft_ref  # noqa: E402

NEW = 5  # max_new_tokens of the generate requests (bucket 8: one decode program per batch size)
LIMIT = 64  # the servers' max_new_tokens limit
# at most 8 tokens each, so the load test compiles one length bucket
PROMPTS = ["the movie was good", "i hated it", "a very bad plot", "eu rejects german call",
           "this film is not great but", "awful", "positive review", "the lamb and the plot"]
TEXTS = ["the movie was good", "i hated it , awful", "not bad", "a great film , bad plot"]
LABELS = {0: "negative", 1: "neutral", 2: "positive"}


def _gpt_adapter_config(i: int):
    V = (3 * i) % 8 + 1
    if i % 4 == 2:
        return jsoft.PrefixTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=V, prefix_projection=i % 8 == 6,
                                        encoder_hidden_size=16)
    if i % 4 == 3:
        return jsoft.PromptEncoderConfig(task_type="CAUSAL_LM", num_virtual_tokens=V, encoder_hidden_size=16)
    return jsoft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=V)


@pytest.fixture(scope="module")
def gpt(tmp_path_factory):
    """A tiny GPT-2 with its tokenizer, 16 good adapters (prompt, prefix with and without the MLP,
    P-tuning; PEFT and jsoft formats) and two broken ones."""
    root = tmp_path_factory.mktemp("serve-gpt")
    model_dir, adapters = root / "model", root / "adapters"
    tiny.save("gpt2", "causal_lm", model_dir, initializer_range=0.3, eos_token_id=4, bos_token_id=4)
    tiny.tokenizer("gpt").save_pretrained(model_dir)
    base = jsoft.from_pretrained(model_dir, task="causal_lm")
    for i in range(16):
        pm = jsoft.get_peft_model(base, _gpt_adapter_config(i), seed=i)
        pm.save_pretrained(adapters / f"a{i}", format="jsoft" if i == 6 else None)
    (adapters / "broken").mkdir()
    shutil.copy(adapters / "a0" / "adapter_config.json", adapters / "broken")
    (adapters / "broken" / "adapter_model.safetensors").write_bytes(b"not a safetensors file")
    (adapters / "noconfig").mkdir()
    model = MultiTaskModel(model_dir, adapters, max_batch_size=16)
    ref = jsoft.PeftModel(base, None)
    for i in range(16):
        ref.load_adapter(adapters / f"a{i}", f"a{i}")
    return model, ref


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-bert")
    model_dir, adapters = root / "model", root / "adapters"
    tiny.save("bert", "seq_cls", model_dir, num_labels=3, id2label=LABELS)
    tiny.tokenizer("bert").save_pretrained(model_dir)
    base = jsoft.from_pretrained(model_dir, task="seq_cls")
    configs = [jsoft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3),
               jsoft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=6),
               jsoft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4),
               jsoft.PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=5, encoder_hidden_size=16)]
    for i, c in enumerate(configs):
        jsoft.get_peft_model(base, c, seed=10 + i).save_pretrained(adapters / f"c{i}")
    model = MultiTaskModel(model_dir, adapters)
    ref = jsoft.PeftModel(base, None)
    for i in range(len(configs)):
        ref.load_adapter(adapters / f"c{i}", f"c{i}")
    return model, ref


def greedy(ref: jsoft.PeftModel, tok, names: list[str], prompts: list[str], n: int = NEW, **kw) -> list[list[int]]:
    """PeftModel.generate on rows left-padded to one length (each row equals the row alone:
    tests/test_generate.py), cut at EOS like the server."""
    ids = [tok(p)["input_ids"] for p in prompts]
    T = max(map(len, ids))
    arr = np.asarray([[0] * (T - len(x)) + x for x in ids])
    mask = np.asarray([[0] * (T - len(x)) + [1] * len(x) for x in ids])
    out = np.asarray(ref.generate(arr, mask, max_new_tokens=n, adapter_names=names, **kw))[:, T:].tolist()
    return [row[:row.index(4)] if 4 in row else row for row in out]


@nnx.jit(static_argnames="names")
def _probs(pm, ids, mask, names):
    return jax.nn.softmax(pm(input_ids=ids, attention_mask=mask, adapter_names=list(names)).logits, -1)


def class_probs(ref: jsoft.PeftModel, tok, name: str, texts: list[str]) -> np.ndarray:
    """PeftModel on rows of one adapter, right-padded (a BERT row then equals the row alone)."""
    enc = tok(texts, padding=True, return_tensors="np")
    return np.asarray(_probs(ref, enc["input_ids"], enc["attention_mask"], (name,) * len(texts)))


@pytest.fixture(scope="module")
def gpt_expected(gpt):
    """Greedy tokens of PeftModel for every (adapter, prompt), computed in one mixed batch."""
    model, ref = gpt
    pairs = [(f"a{i}", p) for i in range(16) for p in PROMPTS]
    return dict(zip(pairs, greedy(ref, model.tokenizer, [n for n, _ in pairs], [p for _, p in pairs])))


@pytest.fixture(scope="module")
def bert_expected(bert):
    model, ref = bert
    return {(f"c{i}", t): p for i in range(4) for t, p in zip(TEXTS, class_probs(ref, model.tokenizer, f"c{i}", TEXTS))}


# --------------------------------------------------------------------------- in-process (TestClient)


def test_health_and_adapters(gpt):
    model, _ = gpt
    with TestClient(create_app(model)) as c:
        health = c.get("/health").json()
        assert health["status"] == "ok" and health["task"] == "causal_lm"
        assert health["adapters"] == sorted([f"a{i}" for i in range(16)] + ["broken", "noconfig"])
        assert "noconfig" in health["failed"]  # no adapter_config.json; corrupt weights show on first use
        listed = {a["name"]: a for a in c.get("/adapters").json()["adapters"]}
        assert listed["a1"]["virtual_tokens"] == 4 and listed["noconfig"]["error"]


def test_generate_equals_peft_model_on_each_row(gpt, gpt_expected):
    model, ref = gpt
    tok = model.tokenizer
    with TestClient(create_app(model, max_new_tokens_limit=LIMIT)) as c:
        for name in ["a0", "a2", "a3", "a6"]:  # prompt, prefix, P-tuning, prefix MLP in jsoft's format
            r = c.post("/generate", json={"adapter": name, "prompts": PROMPTS[:3], "max_new_tokens": NEW})
            assert r.status_code == 200, r.text
            body = r.json()
            want = [gpt_expected[name, p] for p in PROMPTS[:3]]
            assert body["token_ids"] == want
            assert body["completions"] == [tok.decode(w, skip_special_tokens=True) for w in want]
            assert set(body["finish_reasons"]) <= {"stop", "length"}
        r = c.post("/generate", json={"adapter": "a1", "prompt": PROMPTS[4], "max_new_tokens": 3})
        assert r.json()["token_ids"] == greedy(ref, tok, ["a1"], [PROMPTS[4]], 3)  # a single row
        processors = {"repetition_penalty": 3.0, "no_repeat_ngram_size": 1, "min_new_tokens": 2}
        r = c.post("/generate", json={"adapter": "a2", "prompt": PROMPTS[0], "max_new_tokens": NEW, **processors})
        constrained = r.json()["token_ids"]
        assert constrained == greedy(ref, tok, ["a2"], [PROMPTS[0]], NEW, **processors)
        assert constrained[0] != gpt_expected["a2", PROMPTS[0]] and len(set(constrained[0])) == len(constrained[0])
        r = c.post("/generate", json={"adapter": "a2", "prompt": PROMPTS[0], "repetition_penalty": 0.0})
        assert r.status_code == 400 and "repetition_penalty > 0" in r.json()["error"]
        assert "a0" in c.get("/health").json()["loaded"]


def test_sampling_is_reproducible_and_valid(gpt):
    model, ref = gpt
    tok = model.tokenizer
    with TestClient(create_app(model, max_new_tokens_limit=LIMIT)) as c:
        req = {"adapter": "a5", "prompt": "the movie", "max_new_tokens": 8, "temperature": 0.8, "top_k": 20,
               "top_p": 0.9, "seed": 7}
        first, again = c.post("/generate", json=req).json(), c.post("/generate", json=req).json()
        assert first == again
        other = c.post("/generate", json=req | {"seed": 8}).json()
        assert all(0 <= t < tiny.VOCAB for t in first["token_ids"][0] + other["token_ids"][0])
        assert c.post("/generate", json=req | {"temperature": 0}).status_code == 200  # greedy
        # concurrent requests with other seeds and adapters share batches; each draws what
        # PeftModel.generate(prompts, seed=seed) draws for it
        reqs = [req | {"adapter": f"a{i}", "seed": 10 + i, "prompt": None, "prompts": PROMPTS[i:i + 2],
                       "num_return_sequences": 1 + i % 3} for i in range(4)]
        with concurrent.futures.ThreadPoolExecutor(4) as pool:
            bodies = list(pool.map(lambda r: c.post("/generate", json=r).json(), reqs))
        greedy_n = c.post("/generate", json=req | {"temperature": 0, "num_return_sequences": 2})
        assert greedy_n.status_code == 400 and "num_return_sequences=2" in greedy_n.json()["error"]
        too_many = c.post("/generate", json=req | {"prompt": None, "prompts": PROMPTS, "num_return_sequences": 40})
        assert too_many.status_code == 400 and "320 sequences" in too_many.json()["error"]
    for r, body in zip(reqs, bodies):
        ids = [tok(p)["input_ids"] for p in r["prompts"]]
        T = max(map(len, ids))
        arr = np.asarray([[0] * (T - len(x)) + x for x in ids])
        mask = np.asarray([[0] * (T - len(x)) + [1] * len(x) for x in ids])
        want = np.asarray(ref.generate(arr, mask, max_new_tokens=8, do_sample=True, temperature=0.8, top_k=20,
                                       top_p=0.9, seed=r["seed"], adapter_names=[r["adapter"]] * 2,
                                       num_return_sequences=r["num_return_sequences"]))[:, T:].tolist()
        assert len(want) == 2 * r["num_return_sequences"]
        assert body["token_ids"] == [row[:row.index(4)] if 4 in row else row for row in want]


def test_classify_equals_peft_model_on_each_row(bert, bert_expected):
    model, ref = bert
    tok = model.tokenizer
    with TestClient(create_app(model)) as c:
        for name in ["c0", "c1", "c2", "c3"]:
            r = c.post("/classify", json={"adapter": name, "texts": TEXTS})
            assert r.status_code == 200, r.text
            body = r.json()
            want = np.stack([bert_expected[name, t] for t in TEXTS])
            np.testing.assert_allclose(np.asarray(body["probabilities"]), want, atol=1e-5, rtol=0)
            assert body["labels"] == [LABELS[int(i)] for i in want.argmax(-1)]
        single = c.post("/classify", json={"adapter": "c2", "text": TEXTS[1]}).json()
        alone = class_probs(ref, tok, "c2", TEXTS[1:2])  # a single row
        np.testing.assert_allclose(np.asarray(single["probabilities"]), alone, atol=1e-5, rtol=0)


def test_direct_calls_past_max_batch_size_run_in_chunks(gpt, gpt_expected, bert, bert_expected):
    model, _ = gpt
    pairs = [(f"a{i % 16}", PROMPTS[i % len(PROMPTS)]) for i in range(model.max_batch_size + 3)]
    names, ids = [n for n, _ in pairs], [model.tokenizer(p)["input_ids"] for _, p in pairs]
    got = [g.tolist() for g in model.generate(names, ids, [NEW] * len(pairs))]
    assert [g[:g.index(4)] if 4 in g else g for g in got] == [gpt_expected[p] for p in pairs]
    sampling = Sampling(do_sample=True, temperature=0.8)
    drawn = model.generate(names, ids, [NEW] * len(pairs), sampling)  # row b draws from (0, b) in any chunk
    tail = model.generate(names[-3:], ids[-3:], [NEW] * 3, sampling, [(0, b) for b in range(len(pairs) - 3,
                                                                                            len(pairs))])
    np.testing.assert_array_equal(np.stack(drawn[-3:]), np.stack(tail))
    with pytest.raises(ValueError, match="need as many max_new_tokens"):
        model.generate(names, ids, [NEW])
    model, _ = bert
    rows = [(f"c{i % 4}", TEXTS[i // 4 % len(TEXTS)]) for i in range(model.max_batch_size + 5)]
    ids = [model.tokenizer(t)["input_ids"] for _, t in rows]
    got = model.classify([n for n, _ in rows], ids)
    np.testing.assert_allclose(np.stack(got), np.stack([bert_expected[r] for r in rows]), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="one adapter name each"):
        model.classify(["c0"], ids[:2])
    with pytest.raises(KeyError, match="unknown adapter 'nope'"):
        model.classify(["nope"], ids[:1])


def test_bad_requests_get_clear_errors_and_the_server_keeps_serving(gpt, bert):
    model, _ = gpt
    good = {"adapter": "a0", "prompt": "the movie", "max_new_tokens": NEW}
    with TestClient(create_app(model, max_new_tokens_limit=LIMIT)) as c:
        def post(body, path="/generate", **kw):
            r = c.post(path, json=body, **kw) if body is not None else c.post(path, **kw)
            assert r.headers["content-type"].startswith("application/json")
            return r.status_code, r.json()

        status, body = post(good | {"adapter": "nope"})
        assert status == 404 and "nope" in body["error"] and "a15" in body["adapters"]
        status, body = post(None, content=b'{"adapter": "a0", "prompt": ', headers={"content-type": "application/json"})
        assert status == 400 and "JSON" in body["error"]
        assert post({"prompt": "the movie"})[0] == 422  # no adapter
        status, body = post(good | {"max_new_tokens": "5"})
        assert status == 422 and "max_new_tokens" in body["error"]
        assert post(good | {"prompt": 5})[0] == 422
        assert post(good | {"prompts": []})[0] == 422
        assert post(good | {"max_new_tokens": True})[0] == 422
        assert post(good | {"unknown_field": 1})[0] == 422
        status, body = post(good | {"prompts": ["x"]})
        assert status == 400 and "exactly one" in body["error"]
        for n in (0, -3, LIMIT + 1, 10 ** 12):
            status, body = post(good | {"max_new_tokens": n})
            assert status == 400 and str(LIMIT) in body["error"] and body["max_new_tokens_limit"] == LIMIT
        status, body = post(good | {"temperature": 0.5, "top_p": 0.0})
        assert status == 400 and "top_p" in body["error"]
        assert post(good | {"prompt": ""})[0] == 400
        V, P = model.virtual_tokens("a0"), model.max_positions
        room = P - V - NEW
        status, body = post(good | {"prompt": " ".join(["the"] * (room + 1))})
        assert status == 413 and body["max_input_tokens"] == room and body["input_tokens"] == room + 1
        assert f"{P} positions" in body["error"] and f"takes {V}" in body["error"]
        assert post(good | {"prompt": " ".join(["the"] * room)})[0] == 200
        status, body = post({"adapter": "a0", "text": "the movie"}, "/classify")
        assert status == 400 and "/generate" in body["error"]
        for broken in ("broken", "noconfig"):
            status, body = post(good | {"adapter": broken})
            assert status == 500 and broken in body["error"] and body["adapter"] == broken
        assert "corrupt" in post(good | {"adapter": "broken"})[1]["error"]  # the failure is kept
        assert post(good)[0] == 200
        assert set(c.get("/health").json()["failed"]) == {"broken", "noconfig"}
    with TestClient(create_app(bert[0])) as c:
        r = c.post("/generate", json={"adapter": "c0", "prompt": "the movie"})
        assert r.status_code == 400 and "/classify" in r.json()["error"]
        r = c.post("/classify", json={"adapter": "c0", "text": " ".join(["good"] * 80)})
        assert r.status_code == 413 and r.json()["max_input_tokens"] == bert[0].max_positions - 3


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_adapters_with_their_own_labels_share_a_batch(tmp_path, kind):
    """One encoder with a 3-label head serves adapters trained for 3, 2, 4 (multi-label) and 1 (regression)
    outputs in one mixed batch: each row equals PeftModel with that adapter's own head, read by its
    jsoft_labels.json (softmax, sigmoids, the value) or, without one, by the model's label names. RoBERTa's
    head has a dense layer before its output projection."""
    from jsoft import interop
    from jsoft.tuners.peft_model import Head

    tiny.save(kind, "seq_cls", tmp_path / "m", num_labels=3, id2label=LABELS)
    tiny.tokenizer("bert").save_pretrained(tmp_path / "m")
    base = jsoft.from_pretrained(tmp_path / "m", task="seq_cls")
    dense = Head.copy_of(base.classifier).arrays()[2:]  # RoBERTa's dense layer (None, None for BERT)
    rng = np.random.default_rng(0)
    specs = {  # name: (config, labels, jsoft_labels.json)
        "three": (jsoft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=3), 3, None),
        "two": (jsoft.PrefixTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=4), 2,
                {"id2label": {"0": "no", "1": "yes"}, "problem_type": "single_label_classification"}),
        "tags": (jsoft.PromptTuningConfig(task_type="SEQ_CLS", num_virtual_tokens=5), 4,
                 {"id2label": {str(i): c for i, c in enumerate("abcd")}, "problem_type": "multi_label_classification"}),
        "score": (jsoft.PromptEncoderConfig(task_type="SEQ_CLS", num_virtual_tokens=4, encoder_hidden_size=16), 1,
                  None),
    }
    for i, (name, (config, n, labels)) in enumerate(specs.items()):
        pm = jsoft.get_peft_model(base, config, seed=i)
        if n != 3:
            pm.adapters["default"].head = Head(rng.normal(0, 2, (40, n)), rng.normal(0, 1, n), *dense)
        interop.save_adapter(pm, tmp_path / "ad" / name, labels=labels)
    model = MultiTaskModel(tmp_path / "m", tmp_path / "ad")
    ref = jsoft.PeftModel(base, None)
    with pytest.raises(ValueError, match=r"base_model.classifier.(out_proj.)?weight .* has shape \(40, 2\) but .* "
                                         r"needs \(40, 3\)"):
        ref.load_adapter(tmp_path / "ad" / "two", "two")  # as PEFT: a head for other labels is refused by default
    for name in specs:
        model.ensure_loaded(name)
        ref.load_adapter(tmp_path / "ad" / name, name, any_num_labels=True)
    with pytest.raises(ValueError, match="heads for different numbers of labels"):
        ref(input_ids=np.ones((2, 4), np.int32), adapter_names=["two", "three"])
    rows = [(n, t) for t in TEXTS[:2] for n in specs]
    ids = [model.tokenizer(t)["input_ids"] for _, t in rows]
    got = model.classify([n for n, _ in rows], ids)
    for (name, _), x, g in zip(rows, ids, got):
        logits = np.asarray(ref(input_ids=np.asarray([x]), adapter_names=[name]).logits)[0]
        want = {"tags": 1 / (1 + np.exp(-logits)), "score": logits}.get(name, np.exp(logits) / np.exp(logits).sum())
        assert g.shape == (specs[name][1],)
        np.testing.assert_allclose(g, want, atol=1e-5, rtol=0)
    assert model.labels("three").names == list(LABELS.values()) and model.labels("two").names == ["no", "yes"]
    assert model.labels("score").problem_type == "regression"
    with TestClient(create_app(model)) as c:
        two = c.post("/classify", json={"adapter": "two", "texts": TEXTS}).json()
        assert set(two["labels"]) <= {"no", "yes"} and np.asarray(two["probabilities"]).shape == (4, 2)
        tags = c.post("/classify", json={"adapter": "tags", "text": TEXTS[0]}).json()
        assert tags["labels"] == [[c for c, p in zip("abcd", tags["probabilities"][0]) if p > 0.5]]
        score = c.post("/classify", json={"adapter": "score", "texts": TEXTS[:2]}).json()
        assert set(score) == {"scores"} and np.allclose(score["scores"], [float(g[0]) for g in got[3::4]], atol=1e-5)


# BART forces EOS as each row's last new token (its config.json default), in a batch bucketed to more tokens
ENGINE_OVERRIDES = {"t5": {"initializer_factor": 5.0}, "bart": {"init_std": 0.1, "forced_eos_token_id": 2},
                    # OPT-350m's word embeddings, narrower than its stack, as ALBERT's always are: so are the prompts
                    "opt": {"word_embed_proj_dim": 32, "do_layer_norm_before": False},
                    # Marian: a prompt row's tokens unscaled, a prefix row's scaled (as each runs alone in PEFT)
                    "marian": {"init_std": 2.0, "pad_token_id": 0, "decoder_start_token_id": 0}}


@pytest.mark.parametrize("kind,task,post", [("t5", "seq2seq_lm", "t5"), ("bart", "seq2seq_lm", "t5"),
                                            ("marian", "seq2seq_lm", "t5"),
                                            ("gpt2", "seq_cls", "gpt"),
                                            ("llama", "token_cls", "gpt"), ("bert", "token_cls", "bert"),
                                            ("roberta", "seq_cls", "bert"), ("bloom", "seq_cls", "gpt"),
                                            ("opt", "seq_cls", "gpt"), ("deberta-v2", "seq_cls", "bert"),
                                            ("distilbert", "seq_cls", "bert"), ("albert", "seq_cls", "bert"),
                                            ("deepseek_v3", "seq_cls", "gpt"), ("qwen3_next", "seq_cls", "gpt"),
                                            ("qwen3_5_text", "causal_lm", "gpt"),
                                            ("granitemoehybrid", "causal_lm", "gpt"),
                                            ("nemotron_h", "causal_lm", "gpt"), ("mamba", "causal_lm", "gpt")])
def test_engine_mixed_batch_equals_rows_alone(tmp_path, kind, task, post):
    """The other layouts: T5 (prompt into the encoder, prefix into the decoder), decoder-only
    classification (left padding, every adapter a key/value prefix), encoder token labels (prompts
    packed in front of each row), DistilBERT's two-layer ReLU head. One mixed batch of a prompt and a prefix
    adapter. DeBERTa: a pretraining checkpoint without the pooler, the adapters made on a base that initialised
    it with another seed than the server's, so the server must take the pooler the adapters carry. DeepSeek-V3,
    where no prefix fits: a P-Tuning adapter beside the prompt (both become its latent attention's compressed cache).
    Qwen3-Next / Qwen3.5, whose linear-attention layers read the prompts themselves: classification and generation
    read [pads, prompt, tokens]."""
    pretraining = kind == "deberta-v2"
    tiny.save(kind, None if pretraining else task, tmp_path / "m", **ENGINE_OVERRIDES.get(kind, {}))
    tiny.tokenizer(post).save_pretrained(tmp_path / "m")
    base = jsoft.from_pretrained(tmp_path / "m", task=task, seed=7 if pretraining else 0)
    tt = {"seq2seq_lm": "SEQ_2_SEQ_LM", "seq_cls": "SEQ_CLS", "token_cls": "TOKEN_CLS", "causal_lm": "CAUSAL_LM"}[task]
    second = jsoft.PromptEncoderConfig if kind in peft_ref.NO_PREFIX else jsoft.PrefixTuningConfig
    for i, c in enumerate([jsoft.PromptTuningConfig(task_type=tt, num_virtual_tokens=3),
                           second(task_type=tt, num_virtual_tokens=5)]):
        jsoft.get_peft_model(base, c, seed=i).save_pretrained(tmp_path / "ad" / f"p{i}")
    model = MultiTaskModel(tmp_path / "m", tmp_path / "ad")
    rows = [("p0", TEXTS[0]), ("p1", TEXTS[1]), ("p1", TEXTS[2]), ("p0", TEXTS[3])]
    for n in ("p0", "p1"):
        model.ensure_loaded(n)
    ids = [model.tokenizer(t)["input_ids"] for _, t in rows]
    names = [n for n, _ in rows]
    ref = jsoft.PeftModel(base, None)
    for n in ("p0", "p1"):
        ref.load_adapter(tmp_path / "ad" / n, n)
    if task == "seq2seq_lm":  # reference: PeftModel on each adapter's rows, right-padded (masked in the encoder)
        got = model.generate(names, ids, [NEW] * len(rows))
        for n in ("p0", "p1"):
            mine = [b for b, m in enumerate(names) if m == n]
            enc = model.tokenizer([rows[b][1] for b in mine], padding=True, return_tensors="np")
            want = ref.generate(enc["input_ids"], enc["attention_mask"], max_new_tokens=NEW, adapter_names=[n] * 2)
            np.testing.assert_array_equal(np.stack([got[b] for b in mine]), np.asarray(want)[:, 1:])
        if kind == "bart":
            assert all(g[-1] == 2 for g in got)
        return
    if task == "causal_lm":  # reference: PeftModel on each row alone
        got = model.generate(names, ids, [NEW] * len(rows))
        for (n, _), x, g in zip(rows, ids, got):
            want = np.asarray(ref.generate(np.asarray([x]), max_new_tokens=NEW, adapter_names=[n]))[0, len(x):]
            np.testing.assert_array_equal(g, want)
        return
    got = model.classify(names, ids)
    for (n, _), x, g in zip(rows, ids, got):
        want = np.asarray(_probs(ref, np.asarray([x]), np.ones((1, len(x)), np.int32), (n,)))[0]
        if task == "token_cls" and n == "p0":  # PeftModel's logits include the virtual tokens
            want = want[3:]
        np.testing.assert_allclose(g, want, atol=1e-5, rtol=0)


# --------------------------------------------------------------------------- loopback load test


class Server:
    """uvicorn on 127.0.0.1 with a free port, in a background thread."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive(), "the server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()
        assert not self.thread.is_alive(), "the server did not stop"


def test_load_over_loopback_is_complete_correct_and_batched(gpt, bert, gpt_expected, bert_expected):
    gpt_model, bert_model = gpt[0], bert[0]
    rng = random.Random(0)
    n_gen, n_cls = 256, 64
    gen_jobs = [(f"a{i % 16}", rng.choice(PROMPTS)) for i in range(n_gen)]
    cls_jobs = [(f"c{i % 4}", rng.choice(TEXTS)) for i in range(n_cls)]
    # the client shares this process (and its GIL) with both servers: a wait long enough that a slow client still
    # fills batches
    gpt_app = create_app(gpt_model, max_new_tokens_limit=LIMIT, batch_wait_ms=50)
    bert_app = create_app(bert_model, batch_wait_ms=50)
    with Server(gpt_app) as gs, Server(bert_app) as bs:
        before = {u: httpx.get(f"{u}/stats", trust_env=False).json() for u in (gs.url, bs.url)}

        async def fire():  # 32 requests in flight: 24 to generate, 8 to classify
            sem = {"gen": asyncio.Semaphore(24), "cls": asyncio.Semaphore(8)}
            limits = httpx.Limits(max_connections=40)
            async with httpx.AsyncClient(timeout=120, trust_env=False, limits=limits) as client:
                async def one(kind, job):
                    async with sem[kind]:
                        if kind == "gen":
                            body = {"adapter": job[0], "prompt": job[1], "max_new_tokens": NEW}
                            return await client.post(f"{gs.url}/generate", json=body)
                        return await client.post(f"{bs.url}/classify", json={"adapter": job[0], "text": job[1]})

                work = [("gen", j) for j in gen_jobs] + [("cls", j) for j in cls_jobs]
                order = list(range(len(work)))
                rng.shuffle(order)
                results = await asyncio.gather(*(one(*work[i]) for i in order), return_exceptions=True)
                return {i: r for i, r in zip(order, results)}

        t0 = time.perf_counter()
        responses = asyncio.run(fire())
        elapsed = time.perf_counter() - t0
        after = {u: httpx.get(f"{u}/stats", trust_env=False).json() for u in (gs.url, bs.url)}

    errors = [r for r in responses.values() if isinstance(r, Exception) or r.status_code != 200]
    assert not errors, errors[:3]
    assert len(responses) == n_gen + n_cls
    for i, job in enumerate(gen_jobs):
        assert responses[i].json()["token_ids"] == [gpt_expected[job]], job
    for i, job in enumerate(cls_jobs):
        got = np.asarray(responses[n_gen + i].json()["probabilities"][0])
        np.testing.assert_allclose(got, bert_expected[job], atol=1e-5, rtol=0)
    g = {k: after[gs.url][k] - before[gs.url][k] for k in ("model_calls", "rows", "requests")}
    b = {k: after[bs.url][k] - before[bs.url][k] for k in ("model_calls", "rows", "requests")}
    print(f"\n{n_gen + n_cls} requests in {elapsed:.1f}s; generate: {g}; classify: {b}; "
          f"programs: {after[gs.url]['compiled_programs']} + {after[bs.url]['compiled_programs']}")
    assert g["rows"] == g["requests"] == n_gen and b["rows"] == b["requests"] == n_cls, (g, b)
    assert g["model_calls"] < n_gen / 2 and b["model_calls"] < n_cls / 2, (g, b)  # batched across adapters
    for stats in after.values():  # one program per shape seen, never one per request
        assert stats["compiled_programs"] == len(stats["shapes"]) <= 16, stats


def test_bucket():
    assert [bucket(n) for n in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 16]
    assert bucket(3, bottom=8) == 8 and bucket(20, top=16) == 16 and bucket(0) == 1 and bucket(64, top=48) == 48
    assert [length_bucket(n, 1024) for n in (1, 8, 9, 12, 13, 17, 25, 33, 48, 49, 100)] == \
        [8, 8, 12, 12, 16, 24, 32, 48, 48, 64, 128]
    assert length_bucket(100, top=90) == 90
