"""Fixtures: tiny Hugging Face models built offline and saved with `save_pretrained`."""

import gc
import os

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# The suite is compile-bound: thousands of small programs for tiny models, and each op of an eager call compiles on
# its first dispatch. XLA:CPU's LLVM passes and its newer fusion emitters cost about half of that compile time and buy
# nothing at these sizes; the HLO each program computes is the same (set XLA_FLAGS to test other backend options).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false")

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


def _max_map_count() -> int | None:
    try:
        with open("/proc/sys/vm/max_map_count") as f:
            return int(f.read())
    except (OSError, ValueError):
        return None  # not Linux: no such limit to stay under


MAX_MAP_COUNT = _max_map_count()


def _drop_compiled_programs_above(mappings: int) -> None:
    """XLA:CPU maps each compiled program's code into the process (7 or more mappings each), and JAX keeps every
    program it compiled. A whole test session compiles thousands, past the kernel's `vm.max_map_count` (65530
    here), where the next compile segfaults. Past `mappings`, drop JAX's caches (later tests recompile what they
    need)."""
    with open("/proc/self/maps") as f:
        if sum(1 for _ in f) <= mappings:
            return
    import jax

    jax.clear_caches()
    gc.collect()


@pytest.fixture(autouse=True, scope="module")
def _bounded_compiled_programs_per_module():
    """Between modules, so a module's own fixtures keep what they compiled (test_serve counts its programs)."""
    yield
    if MAX_MAP_COUNT is not None:
        _drop_compiled_programs_above(MAX_MAP_COUNT // 2)


@pytest.fixture(autouse=True)
def _bounded_compiled_programs():
    """Within a long module (the PEFT matrix), only when the limit is near."""
    yield
    if MAX_MAP_COUNT is not None:
        _drop_compiled_programs_above(MAX_MAP_COUNT * 3 // 4)


def pytest_collection_modifyitems(items):
    """Under pytest-xdist's `--dist loadgroup` (the README's `-n auto`), a file's tests of one backbone stay in one
    worker: they share its tiny model and the programs compiled for it, which another worker would build again."""
    for item in items:
        kind = item.callspec.params.get("kind") if hasattr(item, "callspec") else None
        path = item.nodeid.split("::")[0]
        item.add_marker(pytest.mark.xdist_group(f"{path}:{kind}" if kind is not None else path))
