"""What every backbone shares: the common config fields and the position bookkeeping."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from jsoft.models.layers import KVCache


@dataclasses.dataclass
class TransformerConfig:
    """Fields every architecture fills; the tuners and PEFT export read only these."""

    model_type: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    pad_token_id: int | None = None
    eos_token_id: int | list[int] | None = None
    bos_token_id: int | None = None
    decoder_start_token_id: int | None = None
    is_encoder_decoder: bool = False
    name_or_path: str = ""
    problem_type: str | None = None  # seq_cls loss, as transformers: None infers it from num_labels and labels
    forced_bos_token_id: int | None = None  # generation forces it first (a seq2seq decoder's first new token)
    forced_eos_token_id: int | list[int] | None = None  # generation forces it (any of them) last

    @property
    def position_table_size(self) -> int | None:
        """Rows of a learned position table (GPT-2, BERT): the most positions an input can take. None where
        positions are computed (RoPE, T5's relative buckets)."""
        return None

    @property
    def kv_width(self) -> int:
        """Width of one layer's keys (and values): what a prefix stores per layer."""
        return self.num_kv_heads * self.head_dim

    @property
    def cache_layout(self) -> tuple[int, int]:
        """(heads, width) of what a decoding cache holds per layer, row and slot, and a prompt cache's prefix with
        it: the keys' and values' own here; latent attention caches its compressed latent (one head)."""
        return self.num_kv_heads, self.head_dim

    @property
    def cache_values(self) -> bool:
        """Whether a decoding cache keeps values apart from keys (latent attention caches rows that are both)."""
        return True

    @property
    def no_prefix_reason(self) -> str | None:
        """Why no key/value prefix (Prefix Tuning, P-Tuning v2) fits this stack's attention; None where one does."""
        return None

    @property
    def keeps_recurrent_state(self) -> bool:
        """Whether some layers keep a recurrent state instead of keys and values (linear attention): a prompt then
        enters decoding as embeddings, not as a key/value prefix."""
        return False

    @property
    def cacheless_layers(self) -> tuple[bool, ...]:
        """Per layer, whether it caches nothing while decoding (Nemotron-H's MLP layers); () where every layer caches
        keys and values or a recurrent state."""
        return ()

    def recurrent_states(self, batch: int, dtype) -> tuple:
        """A decoding cache's initial `RecurrentState` per layer where a stack has layers that keep one instead of
        keys and values (linear attention; None for its attention layers); () where it has none."""
        return ()


def compute_dtype(model):
    """The dtype a backbone computes in (its word embeddings' output dtype)."""
    emb = model.word_embeddings
    return emb.dtype or emb.embedding.dtype


def token_ids(x: int | list[int] | None) -> tuple[int, ...]:
    """A config's token id field (None, one id or a list, e.g. `eos_token_id`) as a tuple."""
    return () if x is None else (int(x),) if np.isscalar(x) else tuple(int(e) for e in x)


def past_length(prefix_kv, cache: KVCache | None):
    """How many key slots come before the current tokens: the prefix (PEFT passes it as
    `past_key_values`, so real tokens take positions V..V+T-1) and what the cache holds."""
    n = 0 if prefix_kv is None else prefix_kv.shape[3]
    return n if cache is None else n + cache.index


def default_positions(B: int, T: int, prefix_kv, cache: KVCache | None, config: TransformerConfig):
    """Positions past_length .. past_length + T - 1; without a cache, checked against a learned position table
    (at trace time: shapes are static)."""
    past = past_length(prefix_kv, cache)
    if cache is None:
        check_position_count(config, past + T)
    return jnp.broadcast_to(jnp.arange(T, dtype=jnp.int32)[None] + past, (B, T))


def shift_right(labels, decoder_start_token_id: int, pad_token_id: int):
    """Decoder inputs from labels (transformers' `shift_tokens_right` / T5's `_shift_right`): the start token
    in front, the last label dropped, -100 (ignored labels) replaced by the pad id."""
    labels = jnp.asarray(labels, jnp.int32)
    start = jnp.full(labels.shape[:-1] + (1,), decoder_start_token_id, jnp.int32)
    shifted = jnp.concatenate([start, labels[..., :-1]], axis=-1)
    return jnp.where(shifted == -100, pad_token_id, shifted)


def check_position_count(config: TransformerConfig, n: int) -> None:
    """Refuses an input of `n` positions (prefix and virtual tokens included) that a learned position table
    cannot hold: the table lookup would otherwise read past its end silently."""
    limit = config.position_table_size
    if limit is not None and n > limit:
        raise ValueError(f"the input takes {n} positions (virtual tokens and prefix included), more than this "
                         f"{config.model_type} model's {limit} learned position embeddings")


_HF_LEAF = {"kernel": "weight", "scale": "weight", "embedding": "weight"}


def hf_name(path: tuple) -> str:
    """The transformers checkpoint name of a parameter whose module tree mirrors transformers'."""
    *mod, leaf = map(str, path)
    return ".".join([*mod, _HF_LEAF.get(leaf, leaf)])


def is_kernel(path: tuple) -> bool:
    return str(path[-1]) == "kernel"
