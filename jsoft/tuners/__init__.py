"""The four soft-prompt methods with PEFT's configs and API."""

from jsoft.tuners.config import (
    PeftType,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptEncoderReparameterizationType,
    PromptLearningConfig,
    PromptTuningConfig,
    PromptTuningInit,
    TaskType,
)
from jsoft.tuners.peft_model import PeftModel, get_peft_model
from jsoft.tuners.variables import Trainable

__all__ = [
    "PeftModel", "PeftType", "PrefixTuningConfig", "PromptEncoderConfig", "PromptEncoderReparameterizationType",
    "PromptLearningConfig", "PromptTuningConfig", "PromptTuningInit", "TaskType", "Trainable", "get_peft_model",
]
