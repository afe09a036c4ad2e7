"""Hugging Face checkpoints -> jsoft backbones.

`from_pretrained` resolves a local directory or a Hub id (through the HF cache; offline works
when cached), reads config.json, builds the module *abstractly* (no weights allocated), then
streams each tensor from the memory-mapped safetensors files straight into its parameter.
Parameters the checkpoint lacks (a new task head, a pooler) are initialised by a jit of the
module's own initialisers from which XLA keeps only those parameters.

Every architecture module (gpt2, bert, roberta, t5, bart, llama, bloom, ...) provides:
  Config.from_hf(dict) -> Config      the typed config
  TASKS                                tasks it can do
  build(config, task, num_labels, precision, rngs) -> nnx.Module
  checkpoint_key(path) -> (hf_name | (names...), transpose: bool)   for each parameter path
  BASE_PREFIX                          HF's base_model_prefix ("transformer", "bert", ...)
"""

from __future__ import annotations

import importlib
import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jsoft.models import llama_config
from jsoft.models.layers import Fp32Buffer, Fp32Param, Precision, param_rngs

log = logging.getLogger(__name__)

# each config.json model_type's module: every Llama-like family's (llama_config.MODEL_TYPES) jsoft.models.llama, but
# those whose checkpoints name their weights otherwise (experts stored stacked: GPT-OSS, Llama 4, Mistral 4;
# NanoChat's MLPs; Nemotron-H's `backbone` of `mixer`s; Jamba's `router`), which have modules of their own
ARCHITECTURES = {**dict.fromkeys(llama_config.MODEL_TYPES, "jsoft.models.llama"),
                 "gpt2": "jsoft.models.gpt2", "bert": "jsoft.models.bert", "t5": "jsoft.models.t5",
                 "mt5": "jsoft.models.t5", "roberta": "jsoft.models.roberta", "xlm-roberta": "jsoft.models.roberta",
                 "bloom": "jsoft.models.bloom", "gpt_neox": "jsoft.models.gpt_neox", "phi": "jsoft.models.phi",
                 "bart": "jsoft.models.bart", "mbart": "jsoft.models.bart", "opt": "jsoft.models.opt",
                 "deberta": "jsoft.models.deberta", "deberta-v2": "jsoft.models.deberta",
                 "distilbert": "jsoft.models.distilbert", "electra": "jsoft.models.electra",
                 "modernbert": "jsoft.models.modernbert", "gptj": "jsoft.models.gptj",
                 "gpt_neo": "jsoft.models.gpt_neo", "camembert": "jsoft.models.roberta",
                 "stablelm": "jsoft.models.stablelm", "starcoder2": "jsoft.models.starcoder2",
                 "nemotron": "jsoft.models.nemotron", "cohere": "jsoft.models.cohere", "cohere2": "jsoft.models.cohere",
                 "falcon": "jsoft.models.falcon", "gpt_bigcode": "jsoft.models.gpt_bigcode",
                 "mpnet": "jsoft.models.mpnet", "xlm-roberta-xl": "jsoft.models.xlm_roberta_xl",
                 "ernie": "jsoft.models.ernie", "codegen": "jsoft.models.codegen", "albert": "jsoft.models.albert",
                 "gpt_oss": "jsoft.models.gpt_oss", "umt5": "jsoft.models.t5", "m2m_100": "jsoft.models.bart",
                 "marian": "jsoft.models.bart", "pegasus": "jsoft.models.bart", "xglm": "jsoft.models.xglm",
                 "biogpt": "jsoft.models.biogpt", "llama4_text": "jsoft.models.llama4",
                 "mistral4": "jsoft.models.mistral4", "nanochat": "jsoft.models.nanochat",
                 "nemotron_h": "jsoft.models.nemotron_h", "mamba2": "jsoft.models.nemotron_h",
                 "mamba": "jsoft.models.nemotron_h", "falcon_mamba": "jsoft.models.nemotron_h",
                 "jamba": "jsoft.models.jamba"}
