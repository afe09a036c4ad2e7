"""Frozen backbones (Flax NNX) that load Hugging Face checkpoints."""

from jsoft.models.hub import from_pretrained
from jsoft.models.layers import KVCache, ModelOutput

__all__ = ["KVCache", "ModelOutput", "from_pretrained"]
