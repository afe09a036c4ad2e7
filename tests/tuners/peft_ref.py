"""Helpers that run the same adapter in jsoft and in PEFT on PyTorch."""

from __future__ import annotations

import jax
import numpy as np
import peft
import torch
from flax import nnx

import jsoft
from tests import tiny

TASK_TYPES = {"causal_lm": "CAUSAL_LM", "seq2seq_lm": "SEQ_2_SEQ_LM", "seq_cls": "SEQ_CLS", "token_cls": "TOKEN_CLS"}

METHODS = {
    "prompt": lambda tt: dict(cls="PromptTuningConfig", task_type=tt, num_virtual_tokens=4),
    "prefix": lambda tt: dict(cls="PrefixTuningConfig", task_type=tt, num_virtual_tokens=5),
    "prefix_proj": lambda tt: dict(cls="PrefixTuningConfig", task_type=tt, num_virtual_tokens=3,
                                   prefix_projection=True, encoder_hidden_size=24),
    "ptuning_mlp": lambda tt: dict(cls="PromptEncoderConfig", task_type=tt, num_virtual_tokens=4,
                                   encoder_hidden_size=20),
    "ptuning_lstm": lambda tt: dict(cls="PromptEncoderConfig", task_type=tt, num_virtual_tokens=3,
                                    encoder_reparameterization_type="LSTM", encoder_hidden_size=12),
}