TASKS = (None, "causal_lm", "seq2seq_lm", "seq_cls", "token_cls")
# multimodal checkpoints whose language model jsoft runs alone (text in, as transformers' model given no image):
# model_type -> how its checkpoints name the language model's tensors -> the text model's names (transformers 5
# saves the older spelling, `language_model.model.`)
LANGUAGE_MODELS = {"gemma3": {"language_model.model.": "model.", "model.language_model.": "model.",
                              "language_model.lm_head.": "lm_head.", "lm_head.": "lm_head.", "score.": "score."},
                   "llama4": {"language_model.model.": "model.", "language_model.lm_head.": "lm_head."},
                   "mistral3": {"language_model.model.": "model.", "model.language_model.": "model.",
                                "language_model.lm_head.": "lm_head.", "lm_head.": "lm_head."},
                   **dict.fromkeys(("qwen3_5", "qwen3_5_moe"), {"model.language_model.": "model.",
                                                                "lm_head.": "lm_head.", "score.": "score."})}
# what a multimodal config.json states for its language model outside `text_config`
_TOP_LEVEL_KEYS = ("tie_word_embeddings", "num_labels", "id2label", "label2id", "problem_type", "pad_token_id",
                   "eos_token_id", "bos_token_id")
# causal self-attention over the input (a multimodal checkpoint: its language model)
DECODER_ONLY = (*llama_config.MODEL_TYPES, "gpt2", "gemma3", "bloom", "gpt_neox", "phi", "opt", "gptj", "gpt_neo",
                "stablelm", "starcoder2", "cohere", "cohere2", "xglm", "biogpt", "nemotron", "falcon", "gpt_bigcode",
                "codegen", "llama4", "mistral3", "qwen3_5", "qwen3_5_moe")
DTYPES = {"float32": jnp.float32, "fp32": jnp.float32, "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
          "float16": jnp.float16, "fp16": jnp.float16}
_CHECKPOINT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                     "pytorch_model.bin.index.json")


def architecture(model_type: str) -> ModuleType:
    if model_type not in ARCHITECTURES:
        raise ValueError(f"unsupported model_type {model_type!r} in config.json; "
                         f"supported: {sorted(ARCHITECTURES)}")
    return importlib.import_module(ARCHITECTURES[model_type])


def as_dtype(dtype, name: str = "dtype"):
    if dtype is None or not isinstance(dtype, str):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"{name}={dtype!r} is not a known dtype; valid: {sorted(DTYPES)}")
    return DTYPES[dtype]


def resolve(name_or_path: str | os.PathLike, revision: str | None = None) -> Path:
    """A local model directory, or the HF-cache snapshot of a Hub id (downloaded if online)."""
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    looks_local = str(name_or_path).startswith((".", "/", "~")) or path.exists()
    if looks_local:
        raise FileNotFoundError(f"name_or_path={str(name_or_path)!r}: no such directory")
    from huggingface_hub import snapshot_download

    patterns = ["*.json", "*.safetensors", "*.txt", "*.model", "pytorch_model*.bin"]
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns,
                                      local_files_only=True))
    except Exception:
        pass
    try:
        return Path(snapshot_download(str(name_or_path), revision=revision, allow_patterns=patterns))
    except Exception as e:
        raise FileNotFoundError(
            f"name_or_path={str(name_or_path)!r} is neither a local directory nor a Hub id in the "
            f"HF cache, and it could not be downloaded ({type(e).__name__}: {e})") from None


def model_type(name_or_path) -> str | None:
    """config.json's model_type, reading only that file (a Hub id's weights are not downloaded for it); None when
    it cannot be read (loading the model then names the problem)."""
    path = Path(str(name_or_path)).expanduser()
    try:
        if path.is_dir():
            return read_config(path).get("model_type")
        from huggingface_hub import hf_hub_download

        for local in (True, False):
            try:
                return json.loads(Path(hf_hub_download(str(name_or_path), "config.json",
                                                       local_files_only=local)).read_text()).get("model_type")
            except Exception:
                continue
    except (OSError, ValueError):
        pass
    return None


