"""Config presets, overrides and the paper's §5 values."""

from __future__ import annotations

import dataclasses
import json

import pytest

from geniu_jax.config import PRESETS, Config, get_config


def test_every_preset_exists_and_names_itself():
  assert set(PRESETS) == {"smoke", "cpu", "paper"}
  for name in PRESETS:
    cfg = get_config(name)
    assert isinstance(cfg, Config) and cfg.preset == name
  with pytest.raises(ValueError, match="unknown preset"):
    get_config("huge")


def test_paper_preset_is_section_5():
  cfg = get_config("paper")
  expected = dict(
      batch_size=256, lr=0.01, weight_decay=1e-4,
      prompt_lr=0.02, prompt_steps=100,
      generator_lr=0.005, generator_steps=100, kl_weight=2.5e-4,
      unlearn_lr=4e-4, unlearn_rounds=100, stop_forget_prob=None,
      proxies_per_class=1, epochs=20, width=1.0, latent_dim=None,
      selection="max_entropy", selection_source="pass",
      retain_target="label", forget_loss="inv_ce", sharpen_target=None)  # Eq. 10
  for field, value in expected.items():
    assert getattr(cfg, field) == value, field
  # The default dataclass is the paper preset; 28x28 keeps the MNIST schedule.
  assert Config() == cfg
  assert get_config("paper", (28, 28, 1)) == cfg


def test_paper_preset_on_32x32_takes_the_cifar_schedule():
  cfg = get_config("paper", (32, 32, 3))
  assert (cfg.epochs, cfg.generator_steps, cfg.unlearn_rounds) == (40, 200, 45)
  assert cfg.prompt_steps == 100 and cfg.unlearn_lr == 4e-4   # unchanged on CIFAR
  # Explicit overrides still win over the image-size adaptation.
  assert get_config("paper", (32, 32, 3), epochs=3).epochs == 3
  # Only the paper preset adapts to the image size.
  assert get_config("smoke", (32, 32, 3)) == get_config("smoke")


def test_overrides_apply_and_none_is_ignored():
  base = get_config("smoke")
  cfg = get_config("smoke", width=0.5, epochs=7, seed=None, stop_forget_prob=None)
  assert cfg.width == 0.5 and cfg.epochs == 7
  assert cfg.seed == base.seed and cfg.stop_forget_prob == base.stop_forget_prob
  assert cfg.replace(lr=None, batch_size=None) == cfg
  assert cfg.replace(lr=0.1).lr == 0.1 and cfg.lr == base.lr   # frozen: a copy
  with pytest.raises(dataclasses.FrozenInstanceError):
    cfg.lr = 1.0   # type: ignore[misc]
  with pytest.raises(TypeError):
    get_config("smoke", no_such_field=1)


def test_smoke_preset_is_small():
  cfg = get_config("smoke")
  paper = get_config("paper")
  assert cfg.width < paper.width and cfg.epochs < paper.epochs
  assert cfg.prompt_steps < paper.prompt_steps and cfg.generator_steps < paper.generator_steps


@pytest.mark.parametrize("cfg", [
    get_config("paper"),
    get_config("cpu"),
    get_config("smoke", imbalance=(0.1, 0.2, 0.3), latent_dim=64, lowering="native"),
], ids=["paper", "cpu", "smoke-per-class-rates"])
def test_to_dict_from_dict_round_trip(cfg):
  d = cfg.to_dict()
  assert set(d) == {f.name for f in dataclasses.fields(Config)}
  again = Config.from_dict(json.loads(json.dumps(d)))   # through JSON, as in metadata
  assert again == cfg
  assert isinstance(again.imbalance, type(cfg.imbalance))
  # Unknown keys (e.g. from a newer version) are ignored.
  assert Config.from_dict(dict(d, future_knob=1)) == cfg


def test_presets_are_not_shared_mutable_state():
  assert get_config("cpu", epochs=1).epochs == 1
  assert get_config("cpu").epochs != 1


@pytest.mark.parametrize("t", [0.4, 0.6, 0.7, 1.0, 1, None])
def test_noise_start_acc_accepts_table_11_thresholds(t):
  assert get_config("smoke", noise_start_acc=t).noise_start_acc == t
  assert Config(noise_start_acc=t).noise_start_acc == t


@pytest.mark.parametrize("t", [0, 0.0, -0.1, 1.0001, 5, float("nan"), float("inf"), True,
                               "0.5"])
def test_noise_start_acc_outside_0_1_is_one_line_value_error(t):
  for make in (lambda: get_config("cpu", noise_start_acc=t),
               lambda: Config(noise_start_acc=t),
               lambda: get_config("paper").replace(noise_start_acc=t)):
    with pytest.raises(ValueError, match=r"noise_start_acc must be .* in \(0, 1\]") as err:
      make()
    assert "\n" not in str(err.value)


def test_noise_start_acc_round_trips_and_old_metadata_restores_as_none():
  assert Config().noise_start_acc is None   # the paper's §5: noise from the first epoch
  cfg = get_config("smoke", noise_start_acc=0.6)
  d = json.loads(json.dumps(cfg.to_dict()))
  assert d["noise_start_acc"] == 0.6 and Config.from_dict(d) == cfg
  del d["noise_start_acc"]   # a checkpoint written before the field existed
  assert Config.from_dict(d).noise_start_acc is None


def test_unknown_preset_is_refused_everywhere():
  from geniu_jax.methods import common
  with pytest.raises(ValueError, match="preset"):
    Config(preset="laptop")
  with pytest.raises(ValueError, match="no setting for preset 'cpu'"):
    common.by_preset(Config(preset="cpu"), {"paper": 1, "smoke": 2}, method=None)
  assert common.by_preset(Config(preset="smoke"), {"paper": 1, "smoke": 2}, method=None) == 2


def test_method_settings_set_fields_of_a_baselines_setting():
  import dataclasses
  from geniu_jax.methods import common
  from geniu_jax.methods import gkt
  cfg = Config(preset="smoke", method_settings=(("gkt.pseudo_batches", 7),
                                                ("unsir.noise_steps", 1)))
  s = common.by_preset(cfg, gkt.PRESETS, gkt.REFERENCE, method="gkt")
  assert s == dataclasses.replace(gkt.PRESETS["smoke"], pseudo_batches=7)
  ref = common.by_preset(cfg.replace(baseline_setting="reference"), gkt.PRESETS, gkt.REFERENCE,
                         method="gkt")
  assert ref.pseudo_batches == 7 and ref.batch_size == gkt.REFERENCE.batch_size
  assert Config.from_dict(cfg.to_dict()) == cfg     # survives checkpoint metadata
  for pairs, match in (((("gkt.nope", 1),), "no setting nope"),
                      ((("gkt.pseudo_batches", "many"),), "must be a int")):
    with pytest.raises(ValueError, match=match):
      common.by_preset(Config(method_settings=pairs), gkt.PRESETS, method="gkt")
  with pytest.raises(ValueError, match="method_settings"):
    Config(method_settings=(("nodot", 1),))
