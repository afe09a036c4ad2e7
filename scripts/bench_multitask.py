"""Multi-adapter serving throughput: jsoft's mixed batch vs PEFT switching adapters per request.

    python scripts/bench_multitask.py                        # GPT-2 small shape, 16 adapters x 4 requests
    python scripts/bench_multitask.py --n-layer 2 --adapters 4 --per-adapter 2   # a quick smoke run
    python scripts/bench_multitask.py --json /tmp/multitask.json

Setup: a randomly initialised GPT-2 (`GPT2Config(n_layer=12, n_embd=768, n_head=12)`, saved with
`save_pretrained`), and `--adapters` Prompt Tuning adapters of 20 random virtual tokens made with
PEFT on PyTorch and saved; both frameworks load the same files. Each adapter gets `--per-adapter`
requests (prompts of 16..48 random tokens), so 64 requests by default.

  * PEFT, as its users must serve several adapters: per request `model.set_adapter(name)`, then a
    batch-1 forward or `generate` (greedy), under `torch.inference_mode()`.
  * jsoft: all requests in ONE mixed batch, one adapter per row (`adapter_names=[...]`): a
    jitted `PeftModel.__call__` (right padding) for scoring, `PeftModel.generate` (left padding)
    for decoding; and the server's engine (`jsoft.multitask.MultiTaskModel.generate`).

Scoring computes the full causal-LM logits (both frameworks' default) and keeps each request's
last-token logits; generation makes `--new-tokens` greedy tokens (no EOS stop). Throughput is
requests per second after compilation; compile time (first call minus a steady call) is reported
apart. "engine batch 1" serves the requests one at a time through the same engine: the gap to
PEFT is the framework, the gap to the mixed batch is batching. Checked and printed: how many
requests get the same greedy tokens as PEFT, and the largest last-token logit difference.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jsoft  # noqa: E402
from jsoft.multitask import MultiTaskModel  # noqa: E402

V = 20  # virtual tokens per adapter


def build(root: str, args) -> tuple[str, str, list[str]]:
    import peft
    import transformers as tf

    torch.manual_seed(0)
    config = tf.GPT2Config(n_layer=args.n_layer, n_embd=768, n_head=12, n_positions=1024)
    model_dir, adapters_dir = os.path.join(root, "model"), os.path.join(root, "adapters")
    tf.GPT2LMHeadModel(config).eval().save_pretrained(model_dir)
    names = [f"task{i:02d}" for i in range(args.adapters)]
    for i, name in enumerate(names):
        torch.manual_seed(100 + i)
        base = tf.GPT2LMHeadModel.from_pretrained(model_dir)
        cfg = peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=V, prompt_tuning_init="RANDOM")
        peft.get_peft_model(base, cfg).save_pretrained(os.path.join(adapters_dir, name))
    return model_dir, adapters_dir, names


def requests(names: list[str], per_adapter: int, vocab: int, seed: int = 0) -> list[tuple[str, list[int]]]:
    rng = np.random.default_rng(seed)
    reqs = [(n, rng.integers(0, vocab, size=int(rng.integers(16, 49))).tolist()) for n in names
            for _ in range(per_adapter)]
    order = rng.permutation(len(reqs))  # interleave adapters, as concurrent clients would
    return [reqs[i] for i in order]


def padded(reqs, left: bool) -> tuple[np.ndarray, np.ndarray]:
    T = max(len(x) for _, x in reqs)
    ids, mask = np.zeros((len(reqs), T), np.int32), np.zeros((len(reqs), T), np.int32)
    for b, (_, x) in enumerate(reqs):
        sl = slice(T - len(x), T) if left else slice(0, len(x))
        ids[b, sl], mask[b, sl] = x, 1
    return ids, mask


def clock(fn, repeats: int) -> tuple[float, list[float], object]:
    """(first call's seconds, steady calls' seconds, last result)."""
    t = time.perf_counter()
    out = fn()
    first = time.perf_counter() - t
    steady = []
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        steady.append(time.perf_counter() - t)
    return first, steady, out


def bench_peft(model_dir, adapters_dir, names, reqs, args) -> dict:
    import peft
    import transformers as tf

    base = tf.GPT2LMHeadModel.from_pretrained(model_dir).eval()
    base.generation_config.eos_token_id = None  # always make new_tokens tokens, like jsoft's eos_token_id=[]
    pm = peft.PeftModel.from_pretrained(base, os.path.join(adapters_dir, names[0]), adapter_name=names[0])
    for n in names[1:]:
        pm.load_adapter(os.path.join(adapters_dir, n), adapter_name=n)
    pm.eval()

    def score(name, x):
        pm.set_adapter(name)
        return pm(input_ids=torch.tensor([x])).logits[0, -1].float().numpy()

    def generate(name, x):
        pm.set_adapter(name)
        ids = torch.tensor([x])
        out = pm.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=args.new_tokens,
                          do_sample=False, pad_token_id=0)
        return out[0, -args.new_tokens:].numpy()

    res = {}
    with torch.inference_mode():
        score(*reqs[0]), generate(*reqs[0])  # warm-up
        for label, fn, repeats in (("score", score, args.repeats), ("generate", generate, 1)):
            times, outs = [], None
            for _ in range(repeats):
                t = time.perf_counter()
                outs = [fn(n, x) for n, x in reqs]
                times.append(time.perf_counter() - t)
            res[label] = {"seconds": statistics.median(times), "outputs": np.stack(outs)}
            print(f"PEFT {label} done ({sum(times):.0f}s)", flush=True)
    return res


def bench_jsoft(model_dir, adapters_dir, names, reqs, args) -> dict:
    t0 = time.perf_counter()
    model = jsoft.from_pretrained(model_dir, task="causal_lm")
    pm = jsoft.PeftModel.from_pretrained(model, os.path.join(adapters_dir, names[0]), adapter_name=names[0])
    for n in names[1:]:
        pm.load_adapter(os.path.join(adapters_dir, n), adapter_name=n)
    row_names = tuple(n for n, _ in reqs)

    graphdef, state = nnx.split(pm)

    @functools.partial(jax.jit, static_argnames="names")  # takes the model's state, returns none of it
    def score(state, ids, mask, names):
        logits = nnx.merge(graphdef, state)(input_ids=ids, attention_mask=mask, adapter_names=list(names)).logits
        last = V + mask.sum(-1) - 1  # every adapter here has V virtual tokens in front
        return jax.numpy.take_along_axis(logits, last[:, None, None], 1)[:, 0]

    ids_r, mask_r = padded(reqs, left=False)
    ids_l, mask_l = padded(reqs, left=True)
    res = {}
    first, steady, out = clock(lambda: np.asarray(score(state, ids_r, mask_r, row_names)), args.repeats)
    res["score"] = {"seconds": statistics.median(steady), "compile": first - min(steady), "outputs": out}
    gen = lambda: np.asarray(pm.generate(ids_l, mask_l, max_new_tokens=args.new_tokens, eos_token_id=[],
                                         adapter_names=row_names))[:, -args.new_tokens:]
    first, steady, out = clock(gen, args.repeats)
    res["generate"] = {"seconds": statistics.median(steady), "compile": first - min(steady), "outputs": out}
    # the server's engine: adapters as precomputed prefix caches, bucketed shapes
    tmp = os.path.join(os.path.dirname(adapters_dir), "model_with_tokenizer")
    if not os.path.isdir(tmp):
        shutil.copytree(model_dir, tmp)
        _tokenizer().save_pretrained(tmp)
    engine = MultiTaskModel(tmp, adapters_dir, max_batch_size=len(reqs))
    engine.eos_token_ids = ()  # always make new_tokens tokens, like the other two
    for n in names:
        engine.ensure_loaded(n)
    run = lambda: np.stack(engine.generate(list(row_names), [x for _, x in reqs], [args.new_tokens] * len(reqs)))
    first, steady, out = clock(run, args.repeats)
    res["engine_generate"] = {"seconds": statistics.median(steady), "compile": first - min(steady), "outputs": out}
    print(f"jsoft mixed batches done ({time.perf_counter() - t0:.0f}s)", flush=True)
    # the same engine one request at a time: what batching adds, apart from the framework
    one = lambda req: engine.generate([req[0]], [req[1]], [args.new_tokens])[0]
    t = time.perf_counter()
    for r in reqs:  # compiles one program per length bucket (16, 32, 64)
        one(r)
    first = time.perf_counter() - t
    t = time.perf_counter()
    out = np.stack([one(r) for r in reqs])
    steady = time.perf_counter() - t
    res["engine_generate_b1"] = {"seconds": steady, "compile": first - steady, "outputs": out}
    print(f"jsoft one request at a time done ({time.perf_counter() - t0:.0f}s)", flush=True)
    return res


def _tokenizer():
    """The server needs a tokenizer next to the model; the benchmark passes token ids directly."""
    from tokenizers import Tokenizer, models
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"[UNK]": 0}, unk_token="[UNK]")),
                                   unk_token="[UNK]", pad_token="[UNK]")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-layer", type=int, default=12)
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--per-adapter", type=int, default=4)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    torch.set_num_threads(len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count())

    with tempfile.TemporaryDirectory() as root:
        t = time.perf_counter()
        model_dir, adapters_dir, names = build(root, args)
        reqs = requests(names, args.per_adapter, vocab=50257)
        print(f"built GPT-2 (n_layer={args.n_layer}) and {len(names)} PEFT adapters in {time.perf_counter() - t:.0f}s; "
              f"{len(reqs)} requests, prompts of {min(len(x) for _, x in reqs)}..{max(len(x) for _, x in reqs)} "
              f"tokens + {V} virtual; devices: {jax.devices()}", flush=True)
        j = bench_jsoft(model_dir, adapters_dir, names, reqs, args)
        p = bench_peft(model_dir, adapters_dir, names, reqs, args)

    n = len(reqs)
    rows = [("score (forward)", "score", "score"), (f"generate {args.new_tokens} greedy", "generate", "generate"),
            (f"generate {args.new_tokens}, server engine", "engine_generate", "generate"),
            (f"generate {args.new_tokens}, engine batch 1", "engine_generate_b1", "generate")]
    results = {"requests": n, "adapters": len(names), "n_layer": args.n_layer, "new_tokens": args.new_tokens}
    print(f"\n{'':34s} {'PEFT req/s':>10s} {'jsoft req/s':>11s} {'ratio':>7s} {'jsoft compile s':>15s}")
    for label, jk, pk in rows:
        pr, jr = n / p[pk]["seconds"], n / j[jk]["seconds"]
        print(f"{label:34s} {pr:10.2f} {jr:11.2f} {jr / pr:6.1f}x {j[jk]['compile']:15.1f}")
        results[jk] = {"peft_rps": pr, "jsoft_rps": jr, "ratio": jr / pr, "jsoft_compile_s": j[jk]["compile"]}
    score_err = float(np.abs(j["score"]["outputs"] - p["score"]["outputs"]).max())
    agree = {k: float((j[k]["outputs"] == p["generate"]["outputs"]).all(1).mean())
             for k in ("generate", "engine_generate", "engine_generate_b1")}
    print(f"\nchecks: last-token logits max |jsoft - PEFT| = {score_err:.2e}; greedy rows equal to PEFT's: "
          + ", ".join(f"{k} {v:.0%}" for k, v in agree.items()))
    results["checks"] = {"score_max_abs_err": score_err, "greedy_rows_equal": agree}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