def read_config(model_dir: Path) -> dict:
    """config.json; a multimodal one (`LANGUAGE_MODELS`) as its language model's, what it states at the top level
    for the whole model (a classifier's labels, tied embeddings) included."""
    f = model_dir / "config.json"
    if not f.is_file():
        raise FileNotFoundError(f"{model_dir} has no config.json")
    hf = json.loads(f.read_text())
    if hf.get("model_type") in LANGUAGE_MODELS:
        if not isinstance(hf.get("text_config"), dict) or "model_type" not in hf["text_config"]:
            raise ValueError(f"{f}: a {hf['model_type']} config.json needs its text_config (with a model_type)")
        top_level = {k: hf[k] for k in _TOP_LEVEL_KEYS if k in hf}
        hf = {**hf["text_config"], **top_level, "multimodal_type": hf["model_type"]}
    return hf


GENERATION_KEYS = ("eos_token_id", "forced_bos_token_id", "forced_eos_token_id")


def generation_defaults(model_dir: Path) -> dict:
    """What generation_config.json sets of `GENERATION_KEYS`: transformers' `generate` reads these from it rather
    than from config.json (Llama 3 Instruct's extra EOS `<|eot_id|>`, bart-large-cnn's `forced_bos_token_id`)."""
    f = model_dir / "generation_config.json"
    if not f.is_file():
        return {}
    gen = json.loads(f.read_text())
    return {k: gen[k] for k in GENERATION_KEYS if k in gen}


_ALIGN = 64  # XLA's CPU client adopts a host buffer aligned to this instead of copying it
_SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
                       "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
                       "BOOL": np.bool_, "F8_E4M3": jnp.float8_e4m3fn, "F8_E5M2": jnp.float8_e5m2}


def aligned_empty(shape: tuple, dtype) -> np.ndarray:
    """An uninitialised C-contiguous array whose data is `_ALIGN`-byte aligned."""
    dtype = np.dtype(dtype)
    n = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(n + _ALIGN, np.uint8)
    start = -raw.ctypes.data % _ALIGN
    return raw[start:start + n].view(dtype).reshape(shape)


_LEGACY_SUFFIXES = {"LayerNorm.gamma": "LayerNorm.weight", "LayerNorm.beta": "LayerNorm.bias"}


def _current_name(name: str, prefixes: dict[str, str]) -> str:
    """transformers' "legacy" renames, applied to every checkpoint it loads: the original BERT checkpoints
    (bert-base-uncased among them) store LayerNorm.gamma / .beta; and `prefixes` renamed (a multimodal
    checkpoint's language model under the names of the text model's)."""
    for old, new in prefixes.items():
        if name.startswith(old):
            name = new + name[len(old):]
            break
    for old, new in _LEGACY_SUFFIXES.items():
        if name.endswith(old):
            return name[:-len(old)] + new
    return name


