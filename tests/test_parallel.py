"""geniu_jax.parallel: data-parallel training equals one-device training.

The multi-device checks run in a subprocess started with
XLA_FLAGS=--xla_force_host_platform_device_count=4: the flag only takes effect
before JAX initialises its backend, which the pytest process has already done.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import jax.numpy as jnp
import pytest

from geniu_jax import parallel

ROOT = Path(__file__).resolve().parents[1]

# Tiny AllCNN (8x8x1, K=4). Plain SGD, not Adam, in the step comparison: Adam
# divides by each gradient's own magnitude, so a rounding difference in a
# near-zero gradient becomes an O(lr) parameter difference; SGD keeps the
# comparison a comparison of gradients.
SCRIPT = textwrap.dedent("""
    import json
    import jax, jax.numpy as jnp, numpy as np, optax
    from geniu_jax import parallel
    from geniu_jax.config import get_config
    from geniu_jax.geniu import train as train_lib
    from geniu_jax.models import functional as F

    assert jax.device_count() == 4, jax.devices()
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.uniform(size=(64, 8, 8, 1)), jnp.float32)
    y = jnp.asarray(np.arange(64) % 4, jnp.int32)
    cls = F.make_classifier(4, (8, 8, 1), 0.0625, "native", jax.random.key(0))
    opt = optax.sgd(0.1)

    def run(mesh):
      params, stats = jax.tree.map(jnp.copy, (cls.params, cls.stats))  # steps donate
      state = train_lib.ClassifierState(params, stats, opt.init(params))
      step = train_lib.make_train_step(cls.graphdef, opt, None, None, mesh=mesh)
      losses = []
      for i in range(3):
        idx = jnp.asarray(rng_idx[i], jnp.int32)
        state, _, _, loss, _ = step(state, None, None, x, y, idx)
        losses.append(float(loss))
      hlo = step.lower(state, None, None, x, y, jnp.asarray(rng_idx[0], jnp.int32)).compile().as_text()
      return state, losses, hlo

    rng_idx = [np.random.default_rng(i).permutation(64)[:32] for i in range(3)]
    s1, l1, hlo1 = run(None)
    mesh = parallel.make_mesh()
    with jax.set_mesh(mesh):
      s4, l4, hlo4 = run(mesh)
    leaf = jax.tree.leaves(s4.params)[0]
    diffs = [float(jnp.max(jnp.abs(a - b))) for a, b in
             zip(jax.tree.leaves((s1.params, s1.stats)), jax.tree.leaves((s4.params, s4.stats)))]

    cfg = get_config("smoke", width=0.0625, lowering="native", epochs=1, batch_size=32)
    r1 = train_lib.train(cfg, np.asarray(x), np.asarray(y), 4, geniu=False, log=None)
    r4 = train_lib.train(cfg, np.asarray(x), np.asarray(y), 4, geniu=False, log=None, mesh=mesh)
    print(json.dumps({
        "losses1": l1, "losses4": l4, "max_diff": max(diffs),
        "devices": len(leaf.sharding.device_set),
        "allreduce1": "all-reduce" in hlo1, "allreduce4": "all-reduce" in hlo4,
        "train_loss1": r1.history[0]["loss"], "train_loss4": r4.history[0]["loss"],
        "train_devices": len(jax.tree.leaves(r4.classifier.params)[0].sharding.device_set),
    }))
""")


@pytest.fixture(scope="module")
def four_devices() -> dict:
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4",
             JAX_PLATFORMS="cpu", PYTHONPATH=f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}")
  proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                        env=env, cwd=ROOT, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_data_parallel_step_matches_one_device(four_devices):
  r = four_devices
  assert r["devices"] == 4
  assert jnp.allclose(jnp.array(r["losses1"]), jnp.array(r["losses4"]), rtol=1e-5)
  assert r["max_diff"] < 1e-5


def test_data_parallel_step_is_partitioned(four_devices):
  # Gradients (and BatchNorm moments) are summed across devices, not recomputed.
  assert four_devices["allreduce4"] and not four_devices["allreduce1"]


def test_parallel_train_matches_train(four_devices):
  r = four_devices
  assert r["train_devices"] == 4
  assert abs(r["train_loss1"] - r["train_loss4"]) < 1e-4 * max(1.0, abs(r["train_loss1"]))


def test_shard_batch_is_identity_without_mesh():
  x = jnp.arange(8.0)
  assert parallel.shard_batch(x, None) is x


def test_batch_must_divide_over_devices():
  mesh = parallel.make_mesh(jax.devices()[:1])
  parallel.check_batch_size(7, mesh)  # one device: anything goes
  with pytest.raises(ValueError, match="no 'data' axis"):
    parallel.check_batch_size(8, jax.sharding.Mesh(jax.devices()[:1], ("model",)))
