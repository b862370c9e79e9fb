"""The I-R and relabelling (Amnesiac) baselines: `geniu_jax/methods/ir.py`.

The reference setting is the Amnesiac code's hyperparameters; the recommended
one is the config's preset (read off the shared smoke config, conftest's
`smoke`).
"""

from __future__ import annotations


def test_ir_reference_setting_is_the_amnesiac_codes(smoke):
  from geniu_jax.methods import common, ir as ir_lib
  ref = common.by_preset(smoke.cfg.replace(baseline_setting="reference"), ir_lib.PRESETS,
                         ir_lib.REFERENCE, method="ir")
  assert (ref.repair_epochs, ref.repair_lr, ref.batch_size) == (10, 1e-3, 64)
  assert (ref.relabel_epochs, ref.relabel_lr) == (10, 1e-3)
  assert common.by_preset(smoke.cfg, ir_lib.PRESETS, ir_lib.REFERENCE,
                          method="ir") == ir_lib.PRESETS["smoke"]
