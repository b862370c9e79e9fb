"""Numerically careful per-example losses: `geniu_jax/geniu/losses.py`.

Cross-entropy that stays positive (Eq. 10's 1/CE) and finite with the right
gradient at extreme margins, agreement with optax, and the softmax entropy
of the selection rule (§4.4).
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from geniu_jax.geniu import losses
from geniu_jax.geniu import selection as sel
from geniu_jax.geniu import unlearn as unlearn_lib

from conftest import normal, np_entropy


def test_entropy_extremes_and_unknown_rule():
  k = 5
  np.testing.assert_allclose(losses.entropy(jnp.zeros(k)), np.log(k), rtol=1e-6)
  assert float(losses.entropy(jnp.array([50.0, 0, 0, 0, 0]))) < 1e-15
  logits = normal(0, (6, k), 3.0)
  np.testing.assert_allclose(losses.batch_entropy(logits), np_entropy(logits), rtol=1e-5)
  with pytest.raises(ValueError, match="selection rule"):
    sel.selection_scores(logits, "median_entropy")



@pytest.mark.parametrize("margin", [20.0, 40.0, 80.0])
def test_cross_entropy_stays_positive_where_naive_ce_is_zero(margin):
  logits = jnp.array([margin, 0.0, 0.0, 0.0], jnp.float32)
  naive = jax.nn.logsumexp(logits) - logits[0]
  assert float(naive) == 0.0    # the float32 case Eq. 10's 1/CE must survive
  ce = float(losses.cross_entropy(logits, 0))
  assert ce > 0
  np.testing.assert_allclose(ce, np.log1p(3 * np.exp(-margin)), rtol=1e-4)
  assert np.isfinite(1.0 / ce)


@pytest.mark.parametrize("margin", [50.0, 88.0, 89.0, 100.0, 1000.0])
def test_cross_entropy_of_a_very_wrong_prediction_is_finite_with_the_right_gradient(margin):
  """The label's logit far below another one: CE ~ margin, dCE/dlogits = p - onehot.
  (log1p(exp(.)) overflowed here: CE = inf and a NaN gradient from a margin of ~89.)"""
  logits = jnp.array([0.0, margin, 0.0, 0.0], jnp.float32)
  ce, grad = jax.value_and_grad(losses.cross_entropy)(logits, 0)
  np.testing.assert_allclose(ce, margin, rtol=1e-6)
  np.testing.assert_allclose(grad, [-1.0, 1.0, 0.0, 0.0], atol=1e-6)
  inv_grad = jax.grad(lambda l: 1.0 / jnp.maximum(losses.cross_entropy(l, 0),
                                                  unlearn_lib.CE_FLOOR))(logits)
  assert np.all(np.isfinite(inv_grad))


def test_cross_entropy_matches_optax_on_ordinary_logits():
  logits = normal(3, (16, 10), 4.0)
  labels = jnp.asarray(np.random.default_rng(4).integers(0, 10, 16), jnp.int32)
  np.testing.assert_allclose(losses.batch_cross_entropy(logits, labels),
                             optax.softmax_cross_entropy_with_integer_labels(logits, labels),
                             rtol=1e-5, atol=1e-6)


class HandComputedLossesTest(chex.TestCase):
  """Each loss on logits whose softmax is known exactly, with and without jit."""

  @chex.variants(with_jit=True, without_jit=True)
  def test_cross_entropy_of_a_known_softmax(self):
    # Logits (log 2, 0, 0): softmax (1/2, 1/4, 1/4).
    logits = jnp.array([np.log(2.0), 0.0, 0.0], jnp.float32)
    ce = self.variant(losses.cross_entropy)
    np.testing.assert_allclose(ce(logits, 0), np.log(2.0), rtol=1e-6)
    np.testing.assert_allclose(ce(logits, 2), np.log(4.0), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_batch_cross_entropy_is_per_row(self):
    logits = jnp.array([[np.log(2.0), 0.0, 0.0], [0.0, 0.0, 0.0]], jnp.float32)
    got = self.variant(losses.batch_cross_entropy)(logits, jnp.array([1, 2], jnp.int32))
    np.testing.assert_allclose(got, [np.log(4.0), np.log(3.0)], rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_entropy_of_a_known_softmax(self):
    # (1/2, 1/4, 1/4): H = 1/2 log 2 + 2 * 1/4 log 4 = 3/2 log 2.
    logits = jnp.array([np.log(2.0), 0.0, 0.0], jnp.float32)
    np.testing.assert_allclose(self.variant(losses.entropy)(logits), 1.5 * np.log(2.0),
                               rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_batch_entropy_is_per_row(self):
    # Uniform over 3 classes: log 3; a shift of every logit changes nothing.
    logits = jnp.array([[np.log(2.0), 0.0, 0.0], [7.0, 7.0, 7.0]], jnp.float32)
    np.testing.assert_allclose(self.variant(losses.batch_entropy)(logits),
                               [1.5 * np.log(2.0), np.log(3.0)], rtol=1e-6)
