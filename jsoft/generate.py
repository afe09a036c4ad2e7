"""Decoding with a preallocated KV cache: greedy, sampling (temperature, top-k, top-p) and beam
search, each one jit-compiled `while_loop` that stops early (every row hit EOS; for beams: no
running beam can beat the finished ones, as in transformers). transformers' repetition penalty,
no-repeat n-grams and min_new_tokens apply to all three.

Semantics follow transformers' `generate` (and PEFT's on a prompt-learning model):
  * decoder-only: returns `[B, T + max_new_tokens]`, the input ids then the new tokens; a row
    that emitted EOS emits `pad_token_id` after it. Batches are left-padded; every adapter is
    decoded as a key/value prefix (`PeftModel.prompt_cache`: an embedding prompt's keys and values
    do not depend on the input), so a row's soft prompt sits right before its first real token,
    its tokens take positions V, V+1, ... and each row equals that row generated alone;
  * encoder-decoder: returns the decoder ids `[B, 1 + max_new_tokens]` starting with
    `decoder_start_token_id`; the encoder runs once.
The prompt is prefilled in one call (all but its last token, whose logits are the only ones
needed, so the LM head never runs over the prompt), then one token per step. Sampling draws each
row from its own key (`row_keys`: the seed and the row's index), so a row samples the same tokens
whatever it is batched with.

`decode(base, inputs, keys, knobs, cfg)` is the loop on a bare backbone for callers that build
the backbone inputs themselves (`jsoft.multitask`); `generate` is the `PeftModel` front end.

CLI, printing one JSON line per prompt (or writing them to --output):
    python -m jsoft.generate --model MODEL_DIR --adapter ADAPTER_DIR --prompt "some text" \\
        [--input prompts.jsonl] [--max-new-tokens 32] [--num-beams 1] [--do-sample --top-p 0.9] \\
        [--repetition-penalty 1.2] [--no-repeat-ngram-size 3] [--min-new-tokens 5] \\
        [--output out.jsonl]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import sys
import threading
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft.models.base import compute_dtype, token_ids
from jsoft.models.layers import KVCache

Array = jax.Array
NEG = -1.0e9  # transformers' "impossible" beam score
Step = Callable[[Array, Array, KVCache], tuple[Array, KVCache]]  # (tokens [R], step, cache) -> (logits [R, V], cache)


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """The static part of a `generate` call: a new value compiles a new program (top_p only
    says whether nucleus filtering runs; its value, like the other knobs, is an argument)."""

    max_new_tokens: int = 20
    do_sample: bool = False
    top_k: int = 0
    top_p: bool = False
    num_beams: int = 1
    num_eos: int = 0
    output_scores: bool = False
    repetition_penalty: bool = False  # whether it runs (its value is a knob)
    no_repeat_ngram_size: int = 0
    min_new_tokens: int = 0
    num_return_sequences: int = 1  # beam search: the best this many beams per row, best first
    forced_bos: bool = False  # whether a token is forced when the sequence so far is one token long
    forced_eos: bool = False  # whether an EOS is forced as the last new token

    @property
    def constrained(self) -> bool:
        """Whether a logits processor reads the tokens so far (or their count)."""
        return (self.repetition_penalty or self.no_repeat_ngram_size > 0 or self.min_new_tokens > 0 or self.forced_bos
                or self.forced_eos)


def knobs(temperature: float = 1.0, top_p: float = 1.0, length_penalty: float = 1.0,
          eos_token_ids: Sequence[int] = (), pad_token_id: int = 0, repetition_penalty: float = 1.0,
          forced_bos_token_ids: Sequence[int] = (), forced_eos_token_ids: Sequence[int] = (),
          forced_eos_step: int | Sequence[int] = 0) -> dict[str, Array]:
    """The dynamic part of a `generate` call (changing it does not recompile). `forced_eos_step`: the new token
    (0-based) that is forced to an EOS; one per row where rows stop at different lengths (`jsoft.multitask`)."""
    ids = lambda x: jnp.asarray(x, jnp.int32).reshape(-1)
    return {"temperature": jnp.float32(temperature), "top_p": jnp.float32(top_p),
            "length_penalty": jnp.float32(length_penalty), "eos": ids(eos_token_ids),
            "pad": jnp.int32(pad_token_id), "repetition_penalty": jnp.float32(repetition_penalty),
            "forced_bos": ids(forced_bos_token_ids), "forced_eos": ids(forced_eos_token_ids),
            "forced_eos_step": ids(forced_eos_step)[:, None]}


def row_keys(seeds_B: Array, index_B: Array) -> Array:
    """One PRNG key per row: the `index`-th row of a call seeded with `seed`."""
    return jax.vmap(lambda s, j: jax.random.fold_in(jax.random.key(s), j))(
        jnp.asarray(seeds_B, jnp.uint32), jnp.asarray(index_B, jnp.uint32))


def generate(pm, input_ids, attention_mask=None, *, max_new_tokens: int | None = None, max_length: int | None = None,
             do_sample: bool = False, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0,
             seed: int | Sequence[int] = 0, num_beams: int = 1, num_return_sequences: int = 1,
             length_penalty: float = 1.0, eos_token_id: int | Sequence[int] | None = None,
             pad_token_id: int | None = None, adapter_names: Sequence[str] | None = None,
             output_scores: bool = False, repetition_penalty: float = 1.0, no_repeat_ngram_size: int = 0,
             min_new_tokens: int = 0, forced_bos_token_id: int | Sequence[int] | None = None,
             forced_eos_token_id: int | Sequence[int] | None = None) -> Array | tuple[Array, Array]:
    """Generate with `pm` (a `jsoft.PeftModel` on a causal-LM or seq2seq-LM backbone).

    Lengths as transformers: `max_new_tokens` (default 20), or else `max_length`, the whole output's
    (the prompt's padded length for a decoder-only model, the start token for seq2seq, plus new tokens).
    `num_return_sequences` n: the n best beams of each row (best first; n <= num_beams), or n samples of
    each row (do_sample); output rows `b * n + j`.

    eos_token_id / pad_token_id default to the model config (pad: else the first EOS id, else 0);
    pass `eos_token_id=[]` to always generate `max_new_tokens`. `adapter_names` gives one adapter
    per row (default: the active one). `seed`: an int seeds row b with (seed, b); a list gives each
    row its own seed (row b then samples what it samples alone with that seed).
    `output_scores=True` (greedy or sampling) also returns the processed logits
    `[B, max_new_tokens, vocab]` each new token was chosen from (`[B * n, ...]` with n samples per row).
    `repetition_penalty`, `no_repeat_ngram_size` and `min_new_tokens` are transformers' logits processors,
    applied as it applies them (over the prompt's real tokens and what was generated; a decoder's
    start token for seq2seq), in greedy search, sampling and beam search. So are `forced_bos_token_id` (the only
    choice while the sequence so far is one token long: a seq2seq decoder's first new token) and
    `forced_eos_token_id` (an EOS id or ids, the only choices for the last new token), which default to the
    model config's (BART's config.json: `forced_eos_token_id=2`, and `forced_bos_token_id=0` for
    bart-large-cnn); `[]` turns one off."""
    mc = pm.base_model.config
    max_new_tokens = _new_token_count(max_new_tokens, max_length, np.shape(input_ids), mc.is_encoder_decoder)
    ids, mask = _checked_inputs(pm, input_ids, attention_mask, max_new_tokens)
    B = ids.shape[0]
    seeds = np.full(B, seed) if np.isscalar(seed) else np.asarray(seed)
    in_range = np.issubdtype(seeds.dtype, np.integer) and ((0 <= seeds) & (seeds < 2 ** 32)).all()
    if seeds.shape != (B,) or not in_range:
        raise ValueError(f"seed must be an int or one int per row ({B} rows), each in [0, 2**32); got {seed!r}")
    n = num_return_sequences
    if isinstance(n, bool) or not isinstance(n, int | np.integer) or n < 1:
        raise ValueError(f"num_return_sequences={n!r} must be an integer >= 1")
    if n > 1 and not do_sample and n > num_beams:
        raise ValueError(f"num_return_sequences={n} needs do_sample=True (n samples per row) or num_beams >= {n} "
                         f"(the n best beams); got num_beams={num_beams}")
    # sampling: each row n times, sample j of row b drawing from the key (seed, b * n + j), or (seeds[b], j)
    index = np.arange(B * n if do_sample else B) if np.isscalar(seed) else np.tile(np.arange(n if do_sample else 1), B)
    if do_sample and n > 1:
        ids, mask, seeds = np.repeat(ids, n, 0), np.repeat(mask, n, 0), np.repeat(seeds, n)
        adapter_names = None if adapter_names is None else [a for a in adapter_names for _ in range(n)]
        B = B * n
    if num_beams < 1 or (num_beams > 1 and (do_sample or output_scores)):
        raise ValueError(f"num_beams={num_beams}: must be >= 1, and beam search is deterministic here "
                         "(do_sample=False) without output_scores")
    if not repetition_penalty > 0:
        raise ValueError(f"repetition_penalty={repetition_penalty} must be > 0 (1.0: no penalty)")
    for name, value in (("no_repeat_ngram_size", no_repeat_ngram_size), ("min_new_tokens", min_new_tokens)):
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
            raise ValueError(f"{name}={value!r} must be an integer >= 0 (0: off)")
    if do_sample and not (temperature > 0 and 0 < top_p <= 1 and top_k >= 0):
        raise ValueError(f"sampling needs temperature > 0, 0 < top_p <= 1, top_k >= 0; got temperature="
                         f"{temperature}, top_p={top_p}, top_k={top_k}")
    if pm.adapters:
        names, rows = pm._names_and_rows(None if adapter_names is None else list(adapter_names), ids.shape[0])
    elif adapter_names is not None:
        raise ValueError(f"adapter_names={adapter_names!r} given but no adapter is loaded")
    else:  # a PeftModel without adapters generates with the backbone alone
        names, rows = (), None
    _check_decoding_positions(pm, names, ids.shape[1], max_new_tokens)
    eos = token_ids(mc.eos_token_id if eos_token_id is None else eos_token_id)
    forced_bos = token_ids(mc.forced_bos_token_id if forced_bos_token_id is None else forced_bos_token_id)
    forced_eos = token_ids(mc.forced_eos_token_id if forced_eos_token_id is None else forced_eos_token_id)
    if len(forced_bos) > 1:
        raise ValueError(f"forced_bos_token_id={forced_bos_token_id!r} must be one token id (or [] for none)")
    pad = pad_token_id if pad_token_id is not None else mc.pad_token_id
    pad = pad if pad is not None else (eos[0] if eos else 0)
    cfg = GenerationConfig(max_new_tokens=int(max_new_tokens), do_sample=bool(do_sample),
                           top_k=int(top_k) if do_sample else 0, top_p=bool(do_sample and top_p < 1.0),
                           num_beams=int(num_beams), num_eos=len(eos), output_scores=bool(output_scores),
                           repetition_penalty=repetition_penalty != 1.0, no_repeat_ngram_size=int(no_repeat_ngram_size),
                           min_new_tokens=int(min_new_tokens) if eos else 0,
                           num_return_sequences=int(n) if num_beams > 1 else 1, forced_bos=bool(forced_bos),
                           forced_eos=bool(forced_eos))
    k = knobs(temperature, top_p, length_penalty, eos, pad, repetition_penalty, forced_bos, forced_eos,
              max_new_tokens - 1)
    graphdef, state = nnx.split(pm)
    return _jitted(graphdef)(state, jnp.asarray(ids), jnp.asarray(mask), rows, row_keys(seeds, index), k, names, cfg)


def _check_decoding_positions(pm, names: tuple[str, ...], T: int, max_new_tokens: int) -> None:
    """Refuses a generation whose decoder would read past a learned position table (GPT-2, BART), which the
    jitted lookup would clamp silently: decoder-only, the virtual tokens, the T input tokens and all but the
    last new token; encoder-decoder, a decoder prefix's V, the start token and all but the last new token."""
    mc = pm.base_model.config
    limit = mc.position_table_size
    if limit is None:
        return
    adapters = [pm.adapters[n] for n in names]
    if mc.is_encoder_decoder:
        V = max((a.config.num_virtual_tokens for a in adapters if a.is_prefix), default=0)
        used, what = V + max_new_tokens, f"a decoder prefix of {V} + max_new_tokens={max_new_tokens}"
    else:
        V = max((a.config.num_virtual_tokens for a in adapters), default=0)
        used = V + T + max_new_tokens - 1
        what = f"{V} virtual tokens + {T} input tokens + max_new_tokens={max_new_tokens} - 1"
    if used > limit:
        raise ValueError(f"{what} = {used} positions exceed this {mc.model_type} model's {limit} learned positions")


def _new_token_count(max_new_tokens: int | None, max_length: int | None, shape: tuple, encoder_decoder: bool) -> int:
    """transformers' rule: max_new_tokens when given, else max_length less what the output starts with."""
    if max_new_tokens is not None:
        return max_new_tokens
    if max_length is None:
        return 20
    lead = 1 if encoder_decoder else (shape[-1] if len(shape) == 2 else 0)
    if max_length <= lead:
        raise ValueError(f"max_length={max_length} leaves no room for new tokens: the output starts with {lead} "
                         f"{'token' if encoder_decoder else 'prompt tokens'}; raise it or pass max_new_tokens")
    return max_length - lead


def _checked_inputs(pm, input_ids, attention_mask, max_new_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    base = pm.base_model
    if base.task not in ("causal_lm", "seq2seq_lm"):
        raise ValueError(f"generate needs a model loaded with task='causal_lm' or 'seq2seq_lm', not {base.task!r}")
    ids = np.asarray(input_ids)
    if ids.ndim != 2 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"input_ids must be an integer array [batch, length], got {ids.dtype} {ids.shape}")
    mask = np.ones(ids.shape, np.int32) if attention_mask is None else np.asarray(attention_mask, np.int32)
    if mask.shape != ids.shape:
        raise ValueError(f"attention_mask has shape {mask.shape} but input_ids {ids.shape}")
    if not base.config.is_encoder_decoder and (np.any(np.diff(mask, axis=1) < 0) or not mask[:, -1].all()):
        raise ValueError("decoder-only generation needs left padding: each attention_mask row must be 0...0 1...1 "
                         "(tokenizer.padding_side = 'left')")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens={max_new_tokens} must be >= 1")
    return ids.astype(np.int32), mask


_JITTED: list[tuple[nnx.GraphDef, Callable]] = []  # (graphdef, its jitted `_generate`), most recent last
_JITTED_LOCK = threading.Lock()


def _jitted(graphdef: nnx.GraphDef) -> Callable:
    """`_generate` jitted for a PeftModel's `graphdef`, which takes the model's state and returns none of
    it. (`nnx.jit` also returns the state it was given, and XLA copied every weight into that output at
    each call: 494 MB for GPT-2 small, about 75 ms of a 1.5 s batch-1 generate.) A graphdef holds
    unhashable configs, so it cannot be a static argument; equal graphdefs share one jitted function."""
    with _JITTED_LOCK:
        for i, (g, fn) in enumerate(_JITTED):
            if g == graphdef:
                _JITTED.append(_JITTED.pop(i))
                return fn
        fn = jax.jit(functools.partial(_generate, graphdef), static_argnames=("names", "cfg"))
        _JITTED.append((graphdef, fn))
        del _JITTED[:-8]
        return fn


def _generate(graphdef, state, input_ids, attention_mask, rows, keys, knobs: dict, names: tuple[str, ...],
              cfg: GenerationConfig):
    pm = nnx.merge(graphdef, state)
    inputs = pm.prepare_generation(input_ids, attention_mask, names, rows)
    new, scores = decode(pm.base_model, inputs, keys, knobs, cfg)
    B = input_ids.shape[0]
    c = pm.base_model.config
    lead = jnp.full((B, 1), c.decoder_start_token_id, jnp.int32) if c.is_encoder_decoder else input_ids
    lead = jnp.repeat(lead, cfg.num_return_sequences, axis=0)
    seqs = jnp.concatenate([lead, new], axis=1)
    return (seqs, scores) if cfg.output_scores else seqs


def decode(base, inputs: dict[str, Array], keys_B: Array, knobs: dict, cfg: GenerationConfig
           ) -> tuple[Array, Array | None]:
    """The decoding loop on a backbone: new tokens `[B, max_new_tokens]` (pad after EOS; beam search: `[B * n, ...]`,
    the n = `cfg.num_return_sequences` best beams of each row) and, with
    `cfg.output_scores`, their processed logits. `inputs` are the backbone's arguments for the
    batch (what `PeftModel.prepare_generation` returns): decoder-only `input_ids`, a left-padded
    `attention_mask`, optional `prefix_kv`/`prefix_mask`; encoder-decoder `input_ids` or
    `inputs_embeds`, `attention_mask` and the decoder's prefixes. `keys_B`: `row_keys`."""
    build = _seq2seq if base.config.is_encoder_decoder else _causal
    step, cache, first, history = build(base, inputs, cfg)
    if cfg.num_beams > 1:
        return _beam_search(step, cache, first, first.shape[0] // cfg.num_beams, knobs, cfg, history), None
    return _sample(step, cache, first, keys_B, knobs, cfg, history)


# --------------------------------------------------------------------------- backbones as step functions


def _repeat(x: Array | None, n: int, axis: int = 0) -> Array | None:
    """Each row n times in a row (beam b of row r is row r * n + b)."""
    return x if x is None or n == 1 else jnp.repeat(x, n, axis=axis)


def _cache(base, num_layers: int, R: int, slots: int, prefix_kv: Array | None,
           prefix_mask: Array | None) -> tuple[KVCache, Array | None]:
    """A cache of `slots` after the decoder's self-attention prefix (prefix slots first, so the
    loop never concatenates it), and that prefix's key mask `[R, V]` (None without a prefix)."""
    c, dtype = base.config, compute_dtype(base)
    if prefix_kv is None:
        return KVCache.zeros(num_layers, R, slots, *c.cache_layout, dtype, states=c.recurrent_states(R, dtype),
                             values=c.cache_values, cacheless=c.cacheless_layers), None
    V = prefix_kv.shape[3]
    mask = jnp.ones((R, V), jnp.int32) if prefix_mask is None else prefix_mask.astype(jnp.int32)
    return KVCache.from_prefix(prefix_kv, V + slots, dtype, values=c.cache_values), mask


def pads_first(embeds_BxSxD: Array, mask_BxS: Array) -> tuple[Array, Array]:
    """Each row's slots reordered so that every masked one comes first and the real ones follow in their order (a
    stable sort of the mask): `[prompt pads, prompt, pads, tokens]` becomes `[pads, prompt, tokens]`."""
    order = jnp.argsort(mask_BxS, axis=1, stable=True)
    return jnp.take_along_axis(embeds_BxSxD, order[..., None], 1), jnp.take_along_axis(mask_BxS, order, 1)


History = tuple[Array, Array]  # the tokens before the first new one, as transformers' input_ids [R, P]; real ones


def _causal(base, inputs: dict, cfg: GenerationConfig) -> tuple[Step, KVCache, Array, History]:
    nb, N = cfg.num_beams, cfg.max_new_tokens
    ids, mask = _repeat(inputs["input_ids"], nb), _repeat(inputs["attention_mask"], nb)
    R, T = ids.shape
    c = base.config
    # a model with recurrent layers reads an embedding prompt in its first pass (`prompt_embeds`, left-padded, and
    # `prompt_mask`) where others start from its keys and values (`prefix_kv`)
    prompt_embeds, prompt_mask = _repeat(inputs.get("prompt_embeds"), nb), _repeat(inputs.get("prompt_mask"), nb)
    Vp = 0 if prompt_embeds is None else prompt_embeds.shape[1]
    prompt = T + Vp + (0 if inputs.get("prefix_kv") is None else inputs["prefix_kv"].shape[3])
    if getattr(c, "rope_type", None) == "dynamic" and prompt > c.max_positions:
        # transformers rotates a prompt's keys with the frequencies of its whole length; the prefill here
        # stops one token short of it, so past max_position_embeddings the two would differ
        raise ValueError(f"a prompt of {prompt} positions (virtual tokens included) exceeds max_position_embeddings="
                         f"{c.max_positions} of this model's dynamic RoPE; jsoft generates from prompts within it")
    cache, prefix_mask = _cache(base, c.num_layers, R, Vp + T + N - 1, _repeat(inputs.get("prefix_kv"), nb, 2),
                                _repeat(inputs.get("prefix_mask"), nb))
    # slot t of row r holds position start[r] + t: real tokens count from the row's own first token,
    # after its prefix; left pads get clipped positions and are masked out
    start = -(T - mask.sum(-1, dtype=jnp.int32))
    masks = [mask, jnp.ones((R, N - 1), mask.dtype)]
    if prefix_mask is not None:
        start = start + prefix_mask.sum(-1, dtype=jnp.int32)
        masks.insert(0, prefix_mask.astype(mask.dtype))
    if Vp:
        # the first pass reads [pads, prompt, tokens but the last]: a recurrent layer's state then starts from the
        # row's prompt at its first real token, as for the row alone
        embeds, first_mask = pads_first(
            jnp.concatenate([prompt_embeds.astype(compute_dtype(base)), base.word_embeddings(ids[:, :-1])], 1),
            jnp.concatenate([prompt_mask.astype(mask.dtype), mask[:, :-1]], axis=1))
        start = start + prompt_mask.sum(-1, dtype=jnp.int32)
        masks = [first_mask, mask[:, -1:], *masks[1:]]
    mask_S = jnp.concatenate(masks, axis=1)

    def forward(ids_RxT, positions_RxT, cache, embeds=None):
        return base(input_ids=ids_RxT, inputs_embeds=embeds, attention_mask=mask_S, position_ids=positions_RxT,
                    cache=cache)

    if Vp:  # virtual tokens at positions 0.., the tokens after them
        cache = forward(None, jnp.maximum(jnp.cumsum(first_mask, axis=1, dtype=jnp.int32) - 1, 0), cache, embeds).cache
    elif T > 1:  # the logits of this call are unused, so XLA drops the LM head
        cache = forward(ids[:, :-1], jnp.maximum(start[:, None] + jnp.arange(T - 1), 0), cache).cache

    def step(tokens_R, i, cache):
        out = forward(tokens_R[:, None], (start + T - 1 + i)[:, None], cache)
        return out.logits[:, -1], out.cache

    return step, cache, ids[:, -1], (ids, mask.astype(bool))


def _seq2seq(base, inputs: dict, cfg: GenerationConfig) -> tuple[Step, KVCache, Array, History]:
    nb, N = cfg.num_beams, cfg.max_new_tokens
    enc = base.encode(attention_mask=inputs["attention_mask"], **{k: inputs[k] for k in (
        "input_ids", "inputs_embeds", "encoder_prefix_kv", "prefix_mask", "position_ids") if k in inputs})
    enc, enc_mask = _repeat(enc, nb), _repeat(inputs["attention_mask"], nb)
    cross_prefix_kv = _repeat(inputs.get("cross_prefix_kv"), nb, 2)
    prefix_mask = _repeat(inputs.get("prefix_mask"), nb)  # the cross-attention prefix's too
    R = enc.shape[0]
    c = base.config
    cache, self_mask = _cache(base, c.num_decoder_layers, R, N, _repeat(inputs.get("prefix_kv"), nb, 2), prefix_mask)
    dec_mask = jnp.ones((R, N), jnp.int32)
    if self_mask is not None:
        dec_mask = jnp.concatenate([self_mask, dec_mask], axis=1)

    cross_kv = base.cross_attention_kv(enc, enc_mask, cross_prefix_kv, prefix_mask)  # once, not per token

    def step(tokens_R, i, cache):
        out = base.decode(decoder_input_ids=tokens_R[:, None], decoder_attention_mask=dec_mask,
                          prefix_mask=prefix_mask, cache=cache, cross_kv=cross_kv)
        return out.logits[:, -1], out.cache

    start = jnp.full((R, 1), c.decoder_start_token_id, jnp.int32)
    return step, cache, start[:, 0], (start, jnp.ones((R, 1), bool))


# --------------------------------------------------------------------------- token choice


def process_logits(logits_BxV: Array, knobs: dict, cfg: GenerationConfig) -> Array:
    """transformers' sampling warpers in its order: temperature, top-k, top-p (nucleus)."""
    x = logits_BxV.astype(jnp.float32) / knobs["temperature"]
    if 0 < cfg.top_k < x.shape[-1]:
        kth = jax.lax.top_k(x, cfg.top_k)[0][:, -1:]
        x = jnp.where(x < kth, -jnp.inf, x)
    if cfg.top_p:  # drop the least likely tokens whose total mass is <= 1 - top_p; keep at least one
        order = jnp.argsort(x, axis=-1)
        cum = jnp.cumsum(jax.nn.softmax(jnp.take_along_axis(x, order, -1), -1), -1)
        drop_sorted = (cum <= 1.0 - knobs["top_p"]).at[:, -1].set(False)
        drop = jnp.zeros_like(drop_sorted).at[jnp.arange(x.shape[0])[:, None], order].set(drop_sorted)
        x = jnp.where(drop, -jnp.inf, x)
    return x


def constrain(x_RxV: Array, tokens_RxL: Array, real_RxL: Array, length: Array, new: Array, knobs: dict,
              cfg: GenerationConfig) -> Array:
    """transformers' logits processors, in its order, on logits (log-probabilities in beam search) given
    the sequence so far, `tokens[:, :length]` (`real`: the tokens a repetition penalty counts; pads are not),
    of which `new` were generated: repetition penalty, no repeated n-grams, at least min_new_tokens, forced BOS
    and EOS."""
    R, V = x_RxV.shape
    rows = jnp.arange(R)[:, None]
    before = jnp.arange(tokens_RxL.shape[1])[None] < length
    if cfg.repetition_penalty:
        seen = jnp.zeros((R, V), bool).at[rows, tokens_RxL].max(real_RxL & before)
        p = knobs["repetition_penalty"]
        x_RxV = jnp.where(seen, jnp.where(x_RxV < 0, x_RxV * p, x_RxV / p), x_RxV)
    if cfg.no_repeat_ngram_size:
        x_RxV = jnp.where(_repeated_ngrams(tokens_RxL, length, cfg.no_repeat_ngram_size, V), -jnp.inf, x_RxV)
    if cfg.min_new_tokens:
        eos_V = jnp.zeros((V,), bool).at[knobs["eos"]].set(True)
        x_RxV = jnp.where((new < cfg.min_new_tokens) & eos_V[None], -jnp.inf, x_RxV)
    for on, ids, now in ((cfg.forced_bos, knobs["forced_bos"], length == 1),
                         (cfg.forced_eos, knobs["forced_eos"], new == knobs["forced_eos_step"])):
        if on:  # transformers' ForcedBOS / ForcedEOSTokenLogitsProcessor: 0 for the forced ids, -inf elsewhere
            only = jnp.where(jnp.zeros((V,), bool).at[ids].set(True), 0.0, -jnp.inf)
            x_RxV = jnp.where(now, only[None], x_RxV)
    return x_RxV


def _repeated_ngrams(tokens_RxL: Array, length: Array, n: int, V: int) -> Array:
    """`[R, V]` True for the tokens that would repeat an n-gram of `tokens[:, :length]` (pads included, as
    transformers counts them): those that followed an earlier occurrence of the last n - 1 tokens."""
    R, L = tokens_RxL.shape
    J = L - n + 1  # where an n-gram can start
    if J < 1:
        return jnp.zeros((R, V), bool)
    last = jax.lax.dynamic_slice_in_dim(tokens_RxL, jnp.maximum(length - (n - 1), 0), n - 1, axis=1)
    match = jnp.broadcast_to(jnp.arange(J)[None] + n - 1 < length, (R, J))  # the n-gram ends before `length`
    for k in range(n - 1):
        match = match & (tokens_RxL[:, k:k + J] == last[:, k:k + 1])
    banned = jnp.zeros((R, V), bool).at[jnp.arange(R)[:, None], tokens_RxL[:, n - 1:n - 1 + J]].max(match)
    return banned & (length + 1 >= n)


def _is_eos(tokens: Array, eos: Array) -> Array:
    return jnp.any(tokens[..., None] == eos, axis=-1)


def _sample(step: Step, cache: KVCache, first_R: Array, keys_R: Array, knobs: dict, cfg: GenerationConfig,
            history: History):
    """Greedy or sampling (row r from its key `keys_R[r]`): new tokens `[R, N]` (pad after EOS) and
    the scores (None unless asked)."""
    R, N, pad = first_R.shape[0], cfg.max_new_tokens, knobs["pad"]
    tokens = jnp.full((R, N), pad, jnp.int32)
    scores = None
    done = jnp.zeros((R,), bool)
    P = history[0].shape[1]
    seq = (jnp.concatenate([history[0], tokens], 1), jnp.concatenate([history[1], jnp.ones((R, N), bool)], 1))

    def cond(carry):
        i, _, _, done, _, _ = carry
        return (i < N) & ~jnp.all(done)

    def body(carry):
        i, prev, cache, done, tokens, scores = carry
        logits, cache = step(prev, i, cache)
        if cfg.constrained:
            logits = constrain(logits.astype(jnp.float32), seq[0].at[:, P:].set(tokens), seq[1], P + i, i, knobs, cfg)
        if cfg.do_sample:
            logits = process_logits(logits, knobs, cfg)
            tok = jax.vmap(lambda k, x: jax.random.categorical(jax.random.fold_in(k, i), x))(keys_R, logits)
        else:
            tok = jnp.argmax(logits, axis=-1)
        tok = jnp.where(done, pad, tok.astype(jnp.int32))
        tokens = tokens.at[:, i].set(tok)
        if scores is not None:
            scores = scores.at[:, i].set(logits.astype(jnp.float32))
        return i + 1, tok, cache, done | _is_eos(tok, knobs["eos"]), tokens, scores

    if cfg.output_scores:
        vocab = jax.eval_shape(step, first_R, jnp.int32(0), cache)[0].shape[-1]
        scores = jnp.zeros((R, N, vocab), jnp.float32)
    carry = (jnp.int32(0), first_R.astype(jnp.int32), cache, done, tokens, scores)
    *_, tokens, scores = jax.lax.while_loop(cond, body, carry)
    return tokens, scores


# --------------------------------------------------------------------------- beam search


def _gather(x_BxKx: Array, idx_BxM: Array) -> Array:
    idx = idx_BxM.reshape(idx_BxM.shape + (1,) * (x_BxKx.ndim - 2))
    return jnp.take_along_axis(x_BxKx, idx, axis=1)


def _beam_search(step: Step, cache: KVCache, first_R: Array, B: int, knobs: dict, cfg: GenerationConfig,
                 history: History) -> Array:
    """transformers' vectorised beam search (`_beam_search`, early_stopping=False): keep the best
    2*num_beams continuations, the best num_beams unfinished ones run on, finished ones (EOS, or
    the length limit) compete on score / length**length_penalty for the num_beams final slots; a
    row stops when its best running beam can no longer beat its worst final one."""
    nb, N, pad, lp = cfg.num_beams, cfg.max_new_tokens, knobs["pad"], knobs["length_penalty"]
    K = max(2, 1 + cfg.num_eos) * nb
    top_nb = jnp.arange(K) < nb
    running = jnp.full((B, nb, N), pad, jnp.int32)
    running_scores = jnp.tile(jnp.where(jnp.arange(nb) == 0, 0.0, NEG), (B, 1))  # only beam 0 starts
    final = jnp.full((B, nb, N), pad, jnp.int32)
    final_scores = jnp.full((B, nb), NEG)
    final_done = jnp.zeros((B, nb), bool)
    improvable = jnp.ones((B, 1), bool)

    def cond(carry):
        i, *_, improvable, go = carry
        return (i < N) & go

    def body(carry):
        i, prev, cache, running, running_scores, final, final_scores, final_done, improvable, _ = carry
        logits, cache = step(prev, i, cache)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
        if cfg.constrained:  # transformers processes the log-probabilities of each beam's sequence
            P = history[0].shape[1]
            seq = jnp.concatenate([history[0], running.reshape(B * nb, N)], 1)
            real = jnp.concatenate([history[1], jnp.ones((B * nb, N), bool)], 1)
            logp = constrain(logp, seq, real, P + i, i, knobs, cfg)
        V = logp.shape[-1]
        logp = (logp.reshape(B, nb, V) + running_scores[:, :, None]).reshape(B, nb * V)
        top_logp, top_idx = jax.lax.top_k(logp, K)
        src, tok = top_idx // V, (top_idx % V).astype(jnp.int32)
        cand = _gather(running, src).at[:, :, i].set(tok)  # [B, K, N]
        hits = _is_eos(tok, knobs["eos"]) | (i + 1 >= N)
        # the best num_beams unfinished candidates run on
        run_logp = top_logp + hits * NEG
        keep = jax.lax.top_k(run_logp, nb)[1]
        running, running_scores = _gather(cand, keep), _gather(run_logp, keep)
        beam_src = jnp.arange(B)[:, None] * nb + _gather(src, keep)
        # finished candidates among the top num_beams compete for the final slots
        finished = hits & top_nb[None]
        fin_scores = top_logp / (i + 1.0) ** lp + (~improvable) * NEG + (~finished) * NEG
        merged = jnp.concatenate([final_scores, fin_scores], 1)
        best = jax.lax.top_k(merged, nb)[1]
        final = _gather(jnp.concatenate([final, cand], 1), best)
        final_done = _gather(jnp.concatenate([final_done, finished], 1), best)
        final_scores = _gather(merged, best)
        cache = cache.take_rows(beam_src.reshape(-1))
        worst = jnp.where(final_done, final_scores.min(1, keepdims=True), NEG)
        improvable = improvable & jnp.any(running_scores[:, :1] / (i + 1.0) ** lp > worst, -1, keepdims=True)
        go = jnp.any(improvable) & ~jnp.all(hits)
        return (i + 1, running[:, :, i].reshape(-1), cache, running, running_scores, final, final_scores,
                final_done, improvable, go)

    carry = (jnp.int32(0), first_R.astype(jnp.int32), cache, running, running_scores, final, final_scores,
             final_done, improvable, jnp.bool_(True))
    final = jax.lax.while_loop(cond, body, carry)[5]
    return final[:, :cfg.num_return_sequences].reshape(-1, N)


# --------------------------------------------------------------------------- CLI


def _read_prompts(args) -> list[str]:
    prompts = list(args.prompt or [])
    if args.input:
        with open(args.input) as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                item = json.loads(line)
                if isinstance(item, dict):
                    key = next((k for k in ("prompt", "text", "input") if k in item), None)
                    if key is None:
                        raise ValueError(f"{args.input}:{n}: expected a 'prompt' (or 'text', 'input') field")
                    item = item[key]
                if not isinstance(item, str):
                    raise ValueError(f"{args.input}:{n}: the prompt must be a string")
                prompts.append(item)
    if not prompts:
        raise ValueError("no prompts: give --prompt TEXT and/or --input FILE.jsonl")
    return prompts


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m jsoft.generate", description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="base model: local dir or Hub id (tokenizer loaded from it)")
    ap.add_argument("--adapter", required=True, help="adapter dir (PEFT's or jsoft's format)")
    ap.add_argument("--prompt", action="append", help="a prompt (repeatable)")
    ap.add_argument("--input", help="JSON lines: strings or objects with a 'prompt' field")
    ap.add_argument("--output", help="write JSON lines {prompt, completion} here instead of stdout")
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--num-beams", type=int, default=1)
    ap.add_argument("--num-return-sequences", type=int, default=1,
                    help="n > 1: the n best beams (n <= --num-beams) or n samples (--do-sample) per prompt, "
                         "written as 'completions' (a list) instead of 'completion'")
    ap.add_argument("--do-sample", action="store_true")
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--top-k", type=int, default=0)
    ap.add_argument("--top-p", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0, help="prompt i samples with seed + i")
    ap.add_argument("--repetition-penalty", type=float, default=1.0)
    ap.add_argument("--no-repeat-ngram-size", type=int, default=0)
    ap.add_argument("--min-new-tokens", type=int, default=0)
    ap.add_argument("--forced-bos-token", help="a token the output must start with (mBART-50: the target language, "
                    "e.g. fr_XX; default: the model's forced_bos_token_id, if any)")
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args(argv)

    from transformers import AutoTokenizer

    import jsoft
    from jsoft.tuners.config import TASK_OF, PromptLearningConfig

    prompts = _read_prompts(args)
    task = TASK_OF[PromptLearningConfig.from_pretrained(args.adapter).task_type]
    pm = jsoft.PeftModel.from_pretrained(jsoft.from_pretrained(args.model, task=task), args.adapter)
    tok = AutoTokenizer.from_pretrained(args.model)
    tok.padding_side = "left" if task == "causal_lm" else "right"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    eos = set(token_ids(pm.base_model.config.eos_token_id))
    forced_bos = None
    if args.forced_bos_token is not None:
        forced_bos = tok.convert_tokens_to_ids(args.forced_bos_token)
        if forced_bos is None or forced_bos == tok.unk_token_id:
            raise ValueError(f"--forced-bos-token={args.forced_bos_token!r} is not a token of {args.model}'s tokenizer")
    n = args.num_return_sequences
    lines = []
    for s in range(0, len(prompts), args.batch_size):
        batch = prompts[s:s + args.batch_size]
        filled = batch + [batch[0]] * (args.batch_size - len(batch))  # one batch shape: one compile
        enc = tok(filled, padding=True, pad_to_multiple_of=16, return_tensors="np")
        out = np.asarray(generate(pm, enc["input_ids"], enc["attention_mask"], max_new_tokens=args.max_new_tokens,
                                  do_sample=args.do_sample, temperature=args.temperature, top_k=args.top_k,
                                  top_p=args.top_p, seed=[args.seed + s + j for j in range(len(filled))],
                                  num_beams=args.num_beams, num_return_sequences=n,
                                  repetition_penalty=args.repetition_penalty,
                                  no_repeat_ngram_size=args.no_repeat_ngram_size, min_new_tokens=args.min_new_tokens,
                                  forced_bos_token_id=forced_bos))
        new = out[:, enc["input_ids"].shape[1]:] if task == "causal_lm" else out[:, 1:]
        texts = [tok.decode(ids[:next((j for j, t in enumerate(ids) if t in eos), len(ids))], skip_special_tokens=True)
                 for ids in new.tolist()]
        for b, prompt in enumerate(batch):
            mine = texts[b * n:(b + 1) * n]
            out_row = {"completion": mine[0]} if n == 1 else {"completions": mine}
            lines.append(json.dumps({"prompt": prompt, **out_row}))
    text = "\n".join(lines) + "\n"
    if args.output:
        with open(args.output, "w") as f:
            f.write(text)
    else:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
