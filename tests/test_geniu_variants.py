"""The ablations of GENIU's unlearning (Table 9): `geniu_jax/methods/geniu_variants.py`.

On the shared smoke model (conftest's `smoke`): the post-training proxy
variants `geniu_post` and `geniu_post_impair_repair` run and change the model.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import pytest

from conftest import unlearn


@pytest.mark.parametrize("name", ["geniu_post", "geniu_post_impair_repair"])
def test_post_training_proxy_ablations_run(smoke, name):
  # Table 9's point is that these proxies forget badly on an imbalanced model,
  # so only that they run and change the model is checked, not the direction.
  model, info, after = unlearn(smoke, name)
  assert info["proxy"] == "post" and info["rounds_run"] > 0
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(model.params), jax.tree.leaves(smoke.result.classifier.params))]
  assert max(moved) > 0 and 0.0 <= after["acc_f"] <= 1.0
