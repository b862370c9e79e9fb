"""Training-time records of the data-access baselines: `geniu_jax/methods/records.py`.

`BaselineRecorder.init` / `update` on the tiny classifier with hand-made
updates and gradients (per-class update sums for I-R / Amnesiac, the first
batch's class share of the gradient for Unrolling SGD), eagerly and under
jit; the tree <-> State conversion, class slices, validation and size. On the
shared smoke model (conftest's `smoke`, trained with the default recorder):
the records hold every batch of the majority, and round-trip through a
checkpoint.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax.methods import records
from geniu_jax.methods import records as rec_lib
from geniu_jax.models import functional as F

from conftest import TINY_K, assert_unchanged, pure_leaves, randomize, snapshot


def _assert_trees_close(got, want):
  got, want = pure_leaves(got), pure_leaves(want)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=1e-6, atol=1e-7, err_msg=k)


def _all_keys_are_strings(tree) -> bool:
  if isinstance(tree, dict):
    return all(isinstance(k, str) and _all_keys_are_strings(v) for k, v in tree.items())
  return True


def test_init_gives_every_class_an_empty_slot(tiny_classifier):
  records = rec_lib.default_recorder().init(tiny_classifier.params, TINY_K)
  assert set(records) == set(rec_lib.REQUIRED_KEYS)
  assert _all_keys_are_strings(records)
  params = pure_leaves(rec_lib.state_to_tree(tiny_classifier.params))
  for name in ("ir_updates", "unroll_grads"):
    leaves = pure_leaves(records[name])
    assert leaves.keys() == params.keys()
    for k, p in params.items():
      assert leaves[k].shape == (TINY_K, *p.shape) and leaves[k].dtype == np.float32
      assert not leaves[k].any()
  np.testing.assert_array_equal(records["ir_batches"], np.zeros(TINY_K))
  np.testing.assert_array_equal(records["unroll_step"], -np.ones(TINY_K))
  assert int(records["steps"]) == 0


@pytest.mark.parametrize("jit", [False, True])
def test_update_sums_updates_per_class_and_keeps_the_first_gradient_share(tiny_classifier,
                                                                         jit):
  cls = tiny_classifier
  recorder = rec_lib.default_recorder()
  update = jax.jit(recorder.update) if jit else recorder.update
  u1, u2 = randomize(cls.params, 1), randomize(cls.params, 2)
  g1, g2 = randomize(cls.params, 3), randomize(cls.params, 4)
  snaps = snapshot(cls.params, u1, g1)

  records = recorder.init(cls.params, TINY_K)
  records = update(records, cls.params, g1, u1, jnp.array([0, 0, 2], jnp.int32))
  records = update(records, cls.params, g2, u2, jnp.array([1, 2], jnp.int32))

  t = lambda *trees, f: jax.tree.map(f, *map(rec_lib.state_to_tree, trees))
  zero = t(u1, f=jnp.zeros_like)
  # Class k: the sum of the updates of every batch that held k.
  want_ir = [t(u1, f=lambda a: a), t(u2, f=lambda a: a), t(u1, u2, f=lambda a, b: a + b), zero]
  # Class k: its share n_k / |B| of the gradient of the first batch that held it.
  want_unroll = [t(g1, f=lambda a: 2 / 3 * a), t(g2, f=lambda a: a / 2),
                 t(g1, f=lambda a: a / 3), zero]
  for k in range(TINY_K):
    _assert_trees_close(jax.tree.map(lambda a: a[k], records["ir_updates"]), want_ir[k])
    _assert_trees_close(jax.tree.map(lambda a: a[k], records["unroll_grads"]), want_unroll[k])
  np.testing.assert_array_equal(records["ir_batches"], [1, 1, 2, 0])
  np.testing.assert_array_equal(records["unroll_step"], [0, 1, 0, -1])
  assert int(records["steps"]) == 2
  assert_unchanged((cls.params, u1, g1), snaps)

  # Forgetting classes 0 and 2 together subtracts the updates of their batches.
  _assert_trees_close(rec_lib.class_slice(records["ir_updates"], [0, 2]),
                      t(u1, u2, f=lambda a, b: 2 * a + b))


def test_tree_and_state_convert_both_ways_without_touching_the_template(tiny_classifier):
  params = tiny_classifier.params
  other = randomize(params, 7)
  snaps = snapshot(params)
  tree = rec_lib.state_to_tree(other)
  assert _all_keys_are_strings(tree)
  back = rec_lib.tree_to_state(tree, params)
  assert type(back) is type(params)
  _assert_trees_close(back, other)
  assert_unchanged((params,), snaps)


def test_check_records_and_record_bytes(tiny_classifier):
  records = rec_lib.default_recorder().init(tiny_classifier.params, TINY_K)
  checked = rec_lib.check_records(dict(records, extra=np.zeros(3)))
  assert set(checked) == set(rec_lib.REQUIRED_KEYS)     # foreign extras are dropped
  _assert_trees_close(checked, records)
  for bad in ({k: v for k, v in records.items() if k != "steps"}, None, [records]):
    with pytest.raises(ValueError, match="--record-baselines"):
      rec_lib.check_records(bad)
  # Two float32 [K, ...params] trees, two int32 [K] vectors and an int32 counter.
  p = sum(np.size(a) for a in jax.tree.leaves(rec_lib.state_to_tree(tiny_classifier.params)))
  assert rec_lib.record_bytes(records) == 8 * TINY_K * p + 4 * (2 * TINY_K + 1)


# --- records of the smoke model --------------------------------------------------


def test_records_hold_every_batch_of_the_majority(smoke):
  rec = records.check_records(smoke.result.records)
  n = len(smoke.data.y_train)
  steps = smoke.cfg.epochs * (n // smoke.cfg.batch_size)
  assert int(rec["steps"]) == steps
  assert int(rec["ir_batches"][9]) == steps  # the majority is in every batch
  assert np.all(np.asarray(rec["unroll_step"]) >= 0)
  # Every batch held class 9, so subtracting its updates gives back w_0.
  cfg = smoke.cfg
  init_key = jax.random.split(jax.random.key(cfg.seed), 5)[0]
  w0 = F.make_classifier(10, smoke.data.x_train.shape[1:], cfg.width, cfg.lowering, init_key)
  final = records.state_to_tree(smoke.result.classifier.params)
  back = jax.tree.map(lambda w, u: w - u[9], final, rec["ir_updates"])
  for got, want in zip(jax.tree.leaves(back), jax.tree.leaves(records.state_to_tree(w0.params))):
    np.testing.assert_allclose(got, want, atol=2e-5)
  assert records.record_bytes(rec) == 8 * 10 * sum(
      np.size(p) for p in jax.tree.leaves(smoke.result.classifier.params)) + 4 * 21


def test_records_round_trip_through_checkpoint(smoke, tmp_path):
  res = smoke.result
  meta = ckpt_lib.make_metadata(smoke.cfg, source="embedded", image_shape=(28, 28, 1),
                                num_classes=10, majority=[9])
  ckpt_lib.save(tmp_path / "ck", res.classifier, res.generator, res.prompts, meta,
                records=res.records)
  restored = records.check_records(ckpt_lib.restore(tmp_path / "ck").records)
  want = records.check_records(res.records)
  assert jax.tree.structure(restored) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(want)):
    np.testing.assert_array_equal(a, b)
  like = smoke.result.classifier.params
  tree = records.state_to_tree(like)
  back = records.tree_to_state(tree, like)
  assert jax.tree.structure(back) == jax.tree.structure(like)
  with pytest.raises(ValueError, match="record-baselines"):
    records.check_records({"something": 1})