# every (backbone, task) PEFT supports for prompt learning
MATRIX = [("gpt2", "causal_lm"), ("gpt2", "seq_cls"), ("gpt2", "token_cls"), ("llama", "causal_lm"),
          ("llama", "seq_cls"), ("t5", "seq2seq_lm"), ("bert", "seq_cls"), ("bert", "token_cls"),
          ("mistral", "seq_cls"), ("qwen2", "causal_lm"), ("roberta", "seq_cls"), ("roberta", "token_cls"),
          ("bloom", "causal_lm"), ("bloom", "seq_cls"), ("bloom", "token_cls"), ("gemma", "causal_lm"),
          ("gemma", "seq_cls"), ("gemma2", "causal_lm"), ("gemma2", "token_cls"), ("gpt_neox", "causal_lm"),
          ("gpt_neox", "seq_cls"), ("gpt_neox", "token_cls"), ("qwen3", "causal_lm"), ("qwen3", "seq_cls"),
          ("phi", "causal_lm"), ("phi", "seq_cls"), ("bart", "seq2seq_lm"), ("opt", "causal_lm"), ("opt", "seq_cls"),
          ("mbart", "seq2seq_lm"), ("deberta-v2", "seq_cls"), ("deberta-v2", "token_cls"), ("deberta", "seq_cls"),
          ("deberta", "token_cls"), ("distilbert", "seq_cls"), ("distilbert", "token_cls"), ("electra", "seq_cls"),
          ("electra", "token_cls"), ("gemma3_text", "causal_lm"), ("gemma3_text", "seq_cls"),
          ("phi3", "causal_lm"), ("phi3", "seq_cls"), ("phi3", "token_cls"), ("olmo2", "causal_lm"),
          ("olmo2", "seq_cls"), ("granite", "causal_lm"), ("mixtral", "causal_lm"), ("mixtral", "seq_cls"),
          ("qwen3_moe", "causal_lm"), ("olmoe", "causal_lm"), ("qwen2_moe", "seq_cls"),
          ("gemma3", "causal_lm"), ("gemma3", "seq_cls"), ("modernbert", "seq_cls"), ("modernbert", "token_cls"),
          ("gptj", "causal_lm"), ("gptj", "seq_cls"), ("gpt_neo", "causal_lm"), ("gpt_neo", "seq_cls"),
          ("gpt_neo", "token_cls"), ("stablelm", "causal_lm"), ("stablelm", "seq_cls"), ("stablelm", "token_cls"),
          ("starcoder2", "causal_lm"), ("starcoder2", "seq_cls"), ("smollm3", "causal_lm"), ("smollm3", "seq_cls"),
          ("cohere", "causal_lm"), ("cohere2", "causal_lm"), ("olmo3", "causal_lm"), ("olmo3", "seq_cls"),
          ("ministral", "seq_cls"), ("glm", "causal_lm"), ("glm", "token_cls"), ("glm4", "causal_lm"),
          ("glm4", "seq_cls"), ("exaone4", "causal_lm"), ("exaone4", "seq_cls"), ("seed_oss", "causal_lm"),
          ("seed_oss", "token_cls"), ("helium", "causal_lm"), ("helium", "seq_cls"), ("arcee", "causal_lm"),
          ("arcee", "token_cls"), ("nemotron", "causal_lm"), ("nemotron", "seq_cls"),
          ("ernie4_5", "causal_lm"), ("falcon", "causal_lm"), ("falcon", "seq_cls"), ("falcon", "token_cls"),
          ("gpt_bigcode", "causal_lm"), ("gpt_bigcode", "seq_cls"), ("gpt_bigcode", "token_cls"), ("mpnet", "seq_cls"),
          ("mpnet", "token_cls"), ("olmo", "causal_lm"), ("olmo", "seq_cls"), ("xlm-roberta-xl", "seq_cls"),
          ("xlm-roberta-xl", "token_cls"), ("ernie", "seq_cls"), ("ernie", "token_cls"),
          ("codegen", "causal_lm"), ("albert", "seq_cls"), ("albert", "token_cls"),
          ("gpt_oss", "causal_lm"), ("gpt_oss", "seq_cls"), ("m2m_100", "seq2seq_lm"), ("marian", "seq2seq_lm"),
          ("pegasus", "seq2seq_lm"), ("umt5", "seq2seq_lm"), ("xglm", "causal_lm"),
          ("biogpt", "causal_lm"), ("biogpt", "seq_cls"), ("biogpt", "token_cls"), ("granitemoe", "causal_lm"),
          ("granitemoeshared", "causal_lm"), ("granitemoehybrid", "causal_lm"), ("bamba", "causal_lm"),
          ("deepseek_v3", "causal_lm"), ("deepseek_v3", "seq_cls"), ("glm4_moe", "causal_lm"), ("dots1", "causal_lm"),
          ("glm4_moe_lite", "causal_lm"), ("deepseek_v2", "causal_lm"), ("deepseek_v2", "seq_cls"),
          ("minimax_m2", "causal_lm"), ("exaone_moe", "causal_lm"),
          ("llama4_text", "causal_lm"), ("ernie4_5_moe", "causal_lm"),
          ("hunyuan_v1_dense", "causal_lm"), ("hunyuan_v1_dense", "seq_cls"), ("hunyuan_v1_moe", "causal_lm"),
          ("mistral3", "causal_lm"), ("ministral3", "causal_lm"), ("ministral3", "seq_cls"), ("internlm3", "causal_lm"),
          ("iquestcoder", "causal_lm"), ("vaultgemma", "causal_lm"), ("cwm", "causal_lm"),
          ("apertus", "causal_lm"), ("apertus", "token_cls"), ("mistral4", "causal_lm"), ("mistral4", "seq_cls"),
          ("youtu", "causal_lm"), ("minicpm3", "causal_lm"), ("minicpm3", "seq_cls"),
          ("jais2", "causal_lm"), ("nanochat", "causal_lm"), ("qwen3_5_text", "causal_lm"),
          ("qwen3_next", "causal_lm"), ("qwen3_next", "seq_cls"), ("qwen3_5_moe_text", "causal_lm"),
          ("qwen3_5", "causal_lm"), ("qwen3_5", "token_cls"), ("nemotron_h", "causal_lm"),
          ("mamba2", "causal_lm"), ("mamba", "causal_lm"), ("falcon_mamba", "causal_lm"),
          ("jamba", "causal_lm"), ("jamba", "seq_cls")]
