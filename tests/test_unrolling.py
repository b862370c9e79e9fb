"""The Unrolling SGD baseline: `geniu_jax/methods/unrolling.py`.

On the shared smoke model (conftest's `smoke`): the reference setting has no
training-time correction.
"""

from __future__ import annotations

import jax

from geniu_jax.methods import registry

from conftest import FORGET


def test_unrolling_reference_has_no_training_time_correction(smoke):
  model, info = registry.run_method(
      "unrolling", smoke.cfg.replace(baseline_setting="reference"), jax.random.key(0),
      classifier=smoke.result.classifier, forget=FORGET, num_classes=smoke.data.num_classes,
      image_shape=smoke.data.x_train.shape[1:], **smoke.available)
  assert info["train_correction"] is False and info["updates"] == 10
