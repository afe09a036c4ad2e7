"""Plan per-device memory of a jsoft train step on a simulated mesh, ahead of time, from shapes only.

    python scripts/plan_memory.py          # 8B Llama + T5-XXL, prompt + prefix, 8 and 32 devices
    python scripts/plan_memory.py --model llama3-8b --method prompt --mesh fsdp=8 --mesh data=2,fsdp=4
    python scripts/plan_memory.py --layers 2 --json plan.json      # compile 2 and 4 layers, extrapolate per layer

Nothing is allocated: the model is built with `nnx.eval_shape`, frozen weights are `ShapeDtypeStruct`s carrying
the `NamedSharding`s of `jsoft.sharding.state_shardings`, the train state is `jax.eval_shape(initial_state)`.
The step is `jsoft.train.make_train_step`, jitted with the shardings `jsoft.train` uses (trainable state
replicated and donated, frozen weights by logical axes, batch over data x fsdp), lowered, compiled for a
simulated CPU mesh (JAX_NUM_CPU_DEVICES, set here before jax is imported, with XLA:CPU's memory-minimising
scheduler rather than its concurrency-optimised default) and asked `memory_analysis()`.

Caveats: the numbers are XLA:CPU's buffer assignment of the SPMD-partitioned per-device program. A TPU
compile fuses differently (usually less temp), and XLA:CPU may upcast bf16 matmuls to fp32 (extra temp
copies), so treat "fits" as an estimate with a margin, not a guarantee.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time


def _devices_needed(argv) -> int:
    """Largest mesh in the command line (before jax is imported)."""
    meshes = [argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--mesh"]
    meshes += [a.split("=", 1)[1] for a in argv if a.startswith("--mesh=")]
    if not meshes:
        return 32
    return max(math.prod(int(kv.split("=")[1]) for kv in m.split(",")) for m in meshes)


if "jax" not in sys.modules:
    _n = max(_devices_needed(sys.argv[1:]), int(os.environ.get("JAX_NUM_CPU_DEVICES", "0") or 0))
    os.environ["JAX_NUM_CPU_DEVICES"] = str(_n)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    # XLA:CPU's default scheduler orders for concurrency and starts fsdp's weight gathers early, holding
    # them all (Llama-3-8B fsdp=8: 31.3 GiB/device); TPUs schedule against their memory, which the
    # memory-minimising scheduler comes closer to (15.0 GiB)
    if "concurrency_optimized_scheduler" not in os.environ.get("XLA_FLAGS", ""):
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_cpu_enable_concurrency_optimized_scheduler=false").strip()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jsoft  # noqa: E402
from jsoft import build, optim, sharding  # noqa: E402
from jsoft import train as jtrain  # noqa: E402
from jsoft.models import llama, t5  # noqa: E402
from jsoft.models.layers import Precision, param_rngs  # noqa: E402

GiB = 1024 ** 3

# Hugging Face config.json fields of the shapes planned for
MODELS = {
    "llama3-8b": dict(arch=llama, task="causal_lm", hf=dict(
        model_type="llama", vocab_size=128256, hidden_size=4096, num_hidden_layers=32, num_attention_heads=32,
        num_key_value_heads=8, intermediate_size=14336, max_position_embeddings=8192, rms_norm_eps=1e-5,
        rope_theta=500000.0, rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                                               high_freq_factor=4.0, original_max_position_embeddings=8192),
        tie_word_embeddings=False)),
    "t5-xxl": dict(arch=t5, task="seq2seq_lm", hf=dict(
        model_type="t5", vocab_size=32128, d_model=4096, d_ff=10240, num_heads=64, d_kv=64, num_layers=24,
        num_decoder_layers=24, feed_forward_proj="gated-gelu", tie_word_embeddings=False)),
    # tiny shapes for tests
    "llama-tiny": dict(arch=llama, task="causal_lm", hf=dict(
        model_type="llama", vocab_size=4096, hidden_size=256, num_hidden_layers=2, num_attention_heads=8,
        num_key_value_heads=4, intermediate_size=1024, max_position_embeddings=1024,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                          original_max_position_embeddings=1024))),
}
METHODS = {
    "prompt": lambda task: jsoft.PromptTuningConfig(task_type=build.PEFT_TASK_TYPES[task], num_virtual_tokens=20),
    "prefix": lambda task: jsoft.PrefixTuningConfig(task_type=build.PEFT_TASK_TYPES[task], num_virtual_tokens=20),
}
DEFAULT_MESHES = ["fsdp=8", "tensor=8", "fsdp=2,tensor=4", "data=2,fsdp=4", "fsdp=32", "data=4,tensor=8"]


def parse_mesh(spec: str) -> dict[str, int]:
    return {k: int(v) for k, v in (kv.split("=") for kv in spec.split(","))}


def layer_fields(hf: dict, n: int) -> dict:
    if hf["model_type"] == "t5":
        return dict(hf, num_layers=n, num_decoder_layers=n)
    return dict(hf, num_hidden_layers=n)


def full_layers(hf: dict) -> int:
    return hf["num_layers"] if hf["model_type"] == "t5" else hf["num_hidden_layers"]


def abstract_peft_model(model: str, method: str, n_layers: int | None, dtype, param_dtype, remat: bool):
    spec = MODELS[model]
    hf = spec["hf"] if n_layers is None else layer_fields(spec["hf"], n_layers)
    arch, task = spec["arch"], spec["task"]
    cfg = arch.Config.from_hf(hf)
    p = Precision(dtype=dtype, param_dtype=param_dtype)

    def make():
        return jsoft.get_peft_model(arch.build(cfg, task, None, p, param_rngs(0)), METHODS[method](task))

    pm = nnx.eval_shape(make)
    if remat:
        jtrain.remat_layers(pm.base_model)
    return pm, task


def plan_one(model, method, mesh_spec, *, n_layers=None, batch_per_device=1, seq_len=512, target_len=128,
             dtype=jnp.bfloat16, param_dtype=jnp.bfloat16, remat=False, grad_accum=1) -> dict:
    t0 = time.perf_counter()
    mesh = sharding.make_mesh(parse_mesh(mesh_spec))
    pm, task = abstract_peft_model(model, method, n_layers, dtype, param_dtype, remat)
    graphdef, trainable, frozen = nnx.split(pm, jsoft.Trainable, ...)
    is_var = lambda x: isinstance(x, nnx.Variable)  # noqa: E731
    frozen_sh = sharding.state_shardings(frozen, mesh)
    abstract_frozen = jax.tree.map(
        lambda v, s: v.replace(jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype, sharding=s)),
        frozen, frozen_sh, is_leaf=is_var)
    rep = sharding.replicated(mesh)
    tcfg = build.default_config().train
    tcfg.optimizer = "adamw"
    tx, lr = optim.make(tcfg, 1000)
    state = jax.eval_shape(lambda p: jtrain.initial_state(p, tx, 0), trainable)
    abstract_state = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=rep), state)
    bsh = sharding.batch_sharding(mesh)
    b = batch_per_device * sharding.batch_devices(mesh)
    i32 = lambda *s: jax.ShapeDtypeStruct(s, jnp.int32, sharding=bsh)  # noqa: E731
    batch = {"input_ids": i32(b, seq_len), "attention_mask": i32(b, seq_len),
             "labels": i32(b, target_len if task == "seq2seq_lm" else seq_len)}
    step = jtrain.make_train_step(graphdef, tx, lr, grad_accum_steps=grad_accum, dropout=False)
    jitted = jax.jit(step, in_shardings=(rep, frozen_sh, bsh), out_shardings=(rep, rep), donate_argnums=(0,))
    lowered = jitted.lower(abstract_state, abstract_frozen, batch)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    m = compiled.memory_analysis()
    nbytes = lambda tree: sum(math.prod(x.shape) * x.dtype.itemsize for x in jax.tree.leaves(tree))  # noqa: E731
    arg, out, temp, alias = (m.argument_size_in_bytes, m.output_size_in_bytes, m.temp_size_in_bytes,
                             m.alias_size_in_bytes)
    return dict(model=model, method=method, mesh=mesh_spec, devices=math.prod(mesh.shape.values()),
                layers=n_layers or full_layers(MODELS[model]["hf"]), global_batch=b, seq_len=seq_len,
                remat=remat, frozen_gib_global=nbytes(abstract_frozen) / GiB,
                trainable_params=sum(math.prod(x.shape) for x in jax.tree.leaves(trainable)),
                argument=arg, output=out, alias=alias, temp=temp, total=arg + out - alias + temp,
                lower_s=t1 - t0, compile_s=t2 - t1)


def extrapolate(a: dict, b: dict, full: int) -> dict:
    """Linear in the layer count through two measurements (a.layers < b.layers)."""
    r = dict(b, layers=full, kind="extrapolated", compile_s=None, lower_s=None)
    for k in ("argument", "output", "alias", "temp", "total", "frozen_gib_global", "trainable_params"):
        per = (b[k] - a[k]) / (b["layers"] - a["layers"])
        r[k] = b[k] + per * (full - b["layers"])
    return r


def table(rows, budget_gib):
    head = (f"{'model':10} {'method':7} {'mesh':16} {'layers':>6} {'kind':12} {'arg':>7} {'out':>6} {'temp':>7} "
            f"{'total':>7}  fits {budget_gib:g} GiB  compile_s")
    lines = [head, "-" * len(head)]
    for r in rows:
        g = lambda k, r=r: r[k] / GiB  # noqa: E731
        c = "" if r.get("compile_s") is None else f"{r['compile_s']:.1f}"
        lines.append(f"{r['model']:10} {r['method']:7} {r['mesh']:16} {r['layers']:>6} {r['kind']:12} "
                     f"{g('argument'):7.2f} {g('output'):6.3f} {g('temp'):7.2f} {g('total'):7.2f}  "
                     f"{'yes' if g('total') <= budget_gib else 'NO':>4}          {c}")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", choices=sorted(MODELS))
    ap.add_argument("--method", action="append", choices=sorted(METHODS))
    ap.add_argument("--mesh", action="append", help="e.g. fsdp=8 or data=2,fsdp=4 (repeatable)")
    ap.add_argument("--layers", type=int, default=None,
                    help="compile N and 2N layers only and extrapolate linearly to the full depth")
    ap.add_argument("--batch-per-device", type=int, default=1)
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--target-len", type=int, default=128, help="seq2seq label length")
    ap.add_argument("--dtype", default="bfloat16", help="compute dtype")
    ap.add_argument("--param-dtype", default="bfloat16", help="frozen weight storage dtype")
    ap.add_argument("--remat", action="store_true", help="rematerialise layers (jsoft.train.remat_layers)")
    ap.add_argument("--budget-gib", type=float, default=16.0, help="HBM per chip (v5e: 16)")
    ap.add_argument("--json", help="write the rows here")
    a = ap.parse_args(argv)
    models = a.model or ["llama3-8b", "t5-xxl"]
    methods = a.method or ["prompt", "prefix"]
    meshes = a.mesh or DEFAULT_MESHES
    n_dev = len(jax.devices())
    kw = dict(batch_per_device=a.batch_per_device, seq_len=a.seq_len, target_len=a.target_len,
              dtype=jnp.dtype(a.dtype), param_dtype=jnp.dtype(a.param_dtype), remat=a.remat)
    rows = []
    for model in models:
        for method in methods:
            for mesh in meshes:
                if math.prod(parse_mesh(mesh).values()) > n_dev:
                    print(f"skip {mesh}: {n_dev} devices", file=sys.stderr)
                    continue
                full = full_layers(MODELS[model]["hf"])
                if a.layers and a.layers < full:
                    n2 = min(2 * a.layers, full)
                    r1 = dict(plan_one(model, method, mesh, n_layers=a.layers, **kw), kind="measured")
                    r2 = dict(plan_one(model, method, mesh, n_layers=n2, **kw), kind="measured")
                    got = [r1, r2] + ([extrapolate(r1, r2, full)] if n2 < full else [])
                else:
                    got = [dict(plan_one(model, method, mesh, **kw), kind="measured")]
                rows += got
                for r in got:
                    print(f"# {r['model']} {r['method']} {r['mesh']} layers={r['layers']} {r['kind']}: "
                          f"total {r['total'] / GiB:.2f} GiB/device (compile {r['compile_s'] or 0:.1f}s)",
                          file=sys.stderr, flush=True)
    print(table(rows, a.budget_gib))
    print(f"\nper-device bytes from XLA:CPU memory_analysis() of the SPMD program; total = argument + output - "
          f"alias (donated) + temp; batch {a.batch_per_device}/device x {a.seq_len} tokens; frozen "
          f"{a.param_dtype}, compute {a.dtype}, trainable + AdamW state fp32{', remat' if a.remat else ''}")
    llama_prompt = [r for r in rows if r["model"] == "llama3-8b" and r["method"] == "prompt"
                    and r["devices"] == 8 and r["layers"] == 32]
    if llama_prompt:
        best = min(llama_prompt, key=lambda r: r["total"])
        ok = best["total"] / GiB <= a.budget_gib
        print(f"8B prompt tuning {'fits' if ok else 'does NOT fit'} a {a.budget_gib:g} GiB-per-chip v5e-8 with "
              f"{a.param_dtype} frozen weights (best mesh {best['mesh']}: {best['total'] / GiB:.2f} GiB/device, "
              f"{best['kind']})")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
