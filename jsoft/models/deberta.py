"""DeBERTa (`model_type` "deberta": deberta-base / large / xlarge, P-Tuning v2's DeBERTa) and DeBERTa-v2 / v3 /
mDeBERTa-v3 ("deberta-v2"): BERT's post-LN encoder whose attention adds disentangled relative-position terms,
content-to-position (c2p) and position-to-content (p2c), read from one shared table of relative distances
(log-bucketed in v3). v1 projects queries, keys and values with one fused `in_proj` (per head: query, key, value)
plus query and value biases, and the table through `pos_proj` / `pos_q_proj`.

Module tree mirrors transformers' (`deberta.encoder.layer.0.attention.self.query_proj` or `.in_proj`,
`deberta.encoder.rel_embeddings`, `pooler.dense`, `classifier`) so checkpoint names map one to one; torch nn.Linear
weights are `[out, in]`.

Prefixes (P-Tuning v2) are jsoft's, as in Liu et al.'s own DeBERTa code: prefix keys take the content score only
(no relative-position term). transformers' DeBERTa takes no `past_key_values`, so PEFT cannot run a prefix on it;
such adapters are saved in jsoft's format. Prompt Tuning and P-Tuning (embedding prompts) match PEFT."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft.models import heads, ops
from jsoft.models.base import TransformerConfig, default_positions, hf_name, is_kernel
from jsoft.models.bert import Layer, pooled_rows, take_query_rows, take_rows
from jsoft.models.layers import (
    DropoutRng,
    LayerNorm,
    ModelOutput,
    Precision,
    activation,
    attention_mask_4d,
    axes,
    dense,
    dot_product_attention,
    embed,
    merge_heads,
    self_attention_kv,
    split_heads,
)

TASKS = (None, "seq_cls", "token_cls")
BASE_PREFIX = "deberta"
POSITION_TERMS = ("c2p", "p2c")


@dataclasses.dataclass
class Config(TransformerConfig):
    embedding_size: int = 0  # word embedding width (projected to hidden_size when it differs)
    max_positions: int = 512
    position_biased_input: bool = True  # absolute position embeddings added to the input (v3: False)
    type_vocab_size: int = 0
    inner_size: int = 3072
    activation: str = "gelu"
    layer_norm_eps: float = 1e-7
    hidden_dropout: float = 0.1
    attn_dropout: float = 0.1
    relative_attention: bool = False
    position_buckets: int = -1  # > 0: log buckets (v3: 256)
    max_relative_positions: int = 512
    pos_att_type: tuple[str, ...] = ()
    share_att_key: bool = False  # the relative table goes through query_proj / key_proj (v3)
    norm_rel_ebd: bool = False  # LayerNorm over the relative table
    conv_kernel_size: int = 0  # > 0: a convolution beside the first layer (deberta-v2-xlarge / xxlarge)
    conv_groups: int = 1
    conv_act: str = "tanh"
    fused_qkv: bool = False  # v1: in_proj (per head: query, key, value) with q_bias and v_bias
    pooler_act: str = "gelu"
    pooler_dropout: float = 0.0
    classifier_dropout: float = 0.1

    @property
    def position_table_size(self) -> int | None:
        return self.max_positions if self.position_biased_input else None

    @property
    def attention_span(self) -> int:
        """Half the relative table: distances index rows span + d, clamped to [0, 2 span - 1]."""
        return self.position_buckets if self.position_buckets > 0 else self.max_relative_positions

    @property
    def score_scale(self) -> float:
        """transformers divides every score term by sqrt(head_dim * (1 + number of position terms))."""
        return float(self.head_dim * (1 + len(self.pos_att_type))) ** -0.5

    @classmethod
    def from_hf(cls, hf: dict) -> Config:
        if hf.get("model_type") == "deberta":
            if hf.get("talking_head"):
                raise ValueError("DeBERTa config talking_head=True is not supported by jsoft")
            v2_only = {"position_buckets": -1, "share_att_key": False, "conv_kernel_size": 0,
                       "attention_head_size": None, "norm_rel_ebd": "none"}
            hf = {**hf, **v2_only, "model_type": "deberta-v2"}
            c = cls.from_hf(hf)
            c.model_type, c.fused_qkv = "deberta", True
            return c
        d, h = hf["hidden_size"], hf["num_attention_heads"]
        head_dim = hf.get("attention_head_size") or d // h
        if head_dim * h != d:  # transformers' attention output projection reads hidden_size features
            raise ValueError(f"DeBERTa config hidden_size={d} must equal num_attention_heads={h} x "
                             f"attention_head_size={head_dim} (the attention output's width)")
        kinds = hf.get("pos_att_type") or []
        kinds = [x.strip() for x in kinds.lower().split("|")] if isinstance(kinds, str) else list(kinds)
        if unknown := [k for k in kinds if k not in POSITION_TERMS]:
            raise ValueError(f"DeBERTa config pos_att_type has {unknown}; jsoft (as transformers' DeBERTa) "
                             f"supports {list(POSITION_TERMS)}")
        max_positions = hf.get("max_position_embeddings", 512)
        max_relative = hf.get("max_relative_positions", -1)
        norm = [x.strip() for x in str(hf.get("norm_rel_ebd", "none")).lower().split("|")]
        embedding_size = hf.get("embedding_size") or d
        if hf.get("pooler_hidden_size", d) != d:
            raise ValueError(f"DeBERTa config pooler_hidden_size={hf['pooler_hidden_size']} differs from "
                             f"hidden_size={d}; transformers' classifier reads hidden_size, so only that is valid")
        cls_dropout = hf.get("cls_dropout")
        return cls(
            model_type="deberta-v2", vocab_size=hf["vocab_size"], hidden_size=d, num_layers=hf["num_hidden_layers"],
            num_heads=h, num_kv_heads=h, head_dim=head_dim, pad_token_id=hf.get("pad_token_id", 0),
            eos_token_id=hf.get("eos_token_id"), bos_token_id=hf.get("bos_token_id"), embedding_size=embedding_size,
            max_positions=max_positions, position_biased_input=hf.get("position_biased_input", True),
            type_vocab_size=hf.get("type_vocab_size", 0), inner_size=hf.get("intermediate_size", 4 * d),
            activation=hf.get("hidden_act", "gelu"), layer_norm_eps=hf.get("layer_norm_eps", 1e-7),
            hidden_dropout=hf.get("hidden_dropout_prob", 0.1), attn_dropout=hf.get("attention_probs_dropout_prob", 0.1),
            relative_attention=bool(hf.get("relative_attention", False)),
            position_buckets=hf.get("position_buckets", -1),
            max_relative_positions=max_relative if max_relative >= 1 else max_positions,
            pos_att_type=tuple(kinds), share_att_key=bool(hf.get("share_att_key", False)),
            norm_rel_ebd="layer_norm" in norm, conv_kernel_size=hf.get("conv_kernel_size", 0) or 0,
            conv_groups=hf.get("conv_groups", 1), conv_act=hf.get("conv_act", "tanh"),
            pooler_act=hf.get("pooler_hidden_act", "gelu"), pooler_dropout=hf.get("pooler_dropout", 0.0),
            classifier_dropout=float(hf.get("hidden_dropout_prob", 0.1) if cls_dropout is None else cls_dropout),
        )


def log_bucket(rel: np.ndarray, buckets: int, max_position: int) -> np.ndarray:
    """transformers' `make_log_bucket_position`, in float32 as torch computes it: distances within
    buckets / 2 stay, longer ones shrink logarithmically up to max_position."""
    sign = np.sign(rel)
    mid = buckets // 2
    abs_pos = np.where((rel < mid) & (rel > -mid), mid - 1, np.abs(rel))
    ratio = abs_pos.astype(np.float32) / np.float32(mid)
    log_pos = np.ceil(np.log(ratio) / np.log(np.float32((max_position - 1) / mid)) * np.float32(mid - 1)) + mid
    return np.where(abs_pos <= mid, rel, log_pos * sign).astype(np.int32)


def relative_rows(c: Config, T: int) -> np.ndarray:
    """`[2T - 1]`: the relative table row that each query - key distance -(T-1) .. T-1 of a T-token input reads
    (transformers' `build_relative_position`, then c2p's clamp to the table)."""
    deltas = np.arange(-(T - 1), T)
    rows = log_bucket(deltas, c.position_buckets, c.max_relative_positions) if c.position_buckets > 0 else deltas
    span = c.attention_span
    return np.clip(rows + span, 0, 2 * span - 1)


def relative_index(rows_of_distance: jax.Array, q_pos, T: int) -> jax.Array:
    """`[B|1, 1, Tq, T]`: the row (of `relative_rows`) that query position `q_pos [B|1, Tq]` reads for each key."""
    return rows_of_distance[q_pos[:, None, :, None] - jnp.arange(T)[None, None, None, :] + (T - 1)]


class Embeddings(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        e = c.embedding_size
        self.word_embeddings = embed(c.vocab_size, e, p, rngs=rngs)
        self.position_embeddings = (embed(c.max_positions, e, p, rngs=rngs, names=(None, "embed"))
                                    if c.position_biased_input else None)
        self.token_type_embeddings = (embed(c.type_vocab_size, e, p, rngs=rngs, names=(None, "embed"))
                                      if c.type_vocab_size > 0 else None)
        self.embed_proj = dense(e, c.hidden_size, (None, "embed"), p, bias=False, rngs=rngs) \
            if e != c.hidden_size else None
        self.LayerNorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)

    def __call__(self, inputs_embeds, position_ids, token_type_ids, mask_BxT, drop: DropoutRng):
        x = inputs_embeds
        if self.position_embeddings is not None:
            x = x + self.position_embeddings(position_ids)
        if self.token_type_embeddings is not None:
            x = x + self.token_type_embeddings(token_type_ids)
        if self.embed_proj is not None:
            x = self.embed_proj(x)
        x = self.LayerNorm(x) * mask_BxT[..., None]  # transformers zeroes the padded slots
        return drop(x.astype(self.dtype), self.c.hidden_dropout)


class DisentangledSelfAttention(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        d, names = c.hidden_size, ("embed", "joined_kv")
        c2p, p2c = c.relative_attention and "c2p" in c.pos_att_type, c.relative_attention and "p2c" in c.pos_att_type
        if c.fused_qkv:  # v1
            self.in_proj = dense(d, 3 * d, names, p, bias=False, rngs=rngs)
            self.q_bias = nnx.Param(jnp.zeros((d,), p.param_dtype), **axes("joined_kv"))
            self.v_bias = nnx.Param(jnp.zeros((d,), p.param_dtype), **axes("joined_kv"))
            self.pos_proj = dense(d, d, names, p, bias=False, rngs=rngs) if c2p else None
            self.pos_q_proj = dense(d, d, names, p, rngs=rngs) if p2c else None
            return
        self.query_proj, self.key_proj, self.value_proj = (dense(d, d, names, p, rngs=rngs) for _ in range(3))
        separate = not c.share_att_key
        self.pos_key_proj = dense(d, d, names, p, rngs=rngs) if separate and c2p else None
        self.pos_query_proj = dense(d, d, names, p, rngs=rngs) if separate and p2c else None

    def position_projections(self):
        """(c2p's projection of the table to keys, p2c's to queries)."""
        c = self.c
        if c.fused_qkv:
            return self.pos_proj, self.pos_q_proj
        if c.share_att_key:
            return self.key_proj, self.query_proj
        return self.pos_key_proj, self.pos_query_proj

    def qkv(self, x, rows):
        """Queries (at `rows` only, when given), keys and values, `[B, T, H, hd]`."""
        H = self.c.num_heads
        if not self.c.fused_qkv:
            q = split_heads(self.query_proj(x if rows is None else take_rows(x, rows)), H)
            return (q, *(split_heads(f(x), H) for f in (self.key_proj, self.value_proj)))
        qkv = self.in_proj(x)  # each head's slice holds its query, key and value
        q, k, v = jnp.split(split_heads(qkv, H), 3, axis=-1)
        q = q if rows is None else jnp.split(split_heads(take_rows(qkv, rows), H), 3, axis=-1)[0]
        return (q + split_heads(self.q_bias[...], H).astype(q.dtype), k,
                v + split_heads(self.v_bias[...], H).astype(v.dtype))

    def position_scores(self, q, k, rel_BxHxTqxT, rel_embeddings) -> jax.Array:
        """`[B, H, Tq, T]`: c2p (the query against the key's distance) plus p2c (the key against the query's
        distance), unscaled. Both read the table row of the same query - key distance."""
        H, score = self.c.num_heads, 0.0
        to_keys, to_queries = self.position_projections()
        if "c2p" in self.c.pos_att_type:
            pos_k = split_heads(to_keys(rel_embeddings), H)
            c2p = ops.einsum("bthd,rhd->bhtr", q, pos_k, out_dtype=jnp.float32)  # [B, H, Tq, R]
            score = score + jnp.take_along_axis(c2p, rel_BxHxTqxT, axis=-1)
        if "p2c" in self.c.pos_att_type:
            pos_q = split_heads(to_queries(rel_embeddings), H)
            p2c = ops.einsum("bshd,rhd->bhrs", k, pos_q, out_dtype=jnp.float32)  # [B, H, R, T]
            score = score + jnp.take_along_axis(p2c, rel_BxHxTqxT, axis=-2)
        return score

    def __call__(self, x, mask, *, layer, rel_index, rel_embeddings, prefix_kv, prefix_mask, drop: DropoutRng,
                 rows=None):
        """`rows [B, K]`: queries only at those tokens (keys and values at all of them)."""
        c, B = self.c, x.shape[0]
        if rows is not None:
            mask = take_query_rows(mask, rows)
        q, k, v = self.qkv(x, rows)
        bias = None
        if c.relative_attention and c.pos_att_type:
            rel = drop(rel_embeddings, c.hidden_dropout)
            index = jnp.broadcast_to(rel_index, (B, c.num_heads, q.shape[1], k.shape[1]))
            bias = self.position_scores(q, k, index, rel) * c.score_scale
            if prefix_kv is not None:  # prefix keys: the content score only
                bias = jnp.pad(bias, ((0, 0), (0, 0), (0, 0), (prefix_kv.shape[3], 0)))
        k, v, mask, _ = self_attention_kv(k, v, mask, layer=layer, cache=None, prefix_kv=prefix_kv,
                                          prefix_mask=prefix_mask)
        out = dot_product_attention(q, k, v, mask, scale=c.score_scale, bias=bias, dropout=drop,
                                    dropout_rate=c.attn_dropout)
        return merge_heads(out)


class Conv1d(nnx.Module):
    """torch's nn.Conv1d over the sequence, 'same' padding; the kernel `[width, in / groups, out]`."""

    def __init__(self, d: int, width: int, groups: int, p: Precision, rngs: nnx.Rngs):
        if d % groups:
            raise ValueError(f"DeBERTa config conv_groups={groups} does not divide hidden_size={d}")
        self.groups, self.pad, self.dtype = groups, (width - 1) // 2, p.dtype
        init = nnx.initializers.normal(0.02)
        self.kernel = nnx.Param(init(rngs.params(), (width, d // groups, d), p.param_dtype),
                                **axes(None, None, "embed"))
        self.bias = nnx.Param(jnp.zeros((d,), p.param_dtype), **axes("embed"))

    def __call__(self, x_BxTxD):
        y = jax.lax.conv_general_dilated(x_BxTxD.astype(self.dtype), self.kernel[...].astype(self.dtype), (1,),
                                         [(self.pad, self.pad)], dimension_numbers=("NWC", "WIO", "NWC"),
                                         feature_group_count=self.groups, preferred_element_type=jnp.float32)
        return y + self.bias[...].astype(jnp.float32)


class ConvLayer(nnx.Module):
    """transformers' ConvLayer: LayerNorm(first layer's output + act(conv(embeddings))), padded slots zeroed."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c, self.dtype = c, p.dtype
        self.conv = Conv1d(c.hidden_size, c.conv_kernel_size, c.conv_groups, p, rngs)
        self.LayerNorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p)
        self.act = activation(c.conv_act)

    def __call__(self, embeds_BxTxD, residual, mask_BxT, drop: DropoutRng, rows=None):
        out = self.conv(embeds_BxTxD)
        if rows is not None:
            out, mask_BxT = take_rows(out, rows), jnp.take_along_axis(mask_BxT, rows, axis=1)
        keep = mask_BxT[..., None].astype(bool)
        out = self.act(drop(jnp.where(keep, out, 0.0), self.c.hidden_dropout))
        return (self.LayerNorm(residual + out) * keep).astype(self.dtype)


class Encoder(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.layer = nnx.List([Layer(c, p, rngs, DisentangledSelfAttention) for _ in range(c.num_layers)])
        self.rel_embeddings = embed(2 * c.attention_span, c.hidden_size, p, rngs=rngs, names=(None, "embed")) \
            if c.relative_attention else None
        self.LayerNorm = LayerNorm(c.hidden_size, c.layer_norm_eps, p) if c.norm_rel_ebd else None
        self.conv = ConvLayer(c, p, rngs) if c.conv_kernel_size > 0 else None

    def __call__(self, x, mask_BxT, rows=None, *, prefix_kv, prefix_mask, drop: DropoutRng):
        """`rows [B, K]`: the last layer computes only those tokens' outputs, `[B, K, D]`."""
        T = x.shape[1]
        mask = attention_mask_4d(mask_BxT, T, T, causal=False)
        rel_embeddings = rel_index = table = None
        if self.rel_embeddings is not None:
            # only the table rows this length reaches (a 128-token input reads 255 of deberta-v3's 512): the
            # position terms multiply each query and key by those rows alone
            reach = relative_rows(self.c, T)
            lo, hi = int(reach.min()), int(reach.max())
            rel_embeddings = self.rel_embeddings.embedding[lo:hi + 1]
            if self.LayerNorm is not None:
                rel_embeddings = self.LayerNorm(rel_embeddings)
            rel_embeddings = rel_embeddings.astype(x.dtype)
            table = jnp.asarray(reach - lo, jnp.int32)
            rel_index = relative_index(table, jnp.arange(T)[None], T)
        embeds, last = x, len(self.layer) - 1
        for i, layer in enumerate(self.layer):
            sub = rows if i == last else None
            index = rel_index if sub is None or table is None else relative_index(table, sub, T)
            x = layer(x, mask, layer=i, rel_index=index, rel_embeddings=rel_embeddings, prefix_kv=prefix_kv,
                      prefix_mask=prefix_mask, drop=drop, **({} if sub is None else {"rows": sub}))
            if i == 0 and self.conv is not None:
                x = self.conv(embeds, x, mask_BxT, drop, sub)
        return x


class ContextPooler(nnx.Module):
    """transformers' ContextPooler: dropout, dense, activation on the first token."""

    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.dense = dense(c.hidden_size, c.hidden_size, ("embed", None), p, rngs=rngs)
        self.act = activation(c.pooler_act)

    def __call__(self, h_BxTxD, cls_index_B, drop: DropoutRng):
        first = heads.pool_at(h_BxTxD, 0 if cls_index_B is None else cls_index_B)
        return self.act(self.dense(drop(first, self.c.pooler_dropout)).astype(jnp.float32))


class DebertaV2Model(nnx.Module):
    def __init__(self, c: Config, p: Precision, rngs: nnx.Rngs):
        self.c = c
        self.embeddings = Embeddings(c, p, rngs)
        self.encoder = Encoder(c, p, rngs)

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                 inputs_embeds=None, prefix_kv=None, prefix_mask=None, drop=None, cls_index=None,
                 pooled_only: bool = False):
        """The hidden states; `pooled_only`: the last layer computes only the pooled token, `[B, 1, D]`."""
        drop = drop or DropoutRng(None)
        if inputs_embeds is None:
            inputs_embeds = self.embeddings.word_embeddings(input_ids)
        B, T = inputs_embeds.shape[:2]
        if position_ids is None:  # absolute positions (position_biased_input) count a prefix as past length
            position_ids = default_positions(B, T, prefix_kv, None, self.c)
        if token_type_ids is None:
            token_type_ids = jnp.zeros((B, T), jnp.int32)
        mask = jnp.ones((B, T), jnp.int32) if attention_mask is None else jnp.asarray(attention_mask)
        x = self.embeddings(inputs_embeds, position_ids, token_type_ids, mask.astype(inputs_embeds.dtype), drop)
        rows = pooled_rows(B, cls_index) if pooled_only else None
        return self.encoder(x, mask, rows, prefix_kv=prefix_kv, prefix_mask=prefix_mask, drop=drop)


class DebertaV2(nnx.Module):
    """DeBERTa-v2 with the head for `task` (None, seq_cls, token_cls)."""

    cls_token = "first"  # the pooler reads [CLS], slot 0 (`cls_index` overrides it)
    peft_runs_prefix = False  # transformers' DeBERTa takes no past_key_values

    def __init__(self, c: Config, task: str | None, num_labels: int | None, p: Precision, rngs: nnx.Rngs):
        self.config, self.task, self.num_labels = c, task, num_labels
        self.deberta = DebertaV2Model(c, p, rngs)
        if task == "seq_cls":
            self.pooler = ContextPooler(c, p, rngs)
        if task in ("seq_cls", "token_cls"):
            self.classifier = dense(c.hidden_size, num_labels, ("embed", None), p, rngs=rngs)
        self.head_name = "classifier" if task in ("seq_cls", "token_cls") else None

    @property
    def word_embeddings(self) -> nnx.Embed:
        return self.deberta.embeddings.word_embeddings

    @property
    def adapter_carries(self) -> tuple[str, ...]:
        """Frozen modules a PEFT adapter carries (as `modules_to_save`): v3's pretraining checkpoints hold no
        pooler, and transformers would initialise its own at random, so PEFT gets jsoft's."""
        return ("pooler",) if self.task == "seq_cls" else ()

    def __call__(self, input_ids=None, attention_mask=None, position_ids=None, token_type_ids=None,
                 inputs_embeds=None, prefix_kv=None, prefix_mask=None, cache=None,
                 dropout_rng: jax.Array | None = None, head=None, cls_index=None) -> ModelOutput:
        """`head` replaces the classifier (a PEFT adapter's trained copy of it); `cls_index [B]` is the slot the
        pooler reads (default 0, [CLS]). For seq_cls the last layer computes only that slot, so
        `last_hidden_state` is `[B, 1, D]`."""
        if cache is not None:
            raise ValueError("DeBERTa is an encoder: it takes no decoding cache (cache must be None)")
        drop = DropoutRng(dropout_rng)
        seq_cls = self.task == "seq_cls"
        h = self.deberta(input_ids, attention_mask, position_ids, token_type_ids, inputs_embeds, prefix_kv,
                         prefix_mask, drop, cls_index, pooled_only=seq_cls)
        rate = self.config.classifier_dropout
        if seq_cls:
            pooled = self.pooler(h, None, drop)
            return ModelOutput(logits=(head or self.classifier)(drop(pooled, rate)).astype(jnp.float32),
                               last_hidden_state=h, pooler_output=pooled)
        if self.task == "token_cls":
            logits = (head or self.classifier)(drop(h, self.config.hidden_dropout)).astype(jnp.float32)
            return ModelOutput(logits=logits, last_hidden_state=h)
        return ModelOutput(last_hidden_state=h)


def build(c: Config, task, num_labels, p: Precision, rngs: nnx.Rngs) -> DebertaV2:
    return DebertaV2(c, task, num_labels, p, rngs)


def checkpoint_key(path: tuple) -> tuple[str, bool]:
    # every kernel is a torch nn.Linear [out, in] or nn.Conv1d [out, in / groups, width]: reversed axes
    return hf_name(path), is_kernel(path)
