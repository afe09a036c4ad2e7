"""Forward throughput of a jsoft backbone vs transformers' PyTorch model on this machine's CPU.

    python scripts/bench_forward.py                              # GPT-2 small shape, 8x128 and 1x512
    python scripts/bench_forward.py --shapes 8x128 --iters 20 --json /tmp/fwd.json
    python scripts/bench_forward.py --layers 2 --shapes 2x32     # a quick smoke run

Both frameworks load the same randomly initialised checkpoint (`GPT2Config(...)` saved with
`save_pretrained` into a temp dir), get the same token ids, and compute the full causal-LM logits
in fp32. jsoft: one `jax.jit` of the forward, timed after compilation (compile time reported
apart) with `block_until_ready`; PyTorch: `model(ids)` under `torch.inference_mode()` with
`torch.set_num_threads(<usable cores>)`. The two are timed in alternating rounds so that load from
elsewhere on the host affects both alike; the table shows medians.

Each forward is also scored against the machine's matmul rate (a 2048x2048 fp32 matmul in
jnp and in torch): FLOPs = 2*B*T*(12*L*D^2 + V*D) + 4*L*B*T^2*D (dense, causal half not skipped).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jsoft  # noqa: E402


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def timed(fn, iters: int) -> list[float]:
    out = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def matmul_rate(n: int, iters: int, rounds: int) -> dict:
    """Median FLOP/s of an n x n fp32 matmul in jnp (jitted) and in torch, alternating rounds."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    ta, tb = torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b))
    torch.matmul(ta, tb)
    tj, tt = [], []
    for _ in range(rounds):
        tj += timed(lambda: mm(a, b).block_until_ready(), iters)
        tt += timed(lambda: torch.matmul(ta, tb), iters)
    flops = 2 * n ** 3
    return {"n": n, "jax_flops": flops / statistics.median(tj), "torch_flops": flops / statistics.median(tt)}


def forward_flops(L: int, D: int, V: int, B: int, T: int) -> int:
    return 2 * B * T * (12 * L * D * D + V * D) + 4 * L * B * T * T * D


def make_checkpoint(path: str, layers: int, hidden: int, heads: int, vocab: int, positions: int) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, vocab_size=vocab, n_positions=positions)
    GPT2LMHeadModel(cfg).save_pretrained(path)


