"""Randomised parity sweeps against PEFT, for cases the fixed tests do not name: random widths, head counts, key/value
groups, layer counts and tied heads of the core backbones (every other backbone of the PEFT matrix at its tests/tiny.py
shape), random virtual-token counts, batch sizes and lengths, and for decoding random beam widths, returned sequences,
length penalties, EOS and logits processors. Not collected by pytest (minutes, and random); a developer's tool:

  python -m tests.sweep logits --cases 150 --seed 1     # adapter logits, jsoft -> PEFT, every backbone x task
  python -m tests.sweep greedy --cases 100 --seed 3     # greedy generate
  python -m tests.sweep beams --cases 60 --seed 7       # beam search
  python -m tests.sweep train --cases 40 --seed 9       # training steps vs PEFT + torch.optim

Each case prints `ok` or `FAIL` with what it drew; the exit status is the number of failures (capped at 100).
"""

from __future__ import annotations

import argparse
import copy
import os
import random
import sys
import tempfile

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import peft  # noqa: E402

import jsoft  # noqa: E402
from jsoft import build, optim  # noqa: E402
from tests import test_generate as tg  # noqa: E402
from tests import tiny  # noqa: E402
from tests.tuners import peft_ref  # noqa: E402

GENERATIVE = ("gpt2", "llama", "t5", "qwen3", "gemma", "bart", "opt")
NO_PEFT_PREFIX = peft_ref.NO_PEFT_PREFIX + peft_ref.NO_PREFIX + peft_ref.PEFT_PREFIX_DOES_NOT_FIT


def shape(rng: random.Random, kind: str) -> dict:
    """Random sizes for the core backbones (others keep tests/tiny.py's)."""
    h, d, layers = rng.choice([2, 3, 4, 6]), rng.choice([4, 8, 12, 16]), rng.choice([1, 2, 3])
    if kind == "gpt2":
        return dict(n_embd=h * d, n_head=h, n_layer=layers, tie_word_embeddings=rng.random() < 0.5)
    if kind in ("bert", "roberta"):
        return dict(hidden_size=h * d, num_attention_heads=h, num_hidden_layers=layers,
                    intermediate_size=rng.choice([20, 36, 64]))
    if kind == "t5":
        return dict(d_model=rng.choice([24, 32, 40]), d_kv=d, num_heads=h, num_layers=layers,
                    num_decoder_layers=rng.choice([1, 2, 3]), d_ff=rng.choice([20, 48]),
                    feed_forward_proj=rng.choice(["relu", "gated-gelu"]), tie_word_embeddings=rng.random() < 0.5)
    if kind in ("llama", "mistral", "qwen2", "qwen3", "gemma"):
        groups = rng.choice([g for g in (1, 2, 3, 6) if h % g == 0])
        head_dim = {} if kind == "qwen2" else dict(head_dim=rng.choice([d, 8, 16]))
        return dict(hidden_size=h * d, num_attention_heads=h, num_key_value_heads=groups, num_hidden_layers=layers,
                    intermediate_size=rng.choice([20, 40]), **head_dim)
    return {}


def method_for(rng: random.Random, kind: str) -> str:
    methods = [m for m in peft_ref.METHODS if not (m.startswith("prefix") and kind in NO_PEFT_PREFIX)]
    return rng.choice(methods)


def made(kind: str, task: str, overrides: dict, method: str, virtual: int, seed: int, tmp: str):
    """(jsoft PeftModel, PEFT's model of the adapter jsoft saved)."""
    tiny.save(kind, task, f"{tmp}/model", **overrides)
    config, _ = peft_ref.configs(method, task, kind)
    config.num_virtual_tokens = virtual
    pm = jsoft.get_peft_model(jsoft.from_pretrained(f"{tmp}/model", task=task, num_labels=3), config, seed=seed)
    pm.save_pretrained(f"{tmp}/adapter")
    base = peft_ref.hf_base(kind, task, f"{tmp}/model")
    return pm, peft.PeftModel.from_pretrained(base, f"{tmp}/adapter").eval()


def deeper_decoder(overrides: dict) -> bool:
    return overrides.get("num_decoder_layers", 0) > overrides.get("num_layers", 1 << 30)


