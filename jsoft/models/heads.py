"""Task heads shared by the backbones: LM projection and classification pooling."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.models import ops
from jsoft.models.layers import DropoutRng, ModelOutput, axes, dense

Array = jax.Array


FEW_ROWS = 128  # at most this many tokens: the LM head computes its logits transposed


def lm_head_vocab_multiple() -> int:
    """What the LM head pads the vocabulary to a multiple of, for the backend jsoft runs on.

    An odd vocabulary (GPT-2's 50257) leaves the logits' rows and the backward's contraction unaligned
    for a GPU's matrix units: multiplying over zero rows up to a multiple of 128 and slicing them off
    (a slice the loss fuses) made an H200's GPT-2-medium train step 5% faster. On a CPU it is no faster
    and costs a copy of the embedding (153 MiB more temp for GPT-2 small in fp32); TPUs tile odd sizes
    themselves."""
    return 128 if jax.default_backend() == "gpu" else 1


def padded_vocab(V: int, multiple: int) -> int:
    """The vocabulary size the LM head multiplies over: V rounded up to `multiple`, unless V is already a
    multiple of 8 (aligned for the matrix units, and possibly sharded: padding would shift the shards,
    which GSPMD then re-aligns with a copy of the logits)."""
    return V if V % 8 == 0 else -(-V // multiple) * multiple


def lm_head_logits(hidden_BxTxD: Array, weight: Array, vocab_axis: int = 0,
                   vocab_multiple: int | None = None) -> Array:
    """fp32 logits `[B, T, V]` of hidden states against an LM head's weight: `[V, D]` (`vocab_axis=0`, a tied
    embedding) or `[D, V]` (`vocab_axis=1`, an untied head's kernel), each multiplied in the form its
    layout streams fastest. The matmul runs over the vocabulary padded to `vocab_multiple` (default:
    `lm_head_vocab_multiple()`)."""
    B, T, D = hidden_BxTxD.shape
    weight = weight.astype(hidden_BxTxD.dtype)
    few_rows = B * T <= FEW_ROWS
    if vocab_axis == 0 and few_rows:
        # decoding: the step streams the whole embedding for a few rows; as `[V, rows]` XLA:CPU
        # streams it about 1.4x faster (GPT-2 small, 8 rows: 11.3 -> 7.8 ms)
        logits = ops.einsum("vd,nd->vn", weight, hidden_BxTxD.reshape(B * T, D), out_dtype=jnp.float32)
        return jax.lax.optimization_barrier(logits).T.reshape(B, T, -1)  # else XLA folds the .T into the dot
    V = weight.shape[vocab_axis]
    # a few decoding rows gain nothing from the alignment, and the padded weight would be a copy per step
    padded = V if few_rows else padded_vocab(V, lm_head_vocab_multiple() if vocab_multiple is None else vocab_multiple)
    if padded != V:
        weight = jnp.pad(weight, [(0, padded - V) if a == vocab_axis else (0, 0) for a in range(2)])
    spec = "btd,vd->btv" if vocab_axis == 0 else "btd,dv->btv"
    return ops.einsum(spec, hidden_BxTxD, weight, out_dtype=jnp.float32)[..., :V]


def last_token_index(input_ids_BxT: Array | None, pad_token_id: int | None, T: int) -> Array | int:
    """The token a decoder-only classifier reads, as transformers picks it: the last token that
    is not `pad_token_id` (right padding), or the last position when only embeddings are given."""
    if input_ids_BxT is None or pad_token_id is None:
        return T - 1
    non_pad = (input_ids_BxT != pad_token_id).astype(jnp.int32)
    return jnp.argmax(jnp.arange(T, dtype=jnp.int32)[None] * non_pad, axis=-1)


def pool_at(hidden_BxTxD: Array, index_B: Array | int) -> Array:
    if isinstance(index_B, int):
        return hidden_BxTxD[:, index_B]
    return jnp.take_along_axis(hidden_BxTxD, index_B[:, None, None], axis=1)[:, 0]


def classifier_dropout_rate(hf: dict, default_key: str) -> float:
    """transformers' rule: `classifier_dropout` when set, else the model's hidden dropout."""
    rate = hf.get("classifier_dropout")
    return float(hf.get(default_key, 0.1) if rate is None else rate)


class TiedHeadBias(nnx.Module):
    """The `lm_head.bias` of a head whose weight is the word embeddings (ERNIE 4.5 MoE with `use_bias`)."""

    def __init__(self, vocab_size: int, p):
        self.bias = nnx.Param(jnp.zeros((vocab_size,), p.param_dtype), **axes("vocab"))


class DecoderOnlyLM(nnx.Module):
    """What the decoder-only backbones (GPT-2, Llama, BLOOM, GPT-NeoX) share above their stack: the task heads
    transformers gives them (a tied or separate LM head, `score` for seq_cls on the last token, a token
    classifier) and the call.

    A subclass builds its stack under transformers' attribute name (`transformer`, `model`, `gpt_neox`), then calls
    `add_heads`, and returns the stack from `decoder` and its token embedding from `word_embeddings`."""

    cls_token = "last"  # the token seq_cls reads by default (transformers' rule; `cls_index` overrides it)
    final_logit_softcap: float | None = None  # LM logits -> cap * tanh(logits / cap) (Gemma 2)
    logits_scaling: float = 1.0  # LM logits divided by this (Granite)

    def add_heads(self, c, task: str | None, num_labels: int | None, p, rngs: nnx.Rngs, *,
                  token_cls_name: str = "classifier", token_cls_bias: bool = True, lm_head_bias: bool = False,
                  width: int | None = None) -> None:
        """`width`: of the stack's output, where it is not `hidden_size` (OPT-350m projects it out to 512)."""
        self.config, self.task, self.num_labels = c, task, num_labels
        d = width or c.hidden_size
        if task == "causal_lm" and not c.tie_word_embeddings:
            self.lm_head = dense(d, c.vocab_size, ("embed", "vocab"), p, bias=lm_head_bias, rngs=rngs)
        elif task == "causal_lm" and lm_head_bias:  # tied to the word embeddings, with a bias of its own
            self.lm_head = TiedHeadBias(c.vocab_size, p)
        elif task == "seq_cls":
            self.score = dense(d, num_labels, ("embed", None), p, bias=False, rngs=rngs)
        elif task == "token_cls":
            setattr(self, token_cls_name, dense(d, num_labels, ("embed", None), p, bias=token_cls_bias, rngs=rngs))
        self.head_name = {"seq_cls": "score", "token_cls": token_cls_name}.get(task)

    @property
    def decoder(self) -> nnx.Module:
        raise NotImplementedError

    @property
    def word_embeddings(self) -> nnx.Embed:
        raise NotImplementedError

    def lm_logits(self, h: Array) -> Array:
        """The LM head (tied or not) on final hidden states `[B, T, D]` -> fp32 `[B, T, V]`."""
        if self.config.tie_word_embeddings:
            logits = lm_head_logits(h, self.word_embeddings.embedding[...])
        else:
            logits = lm_head_logits(h, self.lm_head.kernel[...], vocab_axis=1)
        bias = getattr(getattr(self, "lm_head", None), "bias", None)
        if bias is not None:  # Phi's, ERNIE 4.5 MoE's
            logits = logits + bias[...].astype(jnp.float32)
        if self.logits_scaling != 1.0:
            logits = logits / self.logits_scaling
        return logits if self.final_logit_softcap is None else ops.softcap(logits, self.final_logit_softcap)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                 inputs_embeds=None, prefix_kv=None, prefix_mask=None, cache=None,
                 dropout_rng: Array | None = None, head=None, cls_index=None) -> ModelOutput:
        """`head` replaces the classification head (a PEFT adapter's trained copy of it);
        `cls_index [B]` is the position seq_cls reads (default: transformers' last-token rule)."""
        if token_type_ids is not None:
            raise ValueError(f"{self.config.model_type} in jsoft takes no token_type_ids")
        drop = DropoutRng(dropout_rng)
        h, cache = self.decoder(input_ids, attention_mask, position_ids, inputs_embeds, prefix_kv, prefix_mask, cache,
                              drop)
        if self.task == "causal_lm":
            logits = self.lm_logits(h)
        elif self.task == "seq_cls":
            idx = last_token_index(input_ids, self.config.pad_token_id, h.shape[1]) if cls_index is None else cls_index
            logits = (head or self.score)(pool_at(h, idx)).astype(jnp.float32)
        elif self.task == "token_cls":
            token_head = head or getattr(self, self.head_name)
            logits = token_head(drop(h, self.config.classifier_dropout)).astype(jnp.float32)
        else:
            return ModelOutput(last_hidden_state=h, cache=cache)
        return ModelOutput(logits=logits, last_hidden_state=h, cache=cache)
