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
from tests.tuners import peft_ref

D, E = 10, 6  # token width, encoder width


def _assert_same_function_and_gradients(module, ref, ref_input):
    """Loads `ref`'s weights into `module`, then compares its output with `ref(ref_input)`'s and the
    vector-Jacobian product of one random cotangent for every weight."""
    weights = peft_ref.encoder_weights(ref)
    graphdef, state = nnx.split(module)
    flat = dict(nnx.to_flat_state(state))
    assert set(flat) == set(weights), "jsoft's encoder and PEFT's hold different weights"
    for path, (tensor, transposed) in weights.items():
        flat[path].set_value(jnp.asarray(peft_ref.torch_value(tensor, transposed)))
    params = nnx.from_flat_state(flat)

    want = ref(ref_input)[0]
    cotangent = np.random.default_rng(0).standard_normal(tuple(want.shape)).astype(np.float32)
    (want * torch.tensor(cotangent)).sum().backward()

    got, vjp = jax.vjp(lambda p: nnx.merge(graphdef, p)(), params)
    np.testing.assert_allclose(np.asarray(got), want.detach().numpy(), rtol=1e-5, atol=1e-6)
    (grads,) = vjp(jnp.asarray(cotangent))
    grads = dict(nnx.to_flat_state(grads))
    for path, (tensor, transposed) in weights.items():
        np.testing.assert_allclose(np.asarray(grads[path].get_value()), peft_ref.torch_value(tensor.grad, transposed),
                                   rtol=1e-4, atol=1e-6, err_msg=f"gradient of {'.'.join(map(str, path))}")


@pytest.mark.parametrize("encoder,num_layers", [("MLP", 2), ("LSTM", 1), ("LSTM", 2), ("LSTM", 3)])
@pytest.mark.parametrize("submodules", [1, 2])
def test_prompt_encoder_computes_and_differentiates_as_peft(encoder, num_layers, submodules):
    kwargs = dict(num_virtual_tokens=4, token_dim=D, num_transformer_submodules=submodules,
                  encoder_reparameterization_type=encoder, encoder_hidden_size=E, encoder_num_layers=num_layers)
    torch.manual_seed(0)
    ref = peft.PromptEncoder(peft.PromptEncoderConfig(task_type="CAUSAL_LM", **kwargs)).eval()
    module = PromptEncoder(jsoft.PromptEncoderConfig(task_type="CAUSAL_LM", **kwargs), jax.random.key(0))
    _assert_same_function_and_gradients(module, ref, torch.arange(4 * submodules)[None])


@pytest.mark.parametrize("layers", [1, 3])
def test_prefix_projection_computes_and_differentiates_as_peft(layers):
    kwargs = dict(num_virtual_tokens=5, token_dim=D, num_layers=layers, prefix_projection=True,
                  encoder_hidden_size=E)
    torch.manual_seed(0)
    ref = peft.PrefixEncoder(peft.PrefixTuningConfig(task_type="CAUSAL_LM", **kwargs)).eval()
    module = PrefixEncoder(jsoft.PrefixTuningConfig(task_type="CAUSAL_LM", **kwargs), layers, jax.random.key(0))
    _assert_same_function_and_gradients(module, ref, torch.arange(5)[None])
