"""Train-step throughput of jsoft (JAX) against PEFT (PyTorch) on the same shapes, in one command.

    python scripts/bench_train.py --quick --plot bench.png        # a short run (CPU or a borrowed GPU)
    python scripts/bench_train.py --steps 20 --warmup 3 --json bench.json
    python scripts/bench_train.py --quick --cases gpt2m-prompt --batch 128   # on a GPU: MFU (bf16 peak by GPU name)
    python scripts/bench_train.py --dtype bfloat16                 # bf16 frozen weights, both frameworks

Cases (random weights: a GPT2Config / BertConfig / DebertaV2Config saved with save_pretrained to a temp dir, loaded
by both):
  gpt2-prompt    GPT-2 small causal LM, prompt tuning
  gpt2-prefix    GPT-2 small causal LM, prefix tuning with projection (encoder_hidden_size 768)
  gpt2-ptuning   GPT-2 small causal LM, P-tuning with an LSTM encoder (encoder_hidden_size 768)
  bert-ptv2      BERT-base seq_cls (2 labels), P-Tuning v2 (prefix tuning without projection)
  gpt2-verbalizer GPT-2 small causal LM, prompt tuning, a label on each row's last token only (classifying
                 by a verbalizer word, as jsoft.train's batches do it: the LM head on `label_positions`)
  gpt2m-prompt   GPT-2 medium causal LM, prompt tuning (the GPU MFU case; in the default cases on a GPU)
  deberta-prompt DeBERTa-v3-base seq_cls (2 labels), prompt tuning (PEFT cannot run prefixes on DeBERTa)
  qwen35-prompt  Qwen3.5-shaped causal LM (12 x 1024: 9 Gated DeltaNet layers, 3 gated attention; vocab 32000),
                 prompt tuning (no prefix fits its linear layers; PEFT runs transformers' torch delta rule)
  granite4-prompt Granite-4.0-H-shaped causal LM (12 x 1024: 9 Mamba-2 layers of 32 heads x 64, state 128, and 3
                 attention without RoPE; a 2816-wide shared MLP; vocab 32000), prompt tuning (PEFT runs
                 transformers' torch fallback of the mamba_ssm kernels)
  mamba-prompt   Mamba-130m-shaped causal LM (24 Mamba layers of 1536 channels, state 16, step rank 48; vocab
                 50280), prompt tuning (PEFT runs transformers' torch fallback, token by token)
batch 8 x 128 tokens, 20 virtual tokens, AdamW (lr 1e-3). Each (case, framework) runs in its own subprocess,
which reports its peak memory: RSS (VmHWM) on CPU, the device allocator's peak on a GPU. jsoft's compile
time is measured separately (AOT lower + compile); the timed steps start after `--warmup` steps in both.

--dtype (default: float32 on CPU, bfloat16 on a GPU) is the frozen backbone's storage and compute dtype in
both frameworks: jsoft `from_pretrained(dtype=...)` (prompts and optimizer state stay fp32), PyTorch
`from_pretrained(dtype=...)` with PEFT's adapter as PEFT makes it.

FLOPs ("model FLOPs", the standard estimate): train = 3 x forward, forward = 2 * N * T + 4 * n_layer * d_model
* S_q * S_k * B, with N the matmul parameters of the frozen backbone (per layer 4 d^2 + 2 d d_ff, plus the LM
head vocab x d for causal LM; embeddings excluded), T the tokens through the layers (B * (L + 20) for
prompt / P-tuning, B * L for prefix methods; the LM head only on the B * L (prefix: B * (L - 1); verbalizer: B)
positions that predict a label; BERT's last layer: keys and values for every token, the rest for the pooled
one, which is all its classifier reads), S_q, S_k the query and key lengths (keys include the prefix).
Soft-prompt training computes no weight gradients for the frozen backbone, so the work actually done is
nearer 2 x forward; the 3x figure is the usual convention (compare with other reports), not a count.
Achieved FLOP/s is set against this machine's measured 2048 x 2048 matmul rate (in --dtype) in each framework (and
against --peak-tflops when given).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CASES = ("gpt2-prompt", "gpt2-prefix", "gpt2-ptuning", "bert-ptv2", "gpt2-verbalizer", "gpt2m-prompt",
         "deberta-prompt", "qwen35-prompt", "granite4-prompt", "mamba-prompt")
CAUSAL = ("gpt2", "gpt2m", "qwen35", "granite4", "mamba")  # the causal LM families
CPU_CASES = CASES[:5]
VT = 20
LR = 1e-3


# ============================================================================ shapes and FLOPs


def model_flops(case: str, cfg: dict, batch: int, length: int) -> float:
    import numpy as np

    if case.startswith("qwen35"):
        return _hybrid_flops(cfg, batch, length)
    if case.startswith("granite4"):
        return _mamba_hybrid_flops(cfg, batch, length)
    if case.startswith("mamba"):
        return _mamba_flops(cfg, batch, length)
    if case.startswith("gpt2"):  # gpt2 or gpt2m
        d, n_layer, ff, vocab = cfg["n_embd"], cfg["n_layer"], cfg.get("n_inner") or 4 * cfg["n_embd"], cfg[
            "vocab_size"]
        head = vocab * d
    else:
        d, n_layer, ff = cfg["hidden_size"], cfg["num_hidden_layers"], cfg["intermediate_size"]
        head = d * d + 2 * d  # pooler + classifier
    per_token = 4 * d * d + 2 * d * ff  # a layer's matmul weights, each used once per token
    prefix = _method(case) in ("prefix", "ptv2")
    s_q = length if prefix else length + VT
    s_k = length + VT
    layer = 2 * per_token * batch * s_q + 4 * d * s_q * s_k * batch
    fwd = n_layer * layer
    if not case.startswith("gpt2"):  # a classifier reads one token: the last layer computes keys and values for
        # every token, queries, attention output and MLP for that one
        fwd += 2 * (2 * d * d) * batch * s_q + 2 * (per_token - 2 * d * d) * batch + 4 * d * s_k * batch - layer
    # the LM head counts on the positions that predict a label (the loss needs no other logits): the input's
    # tokens, predicted from the last virtual token on with a prompt in front, else from the second token
    labelled = (length if s_q > length else length - 1) if case.startswith("gpt2") else 1
    fwd += 2 * head * batch * (1 if _method(case) == "verbalizer" else labelled)
    if case.startswith("deberta"):  # c2p (the last layer: the pooled query) and p2c against the relative table
        # rows the length reaches, and those rows through query_proj and key_proj in each layer
        from jsoft.models.deberta import log_bucket

        buckets, far = cfg.get("position_buckets", -1), cfg.get("max_relative_positions", -1)
        far = far if far >= 1 else cfg.get("max_position_embeddings", 512)
        reach = int(log_bucket(np.asarray([s_q - 1]), buckets, far)[0]) if buckets > 0 else min(s_q - 1, far)
        rows = 2 * reach + 1
        fwd += n_layer * (2 * batch * s_q * rows * d + 2 * 2 * rows * d * d)  # p2c, table projections
        fwd += ((n_layer - 1) * s_q + 1) * 2 * batch * rows * d  # c2p
    return 3.0 * fwd


def _hybrid_flops(cfg: dict, batch: int, length: int) -> float:
    """Qwen3.5 with a prompt in front: every layer's matmuls (Gated DeltaNet's projections, gated attention's, the
    gated MLP), attention scores on its full layers, and an estimate of the chunked delta rule's (per token and value
    head, transformers' 64-token chunks: the chunk's key and query products, its triangular system, the memory's
    read and write; jsoft's own chunking does other work for the same result), all 3 x forward."""
    d, ff, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kinds = cfg["layer_types"]
    n_lin, n_att = kinds.count("linear_attention"), kinds.count("full_attention")
    kd, vd = cfg["linear_num_key_heads"] * cfg["linear_key_head_dim"], cfg["linear_num_value_heads"] * cfg[
        "linear_value_head_dim"]
    hv, dk, dv = cfg["linear_num_value_heads"], cfg["linear_key_head_dim"], cfg["linear_value_head_dim"]
    qd, kvd = cfg["num_attention_heads"] * cfg["head_dim"], cfg["num_key_value_heads"] * cfg["head_dim"]
    linear = d * (2 * kd + vd) + d * vd + 2 * d * hv + vd * d
    attention = d * 2 * qd + 2 * d * kvd + qd * d
    s = length + VT
    tokens = batch * s
    fwd = 2 * tokens * (n_lin * linear + n_att * attention + len(kinds) * 3 * d * ff)
    fwd += n_att * 4 * qd * s * s * batch
    fwd += n_lin * 2 * tokens * hv * (2 * 64 * dk + 2 * 64 * dv + 3 * dk * dv)
    return 3.0 * (fwd + 2 * vocab * d * batch * length)