# transformers' model takes no past_key_values, so PEFT runs only embedding prompts on it (prefixes are jsoft's)
NO_PEFT_PREFIX = ("deberta", "deberta-v2", "distilbert", "modernbert", "mpnet", "albert")
# multi-query attention without a `num_key_value_heads` in config.json: PEFT derives a prefix with a key per head,
# which does not fit the model's one-head cache; it runs the one-head prefix jsoft saves
PEFT_PREFIX_DOES_NOT_FIT = ("gpt_bigcode",)
# multi-head latent attention, linear attention: no key/value prefix fits (jsoft refuses one; PEFT's fails), only
# embedding prompts
# stacks of Mamba or Mamba-2 layers only, whose transformers models keep their cache in `cache_params`, not
# past_key_values: PEFT's generate injects soft prompts at every step
MAMBA_STACKS = ("mamba2", "mamba", "falcon_mamba")
# Gated DeltaNet layers (linear attention) and Mamba-2's, which keep a recurrent state instead of keys and values.
# Their chunked fp32 sums depend on where a row's tokens fall in the chunks, so padding moves outputs by ~1e-5 relative
LINEAR_ATTENTION = ("qwen3_5_text", "qwen3_next", "qwen3_5_moe_text", "qwen3_5", "granitemoehybrid", "bamba",
                    "nemotron_h", *MAMBA_STACKS, "jamba")
NO_PREFIX = ("deepseek_v3", "glm4_moe_lite", "deepseek_v2", "mistral4", "youtu", "minicpm3", *LINEAR_ATTENTION)


def configs(method: str, task: str, kind: str | None = None):
    """jsoft's and PEFT's config of a method; for `kind` (a backbone of tests/tiny.py) PEFT's gets what it
    cannot derive itself (DistilBERT's dim, n_layers and n_heads; ALBERT's embedding width; XGLM's attention_heads;
    Mamba's heads, which it has none of)."""
    spec = dict(METHODS[method](TASK_TYPES[task]))
    cls = spec.pop("cls")
    dims = {}
    if kind == "distilbert":
        c = tiny.CONFIGS[kind]()
        dims = dict(token_dim=c.dim, num_layers=c.n_layers, num_attention_heads=c.n_heads)
    elif kind == "albert":
        dims = dict(token_dim=tiny.CONFIGS[kind]().embedding_size)
    elif kind == "xglm":
        dims = dict(num_attention_heads=tiny.CONFIGS[kind]().attention_heads)
    elif kind in ("mamba", "falcon_mamba"):  # no heads at all; PEFT asks for a number all the same
        dims = dict(num_attention_heads=1)
    return getattr(jsoft, cls)(**spec), getattr(peft, cls)(**spec, **dims)


def batch(kind: str, B: int = 3, T: int = 9, seed: int = 0):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, tiny.VOCAB, size=(B, T))
    mask = np.ones((B, T), np.int64)
    for b, n in enumerate([0, 2, 4][:B]):
        if n:
            ids[b, T - n:] = 0
            mask[b, T - n:] = 0
    out = {"input_ids": ids, "attention_mask": mask}
    if kind in tiny.ENCODER_DECODER:
        out["decoder_input_ids"] = rng.integers(0, tiny.VOCAB, size=(B, 6))
    return out


def hf_base(kind: str, task: str, model_dir):
    return tiny.CLASSES[(kind, task)].from_pretrained(model_dir).eval()


def peft_logits(model, inputs) -> np.ndarray:
    with torch.no_grad():
        out = model(**{k: torch.tensor(v) for k, v in inputs.items()})
    return out.logits.float().numpy()


def jsoft_logits(pm, inputs) -> np.ndarray:
    return np.asarray(pm(**inputs).logits)


