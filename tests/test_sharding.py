"""jsoft.sharding: mesh sizes, logical-axis rules; an 8-device data x fsdp x tensor run whose loss trajectory
(with dropout) matches the single-device run (JAX_NUM_CPU_DEVICES=8 in a subprocess, set before JAX starts);
two processes (multi-host) that match one."""

import json
import os
import pathlib
import subprocess
import sys
import types

import jax
import pytest
from jax.sharding import PartitionSpec as P

from jsoft import sharding
from tests import train_utils as tu

ROOT = pathlib.Path(__file__).resolve().parents[1]


def fake_mesh(data=1, fsdp=1, tensor=1):
    return types.SimpleNamespace(shape={"data": data, "fsdp": fsdp, "tensor": tensor})


def test_mesh_shape():
    assert sharding.mesh_shape({"data": -1, "fsdp": 1, "tensor": 1}, 8) == (8, 1, 1)
    assert sharding.mesh_shape({"data": 2, "fsdp": -1}, 8) == (2, 4, 1)
    assert sharding.mesh_shape({"data": 1}, 8) == (1, 1, 1)  # a smaller mesh uses the first devices


@pytest.mark.parametrize("sizes,match", [
    ({"data": -1, "fsdp": -1}, "at most one"), ({"data": 3, "fsdp": -1}, "not a multiple"),
    ({"data": 16}, "needs 16 devices"), ({"batch": 2}, r"mesh\.batch is not a mesh axis"),
    ({"data": 0}, r"mesh\.data=0")])
def test_mesh_errors(sizes, match):
    with pytest.raises(ValueError, match=match):
        sharding.mesh_shape(sizes, 8)


def test_make_mesh_axis_types():
    mesh = sharding.make_mesh({"data": -1})
    assert mesh.axis_names == ("data", "fsdp", "tensor")
    assert all(t == jax.sharding.AxisType.Auto for t in mesh.axis_types)


@pytest.mark.parametrize("names,shape,mesh,spec", [
    (("vocab", "embed"), (32000, 384), fake_mesh(fsdp=4, tensor=2), P(("tensor", "fsdp"), None)),
    (("vocab", "embed"), (30522, 384), fake_mesh(fsdp=4, tensor=2), P("tensor", "fsdp")),  # 30522 = 2 x odd
    (("embed", "mlp"), (384, 1536), fake_mesh(fsdp=4, tensor=2), P("fsdp", "tensor")),
    (("mlp", "embed"), (1536, 384), fake_mesh(fsdp=4, tensor=2), P(("tensor", "fsdp"), None)),
    (("embed", "joined_kv"), (384, 1152), fake_mesh(fsdp=4, tensor=2), P("fsdp", "tensor")),
    (("embed", "heads", "kv"), (384, 12, 32), fake_mesh(fsdp=4, tensor=2), P("fsdp", "tensor", None)),
    (("vocab", "embed"), (101, 40), fake_mesh(fsdp=4), P(None, "fsdp")),  # 101 does not divide: next axis
    (("embed",), (384,), fake_mesh(fsdp=4), P()),  # vectors stay replicated
    ((None, None), (4, 240), fake_mesh(fsdp=4), P()),  # prompts carry no logical names
    (("embed", "mlp"), (384, 1536), fake_mesh(data=8), P()),  # data only: weights replicated
])
def test_logical_rules(names, shape, mesh, spec):
    assert sharding.logical_to_spec(names, shape, mesh) == spec


@pytest.mark.parametrize("kind,task", [("bert", "seq_cls"), ("bart", "seq2seq_lm"), ("opt", "causal_lm"),
                                       ("deberta-v2", "seq_cls"), ("distilbert", "seq_cls")])
def test_state_shardings_of_a_model(tiny_dir, kind, task):
    from flax import nnx

    import jsoft

    pm = jsoft.get_peft_model(jsoft.from_pretrained(tiny_dir(kind, task, num_labels=2), task=task, num_labels=2),
                              jsoft.PrefixTuningConfig(num_virtual_tokens=4))
    _, trainable, frozen = nnx.split(pm, jsoft.Trainable, ...)
    mesh = sharding.make_mesh({"data": 1})
    for tree in (sharding.state_shardings(frozen, mesh), sharding.state_shardings(trainable, mesh, replicate=True)):
        leaves = jax.tree.leaves(tree)
        assert leaves and all(isinstance(s, jax.sharding.NamedSharding) for s in leaves)
    placed = sharding.put(frozen, sharding.state_shardings(frozen, mesh))
    assert len(jax.tree.leaves(placed)) == len(jax.tree.leaves(frozen))


