"""Forward throughput of a jsoft backbone vs transformers' PyTorch model on this machine's CPU.

    python scripts/bench_forward.py                              # GPT-2 small shape, 8x128 and 1x512
    taskset -c 0 python scripts/bench_forward.py                 # one core each: the steadiest comparison
    python scripts/bench_forward.py --shapes 8x128 --iters 20 --json /tmp/fwd.json
    python scripts/bench_forward.py --layers 2 --shapes 2x32     # a quick smoke run

Both frameworks load the same randomly initialised checkpoint (`GPT2Config(...)` saved with
`save_pretrained` into a temp dir), get the same token ids, and compute the full causal-LM logits
in fp32. jsoft: one `jax.jit` of the forward, timed after compilation (compile time reported
apart) with `block_until_ready`; PyTorch: `model(ids)` under `torch.inference_mode()` with
`torch.set_num_threads(<usable cores>)`. The two, and a 2048x2048 fp32 matmul in each framework
(the machine's matmul rate), are timed in alternating rounds so that load from elsewhere on the host
affects all of them alike. Reported: tokens/s (medians), FLOP/s against the matmul rate, with
FLOPs = 2*B*T*(12*L*D^2 + V*D) + 4*L*B*T^2*D (dense, the causal half not skipped), and process CPU
seconds per forward, which on one core measure the work whatever else runs on the host.
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


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def timed(fn, iters: int, wall: list[float], cpu: list[float]) -> None:
    """Append wall and process-CPU seconds of `iters` calls of `fn`."""
    for _ in range(iters):
        t, c = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)


class Matmul:
    """An n x n fp32 matmul in jnp (jitted) and in torch. Timed in every round next to the forwards, so that
    both are measured under the same load from elsewhere on the host."""

    def __init__(self, n: int):
        a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
        mm = jax.jit(jnp.matmul)
        ta, tb = torch.from_numpy(np.array(a)), torch.from_numpy(np.array(b))
        self.n, self.flops = n, 2 * n ** 3
        self.jax = lambda: mm(a, b).block_until_ready()
        self.torch = lambda: torch.matmul(ta, tb)
        self.jax(), self.torch()
        self.tj, self.tt, self.cj, self.ct = [], [], [], []

    def time_round(self, iters: int) -> None:
        timed(self.jax, iters, self.tj, self.cj)
        timed(self.torch, iters, self.tt, self.ct)

    def summary(self) -> dict:
        f, med = self.flops, statistics.median
        return {"n": self.n, "jax_flops": f / med(self.tj), "torch_flops": f / med(self.tt),
                "jax_flops_best": f / min(self.tj), "torch_flops_best": f / min(self.tt),
                "jax_flops_per_cpu_s": f / med(self.cj), "torch_flops_per_cpu_s": f / med(self.ct)}


def forward_flops(L: int, D: int, V: int, B: int, T: int) -> int:
    return 2 * B * T * (12 * L * D * D + V * D) + 4 * L * B * T * T * D


def make_checkpoint(path: str, layers: int, hidden: int, heads: int, vocab: int, positions: int) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, vocab_size=vocab, n_positions=positions)
    GPT2LMHeadModel(cfg).save_pretrained(path)


def bench_shape(jfwd, jstate, tmodel, mm: Matmul, B: int, T: int, vocab: int, args) -> dict:
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
    tj, tt, cj, ct = [], [], [], []
    for _ in range(args.rounds):
        timed(run_jax, args.iters, tj, cj)
        timed(run_torch, args.iters, tt, ct)
        mm.time_round(args.iters)
    mj, mt = statistics.median(tj), statistics.median(tt)
    return {
        "batch": B, "seq": T, "tokens": B * T,
        "jsoft_s": mj, "torch_s": mt,
        "jsoft_tok_s": B * T / mj, "torch_tok_s": B * T / mt, "ratio": mt / mj,
        "jsoft_min_s": min(tj), "torch_min_s": min(tt), "ratio_best": min(tt) / min(tj),
        "jsoft_cpu_s": statistics.median(cj), "torch_cpu_s": statistics.median(ct),
        "ratio_cpu": statistics.median(ct) / statistics.median(cj),
        "jsoft_wall_s_all": tj, "torch_wall_s_all": tt,
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

    load_before = os.getloadavg()
    matmul = Matmul(args.matmul_n)
    rows = [bench_shape(jfwd, jstate, tmodel, matmul, B, T, V, args) for B, T in shapes]
    mm = matmul.summary()
    for r in rows:
        f = forward_flops(L, D, V, r["batch"], r["seq"])
        r["gflop"] = f / 1e9
        r["jsoft_flops"], r["torch_flops"] = f / r["jsoft_s"], f / r["torch_s"]
        r["jsoft_best_flops"], r["torch_best_flops"] = f / r["jsoft_min_s"], f / r["torch_min_s"]
        # best against best: the fastest call of each is the one least disturbed by other load on the host
        r["jsoft_of_jax_matmul"] = r["jsoft_best_flops"] / mm["jax_flops_best"]
        r["torch_of_torch_matmul"] = r["torch_best_flops"] / mm["torch_flops_best"]
        r["jsoft_flops_per_cpu_s"], r["torch_flops_per_cpu_s"] = f / r["jsoft_cpu_s"], f / r["torch_cpu_s"]

    env = {"jax": jax.__version__, "torch": torch.__version__, "cpu": cpu_name(), "cores": cores(),
           "torch_threads": torch.get_num_threads(), "jax_devices": str(jax.devices()),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "attn_implementation": args.attn,
           "loadavg_before": load_before, "loadavg_after": os.getloadavg(),
           "model": {"n_layer": L, "n_embd": D, "n_head": cfg["n_head"], "vocab_size": V}}
    print(f"\nGPT-2 L={L} D={D} H={cfg['n_head']} V={V}, fp32, causal-LM logits | {env['cpu']}, "
          f"{env['cores']} usable cores, torch threads={env['torch_threads']}, attn={args.attn}, "
          f"XLA_FLAGS={env['xla_flags']!r}, load avg {load_before[0]:.1f} -> {env['loadavg_after'][0]:.1f}")
    g = 1e9
    print(f"matmul {mm['n']}^2 fp32 GFLOP/s (wall median / best / per CPU-second): "
          f"jnp {mm['jax_flops'] / g:.1f} / {mm['jax_flops_best'] / g:.1f} / {mm['jax_flops_per_cpu_s'] / g:.1f}, "
          f"torch {mm['torch_flops'] / g:.1f} / {mm['torch_flops_best'] / g:.1f} / "
          f"{mm['torch_flops_per_cpu_s'] / g:.1f}\n")
    head = (f"{'shape':>8} {'GFLOP':>6} | {'jsoft tok/s':>11} {'torch tok/s':>11} {'ratio':>5} {'best':>5} | "
            f"{'jsoft GF/s':>10} {'%mm':>4} {'torch GF/s':>10} {'%mm':>4} | {'jsoft cpu-s':>11} {'torch cpu-s':>11} "
            f"{'ratio':>5} | {'lower s':>7} {'compile s':>9} | {'max|dlogit|':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['batch']:>4}x{r['seq']:<3} {r['gflop']:>6.1f} | {r['jsoft_tok_s']:>11.0f} {r['torch_tok_s']:>11.0f} "
              f"{r['ratio']:>5.2f} {r['ratio_best']:>5.2f} | {r['jsoft_best_flops'] / g:>10.1f} "
              f"{100 * r['jsoft_of_jax_matmul']:>4.0f} {r['torch_best_flops'] / g:>10.1f} "
              f"{100 * r['torch_of_torch_matmul']:>4.0f} | {r['jsoft_cpu_s']:>11.2f} {r['torch_cpu_s']:>11.2f} "
              f"{r['ratio_cpu']:>5.2f} | {r['jsoft_lower_s']:>7.2f} {r['jsoft_compile_s']:>9.2f} | "
              f"{r['max_abs_logit_diff']:>11.2e}")
    print("ratio = jsoft tok/s / torch tok/s (wall medians); best = the same from the fastest forward of each; "
          "GF/s = FLOP/s of the fastest forward, %mm = that / the fastest matmul of the same framework; cpu-s = "
          "process CPU seconds per forward (median): with one core (taskset -c 0) the measure that other load "
          "on the host does not skew.")
    result = {"env": env, "matmul": mm, "rows": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
