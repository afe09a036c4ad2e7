"""Prompt Tuning (Lester et al. 2021): a learned `[V * S, D]` table of input embeddings.

Initialisers follow PEFT (RANDOM, SAMPLE_VOCAB, TEXT) plus the paper's CLASS_LABEL: each of the
first virtual tokens starts as the mean embedding of one class label's tokens, the rest as
sampled vocabulary rows."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from jsoft.tuners.config import PromptTuningConfig, PromptTuningInit
from jsoft.tuners.variables import trainable


def load_tokenizer(config: PromptTuningConfig, tokenizer=None):
    if tokenizer is not None:
        return tokenizer
    from transformers import AutoTokenizer

    kwargs = dict(config.tokenizer_kwargs or {})
    kwargs.pop("trust_remote_code", None)  # as PEFT: an adapter config must not run code
    try:
        return AutoTokenizer.from_pretrained(config.tokenizer_name_or_path, **kwargs)
    except Exception as e:
        raise ValueError(f"tokenizer_name_or_path={config.tokenizer_name_or_path!r} could not be loaded "
                         f"({type(e).__name__}: {e})") from None


def text_init_ids(tokenizer, text: str, total: int) -> list[int]:
    """PEFT's TEXT rule: tokenize with special tokens, then cut or repeat to `total` ids."""
    ids = tokenizer(text)["input_ids"]
    if not ids:
        raise ValueError(f"prompt_tuning_init_text={text!r} tokenizes to no tokens")
    reps = -(-total // len(ids))
    return (ids * reps)[:total]


def initial_prompt(config: PromptTuningConfig, word_embeddings: nnx.Embed, total: int, D: int,
                   key: jax.Array, tokenizer=None) -> jax.Array:
    """Rows start as what the model's embedding lookup gives for tokens (as PEFT calls its `word_embeddings`: for
    Gemma, scaled by sqrt(hidden_size)), or as random normals."""
    init = config.prompt_tuning_init
    emb = lambda ids: word_embeddings(jnp.asarray(ids)).astype(jnp.float32)
    vocab_size = word_embeddings.num_embeddings
    if config.inference_mode or init == PromptTuningInit.RANDOM:
        return jax.random.normal(key, (total, D), jnp.float32)
    if init == PromptTuningInit.SAMPLE_VOCAB:
        return emb(jax.random.randint(key, (total,), 0, vocab_size))
    tok = load_tokenizer(config, tokenizer)
    if init == PromptTuningInit.TEXT:
        return emb(text_init_ids(tok, config.prompt_tuning_init_text, total))
    # CLASS_LABEL
    labels = config.prompt_tuning_class_labels
    if len(labels) > total:
        raise ValueError(f"prompt_tuning_class_labels has {len(labels)} labels but only "
                         f"num_virtual_tokens={config.num_virtual_tokens} virtual tokens")
    rows = []
    for text in labels:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"class label {text!r} tokenizes to no tokens")
        rows.append(emb(ids).mean(0))
    rest = emb(jax.random.randint(key, (total - len(rows),), 0, vocab_size))
    return jnp.concatenate([jnp.stack(rows), rest])


class PromptEmbedding(nnx.Module):
    """PEFT's PromptEmbedding: `embedding [V * S, D]` (S = 2 for seq2seq; the encoder uses rows
    0..V-1)."""

    def __init__(self, config: PromptTuningConfig, word_embeddings: nnx.Embed, key: jax.Array, tokenizer=None):
        total = config.num_virtual_tokens * config.num_transformer_submodules
        self.embedding = trainable(initial_prompt(config, word_embeddings, total, config.token_dim, key, tokenizer))

    def __call__(self, dropout_rng: jax.Array | None = None) -> jax.Array:
        return self.embedding[...]

    def fold(self) -> None:
        """Already static."""

    def export(self) -> jax.Array:
        return self.embedding[...]