class Checkpoint:
    """Read-only view of a checkpoint's tensors by name. Safetensors files are read with plain file
    reads (no memory map, so the file's pages never count in this process's RSS), each tensor
    straight into the aligned host buffer that becomes its parameter."""

    def __init__(self, model_dir: Path, prefixes: dict[str, str] | None = None):
        self.dir = model_dir
        self._where: dict[str, tuple] = {}  # name -> (file, byte offset, dtype, shape)
        self._torch_state: dict | None = None
        if (model_dir / "model.safetensors").is_file():
            self._index_safetensors([model_dir / "model.safetensors"])
        elif (model_dir / "model.safetensors.index.json").is_file():
            index = json.loads((model_dir / "model.safetensors.index.json").read_text())
            self._index_safetensors(sorted({model_dir / f for f in index["weight_map"].values()}))
        elif (model_dir / "pytorch_model.bin").is_file() or (model_dir / "pytorch_model.bin.index.json").is_file():
            self._load_torch(model_dir)
        else:
            raise FileNotFoundError(f"{model_dir} has no checkpoint; expected one of {list(_CHECKPOINT_FILES)}")
        prefixes = prefixes or {}
        # with `prefixes`, the other tensors: a multimodal checkpoint's other towers, which jsoft does not run
        self.outside = [k for k in self._where if prefixes and not k.startswith(tuple(prefixes))]
        self._where = {_current_name(k, prefixes): v for k, v in self._where.items()}
        if self._torch_state is not None:
            self._torch_state = {_current_name(k, prefixes): v for k, v in self._torch_state.items()}
        # MXFP4 tensors (GPT-OSS's experts): `X_blocks` + `X_scales`, read as the dequantized `X`
        self._mxfp4 = {k.removesuffix("_blocks"): (k, k.removesuffix("_blocks") + "_scales") for k in self._where
                       if k.endswith("_blocks") and k.removesuffix("_blocks") + "_scales" in self._where}
        # block-scaled FP8 tensors (DeepSeek-V3's, Qwen3-FP8's): `X` + `X_scale_inv`, read as the dequantized `X`
        self._fp8_scales = {k: k + "_scale_inv" for k in self._where if k + "_scale_inv" in self._where}

    def _index_safetensors(self, files: list[Path]):
        for f in files:  # format: u64 header length, JSON header, then the tensors' bytes
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            header.pop("__metadata__", None)
            for k, info in header.items():
                if info["dtype"] not in _SAFETENSORS_DTYPES:
                    raise ValueError(f"{f}: tensor {k!r} has dtype {info['dtype']}, which jsoft cannot read; "
                                     f"readable: {sorted(_SAFETENSORS_DTYPES)}")
                dtype = np.dtype(_SAFETENSORS_DTYPES[info["dtype"]])
                self._where[k] = (f, 8 + n + info["data_offsets"][0], dtype, tuple(info["shape"]))

    def _load_torch(self, model_dir: Path):
        try:
            import torch
        except ImportError:
            raise ImportError(f"{model_dir} holds pytorch_model.bin, which needs torch to read; "
                              "install torch or convert the checkpoint to safetensors") from None
        files = [model_dir / "pytorch_model.bin"]
        if not files[0].is_file():
            index = json.loads((model_dir / "pytorch_model.bin.index.json").read_text())
            files = sorted({model_dir / f for f in index["weight_map"].values()})
        self._torch_state = {}
        for f in files:
            self._torch_state.update(torch.load(f, map_location="cpu", weights_only=True, mmap=True))
        self._where = dict.fromkeys(self._torch_state, model_dir)

    def keys(self) -> Iterator[str]:
        return iter([*self._where, *self._mxfp4])

    def __contains__(self, name: str) -> bool:
        return name in self._where or name in self._mxfp4

    def shape(self, name: str, transpose: bool = False) -> tuple[int, ...]:
        """The tensor's shape (read from the header: no data is read), optionally transposed."""
        if name in self._mxfp4:
            *lead, out, groups, group_bytes = self.shape(self._mxfp4[name][0])
            shape = (*lead, groups * group_bytes * 2, out)
        else:
            shape = tuple(self._torch_state[name].shape) if self._torch_state is not None else self._where[name][3]
        return shape[::-1] if transpose else shape

    def get(self, name: str) -> np.ndarray:
        """The tensor as stored (bfloat16 as ml_dtypes' bfloat16; MXFP4 dequantized to bfloat16, block-scaled FP8
        to float32)."""
        if name in self._mxfp4:
            return dequantize_mxfp4(*(self.get(n) for n in self._mxfp4[name]))
        if name in self._fp8_scales:
            return dequantize_fp8(self._stored(name), self._stored(self._fp8_scales[name]))
        stored = self._stored(name)
        if "float8" in stored.dtype.name:
            raise ValueError(f"{self.dir}: tensor {name!r} is stored in {stored.dtype.name} without a "
                             f"{name}_scale_inv beside it; jsoft reads FP8 weights with their per-block scales")
        return stored

    def _stored(self, name: str) -> np.ndarray:
        """The tensor exactly as stored (bfloat16 as ml_dtypes' bfloat16)."""
        if self._torch_state is not None:
            t = self._torch_state[name]
            if str(t.dtype) == "torch.bfloat16":  # numpy has no bfloat16: reinterpret the bits as ml_dtypes'
                import torch

                return t.view(torch.int16).numpy().view(jnp.bfloat16)
            return t.numpy()
        f, offset, dtype, shape = self._where[name]
        out = aligned_empty(shape, dtype)
        with open(f, "rb", buffering=0) as fh:
            fh.seek(offset)
            view, done = memoryview(out.reshape(-1).view(np.uint8)), 0
            while done < out.nbytes:  # readinto may return less than asked for
                got = fh.readinto(view[done:])
                if not got:
                    raise OSError(f"{f} ended inside tensor {name!r}")
                done += got
        return out

    def read(self, name: str, dtype, transpose: bool = False) -> np.ndarray:
        """The tensor in `dtype`, optionally transposed, in an aligned buffer that a parameter can
        adopt without a copy (`jax.device_put`). Holds at most one extra copy, only while converting."""
        arr = self.get(name)
        if transpose:
            arr = arr.T
        if arr.dtype == dtype and arr.flags.c_contiguous and arr.ctypes.data % _ALIGN == 0:
            return arr
        out = aligned_empty(arr.shape, dtype)
        out[...] = arr
        return out


