"""Per-epoch training state, so that an interrupted `geniu train` can continue.

After every epoch `train` (given a `state_dir`) writes what the next epoch
reads -- classifier parameters, BatchNorm statistics and Adam state, the
prompts and their Adam state, the generator and its Adam state, the baseline
records -- with an Orbax `CheckpointManager` that keeps the last epoch only.
A resumed run restores it, replays the data order of the finished epochs
(the shuffle generator is advanced, not stored) and goes on. Every random key
of an epoch is derived from the seed and the epoch index, so the resumed run
ends with exactly the checkpoint of an uninterrupted one.

The state is stored as its flat list of leaves; the tree structure is the one
`train` builds for the same config, which `Fingerprint` pins down (the
config, K, the data's shape and a digest of the training split): a state
from other settings is refused, never half-applied.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from geniu_jax.config import Config


class ResumeError(ValueError):
  """A training state that does not belong to this run."""


class Resumed(NamedTuple):
  """What `restore` found.

  Attributes:
    epochs_done: epochs completed before the interruption.
    state: the training state pytree after them (same structure as `like`).
    history: their history rows.
    noise_started: whether steps (2)-(4) of Alg. 1 had started (Table 11).
  """
  epochs_done: int
  state: Any
  history: list
  noise_started: bool


def fingerprint(cfg: Config, x_train: np.ndarray, y_train: np.ndarray, num_classes: int,
                geniu: bool, key: jax.Array | None = None) -> dict:
  """What must be equal for a state to continue this run (`key`: the run's
  key, when it is not the config's seed)."""
  digest = hashlib.sha256()
  for a in (np.ascontiguousarray(x_train), np.ascontiguousarray(y_train)):
    digest.update(str((a.dtype, a.shape)).encode())
    digest.update(a.tobytes())
  out = {"config": cfg.to_dict(), "num_classes": int(num_classes), "geniu": bool(geniu),
         "data_sha256": digest.hexdigest()}
  if key is not None:
    out["key"] = np.asarray(jax.random.key_data(key)).tolist()
  return out


def _manager(directory: str | Path) -> ocp.CheckpointManager:
  # Synchronous saves: when `train` returns from an epoch its state is on disk.
  options = ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=False)
  return ocp.CheckpointManager(Path(directory).absolute(), options=options)


def _leaves(state: Any) -> dict:
  return {str(i): np.asarray(leaf) for i, leaf in enumerate(jax.tree.leaves(state))}


def save(directory: str | Path, epochs_done: int, state: Any, history: list,
         noise_started: bool, fp: dict) -> None:
  """Writes the state after `epochs_done` epochs (the previous one is removed)."""
  meta = {"epochs_done": int(epochs_done), "history": history,
          "noise_started": bool(noise_started), "fingerprint": fp}
  with _manager(directory) as manager:
    manager.save(epochs_done, args=ocp.args.Composite(
        state=ocp.args.StandardSave(_leaves(state)),
        meta=ocp.args.JsonSave(json.loads(json.dumps(meta, allow_nan=True)))))
    manager.wait_until_finished()


def exists(directory: str | Path) -> bool:
  path = Path(directory)
  if not path.is_dir():
    return False
  with _manager(path) as manager:
    return manager.latest_step() is not None


def restore(directory: str | Path, like: Any, fp: dict) -> Resumed:
  """The last saved state, in the structure of `like` (a fresh run's state).

  Raises:
    ResumeError: no state, or one saved with other settings or data.
  """
  with _manager(directory) as manager:
    step = manager.latest_step()
    if step is None:
      raise ResumeError(f"{directory} holds no training state to resume")
    meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
    differs = [k for k in fp if meta["fingerprint"].get(k) != fp[k]]
    if differs:
      raise ResumeError(f"the training state in {directory} belongs to another run "
                        f"(different {', '.join(differs)}); rerun with the interrupted "
                        "run's arguments, or delete it")
    leaves, treedef = jax.tree.flatten(like)
    stored = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(_leaves(like))))["state"]
  restored = [np.asarray(stored[str(i)]).astype(np.asarray(leaf).dtype)
              for i, leaf in enumerate(leaves)]
  return Resumed(int(meta["epochs_done"]), jax.tree.unflatten(treedef, restored),
                 list(meta["history"]), bool(meta["noise_started"]))
