"""Peak host memory while loading a GPT-2-small checkpoint: jsoft.from_pretrained vs transformers.

    python scripts/bench_load.py                        # random GPT-2 small (~500 MB fp32 safetensors)
    python scripts/bench_load.py --model-dir DIR --json /tmp/load.json
    python scripts/bench_load.py --param-dtype bfloat16 # jsoft stores bf16 weights (half the params)
    python scripts/bench_load.py --task seq_cls         # plus a head the checkpoint lacks (initialised)
    python scripts/bench_load.py --loaders jsoft --jsoft-src ../other-checkout --repeats 3   # A/B a loader change

Each loader runs in a fresh subprocess. After its imports (jax + jsoft with the CPU backend up, or
torch + transformers) the child records its baseline RSS and resets the kernel's peak-RSS mark
(`echo 5 > /proc/self/clear_refs`); VmHWM then gives the exact peak of the load, while a thread
samples /proc/self/status (VmRSS, RssAnon, RssFile) every millisecond for its composition. (ru_maxrss
would not do: Linux carries it over fork and exec, so a child inherits its parent's peak.) Reported:
peak RSS - baseline ("overhead"), against the checkpoint's size. RssFile is the memory-mapped
checkpoint (page cache: shared, reclaimable, but counted in RSS and in a container's memory limit);
RssAnon is private memory (the parameters and any temporary copies), so the peak of RssAnon - baseline
is the number that shows extra copies: a streaming loader that copies each tensor once ends near 1x.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
MB = 1 << 20


def reset_peak_rss() -> bool:
    """Resets VmHWM (the peak RSS) to the current RSS; Linux >= 4.0."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def status_kb() -> dict[str, int]:
    """VmRSS, RssAnon, RssFile, RssShmem of this process in KiB (Linux)."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile", "RssShmem", "VmHWM"):
                out[k] = int(v.split()[0])
    return out


class Sampler(threading.Thread):
    """Peak of each /proc/self/status field, sampled every `period` seconds."""

    def __init__(self, period: float = 0.001):
        super().__init__(daemon=True)
        self.period, self.peak, self.stop = period, status_kb(), threading.Event()

    def run(self):
        while not self.stop.is_set():
            for k, v in status_kb().items():
                self.peak[k] = max(self.peak.get(k, 0), v)
            time.sleep(self.period)

    def finish(self) -> dict[str, int]:
        self.stop.set()
        self.join()
        return self.peak


def child(loader: str, model_dir: str, param_dtype: str | None, jsoft_src: str, task: str) -> dict:
    """Runs in the fresh subprocess: import, take the baseline, load, measure, touch every weight."""
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    t0 = time.perf_counter()
    if loader == "jsoft":
        sys.path.insert(0, jsoft_src)
        import jax
        import jax.numpy as jnp
        import numpy as np
        from flax import nnx

        import jsoft

        jax.devices()  # the CPU client and its allocator belong to the baseline
        jnp.zeros(1).block_until_ready()
    else:
        import torch
        import transformers

        torch.zeros(1)
    import_s = time.perf_counter() - t0
    base = status_kb()
    hwm_reset = reset_peak_rss()
    sampler = Sampler()
    sampler.start()
    t0 = time.perf_counter()
    if loader == "jsoft":
        model = jsoft.from_pretrained(model_dir, task=task, dtype="float32", param_dtype=param_dtype)
        weights = jax.tree.leaves(nnx.state(model))
        jax.block_until_ready(weights)
    else:
        cls = {"causal_lm": transformers.GPT2LMHeadModel, "seq_cls": transformers.GPT2ForSequenceClassification}[task]
        model = cls.from_pretrained(model_dir, dtype=torch.float32)
        weights = list({p.data_ptr(): p.detach() for p in model.parameters()}.values())
    load_s = time.perf_counter() - t0
    peak = sampler.finish()
    after_load = status_kb()
    peak_load = after_load["VmHWM"] if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Read every weight once, as a forward would: a lazily memory-mapped loader pays here.
    checksum = sum(float(np.asarray(w).sum()) if loader == "jsoft" else float(w.sum()) for w in weights)
    used = status_kb()
    param_bytes = sum(w.nbytes if loader == "jsoft" else w.numel() * w.element_size() for w in weights)
    k = 1024
    return {
        "loader": loader, "jsoft_src": jsoft_src if loader == "jsoft" else None, "import_s": import_s,
        "load_s": load_s, "param_bytes": param_bytes, "checksum": checksum,
        "baseline_rss": base["VmRSS"] * k, "baseline_anon": base["RssAnon"] * k, "baseline_file": base["RssFile"] * k,
        "peak_rss_exact": hwm_reset, "peak_load": peak_load * k,
        "peak_overall": (used["VmHWM"] if hwm_reset else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * k,
        "peak_rss_sampled": peak["VmRSS"] * k, "peak_anon": peak["RssAnon"] * k, "peak_file": peak["RssFile"] * k,
        "after_load_rss": after_load["VmRSS"] * k, "after_load_anon": after_load["RssAnon"] * k,
        "after_load_file": after_load["RssFile"] * k,
        "used_rss": used["VmRSS"] * k, "used_anon": used["RssAnon"] * k, "used_file": used["RssFile"] * k,
    }


def make_checkpoint(path: str) -> None:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config()).save_pretrained(path)  # GPT-2 small: 124M params, fp32


def run_child(loader: str, model_dir: str, param_dtype: str | None, jsoft_src: str, task: str) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", loader, "--model-dir", model_dir,
           "--jsoft-src", jsoft_src, "--task", task]
    if param_dtype:
        cmd += ["--param-dtype", param_dtype]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{loader} child failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model-dir", help="a saved GPT-2 (safetensors); default: a random GPT-2 small in a temp dir")
    ap.add_argument("--loaders", default="jsoft,transformers")
    ap.add_argument("--param-dtype", help="jsoft param_dtype (default: float32, like the checkpoint)")
    ap.add_argument("--task", default="causal_lm", choices=["causal_lm", "seq_cls"],
                    help="seq_cls adds a head the checkpoint lacks (jsoft initialises it with a jit)")
    ap.add_argument("--repeats", type=int, default=1, help="fresh subprocesses per loader; the table shows the min")
    ap.add_argument("--jsoft-src", default=os.path.dirname(HERE),
                    help="import jsoft from this checkout (default: this repo); to A/B a loader change")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child == "make":
        make_checkpoint(args.model_dir)
        return None
    if args.child:
        src = os.path.abspath(args.jsoft_src)
        print(json.dumps(child(args.child, args.model_dir, args.param_dtype, src, args.task)))
        return None

    with tempfile.TemporaryDirectory(prefix="jsoft-load-") as tmp:
        model_dir = args.model_dir or tmp
        if not args.model_dir:  # in a subprocess, so that this one stays small (children inherit ru_maxrss)
            subprocess.run([sys.executable, os.path.abspath(__file__), "--child", "make", "--model-dir", tmp],
                           check=True, stdout=subprocess.DEVNULL)
        ckpt = sum(os.path.getsize(os.path.join(model_dir, f)) for f in os.listdir(model_dir)
                   if f.endswith(".safetensors"))
        runs = {}
        for loader in args.loaders.split(","):
            reps = [run_child(loader, model_dir, args.param_dtype if loader == "jsoft" else None,
                              os.path.abspath(args.jsoft_src), args.task) for _ in range(args.repeats)]
            for r in reps:
                r["overhead"] = r["peak_load"] - r["baseline_rss"]
                r["anon_overhead"] = r["peak_anon"] - r["baseline_anon"]
                r["file_overhead"] = r["peak_file"] - r["baseline_file"]
                r["retained"] = r["after_load_anon"] - r["baseline_anon"]
                r["used_overhead"] = r["used_rss"] - r["baseline_rss"]
                r["overall_overhead"] = r["peak_overall"] - r["baseline_rss"]
            runs[loader] = {"best": min(reps, key=lambda r: r["overall_overhead"]), "all": reps}

    print(f"\ncheckpoint: {ckpt / MB:.0f} MiB safetensors ({model_dir if args.model_dir else 'random GPT-2 small'})"
          f", task={args.task}, jsoft param_dtype={args.param_dtype or 'float32'}")
    head = (f"{'loader':>12} | {'baseline':>8} | {'load peak':>9} {'x ckpt':>6} {'anon':>6} {'x ckpt':>6} "
            f"{'file':>6} {'retained':>8} | {'in use':>6} {'x ckpt':>6} {'overall':>7} {'x ckpt':>6} | "
            f"{'params':>6} {'load s':>6}")
    print(head)
    print("-" * len(head))
    for loader, v in runs.items():
        r = v["best"]
        c = ckpt
        print(f"{loader:>12} | {r['baseline_rss'] / MB:>8.0f} | {r['overhead'] / MB:>9.0f} {r['overhead'] / c:>6.2f} "
              f"{r['anon_overhead'] / MB:>6.0f} {r['anon_overhead'] / c:>6.2f} {r['file_overhead'] / MB:>6.0f} "
              f"{r['retained'] / MB:>8.0f} | {r['used_overhead'] / MB:>6.0f} {r['used_overhead'] / c:>6.2f} "
              f"{r['overall_overhead'] / MB:>7.0f} {r['overall_overhead'] / c:>6.2f} | {r['param_bytes'] / MB:>6.0f} "
              f"{r['load_s']:>6.2f}")
    print("MiB above the RSS after imports (baseline). load peak: peak RSS during from_pretrained; anon / file: "
          "peaks of private memory and of file-backed pages (the mmapped checkpoint); retained: private memory "
          "held after loading; in use: RSS after reading every weight once; overall: peak RSS over load and "
          "use; params: bytes of the loaded weights.")
    result = {"checkpoint_bytes": ckpt, "task": args.task, "param_dtype": args.param_dtype or "float32", "runs": runs}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
        print(f"\nwrote {args.json}")
    return result


if __name__ == "__main__":
    main()
