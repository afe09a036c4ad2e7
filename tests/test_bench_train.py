"""scripts/bench_train.py: its model FLOPs (the MFU numerator) equal the matmul FLOPs of jsoft's forward pass,
and its MFU denominator is the GPU's dense bf16 peak.

The forward is traced to a jaxpr, dead code removed as jit removes it (the model's full `logits`, unused
when the loss computes its own LM head on the label positions), and every `dot_general` counted as
2 x output size x contracted size. The benchmark's count is 3 x that forward by convention."""

import math
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import transformers
from flax import nnx
from jax._src.interpreters import partial_eval as pe

import jsoft

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import bench_train  # noqa: E402


def _dot_flops(jaxpr) -> int:
    total = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contracted, _), _ = eqn.params["dimension_numbers"]
            k = math.prod(eqn.invars[0].aval.shape[i] for i in contracted)
            total += 2 * math.prod(eqn.outvars[0].aval.shape) * k
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    total += _dot_flops(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    total += _dot_flops(sub)
    return total


@pytest.mark.parametrize("case", ["gpt2-prompt", "gpt2-prefix", "bert-ptv2", "gpt2-verbalizer", "deberta-prompt"])
def test_model_flops_count_the_forward_matmuls(case, tmp_path):
    if case.startswith("gpt2"):
        cfg = transformers.GPT2Config(n_embd=64, n_layer=2, n_head=4, vocab_size=1000, n_positions=256)
        transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path)
        task, task_type = "causal_lm", "CAUSAL_LM"
    elif case.startswith("deberta"):  # 32 buckets: the 60 slots' longer distances are log-bucketed
        cfg = transformers.DebertaV2Config(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                           intermediate_size=256, vocab_size=1000, relative_attention=True,
                                           position_buckets=32, pos_att_type="p2c|c2p", share_att_key=True,
                                           norm_rel_ebd="layer_norm", position_biased_input=False)
        transformers.DebertaV2ForSequenceClassification(cfg).save_pretrained(tmp_path)
        task, task_type = "seq_cls", "SEQ_CLS"
    else:
        cfg = transformers.BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                      intermediate_size=256, vocab_size=1000)
        transformers.BertForSequenceClassification(cfg).save_pretrained(tmp_path)
        task, task_type = "seq_cls", "SEQ_CLS"
    if bench_train._config_kind(case) == "prompt":
        peft_config = jsoft.PromptTuningConfig(task_type=task_type, num_virtual_tokens=bench_train.VT)
    else:
        peft_config = jsoft.PrefixTuningConfig(task_type=task_type, num_virtual_tokens=bench_train.VT)
    model = jsoft.from_pretrained(str(tmp_path), task=task, num_labels=2 if task == "seq_cls" else None)
    graphdef, state = nnx.split(jsoft.get_peft_model(model, peft_config))
    batch, length = 3, 40
    ids = np.ones((batch, length), np.int32)
    labels, positions = bench_train.causal_labels(case, ids) if task == "causal_lm" else (np.zeros(batch, np.int32),
                                                                                           None)
    slots = {} if positions is None else {"label_positions": positions}

    def loss(state):
        model = nnx.merge(graphdef, state)
        return model(input_ids=ids, attention_mask=np.ones_like(ids), labels=labels, **slots).loss

    closed = jax.make_jaxpr(loss)(state)
    live, _ = pe.dce_jaxpr(closed.jaxpr, [True] * len(closed.jaxpr.outvars))
    assert bench_train.model_flops(case, cfg.to_dict(), batch, length) == 3 * _dot_flops(live)


@pytest.mark.parametrize("name, peak", [("NVIDIA H200", 989.0), ("NVIDIA H100 80GB HBM3", 989.0),
                                        ("NVIDIA H100 PCIe", 756.0), ("NVIDIA A100-SXM4-80GB", 312.0),
                                        ("NVIDIA L40S", 362.0), ("NVIDIA L4", 121.0), ("Tesla T4", None)])
def test_bf16_peak_by_gpu_name(name, peak):
    assert bench_train.bf16_peak_tflops(name) == peak
