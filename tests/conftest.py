"""Shared tiny fixtures for the core tests (models, GENIU phases, checkpoints, CLI).

Everything here is deliberately small (width 0.0625, 8x8 images, K=4, B=2) so
that the suite runs in minutes on two CPU cores; compilation dominates, so the
native conv lowering is used where the lowering is not under test.

The unlearning methods' tests (test_registry.py, test_geniu_unlearning.py,
test_geniu_variants.py, test_gkt.py, test_unsir.py, test_ir.py,
test_unrolling.py, and parts of test_records.py and test_cli.py) share one
`smoke` model, trained once per session, and the helpers `FORGET`, `unlearn`
and `restore_works`.
"""

from __future__ import annotations

import os
import shutil
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import cli
from geniu_jax import compile_cache
from geniu_jax import runs
from geniu_jax.config import get_config
from geniu_jax.geniu import train as train_lib
from geniu_jax.methods import records, registry
from geniu_jax.models import functional as F

@pytest.fixture(scope="session", autouse=True)
def compilation_cache(tmp_path_factory):
  """One persistent compilation cache for the session: many tests train
  models of the same shapes, and every `train` call builds fresh jitted
  closures, so without it each one compiles the same programs again. The
  environment variable points the CLI (`cli.main` in-process, and its
  subprocesses) there too, instead of the user's cache directory. Under
  pytest-xdist the workers share it (JAX locks its bounded cache), so a
  program one worker compiled is a hit for the other."""
  root = tmp_path_factory.getbasetemp()
  if os.environ.get("PYTEST_XDIST_WORKER"):
    root = root.parent  # the run's directory, above each worker's own
  path = compile_cache.enable(root / "jax_cache")
  os.environ[compile_cache.ENV_VAR] = str(path)
  return path


TINY_SHAPE = (8, 8, 1)
TINY_K = 4
TINY_B = 2
TINY_WIDTH = 0.0625
TINY_LOWERING = "native"


def normal(seed, shape, scale=1.0) -> jax.Array:
  """float32 N(0, scale^2) test data from numpy (jax.random compiles per shape)."""
  return jnp.asarray(scale * np.random.default_rng(seed).standard_normal(shape), jnp.float32)


def randomize(state, seed, scale=0.5, positive=False):
  """An nnx.State of the same structure with random (non-initial) leaves."""
  leaves, treedef = jax.tree_util.tree_flatten(state)
  rng = np.random.default_rng(seed)
  new = []
  for leaf in leaves:
    r = scale * rng.standard_normal(leaf.shape)
    new.append(jnp.asarray(np.abs(r) + 0.1 if positive else r, leaf.dtype))
  return jax.tree_util.tree_unflatten(treedef, new)


def pure_leaves(state) -> dict:
  """{key path string: numpy array} of an nnx.State (or any pytree)."""
  if isinstance(state, nnx.State):
    state = nnx.to_pure_dict(state)
  return {jax.tree_util.keystr(p): np.asarray(v)
          for p, v in jax.tree_util.tree_leaves_with_path(state)}


def snapshot(*states) -> list[dict]:
  """`pure_leaves` of every state, to check later that nothing changed them."""
  return [pure_leaves(s) for s in states]


def assert_unchanged(states, snapshots):
  """Every state still holds exactly the leaves of its `snapshot`."""
  for state, snap in zip(states, snapshots):
    now = pure_leaves(state)
    assert now.keys() == snap.keys()
    for k in snap:
      assert np.array_equal(now[k], snap[k]), f"{k} changed"


def np_entropy(logits) -> np.ndarray:
  """Softmax entropy of every row of `logits`, in float64 numpy (a reference)."""
  logits = np.asarray(logits, np.float64)
  logp = logits - logits.max(-1, keepdims=True)
  logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
  return -(np.exp(logp) * logp).sum(-1)


def assert_trees_identical(a, b):
  la, lb = pure_leaves(a), pure_leaves(b)
  assert la.keys() == lb.keys()
  for k in la:
    assert la[k].dtype == lb[k].dtype, k
    assert la[k].shape == lb[k].shape, k
    assert np.array_equal(la[k], lb[k]), k


def one_line_error(excinfo) -> str:
  """The message of a raised error, asserted to be one non-empty line."""
  msg = str(excinfo.value)
  assert msg and "\n" not in msg, repr(msg)
  return msg