def logits_case(rng: random.Random, i: int):
    kind, task = rng.choice(peft_ref.MATRIX)
    overrides, method = shape(rng, kind), method_for(rng, kind)
    if method.startswith("prefix") and deeper_decoder(overrides):
        overrides["num_decoder_layers"] = overrides["num_layers"]  # refused when made (tests/tuners)
    virtual, rows = rng.choice([1, 2, 7, 10]), rng.choice([1, 2, 3])
    length = rng.choice([1, 2, 5, 11] if rows == 1 else [5, 6, 11])  # batch() pads rows 1, 2 by 2 and 4 tokens

    def run(tmp: str) -> None:
        pm, ref = made(kind, task, overrides, method, virtual, i, tmp)
        inputs = peft_ref.batch(kind, B=rows, T=length, seed=i)
        peft_ref.compare(peft_ref.jsoft_logits(pm, inputs), peft_ref.peft_logits(ref, inputs), task, inputs, virtual)

    return f"{kind} {task} {method} virtual={virtual} batch={rows}x{length} {overrides}", run


def generate_case(rng: random.Random, i: int, beams: bool):
    kind = rng.choice(GENERATIVE)
    task, overrides, method = tg.TASK[kind], {**tg.DIVERSE[kind], **shape(rng, kind)}, method_for(rng, kind)
    if deeper_decoder(overrides):  # transformers' own generate fails there
        overrides["num_decoder_layers"] = overrides["num_layers"]
    virtual, rows, length = rng.choice([1, 3, 8]), rng.choice([1, 2, 3]), rng.choice([2, 5, 9])
    new, stop = rng.choice([3, 6, 10]), rng.random() < 0.6  # stop: at an EOS that a row meets
    kw = {}
    if beams:
        n = rng.choice([2, 3, 4])
        kw = dict(num_beams=n, num_return_sequences=rng.randint(1, n), length_penalty=rng.choice([1.0, 0.5, 2.0, -1.0]))
        kw |= {k: v for k, v in (("repetition_penalty", 1.3), ("no_repeat_ngram_size", 2), ("min_new_tokens", 2))
               if rng.random() < 0.3}

    def run(tmp: str) -> None:
        pm, ref = made(kind, task, overrides, method, virtual, i, tmp)
        ids = tg.ids_batch(rows, length, seed=i)
        lead = 1 if kind in tiny.ENCODER_DECODER else length
        tg.NEW = new  # peft_generate's max_new_tokens
        eos = int(np.asarray(pm.generate(ids, max_new_tokens=new))[0, lead + min(2, new - 1)]) if stop else None
        got = np.asarray(pm.generate(ids, max_new_tokens=new, eos_token_id=[] if eos is None else eos,
                                     pad_token_id=0, **kw))
        want = tg.peft_generate(ref, ids, width=got.shape[1], eos_token_id=eos, pad_token_id=0, **kw)
        if beams and eos is not None:
            want[:, lead:] = tg.pad_after_eos(want[:, lead:], eos)
        np.testing.assert_array_equal(got, want)

    return f"{kind} {method} virtual={virtual} ids={rows}x{length} new={new} stop={stop} {kw} {overrides}", run


