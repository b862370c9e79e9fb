"""The classifier's optimizer: our one-cycle schedule, or the baselines' plateau rule.

The paper trains its classifiers with lr 0.01 and weight decay 1e-4
"following the baselines' setting". Both schedules below are Adam with coupled
L2 weight decay (the decay is added to the gradient before Adam, as torch's
`Adam(weight_decay=...)` does):

| | `one_cycle` (default) | `plateau` |
|---|---|---|
| rate | one cycle peaking at `lr` (`optax.cosine_onecycle_schedule`) | `lr`, halved after more than 3 epochs without a better validation loss |
| held-out data | none | a validation split carved from the training data |
| gradient clipping | `grad_clip_value` (None by default) | same |

`plateau` is the training code of the baselines' repositories: `fit_one_cycle`
(ayushkumartarun/zero-shot-unlearning at e888197, `utils.py` L46-80; the same
function in vikram2000b/Fast-Machine-Unlearning at 252bc92, `Machine
Unlearning.ipynb` cell 4) is, despite its name, Adam with weight decay at a
constant rate and `ReduceLROnPlateau(mode="min", factor=0.5, patience=3)`
stepped once per epoch; the notebooks pass lr 0.01, weight decay 1e-4 and
`grad_clip=0.1` (`clip_grad_value_`). The reference steps the rule on the
*test* loss (its `valid_dl` is the test split); here it is the loss on a
split held out of the training data, never the test split. `one_cycle` is
our choice: it needs no held-out loss at all.

The plateau rule is optax's `contrib.reduce_on_plateau`, run on the host once
per epoch; its scale sets the learning rate that `optax.inject_hyperparams`
keeps in the optimizer state, so the jitted train step is the same program
every epoch and the whole state (rule included) is a pytree that
`geniu.resume` saves.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geniu_jax import metrics
from geniu_jax.config import Config
from geniu_jax.models import functional as F

PLATEAU_FACTOR = 0.5
# torch reduces once more than `patience` epochs in a row did not improve;
# optax once `patience` did: optax's patience is torch's + 1.
PLATEAU_PATIENCE = 3
PLATEAU_RTOL = 1e-4   # torch's default threshold, mode "rel"


def _coupled_adam(learning_rate, weight_decay: float, clip: float | None
                  ) -> optax.GradientTransformation:
  parts = [optax.clip(clip)] if clip is not None else []
  return optax.chain(*parts, optax.add_decayed_weights(weight_decay), optax.scale_by_adam(),
                     optax.scale_by_learning_rate(learning_rate))


def classifier_optimizer(cfg: Config, total_steps: int) -> optax.GradientTransformation:
  """The classifier's optimizer for `cfg.lr_schedule` (module docstring).

  Args:
    cfg: reads `lr`, `weight_decay`, `lr_schedule` and `grad_clip_value`.
    total_steps: the number of updates of the whole run (the one-cycle length).
  """
  if cfg.lr_schedule == "plateau":
    return optax.inject_hyperparams(_coupled_adam, static_args=("weight_decay", "clip"))(
        learning_rate=cfg.lr, weight_decay=cfg.weight_decay, clip=cfg.grad_clip_value)
  schedule = optax.cosine_onecycle_schedule(max(total_steps, 1), cfg.lr)
  return _coupled_adam(schedule, cfg.weight_decay, cfg.grad_clip_value)


class Plateau(NamedTuple):
  """The plateau rule's state between epochs.

  Attributes:
    rule: `optax.contrib.reduce_on_plateau`'s state (best loss, bad epochs,
      and the scale: the next epoch's rate is `cfg.lr * rule.scale`).
  """
  rule: optax.contrib.ReduceLROnPlateauState


def _rule() -> optax.GradientTransformationExtraArgs:
  return optax.contrib.reduce_on_plateau(factor=PLATEAU_FACTOR, patience=PLATEAU_PATIENCE + 1,
                                         rtol=PLATEAU_RTOL)


def plateau_init() -> Plateau:
  return Plateau(_rule().init(jnp.zeros((), jnp.float32)))


def plateau_step(cfg: Config, plateau: Plateau, opt_state, val_loss: float
                 ) -> tuple[Plateau, optax.OptState]:
  """Steps the rule on one epoch's validation loss (host side, once per epoch).

  Returns the new rule state and `opt_state` with the next epoch's rate.
  """
  _, rule = _rule().update(jnp.zeros((), jnp.float32), plateau.rule,
                           value=jnp.asarray(val_loss, jnp.float32))
  lr = jnp.asarray(cfg.lr * rule.scale, jnp.float32)
  hyper = dict(opt_state.hyperparams, learning_rate=lr)
  return Plateau(rule), opt_state._replace(hyperparams=hyper)


_logits = jax.jit(F.classifier_logits, static_argnums=0)


def validation_loss(model: F.SplitModel, x: np.ndarray, y: np.ndarray) -> float:
  """Mean cross-entropy of the eval-mode classifier on a validation split
  (x: [N, H, W, C] float32, y: [N] int): the value the plateau rule steps on."""
  logits = metrics.map_chunks(_logits, model, x)
  return float(np.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y)))