@pytest.fixture
def ckpt_copy(tiny_ckpt, tmp_path):
  """A private copy of the tiny checkpoint that a test may damage."""
  dst = tmp_path / "copy"
  shutil.copytree(tiny_ckpt[0], dst)
  return dst


def spy_on_training(mp: pytest.MonkeyPatch) -> dict:
  """Patches the training phase through `mp` so that the returned dict counts
  the jitted aux program's calls ("aux_calls") and keeps a copy of every new
  generator's initial parameters ("initial_generator"; a copy because training
  donates those buffers)."""
  seen = {"aux_calls": 0, "initial_generator": []}
  make_aux, make_gen = train_lib.make_aux_epoch, F.make_generator

  def counting_make_aux(*args, **kwargs):
    aux = make_aux(*args, **kwargs)

    def counted(*a):
      seen["aux_calls"] += 1
      return aux(*a)
    return counted

  def keeping_make_gen(*args, **kwargs):
    model = make_gen(*args, **kwargs)
    seen["initial_generator"].append(pure_leaves(model.params))
    return model

  mp.setattr(train_lib, "make_aux_epoch", counting_make_aux)
  mp.setattr(F, "make_generator", keeping_make_gen)
  return seen


def run_cli(capsys, *argv) -> tuple[int, str, str]:
  """`geniu ARGV` in this process: (exit code, stdout, stderr)."""
  rc = cli.main([str(a) for a in argv])
  out, err = capsys.readouterr()
  return rc, out, err


def assert_usage_error(rc, err, *not_created: Path, contains: str | None = None):
  """Exit code 2, one `geniu: error:` line on stderr, and none of
  `not_created` (nor a hidden temporary beside it) left on disk."""
  assert rc == cli.EXIT_USAGE == 2
  lines = err.splitlines()
  assert len(lines) == 1, err
  assert lines[0].startswith("geniu: error:"), err
  if contains is not None:
    assert contains in lines[0]
  for path in not_created:
    assert not path.exists(), f"{path} was created"
    leftovers = [p.name for p in path.parent.iterdir() if p.name.startswith(f".{path.name}")]
    assert not leftovers, leftovers


@pytest.fixture(scope="session")
def tiny_classifier() -> F.SplitModel:
  """Random tiny AllCNN (K=4, 8x8x1), eval-mode BatchNorm at its initial stats."""
  return F.make_classifier(TINY_K, TINY_SHAPE, TINY_WIDTH, TINY_LOWERING, jax.random.key(0))


@pytest.fixture(scope="session")
def tiny_generator() -> F.SplitModel:
  return F.make_generator(TINY_SHAPE, None, TINY_LOWERING, jax.random.key(1))


@pytest.fixture(scope="session")
def tiny_prompts() -> jax.Array:
  return normal(2, (TINY_K * TINY_B, *TINY_SHAPE))


def make_tiny_checkpoint(directory, *, image_shape=TINY_SHAPE, num_classes=TINY_K,
                         seed=0, source="arrays"):
  """Writes a checkpoint of random (non-initial) tiny models; returns its pieces."""
  cfg = get_config("smoke", width=TINY_WIDTH, proxies_per_class=TINY_B)
  base = 100 * (seed + 1)
  cls = F.make_classifier(num_classes, image_shape, cfg.width, TINY_LOWERING,
                          jax.random.key(base))
  gen = F.make_generator(image_shape, cfg.latent_dim, TINY_LOWERING, jax.random.key(base + 1))
  cls = cls._replace(params=randomize(cls.params, base + 2),
                     stats=randomize(cls.stats, base + 3, positive=True))
  gen = gen._replace(params=randomize(gen.params, base + 4))
  prompts = normal(base + 5, (num_classes * cfg.proxies_per_class, *image_shape))
  meta = ckpt_lib.make_metadata(cfg, source=source, image_shape=image_shape,
                                num_classes=num_classes, majority=[num_classes - 1],
                                extra={"note": "tiny test checkpoint"})
  path = ckpt_lib.save(directory, cls, gen, prompts, meta)
  return path, cls, gen, prompts, meta


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
  """(path, classifier, generator, prompts, metadata) of a tiny saved checkpoint."""
  return make_tiny_checkpoint(tmp_path_factory.mktemp("tiny") / "ckpt")


