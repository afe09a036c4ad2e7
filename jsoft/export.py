"""Export a trained prompt: `python -m jsoft.export --workdir DIR [--step N | --best] --out ADAPTER_DIR`.

Rebuilds the run from `DIR/config.json`, restores the trainable state of a checkpoint (the latest by
default) and writes it as a Hugging Face PEFT adapter, or in jsoft's format when the config uses a
paper-only option or a backbone PEFT cannot run it on (a prefix on DeBERTa or DistilBERT); `--format jsoft` forces
it, keeping encoders for further training.
A classification adapter also gets `jsoft_labels.json`: its label names and problem type, for the server.
"""

from __future__ import annotations

import argparse
import functools
import logging
import sys
from pathlib import Path

import jax
from flax import nnx

import jsoft
from jsoft import build, interop, metrics, optim, sharding, train
from jsoft.checkpoint import Checkpointer

log = logging.getLogger("jsoft.export")


def export(workdir, out, step: int | None = None, best: bool = False, format: str | None = None) -> dict:
    """Writes the adapter of `step` (default: latest; `best`: the best by the run's metric) to `out`.
    Returns {"step", "format", "out"}."""
    workdir = Path(workdir).absolute()  # Orbax needs absolute paths
    config = build.load_config(workdir)
    ckpt_dir = workdir / "checkpoints"
    if not ckpt_dir.is_dir():
        raise FileNotFoundError(f"{workdir} has no checkpoints/; has the run saved a checkpoint yet?")
    pm, _, _ = build.build(config)
    _, trainable, _ = nnx.split(pm, jsoft.Trainable, ...)
    tx, _ = optim.make(config.train, config.train.num_steps or 1)
    mesh = sharding.make_mesh({"data": 1}, jax.local_devices()[:1])
    replicated = sharding.replicated(mesh)
    abstract = jax.eval_shape(functools.partial(train.initial_state, tx=tx, seed=config.train.seed), trainable)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
    ckpt = Checkpointer(ckpt_dir, best_metric=config.train.best_metric,
                        best_mode=metrics.mode(config.train.best_metric or "loss"), async_save=False)
    try:
        if best and ckpt.best_step() is None:
            raise ValueError(f"--best: no checkpoint in {ckpt_dir} was saved with eval metrics "
                             f"({config.train.best_metric}); give --step or export the latest")
        which = "best" if best else step
        restored = ckpt.restore(train.to_saveable(abstract), which)
        if restored is None:
            raise FileNotFoundError(f"no checkpoint to export in {ckpt_dir}")
        saved, meta = restored
    finally:
        ckpt.close()
    state = train.from_saveable(saved, abstract)
    nnx.update(pm, state["params"])
    labels = None
    if config.model.task in ("seq_cls", "token_cls"):
        names = config.data.label_names
        labels = {"id2label": {str(i): str(n) for i, n in enumerate(names)} if names else {},
                  "problem_type": config.model.problem_type}
    written = interop.save_adapter(pm, out, format=format, labels=labels)
    log.info("wrote a %s adapter from step %d of %s to %s", written, meta["step"], workdir, out)
    return {"step": int(meta["step"]), "format": written, "out": str(out)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m jsoft.export", description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="the --workdir of a jsoft.train run")
    p.add_argument("--out", required=True, help="adapter directory to write")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
    which.add_argument("--best", action="store_true", help="the best checkpoint by the run's eval metric")
    p.add_argument("--format", choices=("peft", "jsoft"), default=None,
                   help="default: peft when PEFT can load the adapter, else jsoft")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("absl", "orbax", "jax._src"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        result = export(args.workdir, args.out, args.step, args.best, args.format)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {result['format']} adapter from step {result['step']} to {result['out']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
