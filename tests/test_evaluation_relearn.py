"""Relearn time and the Anamnesis Index (`geniu_jax.evaluation.relearn`) on a tiny AllCNN.

Class 0 is the forgotten class; its 16 "training" images are 8x8 noise. A
large head bias pins the classifier's answer, so the starting accuracy is
known: 1 when the bias favours class 0, 0 when it favours class 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import TINY_K, TINY_LOWERING, TINY_SHAPE, TINY_WIDTH, replace_leaf
from geniu_jax.evaluation import relearn
from geniu_jax.models import functional as F

NUM_FORGET = 16
X_FORGET = np.random.default_rng(0).uniform(0, 1, (NUM_FORGET, *TINY_SHAPE)).astype(np.float32)
Y_FORGET = np.zeros(NUM_FORGET, np.int32)
# One learning rate and batch size throughout: the jitted step compiles once.
SETTINGS = dict(lr=0.05, batch_size=8)


@pytest.fixture(scope="module")
def classifier() -> F.SplitModel:
  return F.make_classifier(TINY_K, TINY_SHAPE, TINY_WIDTH, TINY_LOWERING, jax.random.key(0))


def favouring(classifier: F.SplitModel, label: int, strength: float) -> F.SplitModel:
  """The classifier with its head bias raised by `strength` for `label`."""
  bias = np.zeros(TINY_K, np.float32)
  bias[label] = strength
  return classifier._replace(params=replace_leaf(classifier.params, "['head']['bias']", bias))


def test_a_model_already_at_the_target_needs_zero_steps(classifier):
  knows_class_0 = favouring(classifier, 0, 50.0)
  for eval_size in (1000, 4):  # all samples, and a random subset of them
    steps = relearn.relearn_steps(knows_class_0, X_FORGET, Y_FORGET, target_acc=1.0,
                                  max_steps=5, key=jax.random.key(1), eval_size=eval_size,
                                  **SETTINGS)
    assert steps == 0


def test_fine_tuning_brings_a_hidden_class_back_within_the_cap(classifier):
  hides_class_0 = favouring(classifier, 1, 2.0)
  run = lambda: relearn.relearn_steps(hides_class_0, X_FORGET, Y_FORGET, target_acc=0.9,
                                      max_steps=60, key=jax.random.key(2), **SETTINGS)
  steps = run()
  assert steps is not None and 0 < steps <= 60
  assert run() == steps, "same key, same count"
  # The caller's model is not the copy that was fine-tuned.
  np.testing.assert_array_equal(np.asarray(hides_class_0.params["head"]["bias"][...])[1], 2.0)


def test_an_unreachable_target_returns_none_at_the_cap(classifier):
  # Every image twice, labelled 0 and 1: no model gets more than half right.
  x = np.concatenate([X_FORGET[:NUM_FORGET // 2]] * 2)
  y = np.repeat(np.array([0, 1], np.int32), NUM_FORGET // 2)
  steps = relearn.relearn_steps(classifier, x, y, target_acc=0.75, max_steps=3,
                                key=jax.random.key(3), **SETTINGS)
  assert steps is None


@pytest.mark.parametrize("bad", [dict(target_acc=1.01), dict(target_acc=-0.1),
                                 dict(max_steps=-1), dict(batch_size=0)])
def test_bad_arguments_are_refused(classifier, bad):
  kwargs = dict(target_acc=0.5, max_steps=5, key=jax.random.key(4), **SETTINGS)
  kwargs.update(bad)
  with pytest.raises(ValueError):
    relearn.relearn_steps(classifier, X_FORGET, Y_FORGET, **kwargs)


def test_relearn_step_jitted_and_not_jitted_agree(classifier):
  optimizer = optax.adam(0.05)
  opt_state = optimizer.init(classifier.params)
  x, y = jnp.asarray(X_FORGET[:4]), jnp.asarray(Y_FORGET[:4])
  eager = relearn.relearn_step(classifier.params, opt_state, classifier.graphdef,
                               classifier.stats, x, y, optimizer)
  jitted = jax.jit(relearn.relearn_step, static_argnames=("graphdef", "optimizer"))(
      classifier.params, opt_state, classifier.graphdef, classifier.stats, x, y,
      optimizer=optimizer)
  leaves_eager, leaves_jitted = jax.tree.leaves(eager), jax.tree.leaves(jitted)
  assert len(leaves_eager) == len(leaves_jitted)
  for a, b in zip(leaves_eager, leaves_jitted):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
  moved = jax.tree.map(lambda old, new: bool(jnp.any(old != new)), classifier.params, eager[0])
  assert any(jax.tree.leaves(moved)), "a step must change the params"


def test_anamnesis_index_of_the_reference_itself_is_one():
  assert relearn.anamnesis_index(7, 7) == 1.0
  assert relearn.anamnesis_index(3, 12) == 0.25
  assert relearn.anamnesis_index(0, 12) == 0.0  # relearnt at once: forgotten superficially


@pytest.mark.parametrize("unlearned, retrained", [(None, 5), (5, None), (None, None), (5, 0),
                                                  (0, 0)])
def test_anamnesis_index_is_none_when_undefined(unlearned, retrained):
  assert relearn.anamnesis_index(unlearned, retrained) is None


def test_anamnesis_index_refuses_negative_counts():
  with pytest.raises(ValueError):
    relearn.anamnesis_index(-1, 5)
