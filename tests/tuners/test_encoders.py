"""The reparameterisation encoders train as PEFT's do: given PEFT's weights, jsoft's P-Tuning encoders (MLP, and a
bidirectional LSTM of one or more layers) and the prefix projection MLP compute PEFT's virtual-token embeddings /
prefix table, and the same gradient for every encoder weight. (An adapter carries only the encoder's output, so the
adapter tests in test_peft_interop.py cannot see the encoder itself.)"""

import jax
import jax.numpy as jnp
import numpy as np
import peft
import pytest
import torch
from flax import nnx

import jsoft
from jsoft.tuners.p_tuning import PromptEncoder
from jsoft.tuners.prefix_tuning import PrefixEncoder

D, E = 10, 6  # token width, encoder width


# PEFT's parameters keyed by the jsoft encoder's variable paths, as (parameter, stored transposed in jsoft)


def _linear(torch_linear) -> dict:
    return {"kernel": (torch_linear.weight, True), "bias": (torch_linear.bias, False)}


def _from_peft_prompt_encoder(ref) -> dict:
    tensors = {("embedding",): (ref.embedding.weight, False)}
    mlp = [m for m in ref.mlp_head if isinstance(m, torch.nn.Linear)]
    for i, layer in enumerate(mlp):
        tensors |= {("mlp_head", "layers", i, k): v for k, v in _linear(layer).items()}
    if hasattr(ref, "lstm_head"):
        lstm = ref.lstm_head
        for l in range(lstm.num_layers):
            for direction, suffix in (("forward", ""), ("backward", "_reverse")):
                w = {f"{ours}_{part}": (getattr(lstm, f"{theirs}_{part}_l{l}{suffix}"), ours == "kernel")
                     for ours, theirs in (("kernel", "weight"), ("bias", "bias")) for part in ("ih", "hh")}
                tensors |= {("lstm_head", direction, l, k): v for k, v in w.items()}
    return tensors


def _from_peft_prefix_encoder(ref) -> dict:
    return {("embedding",): (ref.embedding.weight, False),
            **{("transform_in", k): v for k, v in _linear(ref.transform[0]).items()},
            **{("transform_out", k): v for k, v in _linear(ref.transform[2]).items()}}


def _assert_same_function_and_gradients(module, ref_tensors: dict, run_ref):
    """Loads `ref_tensors` into `module`, then compares its output with `run_ref()`'s and the vector-Jacobian
    product of one random cotangent for every weight."""
    graphdef, state = nnx.split(module)
    flat = dict(nnx.to_flat_state(state))
    assert set(flat) == set(ref_tensors), "jsoft's encoder and PEFT's hold different weights"
    def numpy(tensor, transposed):
        return tensor.detach().numpy().T if transposed else tensor.detach().numpy()

    for path, (tensor, transposed) in ref_tensors.items():
        flat[path].set_value(jnp.asarray(numpy(tensor, transposed)))
    params = nnx.from_flat_state(flat)

    want = run_ref()
    cotangent = np.random.default_rng(0).standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(cotangent)).sum().backward()

    got, vjp = jax.vjp(lambda p: nnx.merge(graphdef, p)(), params)
    np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=1e-5, atol=1e-6)
    (grads,) = vjp(jnp.asarray(cotangent))
    grads = dict(nnx.to_flat_state(grads))
    for path, (tensor, transposed) in ref_tensors.items():
        np.testing.assert_allclose(np.asarray(grads[path].get_value()), numpy(tensor.grad, transposed),
                                   rtol=1e-4, atol=1e-6,
                                   err_msg=f"gradient of {'.'.join(map(str, path))}")


@pytest.mark.parametrize("encoder,num_layers", [("MLP", 2), ("LSTM", 1), ("LSTM", 2), ("LSTM", 3)])
@pytest.mark.parametrize("submodules", [1, 2])
def test_prompt_encoder_computes_and_differentiates_as_peft(encoder, num_layers, submodules):
    kwargs = dict(num_virtual_tokens=4, token_dim=D, num_transformer_submodules=submodules,
                  encoder_reparameterization_type=encoder, encoder_hidden_size=E, encoder_num_layers=num_layers)
    torch.manual_seed(0)
    ref = peft.PromptEncoder(peft.PromptEncoderConfig(task_type="CAUSAL_LM", **kwargs)).eval()
    module = PromptEncoder(jsoft.PromptEncoderConfig(task_type="CAUSAL_LM", **kwargs), jax.random.key(0))
    indices = torch.arange(4 * submodules)[None]
    _assert_same_function_and_gradients(module, _from_peft_prompt_encoder(ref), lambda: ref(indices)[0])


@pytest.mark.parametrize("layers", [1, 3])
def test_prefix_projection_computes_and_differentiates_as_peft(layers):
    kwargs = dict(num_virtual_tokens=5, token_dim=D, num_layers=layers, prefix_projection=True,
                  encoder_hidden_size=E)
    torch.manual_seed(0)
    ref = peft.PrefixEncoder(peft.PrefixTuningConfig(task_type="CAUSAL_LM", **kwargs)).eval()
    module = PrefixEncoder(jsoft.PrefixTuningConfig(task_type="CAUSAL_LM", **kwargs), layers, jax.random.key(0))
    _assert_same_function_and_gradients(module, _from_peft_prefix_encoder(ref), lambda: ref(torch.arange(5)[None])[0])