def bench_shape(jfwd, jstate, tmodel, B: int, T: int, vocab: int, args) -> dict:
    ids = np.random.default_rng(B * 1000 + T).integers(0, vocab, (B, T), dtype=np.int32)
    jids, tids = jnp.asarray(ids), torch.from_numpy(ids.astype(np.int64))

    t0 = time.perf_counter()
    lowered = jfwd.lower(jstate, jids)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    jlogits = compiled(jstate, jids).block_until_ready()
    t3 = time.perf_counter()
    with torch.inference_mode():
        tlogits = tmodel(tids).logits
    t4 = time.perf_counter()
    diff = float(np.max(np.abs(np.asarray(jlogits) - tlogits.numpy())))
    del jlogits, tlogits

    def run_jax():
        compiled(jstate, jids).block_until_ready()

    def run_torch():
        with torch.inference_mode():
            tmodel(tids)

    for _ in range(args.warmup):
        run_jax()
        run_torch()
    tj, tt = [], []
    for _ in range(args.rounds):
        tj += timed(run_jax, args.iters)
        tt += timed(run_torch, args.iters)
    mj, mt = statistics.median(tj), statistics.median(tt)
    return {
        "batch": B, "seq": T, "tokens": B * T,
        "jsoft_s": mj, "torch_s": mt,
        "jsoft_tok_s": B * T / mj, "torch_tok_s": B * T / mt, "ratio": mt / mj,
        "jsoft_min_s": min(tj), "torch_min_s": min(tt),
        "jsoft_lower_s": t1 - t0, "jsoft_compile_s": t2 - t1, "jsoft_first_call_s": t3 - t2,
        "torch_first_call_s": t4 - t3, "max_abs_logit_diff": diff,
    }


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="8x128,1x512", help="comma-separated BATCHxSEQ")
    ap.add_argument("--layers", type=int, default=12)
    ap.add_argument("--hidden", type=int, default=768)
    ap.add_argument("--heads", type=int, default=12)
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--iters", type=int, default=5, help="timed forwards per round and framework")
    ap.add_argument("--rounds", type=int, default=4, help="alternating jsoft/torch rounds")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=cores(), help="torch.set_num_threads (default: usable cores)")
    ap.add_argument("--matmul-n", type=int, default=2048)
    ap.add_argument("--attn", default="sdpa", help="transformers attn_implementation (sdpa or eager)")
    ap.add_argument("--model-dir", help="use this saved GPT-2 instead of a random one in a temp dir")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.lower().split("x")) for s in args.shapes.split(",") if s]
    torch.set_num_threads(args.threads)

    from transformers import GPT2LMHeadModel

    with tempfile.TemporaryDirectory(prefix="jsoft-bench-") as tmp:
        model_dir = args.model_dir or tmp
        if not args.model_dir:
            make_checkpoint(tmp, args.layers, args.hidden, args.heads, args.vocab,
                            max(1024, max(T for _, T in shapes)))
        cfg = json.load(open(os.path.join(model_dir, "config.json")))
        L, D, V = cfg["n_layer"], cfg["n_embd"], cfg["vocab_size"]
        jmodel = jsoft.from_pretrained(model_dir, task="causal_lm", dtype="float32")
        tmodel = GPT2LMHeadModel.from_pretrained(model_dir, dtype=torch.float32,
                                                 attn_implementation=args.attn).eval()

    graphdef, jstate = nnx.split(jmodel)

    @jax.jit
    def jfwd(state, ids):
        return nnx.merge(graphdef, state)(input_ids=ids).logits

    mm = matmul_rate(args.matmul_n, args.iters, args.rounds)
    rows = [bench_shape(jfwd, jstate, tmodel, B, T, V, args) for B, T in shapes]
    for r in rows:
        f = forward_flops(L, D, V, r["batch"], r["seq"])
        r["gflop"] = f / 1e9
        r["jsoft_flops"], r["torch_flops"] = f / r["jsoft_s"], f / r["torch_s"]
        r["jsoft_of_jax_matmul"] = r["jsoft_flops"] / mm["jax_flops"]
        r["torch_of_torch_matmul"] = r["torch_flops"] / mm["torch_flops"]

    env = {"jax": jax.__version__, "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
           "cores": cores(), "torch_threads": torch.get_num_threads(), "jax_devices": str(jax.devices()),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "attn_implementation": args.attn,
           "model": {"n_layer": L, "n_embd": D, "n_head": cfg["n_head"], "vocab_size": V}}
    print(f"\nGPT-2 L={L} D={D} H={cfg['n_head']} V={V}, fp32, causal-LM logits | cores={env['cores']} "
          f"torch threads={env['torch_threads']} attn={args.attn} XLA_FLAGS={env['xla_flags']!r}")
    print(f"matmul {mm['n']}^2 fp32: jnp {mm['jax_flops'] / 1e9:.1f} GFLOP/s, torch {mm['torch_flops'] / 1e9:.1f} "
          f"GFLOP/s (jnp/torch {mm['jax_flops'] / mm['torch_flops']:.2f})\n")
    head = (f"{'shape':>8} {'GFLOP':>6} | {'jsoft tok/s':>11} {'torch tok/s':>11} {'jsoft/torch':>11} | "
            f"{'jsoft GF/s':>10} {'%mm':>4} {'torch GF/s':>10} {'%mm':>4} | {'lower s':>7} {'compile s':>9} | "
            f"{'max|dlogit|':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['batch']:>4}x{r['seq']:<3} {r['gflop']:>6.1f} | {r['jsoft_tok_s']:>11.0f} {r['torch_tok_s']:>11.0f} "
              f"{r['ratio']:>11.2f} | {r['jsoft_flops'] / 1e9:>10.1f} {100 * r['jsoft_of_jax_matmul']:>4.0f} "
              f"{r['torch_flops'] / 1e9:>10.1f} {100 * r['torch_of_torch_matmul']:>4.0f} | "
              f"{r['jsoft_lower_s']:>7.2f} {r['jsoft_compile_s']:>9.2f} | {r['max_abs_logit_diff']:>11.2e}")
    result = {"env": env, "matmul": mm, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
