"""jsoft: soft-prompt tuning (Prompt Tuning, Prefix Tuning, P-Tuning v1/v2) in pure JAX."""

from jsoft.models import KVCache, ModelOutput, from_pretrained

__all__ = ["KVCache", "ModelOutput", "from_pretrained"]
__version__ = "0.1.0"
