"""Method configs with PEFT's class names, field names and defaults.

A PEFT user's `PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=20, ...)` works
unchanged; `to_dict()` writes the keys PEFT writes to adapter_config.json. jsoft-only options
(CLASS_LABEL init, paper-style encoder-decoder prefixes, P-Tuning templates) are extra fields
whose defaults keep PEFT's behaviour; an adapter that uses them is not a PEFT adapter.
"""

from __future__ import annotations

import dataclasses
import enum
import json
from pathlib import Path
from typing import Any, ClassVar

CONFIG_NAME = "adapter_config.json"


class TaskType(enum.StrEnum):
    CAUSAL_LM = "CAUSAL_LM"
    SEQ_2_SEQ_LM = "SEQ_2_SEQ_LM"
    SEQ_CLS = "SEQ_CLS"
    TOKEN_CLS = "TOKEN_CLS"


class PeftType(enum.StrEnum):
    PROMPT_TUNING = "PROMPT_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"
    P_TUNING = "P_TUNING"


class PromptTuningInit(enum.StrEnum):
    TEXT = "TEXT"
    SAMPLE_VOCAB = "SAMPLE_VOCAB"
    RANDOM = "RANDOM"
    CLASS_LABEL = "CLASS_LABEL"  # Lester et al. 2021; not in PEFT


class PromptEncoderReparameterizationType(enum.StrEnum):
    MLP = "MLP"
    LSTM = "LSTM"


# jsoft task names (models.hub.TASKS) <-> PEFT task types
TASK_OF = {TaskType.CAUSAL_LM: "causal_lm", TaskType.SEQ_2_SEQ_LM: "seq2seq_lm",
           TaskType.SEQ_CLS: "seq_cls", TaskType.TOKEN_CLS: "token_cls"}


def _enum(cls: type[enum.Enum], value, field: str):
    if isinstance(value, cls):
        return value
    try:
        return cls(str(value).upper() if isinstance(value, str) else value)
    except ValueError:
        raise ValueError(f"{field}={value!r} is not valid; choose one of {[m.value for m in cls]}") from None


@dataclasses.dataclass
class PromptLearningConfig:
    """Fields shared by the three methods (PEFT's PromptLearningConfig)."""

    peft_type: ClassVar[PeftType]
    task_type: TaskType | str | None = None
    num_virtual_tokens: int | None = None
    token_dim: int | None = None
    num_transformer_submodules: int | None = None
    num_attention_heads: int | None = None
    num_layers: int | None = None
    modules_to_save: list[str] | None = None
    base_model_name_or_path: str | None = None
    revision: str | None = None
    inference_mode: bool = False

    def __post_init__(self):
        if self.task_type is not None:
            self.task_type = _enum(TaskType, self.task_type, "task_type")
        n = self.num_virtual_tokens
        if n is None or isinstance(n, bool) or not isinstance(n, int) or n <= 0:
            raise ValueError(f"num_virtual_tokens={n!r} is not valid; it must be a positive integer")

    @property
    def is_peft_compatible(self) -> bool:
        """Whether this config describes something PEFT can load."""
        return True

    def to_dict(self) -> dict[str, Any]:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["peft_type"] = self.peft_type.value
        return {k: (v.value if isinstance(v, enum.Enum) else v) for k, v in d.items()}

    def save_pretrained(self, directory: str | Path) -> None:
        d = self.to_dict()
        d["inference_mode"] = True
        d.setdefault("auto_mapping", None)
        (Path(directory) / CONFIG_NAME).write_text(json.dumps(d, indent=2, sort_keys=True))

    @staticmethod
    def from_dict(d: dict[str, Any]) -> PromptLearningConfig:
        if "peft_type" not in d:
            raise ValueError(f"{CONFIG_NAME} has no peft_type; valid: {[m.value for m in PeftType]}")
        peft_type = _enum(PeftType, d["peft_type"], "peft_type")
        cls = CONFIG_CLASSES[peft_type]
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})

    @staticmethod
    def from_pretrained(directory: str | Path) -> PromptLearningConfig:
        f = Path(directory) / CONFIG_NAME
        if not f.is_file():
            raise FileNotFoundError(f"{directory} has no {CONFIG_NAME}")
        try:
            d = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f} is not valid JSON ({e})") from None
        return PromptLearningConfig.from_dict(d)


