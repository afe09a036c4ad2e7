"""Fixtures: tiny Hugging Face models built offline and saved with `save_pretrained`."""

import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402

from tests import tiny  # noqa: E402


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """`tiny_dir(kind, task)` -> path of a saved tiny HF model (cached per session)."""
    cache = {}

    def make(kind: str, task: str | None = None, **overrides):
        key = (kind, task, repr(sorted(overrides.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp(f"{kind}-{task}")
            tiny.save(kind, task, path, **overrides)
            cache[key] = path
        return cache[key]

    return make