@pytest.fixture(scope="session")
def fmnist_shaped_ckpt(tmp_path_factory):
  """A tiny untrained checkpoint that fits the embedded data (28x28x1, K=10)."""
  return make_tiny_checkpoint(tmp_path_factory.mktemp("fm") / "ckpt",
                              image_shape=(28, 28, 1), num_classes=10, seed=1,
                              source="embedded")


def replace_leaf(state, path: str, value):
  """Copy of `state` with the leaf at pure-dict key path `path` (e.g.
  "['head']['bias']") replaced by `value`."""
  found = []

  def swap(p, leaf):
    key = jax.tree_util.keystr(p)
    if key == path or key == path + ".value":
      found.append(key)
      return jnp.asarray(value, leaf.dtype).reshape(leaf.shape)
    return leaf

  new = jax.tree_util.tree_map_with_path(swap, state)
  assert len(found) == 1, f"{path} not found exactly once in the state"
  return new


# Experiment smoke tests (tests/test_experiments*.py) share these; module
# scope, so each file trains its own originals once.
@pytest.fixture(scope="module")
def tiny10(tmp_path_factory) -> str:
  """A 10-class 8x8 dataset (40 training images per class): seconds per original."""
  rng = np.random.default_rng(0)
  path = tmp_path_factory.mktemp("tiny10") / "tiny10.npz"
  y_train, y_test = np.repeat(np.arange(10), 40), np.repeat(np.arange(10), 10)
  # Class-dependent brightness, so the classifier has something to learn.
  x_train = (rng.integers(0, 100, (400, 8, 8)) + 15 * y_train[:, None, None]).astype(np.uint8)
  x_test = (rng.integers(0, 100, (100, 8, 8)) + 15 * y_test[:, None, None]).astype(np.uint8)
  np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
  return f"npz:{path}"


@pytest.fixture(scope="module")
def originals(tmp_path_factory):
  return tmp_path_factory.mktemp("originals")


# --- the unlearning methods' smoke model ----------------------------------------
#
# One tiny smoke model (embedded Fashion-MNIST subset, class 9 the majority,
# trained with GENIU's training phase and the baseline recorder), trained once
# per session and shared by the methods' tests; they must not mutate it. The
# native conv lowering is used because at the smoke width it runs as fast as
# the patches lowering and compiles about twice as fast, and compilation
# dominates these tests.

FORGET = (9,)


@pytest.fixture(scope="session")
def smoke():
  cfg = get_config("smoke", lowering="native")
  data = runs.prepare_data("embedded", [9], cfg.imbalance, cfg.seed, log=None)
  result = train_lib.train(cfg, data.x_train, data.y_train, data.num_classes,
                           recorder=records.default_recorder(), log=None)
  before = runs.evaluate(result.classifier, data.x_test, data.y_test, data.num_classes, FORGET)
  available = registry.inputs_from(data.x_train, data.y_train, FORGET,
                                   artifacts=(result.generator, result.prompts),
                                   records=result.records)
  return types.SimpleNamespace(cfg=cfg, data=data, result=result, before=before,
                               available=available)


def unlearn(smoke, name: str, key: int = 0):
  model, info = registry.run_method(
      name, smoke.cfg, jax.random.key(key), classifier=smoke.result.classifier,
      forget=FORGET, num_classes=smoke.data.num_classes,
      image_shape=smoke.data.x_train.shape[1:], **smoke.available)
  after = runs.evaluate(model, smoke.data.x_test, smoke.data.y_test, smoke.data.num_classes,
                        FORGET)
  return model, info, after


def restore_works(path) -> bool:
  try:
    params = ckpt_lib.restore(path).classifier.params
  except Exception:  # noqa: BLE001 -- any failure means the CLI test cannot run
    return False
  return isinstance(params, nnx.State)


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """After each test module: drop the process's compiled programs (JAX's
  caches and the methods' executable cache). One pytest process compiles
  thousands of programs; kept all session, their code mappings accumulate
  until a late compile fails. Later modules reload what they need from the
  persistent compilation cache."""
  yield
  from geniu_jax.methods import common
  common.EXECUTABLES.clear()
  jax.clear_caches()