@dataclasses.dataclass
class PromptTuningConfig(PromptLearningConfig):
    """Lester et al. 2021: learned input embeddings in front of the tokens."""

    peft_type: ClassVar[PeftType] = PeftType.PROMPT_TUNING
    prompt_tuning_init: PromptTuningInit | str = PromptTuningInit.RANDOM
    prompt_tuning_init_text: str | None = None
    tokenizer_name_or_path: str | None = None
    tokenizer_kwargs: dict | None = None
    # CLASS_LABEL init: one text per class; its mean token embedding initialises one virtual token
    prompt_tuning_class_labels: list[str] | None = None

    def __post_init__(self):
        super().__post_init__()
        self.prompt_tuning_init = _enum(PromptTuningInit, self.prompt_tuning_init, "prompt_tuning_init")
        init = self.prompt_tuning_init
        if init in (PromptTuningInit.TEXT, PromptTuningInit.CLASS_LABEL) and not self.tokenizer_name_or_path:
            raise ValueError(f"prompt_tuning_init={init.value!r} needs tokenizer_name_or_path "
                             "(a tokenizer directory or Hub id)")
        if init == PromptTuningInit.TEXT and not self.prompt_tuning_init_text:
            raise ValueError("prompt_tuning_init='TEXT' needs a non-empty prompt_tuning_init_text")
        if init == PromptTuningInit.CLASS_LABEL:
            labels = self.prompt_tuning_class_labels
            if not labels or not all(isinstance(t, str) and t.strip() for t in labels):
                raise ValueError("prompt_tuning_init='CLASS_LABEL' needs prompt_tuning_class_labels, "
                                 "a list of non-empty label texts")
        if self.tokenizer_kwargs and init != PromptTuningInit.TEXT:
            raise ValueError("tokenizer_kwargs is only valid with prompt_tuning_init='TEXT'")

    @property
    def is_peft_compatible(self) -> bool:
        return True  # CLASS_LABEL only changes the initial values; the adapter is a plain prompt

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.prompt_tuning_class_labels is None:
            d.pop("prompt_tuning_class_labels")
        if self.prompt_tuning_init == PromptTuningInit.CLASS_LABEL:
            d["prompt_tuning_init"] = PromptTuningInit.SAMPLE_VOCAB.value  # what PEFT can parse
            d["jsoft_prompt_tuning_init"] = PromptTuningInit.CLASS_LABEL.value
        return d


@dataclasses.dataclass
class PrefixTuningConfig(PromptLearningConfig):
    """Li & Liang 2021 (prefix_projection=True) and P-Tuning v2 (prefix_projection=False)."""

    peft_type: ClassVar[PeftType] = PeftType.PREFIX_TUNING
    encoder_hidden_size: int | None = None
    prefix_projection: bool = False
    init_weights: str | None = None
    # "decoder": PEFT's encoder-decoder form (decoder self-attention only); "all": the paper's
    # (encoder self-attention, decoder self-attention and cross-attention). jsoft only.
    prefix_targets: str = "decoder"

    def __post_init__(self):
        super().__post_init__()
        if self.init_weights not in (None, "zero"):
            raise ValueError(f"init_weights={self.init_weights!r} is not valid; choose None or 'zero'")
        if self.prefix_targets not in ("decoder", "all"):
            raise ValueError(f"prefix_targets={self.prefix_targets!r} is not valid; choose 'decoder' or 'all'")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size <= 0:
            raise ValueError(f"encoder_hidden_size={self.encoder_hidden_size} must be positive")

    @property
    def is_peft_compatible(self) -> bool:
        return self.prefix_targets == "decoder"

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.prefix_targets == "decoder":
            d.pop("prefix_targets")
        return d


@dataclasses.dataclass
class PromptEncoderConfig(PromptLearningConfig):
    """P-Tuning v1 (Liu et al. 2021): virtual tokens produced by an MLP or LSTM encoder."""

    peft_type: ClassVar[PeftType] = PeftType.P_TUNING
    encoder_reparameterization_type: PromptEncoderReparameterizationType | str = "MLP"
    encoder_hidden_size: int | None = None
    encoder_num_layers: int = 2
    encoder_dropout: float = 0.0
    # The paper's templates, e.g. "[P][P] The capital of [X] is [P][P]": [P] marks a virtual
    # token (their count must equal num_virtual_tokens), [X] the input text. jsoft only.
    template: str | None = None

    def __post_init__(self):
        super().__post_init__()
        self.encoder_reparameterization_type = _enum(
            PromptEncoderReparameterizationType, self.encoder_reparameterization_type,
            "encoder_reparameterization_type")
        if self.encoder_num_layers < 1:
            raise ValueError(f"encoder_num_layers={self.encoder_num_layers} must be >= 1")
        if not 0.0 <= self.encoder_dropout < 1.0:
            raise ValueError(f"encoder_dropout={self.encoder_dropout} must be in [0, 1)")
        if self.encoder_hidden_size is not None and self.encoder_hidden_size <= 0:
            raise ValueError(f"encoder_hidden_size={self.encoder_hidden_size} must be positive")
        if self.template is not None:
            from jsoft.tuners.p_tuning import parse_template

            n = parse_template(self.template).count(None)
            if n != self.num_virtual_tokens:
                raise ValueError(f"template has {n} [P] slots but num_virtual_tokens={self.num_virtual_tokens}")

    @property
    def is_peft_compatible(self) -> bool:
        return self.template is None

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        if self.template is None:
            d.pop("template")
        return d


CONFIG_CLASSES: dict[PeftType, type[PromptLearningConfig]] = {
    PeftType.PROMPT_TUNING: PromptTuningConfig, PeftType.PREFIX_TUNING: PrefixTuningConfig,
    PeftType.P_TUNING: PromptEncoderConfig}
