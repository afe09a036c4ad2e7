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
              num_labels: int | None = None, problem_type: str | None = None) -> jax.Array:
    """The loss of a classification or seq2seq head (causal LM: `causal_lm_loss`). `num_prompt_tokens`
    virtual tokens in front of the input get label -100 (as PEFT pads). seq_cls follows transformers'
    `problem_type` (config.json); unset, one label is regression, integer labels single-label and float
    labels `[B, num_labels]` multi-label classification."""
    if task == "token_cls" and num_prompt_tokens:
        labels = jnp.pad(labels, ((0, 0), (num_prompt_tokens, 0)), constant_values=IGNORE)
    if task in ("seq2seq_lm", "token_cls"):
        return masked_cross_entropy(logits, labels)
    if task != "seq_cls":
        raise ValueError(f"no loss for task={task!r}")
    if problem_type is None:
        problem_type = "regression" if num_labels == 1 else "single_label_classification" \
            if jnp.issubdtype(labels.dtype, jnp.integer) else "multi_label_classification"
    if problem_type == "single_label_classification":
        return masked_cross_entropy(logits, labels.reshape(-1))
    if labels.size != logits.size:
        raise ValueError(f"{problem_type} needs labels of shape {tuple(logits.shape)} (one per logit), "
                         f"got {tuple(labels.shape)}")
    labels = labels.reshape(logits.shape).astype(jnp.float32)
    if problem_type == "regression":
        return jnp.mean((logits - labels) ** 2)
    return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels))


def causal_loss_positions(hidden_BxTxD: jax.Array, num_prompt_tokens: int) -> tuple[int, jax.Array]:
    """`(start, hidden[:, start:-1])`: the positions whose next-token prediction can carry a label.
    With V prompt tokens in front (labels padded with V x -100), predictions start at the last prompt
    token (it predicts the input's first token, as in PEFT); with none, at the first token."""
    start = max(num_prompt_tokens - 1, 0)
    return start, hidden_BxTxD[:, start:-1]


def causal_lm_loss(logits: jax.Array, labels: jax.Array, start: int, num_prompt_tokens: int) -> jax.Array:
    """transformers' shifted next-token loss, with PEFT's -100 labels for the `num_prompt_tokens` virtual tokens
    in front, from the logits of positions `start:-1` only (`causal_loss_positions`)."""
    return masked_cross_entropy(logits, labels[:, start + 1 - num_prompt_tokens:])


def label_slot_inputs(hidden_BxTxD: jax.Array, labels_BxL: jax.Array, label_positions_BxK: jax.Array,
                      num_prompt_tokens: int) -> tuple[jax.Array, jax.Array]:
    """`(hidden [B, K, D], labels [B, K])` for a causal LM loss over K label slots per row instead of
    every position: `label_positions` are the token indices (into `labels`) that carry a label, -1
    padded. Token t is predicted by the hidden state before it, at V + t - 1 with V prompt tokens in
    front; a slot without one (t = 0 and no prompt) or padded takes no loss. Given every label position,
    `masked_cross_entropy(lm_head(hidden), labels)` is `causal_lm_loss`'s value."""
    t = label_positions_BxK
    at = t + num_prompt_tokens - 1
    valid = (t >= 0) & (at >= 0)
    hidden = jnp.take_along_axis(hidden_BxTxD, jnp.where(valid, at, 0)[..., None], axis=1)
    labels = jnp.take_along_axis(labels_BxL, jnp.where(valid, t, 0), axis=1)
    return hidden, jnp.where(valid, labels, IGNORE)
