"""Adapters on disk: Hugging Face PEFT's format, and jsoft's own for what PEFT cannot hold.

PEFT format (shared/reference/peft-adapter-format.md): `adapter_config.json` +
`adapter_model.safetensors` holding `prompt_embeddings` (the prompt, the P-Tuning encoder's
output, or the projected prefix) and the head as `base_model.<head>.weight|bias`, plus any frozen module the
backbone says an adapter must carry (DeBERTa's pooler, absent from v3's checkpoints). An adapter that
`jsoft.export` writes for classification also has `jsoft_labels.json` (label names, problem type),
which the multi-task server reads and PEFT ignores.

jsoft format: the same config (with jsoft-only fields) + `jsoft_adapter.safetensors` holding every
trainable leaf by path, so encoders (LSTM/MLP, prefix MLP) resume training exactly; it also
holds the paper-only forms (encoder-decoder prefixes everywhere, P-Tuning templates).

Writes are atomic: files go to a temporary sibling directory that replaces the target at the end,
so an interrupted save never leaves a half-written adapter where a good one was.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft.models import hub
from jsoft.tuners.config import CONFIG_NAME, PeftType, PromptLearningConfig
from jsoft.tuners.peft_model import Adapter, Head, PeftModel, prepare_config
from jsoft.tuners.variables import Trainable, trainable

log = logging.getLogger(__name__)

PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_WEIGHTS_BIN = "adapter_model.bin"
JSOFT_WEIGHTS = "jsoft_adapter.safetensors"
LABELS = "jsoft_labels.json"  # a classification adapter's label names and problem type (PEFT ignores the file)
FORMATS = ("peft", "jsoft")


def _atomic_dir(target: Path):
    target.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))


def _commit_dir(tmp: Path, target: Path) -> None:
    """Move tmp's files into target; each file is replaced atomically and a previous adapter's
    weights of the other format are removed only after the new files are in place."""
    target.mkdir(parents=True, exist_ok=True)
    written = set()
    for f in tmp.iterdir():
        os.replace(f, target / f.name)
        written.add(f.name)
    for stale in (PEFT_WEIGHTS, PEFT_WEIGHTS_BIN, JSOFT_WEIGHTS, LABELS):
        if stale not in written and (target / stale).exists():
            (target / stale).unlink()
    shutil.rmtree(tmp, ignore_errors=True)


def _save_safetensors(tensors: dict[str, np.ndarray], path: Path) -> None:
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path), metadata={"format": "pt"})


def _load_safetensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    try:
        return load_file(str(path))
    except Exception as e:
        raise ValueError(f"adapter weights {path} are corrupt or truncated ({type(e).__name__}: {e})") from None


def head_layers(head: Head, head_name: str) -> list[tuple[str, str, str]]:
    """(PEFT tensor name prefix, Head kernel attribute, Head bias attribute) per linear layer of a head:
    `base_model.classifier` for a Linear; the two layers of a two-layer head under their transformers names
    (`classifier.dense` / `.out_proj` for RoBERTa, `pre_classifier` / `classifier` for DistilBERT)."""
    if head.dense_kernel is None:
        return [(f"base_model.{head_name}", "kernel", "bias")]
    dense, out = head.peft_names or (f"{head_name}.dense", f"{head_name}.out_proj")
    return [(f"base_model.{dense}", "dense_kernel", "dense_bias"), (f"base_model.{out}", "kernel", "bias")]


def peft_tensors(adapter: Adapter, head_name: str | None) -> dict[str, np.ndarray]:
    tensors = {"prompt_embeddings": np.asarray(adapter.prompt.export(), np.float32)}
    if adapter.head is not None:
        for prefix, kernel, bias in head_layers(adapter.head, head_name):
            tensors[f"{prefix}.weight"] = np.asarray(getattr(adapter.head, kernel)[...], np.float32).T
            if getattr(adapter.head, bias) is not None:
                tensors[f"{prefix}.bias"] = np.asarray(getattr(adapter.head, bias)[...], np.float32)
    return tensors


def carried_tensors(base_model) -> dict[str, np.ndarray]:
    """The frozen modules an adapter carries (the backbone's `adapter_carries`), under their transformers names
    with PEFT's `base_model.` prefix, in torch layout: what transformers would otherwise initialise at random."""
    arch = hub.architecture(base_model.config.model_type)
    tensors = {}
    for name in getattr(base_model, "adapter_carries", ()):
        for path, var in nnx.to_flat_state(nnx.state(getattr(base_model, name), nnx.Param)):
            hf, transpose = arch.checkpoint_key((name, *path))
            arr = np.asarray(var.get_value(), np.float32)
            tensors[f"base_model.{hf}"] = arr.T if transpose else arr
    return tensors


def _adopt_carried(base_model, tensors: dict[str, np.ndarray], directory: Path) -> None:
    """An adapter's carried modules must be the base model's: where the base model initialised them itself (its
    checkpoint lacks them) it takes the adapter's; otherwise any difference is refused."""
    ours = carried_tensors(base_model)
    theirs = {k: v for k, v in tensors.items() if k in ours}
    differ = [k for k, v in theirs.items() if v.shape != ours[k].shape or not np.array_equal(v, ours[k])]
    if not differ:
        return
    arch = hub.architecture(base_model.config.model_type)
    fresh = set(getattr(base_model, "initialised_params", ()))
    for name in base_model.adapter_carries:
        module = getattr(base_model, name)
        flat = list(nnx.to_flat_state(nnx.state(module, nnx.Param)))
        if any(".".join(map(str, (name, *path))) not in fresh for path, _ in flat):
            raise ValueError(f"{directory} carries its own {name} ({differ[0]} differs from this base model's, which "
                             "its checkpoint holds): the adapter was made for another base model, or trained that "
                             "module, which jsoft keeps frozen")
        new = []
        for path, var in flat:
            hf, transpose = arch.checkpoint_key((name, *path))
            arr = theirs.get(f"base_model.{hf}", ours[f"base_model.{hf}"])
            arr = arr.T if transpose else arr
            _check_shape(arr, var.get_value().shape, f"base_model.{hf} (as jsoft lays it out)", directory)
            new.append((path, var.replace(jnp.asarray(arr, var.get_value().dtype))))
        nnx.update(module, nnx.from_flat_state(new))
    # the adapter fixed what was random: a later adapter carrying other values is refused
    base_model.initialised_params = tuple(n for n in fresh if n.split(".")[0] not in base_model.adapter_carries)
    log.info("%s: the base model's %s (absent from its checkpoint) now holds the adapter's", directory,
             ", ".join(base_model.adapter_carries))


def save_adapter(pm: PeftModel, directory: str | os.PathLike, adapter_name: str | None = None,
                 format: str | None = None, labels: dict | None = None) -> str:
    """Write one adapter; returns the format used. format=None: PEFT's when PEFT can hold it. `labels`
    ({"id2label": {id: name}, "problem_type": ...}) goes to jsoft_labels.json, for the server."""
    name = adapter_name or pm.active_adapter
    pm._check_names([name])
    adapter = pm.adapters[name]
    config = adapter.config
    if format not in (None, *FORMATS):
        raise ValueError(f"format={format!r} is not valid; choose one of {list(FORMATS)} (or None)")
    jsoft_only = _jsoft_only_reason(config, pm.base_model)
    if format == "peft" and jsoft_only:
        raise ValueError(f"this adapter uses a jsoft-only form ({jsoft_only}) that PEFT cannot run; "
                         "save it with format='jsoft'")
    format = format or ("jsoft" if jsoft_only else "peft")
    target = Path(directory)
    tmp = _atomic_dir(target)
    try:
        config.save_pretrained(tmp)
        if labels is not None:
            (tmp / LABELS).write_text(json.dumps(labels, indent=2, sort_keys=True))
        carried = carried_tensors(pm.base_model)
        if format == "peft":
            _save_safetensors(peft_tensors(adapter, pm.base_model.head_name) | carried, tmp / PEFT_WEIGHTS)
            if carried:  # PEFT loads a module's tensors when modules_to_save names it
                d = json.loads((tmp / CONFIG_NAME).read_text())
                d["modules_to_save"] = list(dict.fromkeys([*(d.get("modules_to_save") or []),
                                                           *pm.base_model.adapter_carries]))
                (tmp / CONFIG_NAME).write_text(json.dumps(d, indent=2, sort_keys=True))
        else:
            flat = nnx.to_flat_state(nnx.state(adapter, Trainable))
            _save_safetensors({".".join(map(str, p)): np.asarray(v.get_value(), np.float32) for p, v in flat}
                              | carried, tmp / JSOFT_WEIGHTS)
            d = json.loads((tmp / CONFIG_NAME).read_text())
            d.update(config.to_dict(), jsoft_format=1, inference_mode=config.inference_mode)
            d.pop("jsoft_prompt_tuning_init", None)
            d["prompt_tuning_init"] = getattr(config, "prompt_tuning_init", None) and config.prompt_tuning_init.value
            if d["prompt_tuning_init"] is None:
                d.pop("prompt_tuning_init")
            (tmp / CONFIG_NAME).write_text(json.dumps(d, indent=2, sort_keys=True))
        _commit_dir(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return format


def _jsoft_only_reason(config, base_model) -> str | None:
    """Why PEFT cannot run this adapter on this base model (None: it can)."""
    if config.peft_type == PeftType.PREFIX_TUNING and not getattr(base_model, "peft_runs_prefix", True):
        return (f"a prefix on {base_model.config.model_type}, whose transformers model takes no past_key_values "
                "(PEFT's way in for a prefix)")
    if config.is_peft_compatible:
        return None
    if getattr(config, "prefix_targets", "decoder") != "decoder":
        return "prefix_targets='all': PEFT prefixes only the decoder's self-attention"
    if getattr(config, "template", None):
        return "a P-Tuning template with virtual tokens inside the input: PEFT only prepends them"
    return "jsoft-only options"


def build_adapter(pm: PeftModel, directory: str | os.PathLike, tokenizer=None, any_num_labels: bool = False
                  ) -> Adapter:
    """Read an adapter directory (PEFT's or jsoft's) into a complete Adapter for pm's model,
    checking every shape; nothing is attached to pm here. `any_num_labels`: the head may have its own
    number of labels (PeftModel.load_adapter)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"adapter directory {str(directory)!r} does not exist")
    config = PromptLearningConfig.from_pretrained(directory)
    model = pm.base_model
    if (directory / JSOFT_WEIGHTS).is_file():
        config = prepare_config(config, model)
        adapter = Adapter(config, model, jax.random.key(0), tokenizer=_NoTokenizer())
        tensors = _load_safetensors(directory / JSOFT_WEIGHTS)
        _adopt_carried(model, tensors, directory)
        tensors = {k: v for k, v in tensors.items() if not k.startswith("base_model.")}
        if any_num_labels and adapter.head is not None and "head.kernel" in tensors:
            arrays = [tensors.get(f"head.{a}") for a in ("kernel", "bias", "dense_kernel", "dense_bias")]
            adapter.head = _own_head(adapter.head, arrays, "head", directory)
        flat = list(nnx.to_flat_state(nnx.state(adapter, Trainable)))
        expected = {".".join(map(str, p)) for p, _ in flat}
        if set(tensors) != expected:
            raise ValueError(f"{directory / JSOFT_WEIGHTS} does not match its config: missing "
                             f"{sorted(expected - set(tensors))}, unexpected {sorted(set(tensors) - expected)}")
        new = []
        for p, v in flat:
            arr = tensors[".".join(map(str, p))]
            _check_shape(arr, v.get_value().shape, ".".join(map(str, p)), directory)
            new.append((p, v.replace(jnp.asarray(arr))))
        nnx.update(adapter, nnx.from_flat_state(new))
        return adapter
    config.inference_mode = True  # PEFT stores computed prompts, not encoders
    config = prepare_config(config, model)
    adapter = Adapter(config, model, jax.random.key(0), tokenizer=_NoTokenizer())
    tensors = _read_peft_weights(directory)
    if "prompt_embeddings" not in tensors:
        raise ValueError(f"{directory} holds no 'prompt_embeddings' tensor; is it a prompt-learning adapter?")
    _adopt_carried(model, tensors, directory)
    prompt = tensors["prompt_embeddings"]
    _check_shape(prompt, adapter.prompt.embedding.shape, "prompt_embeddings", directory)
    adapter.prompt.embedding = trainable(jnp.asarray(prompt, jnp.float32))
    if adapter.head is not None:
        layers = head_layers(adapter.head, model.head_name)
        for prefix, _, bias in layers:
            needed = [f"{prefix}.weight"] + ([f"{prefix}.bias"] if getattr(adapter.head, bias) is not None else [])
            missing = [n for n in needed if n not in tensors]
            if missing:
                raise ValueError(f"{directory} has no trained head tensor {missing[0]!r} for task "
                                 f"{config.task_type.value}")
        if any_num_labels:
            arrays = {a: tensors.get(f"{prefix}.{suffix}") for prefix, k, b in layers
                      for a, suffix in ((k, "weight"), (b, "bias"))}
            arrays = [None if arrays.get(a) is None else (arrays[a].T if a.endswith("kernel") else arrays[a])
                      for a in ("kernel", "bias", "dense_kernel", "dense_bias")]
            adapter.head = _own_head(adapter.head, arrays, f"base_model.{model.head_name}", directory)
        for prefix, kernel, bias in layers:
            w = tensors[f"{prefix}.weight"].T
            _check_shape(w, getattr(adapter.head, kernel).shape, f"{prefix}.weight (transposed)", directory)
            setattr(adapter.head, kernel, trainable(jnp.asarray(w, jnp.float32)))
            if getattr(adapter.head, bias) is not None:
                b = tensors[f"{prefix}.bias"]
                _check_shape(b, getattr(adapter.head, bias).shape, f"{prefix}.bias", directory)
                setattr(adapter.head, bias, trainable(jnp.asarray(b, jnp.float32)))
    return adapter


def _own_head(like: Head, arrays: list, name: str, directory: Path) -> Head:
    """The adapter's head for its own number of labels (`arrays` as `Head.arrays`): every array but the output
    projection's label axis shaped as `like`'s, and a bias where `like` has one."""
    for have, want, what in zip(arrays, like.arrays(), ("kernel", "bias", "dense kernel", "dense bias")):
        if (have is None) != (want is None):
            raise ValueError(f"the head {name} in {directory} {'lacks' if have is None else 'has'} a {what}, unlike "
                             "this base model's head: the adapter was made for another base model")
        if have is not None and what.startswith("dense") and have.shape != want.shape:
            raise ValueError(f"the head {name}'s {what} in {directory} has shape {have.shape}, not {want.shape}: "
                             "the adapter was made for another base model")
    kernel = arrays[0]
    if kernel.ndim != 2 or kernel.shape[0] != like.kernel.shape[0]:
        raise ValueError(f"the head {name} in {directory} takes inputs of width {kernel.shape[:1]}, but this base "
                         f"model's is {like.kernel.shape[0]}: the adapter was made for another base model")
    return like.like(arrays)


def head_num_labels(directory: str | os.PathLike, head_name: str) -> int | None:
    """The number of labels of the head an adapter directory holds (read from the safetensors header: no
    weights are loaded); None without one (or in a .bin file)."""
    from safetensors import safe_open

    directory = Path(directory)
    peft_keys = (f"base_model.{head_name}.weight", f"base_model.{head_name}.out_proj.weight")
    for file, keys, axis in ((JSOFT_WEIGHTS, ("head.kernel",), 1), (PEFT_WEIGHTS, peft_keys, 0)):
        if (directory / file).is_file():
            try:
                with safe_open(str(directory / file), "np") as f:
                    key = next((k for k in keys if k in f.keys()), None)
                    return None if key is None else f.get_slice(key).get_shape()[axis]
            except Exception:  # a corrupt file is reported when the adapter loads
                return None
    return None


def read_labels(directory: str | os.PathLike) -> dict:
    """What jsoft_labels.json says ({"id2label": {int: name}, "problem_type": ...}); {} without the file."""
    f = Path(directory) / LABELS
    if not f.is_file():
        return {}
    try:
        d = json.loads(f.read_text())
        return {"id2label": {int(k): str(v) for k, v in (d.get("id2label") or {}).items()},
                "problem_type": d.get("problem_type")}
    except (ValueError, AttributeError) as e:
        raise ValueError(f"{f} is not a valid labels file ({type(e).__name__}: {e})") from None


def _check_shape(arr, want, name, directory):
    if tuple(arr.shape) != tuple(want):
        raise ValueError(f"{name} in {directory} has shape {tuple(arr.shape)} but this base model needs "
                         f"{tuple(want)}: the adapter was made for another base model or config")


def _read_peft_weights(directory: Path) -> dict[str, np.ndarray]:
    if (directory / PEFT_WEIGHTS).is_file():
        return _load_safetensors(directory / PEFT_WEIGHTS)
    if (directory / PEFT_WEIGHTS_BIN).is_file():
        try:
            import torch
        except ImportError:
            raise ImportError(f"{directory / PEFT_WEIGHTS_BIN} needs torch to read") from None
        try:
            state = torch.load(directory / PEFT_WEIGHTS_BIN, map_location="cpu", weights_only=True)
        except Exception as e:
            raise ValueError(f"{directory / PEFT_WEIGHTS_BIN} is corrupt ({type(e).__name__}: {e})") from None
        return {k: v.float().numpy() for k, v in state.items()}
    raise FileNotFoundError(f"{directory} has no {PEFT_WEIGHTS}, {PEFT_WEIGHTS_BIN} or {JSOFT_WEIGHTS}")


class _NoTokenizer:
    """Loaded adapters overwrite their initial values; TEXT/CLASS_LABEL inits need no tokenizer."""

    def __call__(self, text, **kw):
        return {"input_ids": [0]}
