"""The losses transformers computes from `labels`, with PEFT's label padding for prompts."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

IGNORE = -100


def masked_cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """Mean token cross-entropy over labels != -100 (fp32)."""
    valid = labels != IGNORE
    ce = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), jnp.where(valid, labels, 0))
    return jnp.sum(ce * valid) / jnp.maximum(valid.sum(), 1)


def task_loss(task: str, logits: jax.Array, labels: jax.Array, num_prompt_tokens: int,
              num_labels: int | None = None) -> jax.Array:
    """`num_prompt_tokens` virtual tokens in front of the input get label -100 (as PEFT pads)."""
    if task in ("causal_lm", "token_cls") and num_prompt_tokens:
        labels = jnp.pad(labels, ((0, 0), (num_prompt_tokens, 0)), constant_values=IGNORE)
    if task == "causal_lm":
        return masked_cross_entropy(logits[:, :-1], labels[:, 1:])
    if task in ("seq2seq_lm", "token_cls"):
        return masked_cross_entropy(logits, labels)
    if task == "seq_cls":
        if num_labels == 1:
            return jnp.mean((logits[:, 0] - labels.astype(jnp.float32)) ** 2)
        return masked_cross_entropy(logits, labels)
    raise ValueError(f"no loss for task={task!r}")
