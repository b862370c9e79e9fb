"""The UNSIR baseline (error-maximising noise, impair and repair): `geniu_jax/methods/unsir.py`.

On the shared smoke model (conftest's `smoke`): our recommended setting's noise
sizes and labels, and the reference setting reproducing the notebook's sizes
and quirks.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from geniu_jax.methods import registry

from conftest import FORGET, unlearn


def test_unsir_reference_setting_reproduces_the_notebooks_sizes_and_quirks(smoke):
  from geniu_jax.methods import unsir as unsir_lib
  _, ours, _ = unlearn(smoke, "unsir")
  recommended = unsir_lib.PRESETS["smoke"]
  assert ours["noise_samples"] == recommended.noise_batch * recommended.noise_copies
  assert ours["noise_labels"] == [9]
  ref_cfg = smoke.cfg.replace(baseline_setting="reference")
  model, info = registry.run_method(
      "unsir", ref_cfg, jax.random.key(0), classifier=smoke.result.classifier, forget=FORGET,
      num_classes=smoke.data.num_classes, image_shape=smoke.data.x_train.shape[1:],
      **smoke.available)
  # One 1-channel image x 20 copies, labelled 0, beside the first 1,000 of each class.
  assert info["noise_samples"] == 20 and info["noise_labels"] == [0]
  retained = np.asarray(smoke.available["retained_data"][1])
  expected = sum(min(1000, int((retained == k).sum())) for k in np.unique(retained))
  assert info["retained_subset"] == expected
  assert info["impair_samples"] == 20 + expected
  from geniu_jax.methods import common
  with pytest.raises(ValueError, match="no `reference` setting"):
    common.by_preset(ref_cfg, {"paper": "ours"}, method="unsir")
