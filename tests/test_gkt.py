"""The GKT baseline (gated knowledge transfer): `geniu_jax/methods/gkt.py`.

The gate, `kept_first` and the attention maps on hand-made inputs; on the
shared smoke model (conftest's `smoke`): the threshold is a program argument,
and the reference setting's quirks (eval-mode student, final-BatchNorm
generator).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from geniu_jax.methods import gkt as gkt_lib
from geniu_jax.methods import registry
from geniu_jax.methods.registry import Grant
from geniu_jax.models import functional as F

from conftest import FORGET


def test_gkt_student_learns_when_the_gate_is_open(smoke):
  grant = Grant("gkt", registry.METHODS["gkt"].access, classifier=smoke.result.classifier,
                forget=FORGET, num_classes=10, image_shape=(28, 28, 1))
  gkt_lib.gkt(grant, smoke.cfg, jax.random.key(0),
              settings=dataclasses.replace(gkt_lib.PRESETS["smoke"], threshold=0.5))
  misses = gkt_lib._program.cache_info().misses
  settings = dataclasses.replace(gkt_lib.PRESETS["smoke"], threshold=1.0)
  _, info = gkt_lib.gkt(grant, smoke.cfg, jax.random.key(0), settings=settings)
  assert info["kept_fraction"] == 1.0 and info["skipped_batches"] == 0.0
  # The threshold is an argument: no new loop program.
  assert gkt_lib._program.cache_info().misses == misses


def test_gkt_gate_and_attention():
  logits = jnp.log(jnp.array([[0.98, 0.01, 0.01], [0.5, 0.495, 0.005]]))
  np.testing.assert_array_equal(gkt_lib.gate(logits, jnp.array([2]), 0.01), [True, True])
  np.testing.assert_array_equal(gkt_lib.gate(logits, jnp.array([1, 2]), 0.01), [True, False])
  idx, n = gkt_lib.kept_first(jnp.array([False, True, False, True]))
  assert int(n) == 2 and sorted(np.asarray(idx).tolist()) == [1, 1, 3, 3]
  a = gkt_lib.attention(jnp.ones((2, 4, 4, 3)))
  np.testing.assert_allclose(jnp.linalg.norm(a, axis=1), 1.0, rtol=1e-6)


def test_gkt_reference_quirks(smoke):
  # threshold 1: every pseudo sample passes the gate, so every step updates.
  ref = dataclasses.replace(gkt_lib.REFERENCE, pseudo_batches=3, batch_size=16,
                            generator_width=0.125, threshold=1.0)
  run = gkt_lib.train_gkt(smoke.result.classifier, FORGET, smoke.data.num_classes,
                          smoke.data.x_train.shape[1:], smoke.cfg, key=jax.random.key(0),
                          settings=ref)
  # Eval-mode student: its BatchNorm statistics never leave their initial 0 / 1.
  stats = [np.asarray(v) for v in jax.tree.leaves(run.student.stats)]
  assert all(np.all((v == 0) | (v == 1)) for v in stats)
  assert np.isfinite(run.info["student_loss"])
  # A final BatchNorm, not a sigmoid: images leave [0, 1], about zero-mean.
  x = np.asarray(gkt_lib.sample(run.generator, key=jax.random.key(1), batches=1,
                                batch_size=16))
  assert x.min() < 0.0 and x.max() > 1.0 and abs(float(x.mean())) < 0.1
  ours = F.split(gkt_lib.Generator(tuple(smoke.data.x_train.shape[1:]), 128, 0.125,
                                   lowering="native", rngs=nnx.Rngs(params=jax.random.key(2))))
  y = np.asarray(gkt_lib.generate(ours, jax.random.normal(jax.random.key(3), (16, 128))))
  assert 0.0 <= y.min() and y.max() <= 1.0
