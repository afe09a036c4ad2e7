"""Greedy decoding throughput: jsoft `PeftModel.generate` vs PEFT's `generate` on PyTorch.

    python scripts/bench_decode.py                          # GPT-2 small shape, batch 1, 8 and 32, 64 + 64 tokens
    python scripts/bench_decode.py --layers 2 --new 8       # a quick smoke run
    python scripts/bench_decode.py --dtype bfloat16         # bf16 frozen weights in both frameworks
    python scripts/bench_decode.py --device gpu --dtype bfloat16 --batch 1,32   # on a GPU, both frameworks
    python scripts/bench_decode.py --model t5               # T5 v1.1-style 8 + 8 x 512, untied LM head, seq2seq
    python scripts/bench_decode.py --model deepseek_v3 --methods prompt   # latent attention, its compressed cache
    python scripts/bench_decode.py --model qwen3_5 --methods prompt       # Gated DeltaNet: recurrent state
    python scripts/bench_decode.py --model granite4 --methods prompt      # Mamba-2: recurrent state
    python scripts/bench_decode.py --model nemotron_h --methods prompt    # one block a layer: MLPs cache nothing

Both load the same randomly initialised GPT-2 (`GPT2Config(...)` saved with `save_pretrained`; with
`--model t5` a T5 v1.1-style `T5Config`: 8 + 8 layers, d_model 512, 8 heads, gated GELU, untied LM head; with
`--model deepseek_v3` a `DeepseekV3Config` of 8 x 1024, 16 heads, kv_lora_rank 256, q_lora_rank 384, 8 experts 2 a
token after 1 dense layer: both frameworks cache the compressed latents; prompt tuning only, as no prefix fits;
with `--model qwen3_5` a `Qwen3_5TextConfig` of 8 x 1024, three Gated DeltaNet layers (16 value heads of 64, 8
key heads) to each gated-attention one (8 heads of 128, 2 key / value heads): both keep the linear layers'
convolution inputs and memory instead of keys and values; prompt tuning only; with `--model granite4` a
`GraniteMoeHybridConfig` of 8 x 1024 in Granite 4.0-H-micro's layout, three Mamba-2 layers (32 heads of 64, state 128,
one group) to each attention one without RoPE, a 2816-wide shared MLP, no experts: both keep the Mamba-2 layers'
convolution inputs and states; PyTorch runs transformers' torch fallback of the mamba_ssm kernels, which a CPU
build has no other way to run; with `--model nemotron_h` a `NemotronHConfig` of 12 x 1024 in Nemotron-H-8B's pattern
"M-M-M-M*-M-M": Mamba-2 (32 heads of 64, state 128, 8 groups), ReLU² MLPs (2816) that cache nothing, one attention
layer without positions) and the same adapter (made in jsoft,
saved in PEFT's format, loaded by `peft.PeftModel`). Each
method is timed end to end (prompt prefill + `--new` greedy tokens, fp32, no padding); tokens/s
counts new tokens of the whole batch. jsoft's first call (trace + compile) is reported apart;
PyTorch runs under `torch.inference_mode()` with `torch.set_num_threads(<usable cores>)` (on CUDA with
`--device gpu`, the default where `nvidia-smi` exists; jsoft then runs on JAX's GPU backend). Rounds
alternate between the frameworks and the table shows medians. EOS is the config's (GPT-2 50256, T5 the
last id, which random weights rarely pick); both
outputs are checked to reach the full length and compared token for token. `--dtype bfloat16`
stores and runs the frozen backbone in bf16 in both (jsoft `from_pretrained(dtype=...)`, torch
`.to(torch.bfloat16)`): batch-8 decoding reads every weight once per token, so it is bound by
memory bandwidth, which bf16 halves (rounding then differs between the frameworks, so fewer
greedy tokens agree).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="gpt2",
                    choices=["gpt2", "t5", "deepseek_v3", "qwen3_5", "granite4", "nemotron_h"])
    ap.add_argument("--layers", type=int, default=None,
                    help="default: 12 (GPT-2), 8 + 8 (T5), 8 (DeepSeek-V3, Qwen3.5)")
    ap.add_argument("--batch", default="1,8,32", help="batch sizes, comma-separated")
    ap.add_argument("--prompt-len", type=int, default=64)
    ap.add_argument("--new", type=int, default=64)
    ap.add_argument("--virtual", type=int, default=20, help="num_virtual_tokens of each adapter")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--methods", default="prompt,prefix")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"], help="frozen weights, both")
    ap.add_argument("--device", default="gpu" if shutil.which("nvidia-smi") else "cpu", choices=["cpu", "gpu"])
    return ap.parse_args()


ARGS = parse_args() if __name__ == "__main__" else None
if ARGS is None or ARGS.device == "cpu":
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import jax  # noqa: E402
import numpy as np  # noqa: E402
import peft  # noqa: E402
import torch  # noqa: E402
import transformers as tf  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import jsoft  # noqa: E402

METHODS = {
    "prompt": lambda task_type, v: jsoft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=v),
    "prefix": lambda task_type, v: jsoft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=v),
}
# --model: (jsoft task, PEFT task type, transformers class)
MODELS = {"gpt2": ("causal_lm", "CAUSAL_LM", tf.GPT2LMHeadModel),
          "t5": ("seq2seq_lm", "SEQ_2_SEQ_LM", tf.T5ForConditionalGeneration),
          "deepseek_v3": ("causal_lm", "CAUSAL_LM", tf.DeepseekV3ForCausalLM),
          "qwen3_5": ("causal_lm", "CAUSAL_LM", tf.Qwen3_5ForCausalLM),
          "granite4": ("causal_lm", "CAUSAL_LM", tf.GraniteMoeHybridForCausalLM),
          "nemotron_h": ("causal_lm", "CAUSAL_LM", tf.NemotronHForCausalLM)}


def make_model(args, path: str) -> str:
    """Save the randomly initialised backbone to `path`; returns a one-line description."""
    if args.model == "gpt2":
        layers = args.layers or 12
        tf.GPT2LMHeadModel(tf.GPT2Config(n_layer=layers, n_embd=768, n_head=12, vocab_size=50257,
                                         n_positions=1024)).eval().save_pretrained(path)
        return f"GPT-2 {layers}x768, vocab 50257"
    if args.model == "deepseek_v3":
        layers = args.layers or 8
        config = tf.DeepseekV3Config(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                                     moe_intermediate_size=512, num_hidden_layers=layers, num_attention_heads=16,
                                     num_key_value_heads=16, n_routed_experts=8, num_experts_per_tok=2, n_group=1,
                                     topk_group=1, first_k_dense_replace=1, n_shared_experts=1, kv_lora_rank=256,
                                     q_lora_rank=384, qk_rope_head_dim=32, qk_nope_head_dim=64, v_head_dim=64,
                                     max_position_embeddings=4096, eos_token_id=31999)
        tf.DeepseekV3ForCausalLM(config).eval().save_pretrained(path)
        return (f"DeepSeek-V3-shaped {layers}x1024 (16 heads, kv_lora_rank 256, 8 experts 2 a token), vocab 32000; "
                f"cache a token and layer: jsoft {2 * (256 + 32)} values, expanded {2 * 16 * (96 + 64)}")
    if args.model == "qwen3_5":
        layers = args.layers or 8
        config = tf.Qwen3_5TextConfig(vocab_size=32000, hidden_size=1024, intermediate_size=2816,
                                      num_hidden_layers=layers, num_attention_heads=8, num_key_value_heads=2,
                                      head_dim=128, linear_num_key_heads=8, linear_num_value_heads=16,
                                      linear_key_head_dim=64, linear_value_head_dim=64, max_position_embeddings=4096,
                                      eos_token_id=31999)
        tf.Qwen3_5ForCausalLM(config).eval().save_pretrained(path)
        return (f"Qwen3.5-shaped {layers}x1024 ({layers - layers // 4} Gated DeltaNet layers, {layers // 4} gated "
                "attention), vocab 32000")
    if args.model == "granite4":
        layers = args.layers or 8
        kinds = ["attention" if (i + 1) % 4 == 0 else "mamba" for i in range(layers)]
        config = tf.GraniteMoeHybridConfig(vocab_size=32000, hidden_size=1024, num_hidden_layers=layers,
                                           num_attention_heads=8, num_key_value_heads=2, num_local_experts=0,
                                           shared_intermediate_size=2816, layer_types=kinds,
                                           position_embedding_type="nope", mamba_n_heads=32, mamba_n_groups=1,
                                           mamba_d_state=128, mamba_d_conv=4, max_position_embeddings=4096,
                                           eos_token_id=31999)
        tf.GraniteMoeHybridForCausalLM(config).eval().save_pretrained(path)
        return (f"Granite-4.0-H-shaped {layers}x1024 ({kinds.count('mamba')} Mamba-2 layers, "
                f"{kinds.count('attention')} attention), vocab 32000")
    if args.model == "nemotron_h":
        pattern = ("M-M-M-M*-" * 8)[:args.layers or 12]  # Nemotron-H-8B's, its first 12 layers by default
        config = tf.NemotronHConfig(vocab_size=32000, hidden_size=1024, hybrid_override_pattern=pattern,
                                    intermediate_size=2816, num_attention_heads=8, num_key_value_heads=2, head_dim=128,
                                    mamba_num_heads=32, mamba_head_dim=64, n_groups=8, ssm_state_size=128,
                                    conv_kernel=4, max_position_embeddings=4096, eos_token_id=31999)
        tf.NemotronHForCausalLM(config).eval().save_pretrained(path)
        return (f"Nemotron-H-shaped {len(pattern)}x1024 ({pattern}: {pattern.count('M')} Mamba-2, "
                f"{pattern.count('-')} MLP, {pattern.count('*')} attention), vocab 32000")
    layers = args.layers or 8
    config = tf.T5Config(vocab_size=32128, d_model=512, d_kv=64, d_ff=1024, num_layers=layers,
                         num_decoder_layers=layers, num_heads=8, feed_forward_proj="gated-gelu",
                         tie_word_embeddings=False, decoder_start_token_id=0, pad_token_id=0, eos_token_id=32127)
    tf.T5ForConditionalGeneration(config).eval().save_pretrained(path)
    return f"T5 v1.1-style {layers}+{layers}x512 (8 heads, gated GELU), vocab 32128, untied head"


def cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def bench(method: str, batch: int, args, tmp: str, ids: np.ndarray, mask: np.ndarray) -> tuple:
    task, task_type, hf_class = MODELS[args.model]
    base = jsoft.from_pretrained(f"{tmp}/model", task=task, dtype=args.dtype)
    pm = jsoft.get_peft_model(base, METHODS[method](task_type, args.virtual), seed=0)
    pm.save_pretrained(f"{tmp}/{method}")
    ref = peft.PeftModel.from_pretrained(hf_class.from_pretrained(f"{tmp}/model"), f"{tmp}/{method}").eval()
    dev = torch.device("cuda" if args.device == "gpu" else "cpu")
    ref = ref.to(dev, getattr(torch, args.dtype))

    def run_jsoft():
        return np.asarray(jax.block_until_ready(pm.generate(ids, mask, max_new_tokens=args.new)))

    def run_peft():
        with torch.inference_mode():
            return ref.generate(input_ids=torch.tensor(ids, device=dev), attention_mask=torch.tensor(mask, device=dev),
                                max_new_tokens=args.new, do_sample=False).cpu().numpy()

    t = time.perf_counter()
    got = run_jsoft()
    first = time.perf_counter() - t
    want = run_peft()
    times = {"jsoft": [], "peft": []}
    for _ in range(args.rounds):
        for name, fn in (("jsoft", run_jsoft), ("peft", run_peft)):
            t = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t)
    js, pt = statistics.median(times["jsoft"]), statistics.median(times["peft"])
    same = want.shape == got.shape and float((want[:, -args.new:] == got[:, -args.new:]).mean())
    return method, batch, batch * args.new / js, batch * args.new / pt, pt / js, first - js, same


def main(args: argparse.Namespace) -> None:
    torch.set_num_threads(cores())
    tmp = tempfile.mkdtemp()
    torch.manual_seed(0)
    described = make_model(args, f"{tmp}/model")
    batches = [int(b) for b in args.batch.split(",")]
    ids = np.random.default_rng(0).integers(2, 32000, size=(max(batches), args.prompt_len))
    print(f"{described}; batch {args.batch}, prompt {args.prompt_len}, "
          f"{args.new} new tokens, {args.virtual} virtual tokens, {args.dtype}; {cores()} cores, jax {jax.__version__} "
          f"({jax.devices()[0].device_kind}), torch {torch.__version__} ({args.device}), peft {peft.__version__}")
    rows = [bench(method, b, args, tmp, ids[:b], np.ones_like(ids[:b])) for b in batches
            for method in args.methods.split(",")]
    print(f"\n{'method':8} {'batch':>5} {'jsoft tok/s':>12} {'PEFT tok/s':>11} {'ratio':>6} {'jsoft compile s':>16} "
          f"{'same tokens':>12}")
    for method, b, j, p, ratio, compile_s, same in rows:
        same_s = "length differs" if same is False else f"{same:.0%}"
        print(f"{method:8} {b:5d} {j:12.1f} {p:11.1f} {ratio:6.2f} {compile_s:16.1f} {same_s:>12}")


if __name__ == "__main__":
    main(ARGS)
