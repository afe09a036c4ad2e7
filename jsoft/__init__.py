"""jsoft: soft-prompt tuning (Prompt Tuning, Prefix Tuning, P-Tuning v1/v2) in pure JAX."""

from jsoft.models import KVCache, ModelOutput, from_pretrained
from jsoft.tuners import (
    PeftModel,
    PeftType,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptLearningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
    Trainable,
    get_peft_model,
)

__all__ = [
    "KVCache", "ModelOutput", "PeftModel", "PeftType", "PrefixTuningConfig", "PromptEncoderConfig",
    "PromptEncoderReparameterizationType", "PromptLearningConfig", "PromptTuningConfig", "PromptTuningInit",
    "TaskType", "Trainable", "from_pretrained", "get_peft_model",
]
__version__ = "0.1.0"
