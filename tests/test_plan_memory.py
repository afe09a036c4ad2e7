"""scripts/plan_memory.py: AOT memory planning on a simulated 8-device CPU mesh (in a subprocess)."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fsdp_uses_less_memory_per_device_than_replicated(tmp_path):
    out = tmp_path / "plan.json"
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="8", JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "plan_memory.py"), "--model", "llama-tiny",
                        "--method", "prompt", "--mesh", "fsdp=8", "--mesh", "data=8", "--seq-len", "64",
                        "--json", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "fsdp=8" in r.stdout and "data=8" in r.stdout
    rows = {row["mesh"]: row for row in json.loads(out.read_text())}
    fsdp, data = rows["fsdp=8"], rows["data=8"]
    assert fsdp["devices"] == data["devices"] == 8
    # sharded frozen weights: the arguments per device shrink, and so does the total
    assert fsdp["argument"] < data["argument"] / 2
    assert fsdp["total"] < data["total"]