def _mamba_hybrid_flops(cfg: dict, batch: int, length: int) -> float:
    """Granite 4.0-H with a prompt in front: every layer's matmuls (Mamba-2's in_proj and out_proj, attention's, the
    shared gated MLP), attention scores on its attention layers, and the chunked scan's (per token and head, with
    transformers' `mamba_chunk_size`-token chunks: C B^T and its product with x in the chunk, the state's write and
    read), all 3 x forward."""
    d, ff, vocab = cfg["hidden_size"], cfg["shared_intermediate_size"], cfg["vocab_size"]
    kinds = cfg["layer_types"]
    n_mamba = sum(k in ("mamba", "linear_attention") for k in kinds)
    n_att = len(kinds) - n_mamba
    heads, head_dim, state = cfg["mamba_n_heads"], cfg["mamba_d_head"], cfg["mamba_d_state"]
    width, bc = heads * head_dim, 2 * cfg["mamba_n_groups"] * state
    mamba = d * (2 * width + bc + heads) + width * d
    hd = d // cfg["num_attention_heads"]
    kvd = cfg["num_key_value_heads"] * hd
    attention = 2 * d * d + 2 * d * kvd
    s = length + VT
    tokens = batch * s
    chunk = min(cfg["mamba_chunk_size"], s)
    fwd = 2 * tokens * (n_mamba * mamba + n_att * attention + len(kinds) * 3 * d * ff)
    fwd += n_att * 4 * d * s * s * batch
    fwd += n_mamba * 2 * tokens * heads * (chunk * state + chunk * head_dim + 2 * state * head_dim)
    return 3.0 * (fwd + 2 * vocab * d * batch * length)