def train_case(rng: random.Random, i: int):
    """A few training steps on one batch in jsoft and in PEFT + torch.optim from the same start (random optimizer,
    schedule, warmup, weight decay and clipping): the same losses and the same adapter at the end."""
    # PEFT's token_cls loss fails with prompts in the input (unpadded labels) and on BioGPT: prefixes only there
    kind, task = rng.choice([(k, t) for k, t in peft_ref.MATRIX
                             if t != "token_cls" or k not in (*NO_PEFT_PREFIX, "biogpt")])
    overrides = shape(rng, kind)
    method = rng.choice(["prefix", "prefix_proj"]) if task == "token_cls" else method_for(rng, kind)
    if method.startswith("prefix") and deeper_decoder(overrides):
        overrides["num_decoder_layers"] = overrides["num_layers"]
    virtual, steps = rng.choice([1, 3, 6]), rng.choice([2, 3, 5])
    train_config = build.default_config().train
    train_config.optimizer = rng.choice(["adamw", "adamw", "sgd"])
    train_config.learning_rate = rng.choice([0.01, 0.05]) if train_config.optimizer == "adamw" else 0.5
    train_config.schedule, train_config.warmup_steps = rng.choice(list(optim.SCHEDULES)), rng.choice([0, 1, 2])
    train_config.weight_decay, train_config.max_grad_norm = rng.choice([None, 0.01]), rng.choice([0.0, 0.5, 1.0])
    drawn = {k: train_config[k] for k in ("optimizer", "learning_rate", "schedule", "warmup_steps", "weight_decay",
                                          "max_grad_norm")}

    def run(tmp: str) -> str:
        from pathlib import Path

        pm, _ = made(kind, task, overrides, method, virtual, i, tmp)
        _, pconfig = peft_ref.configs(method, task, kind)
        pconfig.num_virtual_tokens = virtual
        carried = getattr(pm.base_model, "adapter_carries", ())  # frozen modules jsoft's adapter saves
        pconfig.modules_to_save = [*(pconfig.modules_to_save or []), *carried] or None
        ref = peft.get_peft_model(peft_ref.hf_base(kind, task, f"{tmp}/model"), pconfig)
        peft_ref.start_peft_from_jsoft(pm, ref, Path(tmp))
        for name, param in ref.named_parameters():  # saved by both, trained by neither
            if any(f".{module}." in name for module in carried):
                param.requires_grad_(False)
        start = copy.deepcopy(ref)  # for the spread below
        inputs = peft_ref.batch(kind, seed=i)
        labels = peft_ref.task_labels(kind, task, inputs)

        def trained(model, train, name: str) -> dict[str, np.ndarray]:
            losses = train(model, inputs, labels, steps=steps, train_config=train_config)
            return {"losses": np.asarray(losses), **peft_ref.adapter_tensors(model, Path(tmp) / name)}

        got, want = trained(pm, peft_ref.train_jsoft, "jsoft"), trained(ref, peft_ref.train_peft, "peft")
        assert set(got) == set(want), f"the adapters hold different tensors: {sorted(set(got) ^ set(want))}"
        tolerance = {key: (0.0, 1e-4) if key == "losses" else (2e-5, 1e-4) for key in want}  # (atol, rtol)
        if all(np.allclose(got[k], want[k], atol=a, rtol=r) for k, (a, r) in tolerance.items()):
            return ""
        # A few steps can amplify fp32 rounding far past those tolerances. SGD at lr 0.5 overshoots (seed 3404
        # case 16, qwen3_5 P-tuning: PEFT from a start nudged by 1e-7 ended 1e-3 from itself in 4 steps). AdamW
        # turns gradient components near its eps into updates of up to lr: seed 3304 case 9 (bert token_cls,
        # clipped prompt gradients of 1e-5 and below) has gradients 1e-10 apart, and adapters 4.3e-4 apart after 5
        # steps. There jsoft must stay within 3x PEFT's own spread from a start whose every weight (frozen ones too:
        # rounding differs in the whole computation) is nudged by 1e-6. A 1.5x SGD weight decay fails it in 5 of 5
        # cases, and a 1.2x clipping norm in each SGD case whose gradients it clips.
        peft_ref.nudge(start, 1e-6)
        spread = trained(start, peft_ref.train_peft, "nudged")
        floors = {key: float(np.max(np.abs(spread[key] - want[key]))) for key in want}
        for key, (atol, rtol) in tolerance.items():
            np.testing.assert_allclose(got[key], want[key], atol=atol + 3 * floors[key], rtol=rtol,
                                       err_msg=f"{key}, past 3x PEFT's spread {floors[key]:.2g} from a nudged start")
        return f" (within 3x PEFT's spread from a start nudged by 1e-6: losses {floors['losses']:.2g})"

    return f"{kind} {task} {method} virtual={virtual} steps={steps} {drawn} {overrides}", run


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep", choices=["logits", "greedy", "beams", "train"])
    parser.add_argument("--cases", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    failures = 0
    for i in range(args.cases):
        rng = random.Random(args.seed * 1_000_003 + i)  # case i draws the same whatever ran before it
        drawn, run = logits_case(rng, i) if args.sweep == "logits" else train_case(rng, i) \
            if args.sweep == "train" else generate_case(rng, i, beams=args.sweep == "beams")
        with tempfile.TemporaryDirectory() as tmp:
            try:
                note = run(tmp)
                print(f"ok   {i} {drawn}{note or ''}", flush=True)
            except Exception as e:  # noqa: BLE001 (report every case, then the count)
                failures += 1
                print(f"FAIL {i} {drawn}: {type(e).__name__}: {str(e)[:600]!r}", flush=True)
        if i % 10 == 9:
            jax.clear_caches()  # bounded compiled programs over a long sweep
    print(f"{args.cases - failures} ok, {failures} failed", flush=True)
    return min(failures, 100)


if __name__ == "__main__":
    sys.exit(main())
