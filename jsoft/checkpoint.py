"""Checkpoints: an Orbax `CheckpointManager` that keeps the latest N steps plus the best one, and resumes past
unreadable steps.

A step directory holds two items, `state` (a pytree of arrays, `StandardSave`) and `meta` (a JSON dict:
data position, seeds, config hash...), plus Orbax's own `metrics` item when a best metric is tracked.
Saves are asynchronous: `save` returns once the arrays are copied off the device (the caller may donate
them right away) and `wait` blocks until the step is committed. Orbax writes into `<step>.orbax-checkpoint-tmp`
and renames it to `<step>` only after every process has written its part, so a step directory on disk is
complete (`all_steps()` lists a step as soon as its save starts). All methods must be called by every
process, in the same order (Orbax synchronises them); only the primary process writes the JSON files.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils
from orbax.checkpoint import checkpoint_managers as ocm
from orbax.checkpoint._src.multihost import multihost as ocp_multihost

log = logging.getLogger(__name__)

# Barrier that Orbax's `Checkpointer.restore` passes after reading (orbax-checkpoint 0.12.x).
_RESTORE_BARRIER = "Checkpointer:restore"


def _metric_value(name: str, mode: str, metrics: dict | None) -> float:
    """Orbax `best_fn`: a missing or NaN metric ranks worst instead of breaking the sort."""
    worst = -math.inf if mode == "max" else math.inf
    value = (metrics or {}).get(name)
    if value is None:
        return worst
    value = float(value)
    return worst if math.isnan(value) else value


def _to_json(obj: Any, what: str) -> Any:
    """A plain-JSON copy of `obj` (numpy / jax scalars and arrays become numbers and lists).

    Validated here, on the caller's thread, because Orbax serialises JSON items in its background thread
    where a `TypeError` would only surface at `wait()`.
    """

    def default(x):
        if isinstance(x, np.generic):
            return x.item()
        if isinstance(x, np.ndarray | jax.Array):
            return np.asarray(x).tolist()
        raise TypeError(f"{what} value {x!r} of type {type(x).__name__} is not JSON-serialisable")

    return json.loads(json.dumps(obj, default=default))


def _short(e: BaseException, limit: int = 300) -> str:
    """One line for a log: the error and its cause (TensorStore's reason is in the cause), without spec dumps."""
    parts = []
    while e is not None and len(parts) < 3:
        msg = " ".join(str(e).split()).split(" See full TensorStore details")[0]
        parts.append(f"{type(e).__name__}: {msg[:limit]}{'...' if len(msg) > limit else ''}")
        e = e.__cause__
    return " <- ".join(parts)


def _all_processes(ok: bool) -> bool:
    """True when `ok` holds on every process (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return ok
    return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


@dataclasses.dataclass
class _SkipSteps:
    """Preservation policy: `inner` decides over all steps except `skip` (unreadable ones), which are dropped.

    Orbax applies it at the next save, so an unreadable step left behind by a fallback neither counts toward
    the latest N nor outlives the run that superseded it, and is deleted by Orbax's own (primary-host) deleter.
    """

    inner: Any
    skip: set[int]

    def should_preserve(self, checkpoints: Sequence[Any], *, context: Any) -> list[bool]:
        kept = [c for c in checkpoints if c.step not in self.skip]
        flags = iter(self.inner.should_preserve(kept, context=context))
        return [False if c.step in self.skip else bool(next(flags)) for c in checkpoints]


class _Manager(ocp.CheckpointManager):
    def _get_metrics(self, step: int):
        # Orbax reads every step's metrics at start-up and only tolerates a missing file; a corrupt one would
        # make the whole directory unopenable. Such a step just loses its rank for "best".
        try:
            return super()._get_metrics(step)
        except Exception as e:
            log.warning("metrics of checkpoint step %d in %s are unreadable (%s); ignoring them",
                        step, self.directory, _short(e))
            return None


class Checkpointer:
    """Saves and restores `(state, meta)` per step, keeping the latest `max_to_keep` steps and the best one.

    `best_metric`: key of the `metrics` dict given to `save` that ranks steps (`best_mode` "max" or "min");
    the best step is kept in addition to the latest `max_to_keep` (None: keep every step).
    """

    def __init__(self, directory, *, max_to_keep: int | None = 3, best_metric: str | None = None,
                 best_mode: str = "max", async_save: bool = True):
        if best_mode not in ("max", "min"):
            raise ValueError(f"best_mode must be 'max' or 'min', got {best_mode!r}")
        if max_to_keep is not None and max_to_keep < 1:
            raise ValueError(f"max_to_keep must be >= 1 or None, got {max_to_keep}")
        self.best_metric, self.best_mode = best_metric, best_mode
        self._unreadable: set[int] = set()
        policies = [ocm.LatestN(n=max_to_keep)]
        best_fn = None
        if best_metric is not None:
            best_fn = functools.partial(_metric_value, best_metric, best_mode)
            # BestN(n=max_to_keep), what `CheckpointManagerOptions(best_fn=..., max_to_keep=...)` builds, keeps
            # the N best *instead of* the latest; and steps saved without metrics must not be kept forever.
            policies.append(ocm.BestN(get_metric_fn=best_fn, reverse=best_mode == "min", n=1,
                                      keep_checkpoints_without_metrics=False))
        self._options = ocp.CheckpointManagerOptions(
            best_fn=best_fn,  # makes Orbax write the metrics item and answer `best_step`
            best_mode=best_mode,
            preservation_policy=_SkipSteps(ocm.AnyPreservationPolicy(policies), self._unreadable),
            enable_async_checkpointing=async_save,
            cleanup_tmp_directories=True,  # leftovers of a run killed mid-save
        )
        self._mngr = _Manager(os.path.abspath(os.fspath(directory)), options=self._options)  # Orbax: absolute only
        self.directory = self._mngr.directory

    def save(self, step: int, state, meta: dict, metrics: dict | None = None, force: bool = False) -> bool:
        """Starts saving `state` and `meta` at `step`; True if a save was started.

        Without `force`, a step not after the latest (readable) one is skipped. A step that already exists is
        never overwritten (False), except one that `restore` found unreadable.
        """
        step = int(step)
        meta = _to_json(meta, "meta")
        if step in self._unreadable:
            if step in self._mngr.all_steps():
                log.warning("replacing unreadable checkpoint step %d in %s", step, self.directory)
                self._mngr.wait_until_finished()
                self._mngr.delete(step)
            self._unreadable.discard(step)
        if step in self._mngr.all_steps():
            log.info("checkpoint step %d already exists in %s; not saving it again", step, self.directory)
            return False
        latest = self.latest_step()
        if not force and latest is not None and step <= latest:
            return False
        tracked = None
        if metrics is not None and self.best_metric is not None:
            tracked = _to_json(metrics, "metrics")
            if self.best_metric not in tracked:
                log.warning("metrics of step %d lack best_metric %r; the step is ranked last", step, self.best_metric)
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        # The step check above is Orbax's `should_save` (every step is on its save interval) minus the steps
        # known to be unreadable, which Orbax would still count as the latest.
        return bool(self._mngr.save(step, args=args, metrics=tracked, force=True))

    def restore(self, abstract_state, step: int | str | None = None) -> tuple[Any, dict] | None:
        """`(state, meta)` of `step`, with arrays placed by `abstract_state`'s shardings and dtypes.

        `step=None`: the latest readable step; unreadable ones are skipped with a warning (and dropped at the
        next save). Raises if steps exist but none is readable (e.g. `abstract_state` does not match).
        `"best"`: the best step by `best_metric`. An int: exactly that step. None if there is nothing to restore.
        """
        if step is None:
            return self._restore_latest(abstract_state)
        if step == "best":
            if self.best_metric is None:
                raise ValueError("restore('best') needs a Checkpointer built with best_metric")
            step = self.best_step()
            if step is None:
                return None
        elif isinstance(step, str):
            raise ValueError(f"step must be an int, 'best' or None, got {step!r}")
        step = int(step)
        if step not in self._mngr.all_steps():  # an unreadable one is tried again: its error is the answer
            raise FileNotFoundError(f"no checkpoint step {step} in {self.directory}; steps: {self.all_steps()}")
        out, err = self._try_restore(abstract_state, step)
        if err is not None:
            raise err
        if out is None:
            raise RuntimeError(f"checkpoint step {step} in {self.directory} is unreadable on another process")
        return out

    def _restore_latest(self, abstract_state):
        candidates = sorted((s for s in self._mngr.all_steps() if s not in self._unreadable), reverse=True)
        failed, first_err = [], None
        for i, step in enumerate(candidates):
            out, err = self._try_restore(abstract_state, step)
            if out is not None:
                # Only now are the newer steps known to be bad rather than all of them mismatching.
                self._unreadable.update(failed)
                return out
            first_err = first_err or err
            reason = _short(err) if err is not None else "it failed on another process"
            then = f"falling back to step {candidates[i + 1]}" if i + 1 < len(candidates) else "no earlier step"
            log.warning("checkpoint step %d in %s is unreadable (%s); %s", step, self.directory, reason, then)
            failed.append(step)
        if not candidates:
            return None
        raise RuntimeError(f"no readable checkpoint in {self.directory} (tried steps {candidates}); "
                           "does abstract_state match the saved state?") from first_err

    def _try_restore(self, abstract_state, step: int):
        """((state, meta), None) if every process restored `step`; else (None, this process's error or None)."""
        args = ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore())
        try:
            restored, err = self._mngr.restore(step, args=args), None
        except Exception as e:
            restored, err = None, e
            # Orbax ends a restore with a cross-process barrier that this process skipped by failing; pass it so
            # processes that did read the step are released and later barriers stay paired.
            self._pass_restore_barrier()
        if not _all_processes(err is None):
            return None, err
        return (restored.state, dict(restored.meta)), None

    def _pass_restore_barrier(self):
        # The prefix is the checkpointer's own: AsyncCheckpointer turns the options' None into "".
        mp = self._options.multiprocessing_options
        checkpointer = getattr(self._mngr, "_checkpointer", None)
        prefix = getattr(checkpointer, "_barrier_sync_key_prefix", mp.barrier_sync_key_prefix)
        ocp_multihost.sync_global_processes(ocp_multihost.unique_barrier_key(_RESTORE_BARRIER, prefix=prefix),
                                            processes=mp.active_processes)

    def latest_step(self) -> int | None:
        return max(self.all_steps(), default=None)

    def best_step(self) -> int | None:
        """The step with the best `best_metric` among those saved with metrics; None without `best_metric`."""
        if self.best_metric is None:
            return None
        return self._mngr.best_step()

    def all_steps(self) -> list[int]:
        """Committed steps, less those `restore` found unreadable (still on disk until the next save)."""
        return sorted(s for s in self._mngr.all_steps() if s not in self._unreadable)

    def wait(self):
        """Blocks until the pending save is committed (and old steps deleted); raises if it failed."""
        self._mngr.wait_until_finished()

    def close(self):
        self._mngr.close()