def _mamba_flops(cfg: dict, batch: int, length: int) -> float:
    """Mamba with a prompt in front: every layer's matmuls (in_proj, x_proj, dt_proj, out_proj) and the selective
    scan's read of its state (C.h: 2 D N per token; the decay and the input are elementwise), all 3 x forward."""
    d, vocab, layers = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    D, N, R = cfg["intermediate_size"], cfg["state_size"], cfg["time_step_rank"]
    tokens = batch * (length + VT)
    fwd = 2 * tokens * layers * (d * 2 * D + D * (R + 2 * N) + R * D + D * d + D * N)
    return 3.0 * (fwd + 2 * vocab * d * batch * length)


def causal_labels(case: str, ids):
    """`(labels, label_positions or None)` for a causal case's token ids `[B, L]` (numpy): every token, or
    for gpt2-verbalizer the last one only (and its position, which jsoft's loss reads)."""
    import numpy as np

    if _method(case) != "verbalizer":
        return ids, None
    labels = np.full_like(ids, -100)
    labels[:, -1] = ids[:, -1]
    return labels, np.full((ids.shape[0], 1), ids.shape[1] - 1, np.int32)


# dense bf16 datasheet peaks (TFLOP/s), matched in order against the GPU's name
BF16_PEAK_TFLOPS = (("H100 PCIe", 756.0), ("H100 NVL", 835.0), ("H100", 989.0), ("H200", 989.0),
                    ("A100", 312.0), ("L40S", 362.0), ("L4", 121.0))