# an FP4 (e2m1) code's value: sign bit, then two exponent bits and one mantissa bit
FP4_VALUES = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
                      np.float32)


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """MXFP4 as OpenAI's GPT-OSS checkpoints store it, dequantized as transformers' `convert_moe_packed_tensors`:
    `blocks [..., out, G, 16]` uint8 hold two FP4 codes a byte (low nibble first) for 32 inputs per group,
    `scales [..., out, G]` each group's power of two (biased by 127). Returns `[..., G * 32, out]` in bfloat16 (exact:
    each value is an FP4 code times a power of two), one leading slice at a time."""
    *lead, out, groups, group_bytes = blocks.shape
    if scales.shape != blocks.shape[:-1]:
        raise ValueError(f"MXFP4 scales of shape {scales.shape} do not fit blocks of shape {blocks.shape}")
    flat_blocks = blocks.reshape(-1, out, groups, group_bytes)
    flat_scales = scales.reshape(-1, out, groups)
    result = aligned_empty((len(flat_blocks), groups * group_bytes * 2, out), jnp.bfloat16)
    for i, (b, e) in enumerate(zip(flat_blocks, flat_scales)):
        values = np.stack([FP4_VALUES[b & 0x0F], FP4_VALUES[b >> 4]], axis=-1).reshape(out, groups, -1)
        values = np.ldexp(values, e.astype(np.int32)[..., None] - 127)
        result[i] = values.reshape(out, -1).T
    return result.reshape(*lead, groups * group_bytes * 2, out)