SCRIPT = r"""
import json, os, sys
os.environ["JAX_NUM_CPU_DEVICES"] = "8"
os.environ["JAX_PLATFORMS"] = "cpu"
import jax
assert jax.device_count() == 8, jax.devices()
from flax import nnx
import jsoft
from jsoft import build, sharding, train
from tests import train_utils as tu

model, train_file, out, peft_type = sys.argv[1:5]
results = {}
for name, mesh in [("single", dict(data=1, fsdp=1, tensor=1)), ("data_fsdp_tensor", dict(data=2, fsdp=2, tensor=2))]:
    c = tu.config(model, train_file, None, train=dict(num_steps=20, batch_size=16, checkpoint_every=0,
                                                      async_checkpoints=False, dropout=True), mesh=mesh,
                  peft=dict(peft_type=peft_type, num_virtual_tokens=4))
    wd = os.path.join(out, name)
    s = train.train(c, wd)
    losses = [json.loads(l)["loss"] for l in open(os.path.join(wd, "metrics.jsonl"))]
    pm = build.build(c)[0]
    frozen = nnx.split(pm, jsoft.Trainable, ...)[2]
    specs = [str(s.spec) for s in jax.tree.leaves(sharding.state_shardings(frozen, sharding.make_mesh(mesh)))]
    results[name] = {"losses": losses, "mesh": s["mesh"], "sharded": sum(s != "PartitionSpec()" for s in specs)}
json.dump(results, open(os.path.join(out, "results.json"), "w"))
"""


@pytest.mark.parametrize("kind,peft_type", [("bert", "PREFIX_TUNING"), ("deberta-v2", "PREFIX_TUNING"),
                                            ("mixtral", "PREFIX_TUNING"), ("falcon", "PREFIX_TUNING"),
                                            ("gpt_oss", "PREFIX_TUNING"), ("deepseek_v3", "PROMPT_TUNING"),
                                            ("mistral4", "PROMPT_TUNING"), ("minicpm3", "PROMPT_TUNING"),
                                            ("qwen3_next", "P_TUNING")])
# DeBERTa: its position terms' gathers; Mixtral: grouped expert matmuls over weights split on their embed / mlp axes;
# Falcon: a fused projection split into key / value groups, keys and values repeated over each group's heads;
# GPT-OSS: interleaved gate / up columns split over tensor, per-expert biases gathered per row, sinks split with the
# heads; DeepSeek-V3: latent projections split over heads, experts chosen within groups; Mistral 4: experts stored
# stacked [E, out, in], split over their axes; MiniCPM3: DeepSeek-V2's attention with LongRoPE and scaled branches;
# Qwen3-Next: Gated DeltaNet's fused projections split over fsdp, its chunked rule on rows split over data
def test_sharded_run_matches_single_device(tiny_dir, tmp_path, kind, peft_type):
    model = tu.model_dir(tiny_dir, kind, "seq_cls", num_labels=2)
    train_file = tu.write_jsonl(tmp_path / "train.jsonl", tu.sentiment(96))
    (tmp_path / "run.py").write_text(SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_NUM_CPU_DEVICES="8")
    proc = subprocess.run([sys.executable, str(tmp_path / "run.py"), str(model), str(train_file), str(tmp_path),
                           peft_type], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text())
    ref = results["single"]["losses"]
    assert len(ref) == 20 and results["single"]["mesh"] == {"data": 1, "fsdp": 1, "tensor": 1}
    r = results["data_fsdp_tensor"]
    assert r["mesh"] == {"data": 2, "fsdp": 2, "tensor": 2}
    assert r["sharded"] > 10, r  # the frozen weights really are split over fsdp and tensor
    assert r["losses"] == pytest.approx(ref, rel=1e-5)


MULTIPROCESS_CONFIG = """
import pathlib
from tests import train_utils as tu
def get_config():
    return tu.config(pathlib.Path({model!r}), pathlib.Path({train!r}), pathlib.Path({eval!r}),
                     train=dict(num_steps=6, checkpoint_every=3, eval_every=3))
"""


def test_two_processes_match_one(tiny_dir, tmp_path):
    """Multi-host as two local processes (two CPU devices each): each reads its half of every batch, and the
    run matches a single-device one."""
    import socket

    from jsoft import train

    model = tu.model_dir(tiny_dir, "bert", "seq_cls", num_labels=2)
    files = tu.write_jsonl(tmp_path / "t.jsonl", tu.sentiment(48)), tu.write_jsonl(tmp_path / "e.jsonl",
                                                                                   tu.sentiment(13, 1))
    cfg = tmp_path / "cfg.py"
    cfg.write_text(MULTIPROCESS_CONFIG.format(model=str(model), train=str(files[0]), eval=str(files[1])))
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = s.getsockname()[1]
    procs = []
    for i in range(2):
        env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES="2",
                   JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JSOFT_NUM_PROCESSES="2", JSOFT_PROCESS_ID=str(i))
        procs.append(subprocess.Popen([sys.executable, "-m", "jsoft.train", "--config", str(cfg), "--workdir",
                                       str(tmp_path / "multi")], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    summary = train.train(tu.config(model, *files, train=dict(num_steps=6, checkpoint_every=3, eval_every=3)),
                          tmp_path / "single")
    for p in procs:
        _, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    losses = lambda d: [x["loss"] for x in map(json.loads, (tmp_path / d / "metrics.jsonl").read_text().splitlines())]
    assert losses("multi") == pytest.approx(losses("single"), rel=1e-5)
    multi = json.loads((tmp_path / "multi" / "summary.json").read_text())
    assert multi["devices"] == 4 and multi["mesh"]["data"] == 4
    assert multi["eval"] == pytest.approx(summary["eval"], rel=1e-5)
    assert sorted(int(p.name) for p in (tmp_path / "multi" / "checkpoints").iterdir() if p.name.isdigit()) == [3, 6]
