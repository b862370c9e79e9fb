"""Unrolling SGD: single-gradient unlearning (Thudi et al., 2022).

Thudi et al. unroll SGD to first order: after T steps from w_0 with rate eta,
  w_T ~= w_0 - eta * sum_t grad L_{B_t}(w_0),
so a batch B_k is removed by ADDING eta * grad L_{B_k}(w_0) to w_T: the
gradient of the data to forget at the weights where it was first learned.
The error of this approximation grows with eta, T and the distance w_T - w_0,
which is why the data to forget is arranged in the FIRST batch (the gradient
is then taken at the very weights it was learned at).

Our reading of GENIU §5 ("In unlearning phase, it arranges forgetting data in
the first batch and performs incremental training with both unlearned
training data and retain training data. It records gradients when learning
the first batch and adds recorded gradients on weights after the incremental
training"). Thudi et al.'s code (cleverhans-lab/unrolling-sgd) has no
class-unlearning script: `correlation_verification.py` puts the batch to
forget first and the rest of the training set after it, `finetune.py` runs
T = 10 SGD updates from a pretrained model; both add lr x its gradient at the
starting weights. Ours, from the original weights:

1. Incremental training from the original weights w_or, SGD as in
   finetune.py (lr 0.1, momentum 0.9, weight decay 5e-4, batch 32, T = 10
   updates), BatchNorm in train mode. Batch 0 holds forgotten samples only
   (the "unlearned training data"), batches 1..T-1 retained samples (the
   "retain training data"): in class unlearning nothing of the forgotten
   class may be learned after the batch that is undone. The gradient g_0 of
   batch 0 at w_or is recorded.
2. w_un = w_T + eta * g_0 (finetune.py: params + lr * grads of batch k).
3. Plus the training-time part, from the records of `records.py`: Thudi's
   single-gradient correction of the ORIGINAL training, eta_train *
   sum_f r_f, where r_f is class f's share of the gradient of the first
   training batch that held f, recorded at (for classes in the first batch,
   exactly) the initial weights w_0. The original model was trained with
   Adam, not SGD, so eta_train is the configured peak training lr
   (`cfg.lr`); after a whole training run this term is small (first-order in
   eta_train only), and `train_correction=False` leaves it out. No
   reference has this term: `baseline_setting="reference"` (`REFERENCE`)
   leaves it out, steps 1-2 being what the code does.

Access: RECORDS + ALL_DATA (forgotten samples for batch 0, retained ones
for the rest).

"Where": cleverhans-lab/unrolling-sgd at 49e001f, `Unlearning/`; L = line:

| step | where | reference | ours (both settings unless marked) | why |
|---|---|---|---|---|
| what is forgotten | `correlation_verification.py` L130; `finetune.py` L92-168 | one batch of 32 samples; no script forgets a class | a class: batch 0 holds forgotten samples only | GENIU §5's protocol |
| order | `correlation_verification.py` L186-187 | the forgotten batch first, the rest of the training set after it, unshuffled | batch 0 forgotten, batches 1..T-1 retained only | nothing of the class may be learned after the batch that is undone |
| incremental training | `finetune.py` L49, L52-53, L92-96 | SGD 0.1, momentum 0.9, weight decay 5e-4, batch 32, T < 10 updates from the pretrained model | the same with T = 10 | - |
| the correction | `finetune.py` L150-168 | + lr x the batch's gradient at the starting weights, train mode | same | - |
| training-time term | none | - | recommended: + eta_train x the recorded first-batch gradients (step 3); `reference` leaves it out | the original's own training also learned the class |
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from geniu_jax.config import Config
from geniu_jax.methods import common
from geniu_jax.methods import records as rec_lib
from geniu_jax.methods.registry import BASELINE_SETTINGS, Access, Grant, register
from geniu_jax.models import functional as F


@dataclasses.dataclass(frozen=True)
class UnrollingSettings:
  lr: float = 0.1
  momentum: float = 0.9
  weight_decay: float = 5e-4
  batch_size: int = 32
  updates: int = 10              # T, SGD updates of the incremental training
  train_correction: bool = True  # also add the training-time recorded gradient
  train_lr: float | None = None  # eta_train; None: cfg.lr


PRESETS = {"paper": UnrollingSettings(), "cpu": UnrollingSettings(),
           "smoke": UnrollingSettings()}
REFERENCE = UnrollingSettings(train_correction=False)


@jax.jit
def _correct(params_tree, g0, recorded, forget, lr, train_lr):
  """w + lr * g_0 (+ train_lr * sum_f recorded_f when records are given)."""
  tree = jax.tree.map(lambda w, g: w + lr * g, params_tree, g0)
  if recorded is not None:
    tree = jax.tree.map(lambda w, g: w + train_lr * g, tree,
                        rec_lib.class_slice(recorded, forget))
  return tree


def _sample(n: int, size: int, rng: np.random.Generator) -> np.ndarray:
  return rng.choice(n, size=size, replace=n < size)


@register("unrolling", {Access.RECORDS, Access.ALL_DATA},
          "Unrolling SGD (Thudi et al.): forgotten batch first, incremental SGD, add back eta*g_0",
          settings=BASELINE_SETTINGS)
def unrolling(grant: Grant, cfg: Config, key: jax.Array,
              settings: UnrollingSettings | None = None) -> tuple[F.SplitModel, dict]:
  """Incremental training with the forgotten data first, then the unrolled correction."""
  s = settings or common.by_preset(cfg, PRESETS, REFERENCE, method="unrolling")
  watch = common.Stopwatch()
  rng = common.host_rng(key)
  records = rec_lib.check_records(grant.records) if s.train_correction else None
  x_f, y_f, x_r, y_r = common.split_data(grant.all_data, grant.forget)
  if len(y_f) == 0 or len(y_r) == 0:
    raise ValueError("unrolling needs training samples of both forgotten and retained classes")
  x = np.concatenate([x_f, x_r])
  y = np.concatenate([y_f, y_r]).astype(np.int32)
  batches = [_sample(len(y_f), s.batch_size, rng)]
  batches += [len(y_f) + _sample(len(y_r), s.batch_size, rng) for _ in range(s.updates - 1)]
  model, fit_info = common.fit(watch, grant.classifier, x, y, np.stack(batches), kind="sgd",
                               learning_rate=s.lr, momentum=s.momentum,
                               weight_decay=s.weight_decay)

  train_lr = s.train_lr if s.train_lr is not None else cfg.lr
  recorded = records["unroll_grads"] if records is not None else None
  tree = watch.run(_correct, rec_lib.state_to_tree(model.params),
                   rec_lib.state_to_tree(fit_info["first_grads"]), recorded,
                   jnp.asarray(grant.forget, jnp.int32), jnp.float32(s.lr),
                   jnp.float32(train_lr))
  params = jax.block_until_ready(rec_lib.tree_to_state(tree, model.params))
  return F.SplitModel(model.graphdef, params, model.stats), {
      "updates": s.updates, "first_batch_forgotten": int(s.batch_size),
      "train_correction": records is not None, "train_lr": train_lr,
      "incremental_loss_first": fit_info["losses"][0],
      "incremental_loss_last": fit_info["losses"][-1], **watch.report()}
