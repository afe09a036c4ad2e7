"""P-Tuning v1 (Liu et al. 2021): virtual-token embeddings produced by a prompt encoder.

PEFT's PromptEncoder: `embedding [V * S, D]` fed through either an MLP
(Linear(D,E)-ReLU-Linear(E,E)-ReLU-Linear(E,D)) or a bidirectional LSTM(D, E, num_layers)
followed by Linear(2E,2E)-ReLU-Linear(2E,D). The encoder runs over all V * S virtual tokens at
once (so an LSTM sees the decoder-side rows too). `fold()` evaluates it once and keeps only the
output, which is also what a PEFT adapter stores. Templates put the virtual tokens anywhere."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft.models.layers import DropoutRng
from jsoft.tuners.config import PromptEncoderConfig, PromptEncoderReparameterizationType
from jsoft.tuners.variables import Linear, normal, trainable, uniform_fan_in


class LSTMDirection(nnx.Module):
    """One direction of one layer, PyTorch gate order (i, f, g, o)."""

    def __init__(self, d_in: int, E: int, key: jax.Array):
        k = jax.random.split(key, 4)
        self.kernel_ih = uniform_fan_in(k[0], (d_in, 4 * E), E)
        self.kernel_hh = uniform_fan_in(k[1], (E, 4 * E), E)
        self.bias_ih = uniform_fan_in(k[2], (4 * E,), E)
        self.bias_hh = uniform_fan_in(k[3], (4 * E,), E)

    def __call__(self, x_TxI: jax.Array, reverse: bool) -> jax.Array:
        E = self.kernel_hh.shape[0]
        x_gates = x_TxI @ self.kernel_ih[...] + self.bias_ih[...] + self.bias_hh[...]
        w_hh = self.kernel_hh[...]

        def step(carry, g):
            h, c = carry
            i, f, gg, o = jnp.split(g + h @ w_hh, 4)
            c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
            h = jax.nn.sigmoid(o) * jnp.tanh(c)
            return (h, c), h

        zeros = jnp.zeros((E,), jnp.float32)
        _, h_TxE = jax.lax.scan(step, (zeros, zeros), x_gates, reverse=reverse)
        return h_TxE


class BiLSTM(nnx.Module):
    def __init__(self, d_in: int, E: int, num_layers: int, dropout: float, key: jax.Array):
        keys = jax.random.split(key, 2 * num_layers)
        self.dropout = dropout
        self.forward = nnx.List([LSTMDirection(d_in if l == 0 else 2 * E, E, keys[2 * l])
                                 for l in range(num_layers)])
        self.backward = nnx.List([LSTMDirection(d_in if l == 0 else 2 * E, E, keys[2 * l + 1])
                                  for l in range(num_layers)])

    def __call__(self, x_TxD: jax.Array, drop: DropoutRng) -> jax.Array:
        for l, (fw, bw) in enumerate(zip(self.forward, self.backward)):
            if l:  # PyTorch applies LSTM dropout between layers only
                x_TxD = drop(x_TxD, self.dropout)
            x_TxD = jnp.concatenate([fw(x_TxD, False), bw(x_TxD, True)], axis=-1)
        return x_TxD


class MLP(nnx.Module):
    def __init__(self, dims: list[int], key: jax.Array):
        keys = jax.random.split(key, len(dims) - 1)
        self.layers = nnx.List([Linear(a, b, k) for a, b, k in zip(dims[:-1], dims[1:], keys)])

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = jax.nn.relu(x)
        return x


class PromptEncoder(nnx.Module):
    """Returns the `[V * S, D]` virtual-token embeddings."""

    def __init__(self, config: PromptEncoderConfig, key: jax.Array):
        D, E = config.token_dim, config.encoder_hidden_size
        total = config.num_virtual_tokens * config.num_transformer_submodules
        k_emb, k_enc, k_head = jax.random.split(key, 3)
        self.embedding = normal(k_emb, (total, D))
        self.lstm_head = self.mlp_head = nnx.data(None)  # absent once folded or loaded from PEFT
        if config.inference_mode:  # as PEFT: only the (computed) embedding is kept
            return
        if config.encoder_reparameterization_type == PromptEncoderReparameterizationType.LSTM:
            self.lstm_head = BiLSTM(D, E, config.encoder_num_layers, config.encoder_dropout, k_enc)
            self.mlp_head = MLP([2 * E, 2 * E, D], k_head)
        else:
            self.mlp_head = MLP([D, E, E, D], k_head)

    def __call__(self, dropout_rng: jax.Array | None = None) -> jax.Array:
        x = self.embedding[...]
        if self.mlp_head is None:
            return x
        if self.lstm_head is not None:
            x = self.lstm_head(x, DropoutRng(dropout_rng))
        return self.mlp_head(x)

    def fold(self) -> None:
        """Evaluate the encoder once (eval mode) and keep only its output."""
        self.embedding = trainable(self())
        self.lstm_head = self.mlp_head = None

    def export(self) -> jax.Array:
        return self()


# --------------------------------------------------------------------------- templates

_SLOT = re.compile(r"\[P\]|\[X\]")


def parse_template(template: str) -> list[str | None]:
    """"[P][P] The capital of [X] is [P]" -> [None, None, " The capital of ", "[X]", " is ", None].
    None marks a virtual token; "[X]" the input text."""
    parts: list[str | None] = []
    pos = 0
    for m in _SLOT.finditer(template):
        if m.start() > pos:
            parts.append(template[pos:m.start()])
        parts.append(None if m.group() == "[P]" else "[X]")
        pos = m.end()
    if pos < len(template):
        parts.append(template[pos:])
    if parts.count("[X]") != 1:
        raise ValueError(f"template={template!r} must contain exactly one [X] (the input text)")
    return parts


def special_tokens_around(tokenizer) -> tuple[list[int], list[int]]:
    """The special tokens the tokenizer puts before and after a single text (BERT: [CLS] / [SEP]; T5: none /
    </s>; GPT-2: none), read from how it encodes a probe."""
    probe = "hello world"
    bare = tokenizer(probe, add_special_tokens=False)["input_ids"]
    full = tokenizer(probe)["input_ids"]
    for i in range(len(full) - len(bare) + 1):
        if full[i:i + len(bare)] == bare:
            return full[:i], full[i + len(bare):]
    return [], []


class TemplateRows:
    """Rows of a P-Tuning template: the literal pieces tokenized once, each text's tokens (no special tokens) at
    [X], the tokenizer's special tokens around. Each [P] holds the first id above 0 that is no special token:
    its embedding is replaced, but a decoder-only classifier reads the last token that is not the pad id (which
    may be a virtual one), and a model's pad id is 0 or a special token."""

    def __init__(self, template: str, tokenizer):
        special = set(tokenizer.all_special_ids)
        placeholder = next(i for i in range(1, len(tokenizer) + 1) if i not in special)
        self.parts = parse_template(template)
        self.pieces = [p if p in (None, "[X]") else tokenizer(p, add_special_tokens=False)["input_ids"]
                       for p in self.parts]
        self.before, self.after = special_tokens_around(tokenizer)
        self.placeholder = placeholder
        self.fixed = sum(len(p) for p in self.pieces if isinstance(p, list)) + len(self.before) + len(self.after)

    def __call__(self, text: list[int]) -> tuple[list[int], list[int]]:
        """`(input_ids, positions of the virtual tokens)`."""
        ids, slots = list(self.before), []
        for piece in self.pieces:
            if piece is None:
                slots.append(len(ids))
                ids.append(self.placeholder)
            else:
                ids.extend(text if piece == "[X]" else piece)
        return ids + self.after, slots


def apply_template(template: str, texts: list[str], tokenizer, *, max_length: int | None = None):
    """Tokenize `texts` into `template`: returns (input_ids, attention_mask, prompt_positions) as
    right-padded int32 arrays; `prompt_positions[b, v]` is where virtual token v sits in row b.
    Virtual-token slots hold an ordinary token id (`TemplateRows`; their embeddings are replaced)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    make = TemplateRows(template, tokenizer)
    rows, positions = [], []
    for text in texts:
        ids, slots = make(tokenizer(text, add_special_tokens=False)["input_ids"])
        rows.append(ids[:max_length] if max_length else ids)
        positions.append(slots)
    T = max(len(r) for r in rows)
    if max_length and any(p >= max_length for ps in positions for p in ps):
        raise ValueError(f"max_length={max_length} cuts off virtual tokens of the template")
    input_ids = np.full((len(rows), T), pad, np.int32)
    mask = np.zeros((len(rows), T), np.int32)
    for b, r in enumerate(rows):
        input_ids[b, :len(r)] = r
        mask[b, :len(r)] = 1
    return input_ids, mask, np.asarray(positions, np.int32)