def compare(got: np.ndarray, ref: np.ndarray, task: str, inputs, virtual: int, atol: float = 1e-4):
    """Per-token outputs are compared at real tokens (and virtual tokens, which both expose)."""
    assert got.shape == ref.shape, (got.shape, ref.shape)
    if task in ("causal_lm", "token_cls"):
        mask = inputs["attention_mask"].astype(bool)
        keep = np.concatenate([np.ones((mask.shape[0], got.shape[1] - mask.shape[1]), bool), mask], axis=1)
        got, ref = got[keep], ref[keep]
    np.testing.assert_allclose(got, ref, atol=atol, rtol=0)


def encoder_weights(ref_encoder) -> dict[tuple, tuple[torch.nn.Parameter, bool]]:
    """The parameters of PEFT's prompt module (PromptEmbedding, PromptEncoder with its MLP or LSTM, PrefixEncoder
    with or without its projection) keyed by the variable paths of jsoft's counterpart, each with whether jsoft
    stores it transposed (jsoft's kernels are `[in, out]`)."""
    def linear(layer) -> dict:
        return {"kernel": (layer.weight, True), "bias": (layer.bias, False)}

    weights = {("embedding",): (ref_encoder.embedding.weight, False)}
    if isinstance(getattr(ref_encoder, "transform", None), torch.nn.Sequential):  # prefix projection
        weights |= {("transform_in", k): v for k, v in linear(ref_encoder.transform[0]).items()}
        weights |= {("transform_out", k): v for k, v in linear(ref_encoder.transform[2]).items()}
    if hasattr(ref_encoder, "mlp_head"):
        mlp = [m for m in ref_encoder.mlp_head if isinstance(m, torch.nn.Linear)]
        for i, layer in enumerate(mlp):
            weights |= {("mlp_head", "layers", i, k): v for k, v in linear(layer).items()}
    if hasattr(ref_encoder, "lstm_head"):
        lstm = ref_encoder.lstm_head
        for l in range(lstm.num_layers):
            for direction, suffix in (("forward", ""), ("backward", "_reverse")):
                weights |= {(("lstm_head", direction, l, f"{ours}_{part}")):
                            (getattr(lstm, f"{theirs}_{part}_l{l}{suffix}"), ours == "kernel")
                            for ours, theirs in (("kernel", "weight"), ("bias", "bias")) for part in ("ih", "hh")}
    return weights


def torch_value(tensor: torch.Tensor, transposed: bool) -> np.ndarray:
    """A PEFT weight (or its gradient) as jsoft stores it."""
    value = tensor.detach().numpy()
    return value.T if transposed else value


def task_labels(kind: str, task: str, inputs: dict) -> np.ndarray:
    """Training labels for `batch(kind)` (seq2seq: its decoder ids, which this pops from `inputs`)."""
    if task in ("causal_lm", "token_cls"):  # padded positions and one real token ignored
        labels = np.where(inputs["attention_mask"].astype(bool), inputs["input_ids"], -100)
        labels[0, 1] = -100
        return labels if task == "causal_lm" else np.where(labels >= 0, labels % 3, -100)
    if task == "seq2seq_lm":
        return inputs.pop("decoder_input_ids")
    return np.array([0, 2, 1])


# ---------------------------------------------------------------- training side by side


def start_peft_from_jsoft(pm, ref, tmp_path) -> None:
    """Gives PEFT's model `ref` the trainable weights of jsoft's `pm`: the prompt module weight by weight (an
    encoder unfolded) and the task head through the adapter jsoft saves."""
    from safetensors.numpy import load_file

    pm.save_pretrained(tmp_path / "start")
    start = {k: torch.tensor(v) for k, v in load_file(tmp_path / "start" / "adapter_model.safetensors").items()}
    start["prompt_embeddings"] = ref.prompt_encoder["default"].embedding.weight.detach()  # set below
    # (PEFT loads the prompt into its encoder by hand: a key the base model does not take)
    assert set(peft.set_peft_model_state_dict(ref, start).unexpected_keys) <= {"prompt_embeddings"}
    ours = dict(nnx.to_flat_state(nnx.state(pm.adapters["default"].prompt)))
    weights = encoder_weights(ref.prompt_encoder["default"])
    assert set(weights) == set(ours), "jsoft's prompt module and PEFT's hold different weights"
    with torch.no_grad():
        for path, (tensor, transposed) in weights.items():
            value = np.asarray(ours[path].get_value())
            tensor.copy_(torch.tensor(value.T if transposed else value))