def dequantize_fp8(weight: np.ndarray, scale_inv: np.ndarray) -> np.ndarray:
    """Block-scaled FP8 as DeepSeek-V3's checkpoints store it (transformers' finegrained FP8, dequantized as its
    `Fp8Dequantize`): `weight [rows, cols]` in float8, `scale_inv [rows / m, cols / n]` each m x n block's scale
    (float; or uint8 E8M0 exponents, biased by 127). Returns `weight * scale` in float32."""
    rows, cols = weight.shape[-2:]
    scale_rows, scale_cols = scale_inv.shape[-2:] if scale_inv.ndim >= 2 else (1, 1)
    if rows % scale_rows or cols % scale_cols:
        raise ValueError(f"FP8 weight of shape {weight.shape} does not split into the {scale_rows} x {scale_cols} "
                         "blocks of its weight_scale_inv")
    scale = (np.exp2(scale_inv.astype(np.float32) - 127.0) if scale_inv.dtype == np.uint8
             else scale_inv.astype(np.float32)).reshape(-1, scale_rows, 1, scale_cols, 1)
    blocks = weight.astype(np.float32).reshape(-1, scale_rows, rows // scale_rows, scale_cols, cols // scale_cols)
    return (blocks * scale).reshape(weight.shape)


def _spellings(name: str, prefix: str) -> list[str]:
    """HF saves base models without their prefix and task models with it; accept both."""
    candidates = [name]
    if prefix and name.startswith(prefix + "."):
        candidates.append(name[len(prefix) + 1:])
    elif prefix:
        candidates.append(f"{prefix}.{name}")
    return candidates


def _find(ckpt: Checkpoint, name: str, prefix: str) -> str | None:
    """The checkpoint's spelling of `name` (prefixed or not); for a stacked weight's pattern (`{}` for the slice: a
    mixture of experts' per-expert tensors), the pattern spelled as its first slice is."""
    return next((c for c in _spellings(name, prefix) if c.format(0) in ckpt), None)


def _read(ckpt: Checkpoint, key: str, shape: tuple, dtype, transpose: bool) -> np.ndarray:
    """The tensor `key` in `dtype`; a stacked pattern's slices `key.format(0..shape[0] - 1)` into one aligned
    `shape` buffer."""
    if "{}" not in key:
        return ckpt.read(key, dtype, transpose)
    out = aligned_empty(shape, dtype)
    for i in range(shape[0]):
        if key.format(i) not in ckpt:
            raise ValueError(f"{ckpt.dir}: the checkpoint has {key.format(0)} but not {key.format(i)}; config.json "
                             f"implies {shape[0]} of them")
        out[i] = ckpt.read(key.format(i), dtype, transpose)
    return out


def load_state(abstract_model: nnx.Module, arch: ModuleType, ckpt: Checkpoint, param_dtype,
               init_fn, ignore_mismatched_sizes: bool = False, mismatch_hint: str = "") -> nnx.Module:
    """Fill an abstract module from the checkpoint; initialise what the checkpoint lacks, and, with
    `ignore_mismatched_sizes`, what it holds in another shape (transformers' flag: a new head)."""
    graphdef, state = nnx.split(abstract_model)
    flat = list(nnx.to_flat_state(state))
    loaded, missing, mismatched = [], [], []
    for path, var in flat:
        hf_names, transpose = arch.checkpoint_key(path)  # a name, or names tried in order
        hf_names = (hf_names,) if isinstance(hf_names, str) else hf_names
        key = next((k for n in hf_names if (k := _find(ckpt, n, arch.BASE_PREFIX))), None)
        if key is None:
            missing.append(path)
            loaded.append((path, var))
            continue
        want = tuple(var.get_value().shape)
        stacked = "{}" in key  # want: [slices, *each slice's shape]
        if ckpt.shape(key.format(0), transpose) != (want[1:] if stacked else want):
            stored = ckpt.shape(key.format(0))
            mismatched.append(f"{key.format(0)} {stored} (the model's {'.'.join(map(str, path))}: "
                              f"{want[1:] if stacked else want}{', transposed' if transpose else ''})")
            missing.append(path)
            loaded.append((path, var))
            continue
        keep_dtype = param_dtype is None or isinstance(var, Fp32Buffer | Fp32Param)
        dtype = np.dtype(var.get_value().dtype if keep_dtype else param_dtype)
        arr = _read(ckpt, key, want, dtype, transpose)
        # On CPU the parameter adopts the aligned host buffer (no copy); on an accelerator this is
        # the one host-to-device transfer.
        loaded.append((path, var.replace(jax.device_put(arr, may_alias=True))))
    if mismatched and not ignore_mismatched_sizes:
        raise ValueError(f"checkpoint tensors of another shape than config.json implies: {'; '.join(mismatched)}"
                         f"{mismatch_hint}")
    if mismatched:
        log.warning("initialised parameters whose checkpoint shape differs (ignore_mismatched_sizes): %s",
                    "; ".join(mismatched))
    if len(missing) == len(flat):
        raise ValueError(f"no tensor of the checkpoint in {ckpt.dir} matches this architecture "
                         f"({arch.__name__.rsplit('.', 1)[-1]})")
    if missing:
        names = ", ".join(".".join(map(str, p)) for p in missing)
        log.warning("initialised parameters absent from the checkpoint: %s", names)
        fresh = dict(init_fn(tuple(missing)))
        loaded = [(p, v.replace(fresh[p]) if p in fresh else v) for p, v in loaded]
    model = nnx.merge(graphdef, nnx.from_flat_state(loaded))
    model.initialised_params = tuple(".".join(map(str, p)) for p in missing)  # not from the checkpoint
    return model


PROBLEM_TYPES = (None, "regression", "single_label_classification", "multi_label_classification")


def from_pretrained(name_or_path, task: str | None = None, num_labels: int | None = None, *,
                    dtype="float32", param_dtype=None, revision: str | None = None, seed: int = 0,
                    ignore_mismatched_sizes: bool = False, **config_overrides) -> nnx.Module:
    """Load a Hugging Face checkpoint as a frozen jsoft backbone with the head for `task`.

    task: None (hidden states), "causal_lm", "seq2seq_lm", "seq_cls", "token_cls".
    dtype: compute dtype; param_dtype: storage dtype of the weights (default: dtype).
    ignore_mismatched_sizes: initialise the weights the checkpoint holds in another shape (a classification
    head trained for another number of labels) instead of refusing them, as transformers' flag does."""
    if task not in TASKS:
        raise ValueError(f"task={task!r} is not valid; choose one of {list(TASKS)}")
    model_dir = resolve(name_or_path, revision)
    hf = read_config(model_dir)
    hf.update(config_overrides)
    if "model_type" not in hf:
        raise ValueError(f"{model_dir}/config.json has no model_type; supported: {sorted(ARCHITECTURES)}")
    arch = architecture(hf["model_type"])
    quantization = (hf.get("quantization_config") or {}).get("quant_method")
    if quantization not in (None, "mxfp4", "fp8"):
        raise ValueError(f"{model_dir}/config.json: quantization_config quant_method={quantization!r} is not "
                         "supported by jsoft; it reads unquantized checkpoints (fp32 / fp16 / bf16), GPT-OSS's "
                         "MXFP4 experts and block-scaled FP8 ('fp8': DeepSeek-V3's, Qwen3-FP8's), dequantized")
    if task not in arch.TASKS:
        raise ValueError(f"task={task!r} is not available for model_type {hf['model_type']!r}; "
                         f"it supports {list(arch.TASKS)}")
    if task in ("seq_cls", "token_cls"):
        if num_labels is not None and (isinstance(num_labels, bool) or not isinstance(num_labels, int | np.integer)
                                       or num_labels < 1):
            raise ValueError(f"num_labels={num_labels!r} must be an integer >= 1 (or None: from config.json)")
        trained_labels = hf.get("num_labels") or len(hf.get("id2label") or {}) or None
        num_labels = num_labels or trained_labels or 2
    config = arch.Config.from_hf(hf)
    for key, value in generation_defaults(model_dir).items():
        if key not in config_overrides:
            setattr(config, key, value)
    config.name_or_path = str(name_or_path)
    config.problem_type = hf.get("problem_type")
    if config.problem_type not in PROBLEM_TYPES:
        raise ValueError(f"config.json problem_type={config.problem_type!r} is not valid; "
                         f"choose one of {PROBLEM_TYPES}")
    dtype = as_dtype(dtype)
    precision = Precision(dtype=dtype, param_dtype=as_dtype(param_dtype, "param_dtype") or dtype)
    ckpt = Checkpoint(model_dir, LANGUAGE_MODELS.get(hf.get("multimodal_type")))

    def build(key):
        return arch.build(config, task, num_labels, precision, param_rngs(key))

    def init_fn(paths):
        def init(key):  # XLA drops every initialiser whose parameter is not returned
            values = {p: v.get_value() for p, v in nnx.to_flat_state(nnx.state(build(key)))}
            return [values[p] for p in paths]

        return zip(paths, jax.jit(init)(jax.random.key(seed)))

    abstract = nnx.eval_shape(lambda: build(jax.random.key(seed)))
    hint = ""
    if task in ("seq_cls", "token_cls") and trained_labels not in (None, num_labels):
        names = [v for _, v in sorted((hf.get("id2label") or {}).items(), key=lambda kv: int(kv[0]))]
        named = names and names != [f"LABEL_{i}" for i in range(len(names))]  # transformers' default names
        hint = (f". The checkpoint's head was trained for {trained_labels} labels{f' {names}' if named else ''}, "
                f"not num_labels={num_labels}: pass num_labels={trained_labels} (a training config: model.num_labels"
                f"{', and those names as data.label_names' if named else ''}), or ignore_mismatched_sizes=True "
                "(model.ignore_mismatched_sizes) for a new head")
    model = load_state(abstract, arch, ckpt, precision.param_dtype, init_fn, ignore_mismatched_sizes, hint)
    # the parameters of a multimodal checkpoint's other towers, counted in PEFT's totals though jsoft does not run them
    model.outside_params = sum(int(np.prod(ckpt.shape(k))) for k in ckpt.outside)
    return model