def bf16_peak_tflops(gpu_name: str) -> float | None:
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in gpu_name), None)


def _gpu_name() -> str:
    r = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True, text=True)
    return r.stdout.splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else ""


# ============================================================================ workers (one per subprocess)


def _peak_rss_mib() -> float:
    """This process's peak RSS: VmHWM, not ru_maxrss, which a child inherits from its parent across fork +
    exec (so every worker would report at least the driver's size, models built in it included)."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024  # KiB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; macOS: bytes


def _family(case: str) -> str:
    return case.split("-")[0]


def _method(case: str) -> str:
    return case.split("-")[1]


def _config_kind(case: str) -> str:
    """The PEFT config a case trains: the verbalizer case is prompt tuning."""
    return "prompt" if _method(case) == "verbalizer" else _method(case)


def worker_jax(case, model_dir, batch, length, steps, warmup, device, dtype):
    import jax
    import jax.numpy as jnp
    import numpy as np
    from flax import nnx

    import jsoft
    from jsoft import build, optim
    from jsoft import train as jtrain

    # matmul rate, in the form jsoft's matmuls take (half operands accumulate in fp32: ops.einsum)
    from jsoft.models import ops

    a = jnp.ones((2048, 2048), dtype)
    mm = jax.jit(lambda x: ops.einsum("mk,kn->mn", x, x))
    mm(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(10):
        r = mm(a)
    r.block_until_ready()
    mm_flops = 10 * 2 * 2048 ** 3 / (time.perf_counter() - t)

    task = "causal_lm" if _family(case) in CAUSAL else "seq_cls"
    tt = "CAUSAL_LM" if task == "causal_lm" else "SEQ_CLS"
    pcfg = {"prompt": lambda: jsoft.PromptTuningConfig(task_type=tt, num_virtual_tokens=VT),
            "prefix": lambda: jsoft.PrefixTuningConfig(task_type=tt, num_virtual_tokens=VT,
                                                            prefix_projection=True, encoder_hidden_size=768),
            "ptuning": lambda: jsoft.PromptEncoderConfig(task_type=tt, num_virtual_tokens=VT,
                                                              encoder_reparameterization_type="LSTM",
                                                              encoder_hidden_size=768),
            "ptv2": lambda: jsoft.PrefixTuningConfig(task_type=tt, num_virtual_tokens=VT,
                                                          prefix_projection=False)}[_config_kind(case)]()
    model = jsoft.from_pretrained(model_dir, task=task, num_labels=2 if task == "seq_cls" else None, dtype=dtype)
    pm = jsoft.get_peft_model(model, pcfg)
    graphdef, trainable, frozen = nnx.split(pm, jsoft.Trainable, ...)
    tcfg = build.default_config().train
    tcfg.optimizer, tcfg.learning_rate = "adamw", LR
    tx, lr = optim.make(tcfg, steps + warmup)
    state = jtrain.initial_state(trainable, tx, 0)
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 1000, (batch, length), dtype=np.int32)
    b = {"input_ids": ids, "attention_mask": np.ones_like(ids),
         "labels": rng.integers(0, 2, (batch,), dtype=np.int32)}
    if task == "causal_lm":
        b["labels"], positions = causal_labels(case, ids)
        if positions is not None:
            b["label_positions"] = positions
    b = jax.tree.map(jnp.asarray, b)
    step = jax.jit(jtrain.make_train_step(graphdef, tx, lr, dropout=True), donate_argnums=(0,))  # torch: train() mode
    t = time.perf_counter()
    compiled = step.lower(state, frozen, b).compile()
    compile_s = time.perf_counter() - t
    for _ in range(warmup):
        state, m = compiled(state, frozen, b)
    jax.block_until_ready(state)
    t = time.perf_counter()
    for _ in range(steps):
        state, m = compiled(state, frozen, b)
    jax.block_until_ready((state, m))
    dt = time.perf_counter() - t
    stats = jax.devices()[0].memory_stats() if device == "gpu" else None
    return dict(step_s=dt / steps, compile_s=compile_s, loss=float(m["loss"]), matmul_flops=mm_flops,
                n_trainable=sum(x.size for x in jax.tree.leaves(trainable)), device=str(jax.devices()[0]),
                peak_device_mib=stats["peak_bytes_in_use"] / 2 ** 20 if stats else None)


def worker_torch(case, model_dir, batch, length, steps, warmup, device, dtype):
    import peft
    import torch
    import transformers

    dev = torch.device("cuda" if device == "gpu" and torch.cuda.is_available() else "cpu")
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    a = torch.ones(2048, 2048, device=dev, dtype=getattr(torch, dtype))
    (a @ a).sum().item()
    sync()
    t = time.perf_counter()
    for _ in range(10):
        a @ a  # noqa: B018
    sync()
    mm_flops = 10 * 2 * 2048 ** 3 / (time.perf_counter() - t)

    task = "causal_lm" if _family(case) in CAUSAL else "seq_cls"
    tt = peft.TaskType.CAUSAL_LM if task == "causal_lm" else peft.TaskType.SEQ_CLS
    pcfg = {"prompt": lambda: peft.PromptTuningConfig(task_type=tt, num_virtual_tokens=VT),
            "prefix": lambda: peft.PrefixTuningConfig(task_type=tt, num_virtual_tokens=VT,
                                                           prefix_projection=True, encoder_hidden_size=768),
            "ptuning": lambda: peft.PromptEncoderConfig(task_type=tt, num_virtual_tokens=VT,
                                                             encoder_reparameterization_type="LSTM",
                                                             encoder_hidden_size=768),
            "ptv2": lambda: peft.PrefixTuningConfig(task_type=tt, num_virtual_tokens=VT,
                                                         prefix_projection=False)}[_config_kind(case)]()
    if _family(case) == "mamba":  # MambaConfig names no attention heads, which PEFT asks for (a prompt needs none)
        pcfg.num_attention_heads = 1
    kw = {"dtype": getattr(torch, dtype)}
    if task == "causal_lm":
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, **kw)
    else:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2, **kw)
    pm = peft.get_peft_model(model, pcfg).to(dev)
    pm.train()
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.0)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 1000, (batch, length), generator=g).to(dev)
    labels = torch.tensor(causal_labels(case, ids.cpu().numpy())[0]).to(dev) if task == "causal_lm" \
        else torch.randint(0, 2, (batch,), generator=g).to(dev)
    mask = torch.ones_like(ids)

    def one():
        opt.zero_grad(set_to_none=True)
        loss = pm(input_ids=ids, attention_mask=mask, labels=labels).loss
        loss.backward()
        opt.step()
        return loss

    for _ in range(warmup):
        one()
    sync()
    t = time.perf_counter()
    for _ in range(steps):
        loss = one()
    loss = float(loss)
    sync()
    dt = time.perf_counter() - t
    return dict(step_s=dt / steps, compile_s=None, loss=loss, matmul_flops=mm_flops,
                n_trainable=sum(p.numel() for p in params), device=str(dev), threads=torch.get_num_threads(),
                peak_device_mib=torch.cuda.max_memory_allocated() / 2 ** 20 if dev.type == "cuda" else None)


# ============================================================================ driver


def make_models(d: str, families: set) -> dict:
    import transformers

    configs = {"gpt2": transformers.GPT2Config(),  # GPT-2 small
               "gpt2m": transformers.GPT2Config(n_embd=1024, n_layer=24, n_head=16),  # GPT-2 medium
               "bert": transformers.BertConfig(num_labels=2),  # BERT-base
               "deberta": transformers.DebertaV2Config(  # DeBERTa-v3-base
                   vocab_size=128100, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                   intermediate_size=3072, relative_attention=True, position_buckets=256, pos_att_type="p2c|c2p",
                   share_att_key=True, norm_rel_ebd="layer_norm", position_biased_input=False, type_vocab_size=0,
                   num_labels=2),
               "qwen35": transformers.Qwen3_5TextConfig(
                   vocab_size=32000, hidden_size=1024, intermediate_size=2816, num_hidden_layers=12,
                   num_attention_heads=8, num_key_value_heads=2, head_dim=128, linear_num_key_heads=8,
                   linear_num_value_heads=16, linear_key_head_dim=64, linear_value_head_dim=64),
               "granite4": transformers.GraniteMoeHybridConfig(
                   vocab_size=32000, hidden_size=1024, num_hidden_layers=12, num_attention_heads=8,
                   num_key_value_heads=2, num_local_experts=0, shared_intermediate_size=2816,
                   layer_types=["attention" if (i + 1) % 4 == 0 else "mamba" for i in range(12)],
                   position_embedding_type="nope", mamba_n_heads=32, mamba_n_groups=1, mamba_d_state=128),
               "mamba": transformers.MambaConfig(vocab_size=50280, hidden_size=768, num_hidden_layers=24,
                                                 state_size=16, expand=2)}
    classes = {"bert": transformers.BertForSequenceClassification,
               "deberta": transformers.DebertaV2ForSequenceClassification,
               "qwen35": transformers.Qwen3_5ForCausalLM, "granite4": transformers.GraniteMoeHybridForCausalLM,
               "mamba": transformers.MambaForCausalLM}
    for fam in families:
        classes.get(fam, transformers.GPT2LMHeadModel)(configs[fam]).save_pretrained(os.path.join(d, fam))
    return {fam: configs[fam].to_dict() for fam in families}


def run_worker(fw, case, model_dir, a) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", fw, "--case", case, "--model-dir", model_dir,
           "--batch", str(a.batch), "--length", str(a.length), "--steps", str(a.steps), "--warmup",
           str(a.warmup), "--device", a.device, "--dtype", a.dtype]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    if a.device == "cpu":
        env.setdefault("JAX_PLATFORMS", "cpu")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode:
        return {"error": (r.stderr or r.stdout)[-1500:]}
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", choices=CASES, help="default: the first four on CPU, all on a GPU")
    ap.add_argument("--frameworks", nargs="+", default=["jsoft", "peft"], choices=["jsoft", "peft"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="--steps 3 --warmup 1")
    ap.add_argument("--device", default=None, choices=["cpu", "gpu"], help="default: gpu if jax sees one")
    ap.add_argument("--dtype", default=None, choices=["float32", "bfloat16"],
                    help="frozen backbone dtype in both frameworks (default: float32 on CPU, bfloat16 on a GPU)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="accelerator peak (e.g. bf16) for MFU (default on a GPU: its dense bf16 datasheet peak, "
                         "when BF16_PEAK_TFLOPS knows its name)")
    ap.add_argument("--plot", help="save a PNG bar chart here")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--worker", choices=["jsoft", "peft"], help=argparse.SUPPRESS)
    ap.add_argument("--case", help=argparse.SUPPRESS)
    ap.add_argument("--model-dir", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.quick:
        a.steps, a.warmup = 3, 1
    if a.worker:
        fn = worker_jax if a.worker == "jsoft" else worker_torch
        r = fn(a.case, a.model_dir, a.batch, a.length, a.steps, a.warmup, a.device or "cpu", a.dtype or "float32")
        r["peak_rss_mib"] = _peak_rss_mib()
        print(json.dumps(r))
        return r
    if a.device is None:
        import shutil
        a.device = "gpu" if shutil.which("nvidia-smi") else "cpu"
    a.dtype = a.dtype or ("bfloat16" if a.device == "gpu" else "float32")
    if a.device == "gpu" and a.peak_tflops is None and a.dtype == "bfloat16":
        a.peak_tflops = bf16_peak_tflops(_gpu_name())
    a.cases = a.cases or list(CASES if a.device == "gpu" else CPU_CASES)

    rows = []
    with tempfile.TemporaryDirectory() as d:
        cfgs = make_models(d, {_family(c) for c in a.cases})
        for case in a.cases:
            fam = _family(case)
            flops = model_flops(case, cfgs[fam], a.batch, a.length)
            row = dict(case=case, flops_per_step=flops)
            for fw in a.frameworks:
                t = time.perf_counter()
                r = run_worker(fw, case, os.path.join(d, fam), a)
                r["wall_s"] = time.perf_counter() - t
                if "error" not in r:
                    r["tokens_per_s"] = a.batch * a.length / r["step_s"]
                    r["flops_per_s"] = flops / r["step_s"]
                    r["frac_of_matmul"] = r["flops_per_s"] / r["matmul_flops"]
                    if a.peak_tflops:
                        r["mfu"] = r["flops_per_s"] / (a.peak_tflops * 1e12)
                else:
                    print(f"{case} {fw} FAILED:\n{r['error']}", file=sys.stderr)
                row[fw] = r
                print(f"# {case} {fw}: {json.dumps(r)[:300]}", file=sys.stderr, flush=True)
            rows.append(row)

    hdr = (f"{'case':13} {'fw':6} {'tok/s':>8} {'step ms':>8} {'compile s':>9} {'peak MiB':>12} "
           f"{'GFLOP/s':>8} {'matmul GFLOP/s':>14} {'frac':>5}" + (f" {'MFU':>6}" if a.peak_tflops else "")
           + f" {'loss':>7} {'jsoft/peft':>10}")
    print(hdr)
    print("-" * len(hdr))
    for row in rows:
        for fw in a.frameworks:
            r = row[fw]
            if "error" in r:
                print(f"{row['case']:13} {fw:6} FAILED")
                continue
            ratio = ""
            if fw == "jsoft" and "tokens_per_s" in row.get("peft", {}):
                ratio = f"{r['tokens_per_s'] / row['peft']['tokens_per_s']:.2f}x"
            c = "" if r["compile_s"] is None else f"{r['compile_s']:.1f}"
            peak = r.get("peak_device_mib") or r["peak_rss_mib"]
            print(f"{row['case']:13} {fw:6} {r['tokens_per_s']:8.0f} {1e3 * r['step_s']:8.1f} {c:>9} "
                  f"{peak:12.0f} {r['flops_per_s'] / 1e9:8.1f} {r['matmul_flops'] / 1e9:14.1f} "
                  f"{r['frac_of_matmul']:5.2f}" + (f" {r['mfu']:6.3f}" if a.peak_tflops else "")
                  + f" {r['loss']:7.3f} {ratio:>10}")
    print(f"\nbatch {a.batch} x {a.length} tokens, {VT} virtual tokens, {a.warmup} warmup + {a.steps} timed steps, "
          f"device {a.device}, {a.dtype}. Peak MiB: process RSS on CPU, allocator peak on a GPU. "
          "FLOPs = 3 x (2 N T + 4 n_layer d S_q S_k B), N = frozen matmul params, BERT's last layer on its pooled "
          "token (see --help). "
          f"frac = achieved / measured {a.dtype} 2048^2 matmul rate of the same framework."
          + (f" MFU = achieved / {a.peak_tflops:g} TFLOP/s (3x-forward FLOPs; the work done is 2x)." if a.peak_tflops
             else ""))
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    if a.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        x = np.arange(len(rows))
        w = 0.8 / len(a.frameworks)
        fig, ax = plt.subplots(figsize=(7, 3.5))
        for i, fw in enumerate(a.frameworks):
            ax.bar(x + i * w, [row[fw].get("tokens_per_s", 0) for row in rows], w, label=fw)
        ax.set_xticks(x + w * (len(a.frameworks) - 1) / 2, [row["case"] for row in rows])
        ax.set_ylabel("train tokens/s")
        ax.set_title(f"train throughput, batch {a.batch} x {a.length}, {a.device}")
        ax.legend()
        fig.tight_layout()
        fig.savefig(a.plot, dpi=120)
        print(f"plot: {a.plot}")
    return rows


if __name__ == "__main__":
    main()