TORCH_SCHEDULES = {"linear": "get_linear_schedule_with_warmup", "cosine": "get_cosine_schedule_with_warmup",
                   "constant": "get_constant_schedule_with_warmup"}


def train_jsoft(pm, inputs: dict, labels: np.ndarray, *, steps: int, train_config) -> list[float]:
    """`steps` of jsoft's train step on one batch, without dropout, with `train_config`'s optimizer (adamw or sgd),
    schedule, warmup, weight decay and clipping. Returns the losses; `pm` holds the trained weights."""
    from jsoft import optim, train

    tx, schedule = optim.make(train_config, steps)
    graphdef, trainable, frozen = nnx.split(pm, jsoft.Trainable, ...)
    step = jax.jit(train.make_train_step(graphdef, tx, schedule, dropout=False))
    state, losses = train.initial_state(trainable, tx, seed=0), []
    for _ in range(steps):
        state, out = step(state, frozen, {**inputs, "labels": labels})
        losses.append(float(out["loss"]))
    nnx.update(pm, state["params"])
    return losses


def train_peft(ref, inputs: dict, labels: np.ndarray, *, steps: int, train_config) -> list[float]:
    """The same steps for PEFT's model `ref` (in eval mode: no dropout) with torch.optim's optimizer of that name,
    `clip_grad_norm_` and transformers' schedule of that name. Returns the losses; `ref` holds the trained
    weights."""
    import transformers

    c = train_config
    ref.eval()
    params = [p for p in ref.parameters() if p.requires_grad]
    wd = c.weight_decay or 0.0
    opt = (torch.optim.AdamW(params, lr=c.learning_rate, betas=(c.b1, c.b2), eps=c.eps, weight_decay=wd)
           if c.optimizer == "adamw" else torch.optim.SGD(params, lr=c.learning_rate, weight_decay=wd))
    make_schedule = getattr(transformers, TORCH_SCHEDULES[c.schedule])
    sched = make_schedule(opt, c.warmup_steps, **({} if c.schedule == "constant" else {"num_training_steps": steps}))
    torch_inputs = {k: torch.tensor(v) for k, v in inputs.items()}
    losses = []
    for _ in range(steps):
        opt.zero_grad()
        loss = ref(**torch_inputs, labels=torch.tensor(labels)).loss
        loss.backward()
        if c.max_grad_norm:
            torch.nn.utils.clip_grad_norm_(params, c.max_grad_norm)
        opt.step()
        sched.step()
        losses.append(loss.item())
    return losses


def nudge(ref, scale: float, seed: int = 0) -> None:
    """Multiplies every weight of PEFT's model `ref`, frozen ones too, by 1 + scale * N(0, 1): a start about as far
    from the original as two frameworks' rounding puts their computations (fp32 epsilon is 1.2e-7)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in ref.parameters():
            param.mul_(1 + scale * torch.randn(param.shape, generator=generator, dtype=param.dtype))


def adapter_tensors(model, directory) -> dict[str, np.ndarray]:
    """The tensors of the PEFT adapter `model` (jsoft's or PEFT's) saves to `directory`."""
    from safetensors.numpy import load_file

    model.save_pretrained(directory)
    return load_file(directory / "adapter_model.safetensors")


def assert_same_adapters(pm, ref, tmp_path, atol: float = 2e-5, rtol: float = 1e-4) -> None:
    """The PEFT adapters the two models save hold the same tensors (folded prompts, heads)."""
    got, want = adapter_tensors(pm, tmp_path / "jsoft"), adapter_tensors(ref, tmp_path / "peft")
    assert set(got) == set(want)
    for key in want:
        np.testing.assert_allclose(got[key], want[key], atol=atol, rtol=rtol, err_msg=key)
