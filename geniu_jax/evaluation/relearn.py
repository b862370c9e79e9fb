"""Relearn time and the Anamnesis Index (AIN): how fast a forgotten class comes back.

From the GKT paper (Chundawat et al., 2023, "Zero-Shot Machine
Unlearning"): fine-tune a model on the forgotten class's training samples
and count the optimizer steps until its accuracy on them reaches a target
(the paper's target: within a margin of the ORIGINAL model's accuracy on
that class). The AIN divides the unlearned model's count by the count of a
model retrained from scratch without the class:

  AIN = steps(unlearned) / steps(retrained).

A model that only hides the class (say, by lowering its logit) relearns
it in a few steps, AIN near 0; one that removed it as thoroughly as
retraining needs as long as the retrained model, AIN near 1.

Relearning runs BatchNorm in eval mode (stored statistics frozen), as
GENIU's own tuning does (`geniu.unlearn`): the batches hold one class only,
and train mode would replace the running averages with that class's
statistics and normalise by few-sample batch statistics, so the count
would measure BatchNorm drift as much as what the weights remember.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geniu_jax.models import functional as F


def relearn_loss(params, graphdef, stats, x: jax.Array, y: jax.Array) -> jax.Array:
  """Mean cross-entropy of the classifier (eval-mode BatchNorm) on a batch."""
  logits = F.classifier_logits(graphdef, params, stats, x)
  return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()


def relearn_step(params, opt_state, graphdef, stats, x: jax.Array, y: jax.Array,
                 optimizer: optax.GradientTransformation):
  """One optimizer step of relearning on a batch, `stats` frozen; jit-friendly.

  Args:
    params, opt_state: the classifier's parameters and optimizer state.
    graphdef, stats: the classifier's graph and BatchNorm statistics
      (static under jit / left unchanged).
    x: [B, H, W, C] float32 images; y: [B] int labels.
    optimizer: an optax transformation (static under jit).

  Returns:
    (params, opt_state, loss before the step).
  """
  loss, grads = jax.value_and_grad(relearn_loss)(params, graphdef, stats, x, y)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def _accuracy(graphdef, params, stats, x, y) -> jax.Array:
  logits = F.classifier_logits(graphdef, params, stats, x)
  return jnp.mean(jnp.argmax(logits, -1) == y)


_accuracy_jit = jax.jit(_accuracy, static_argnums=0)


@functools.lru_cache(maxsize=16)
def _adam(lr: float) -> optax.GradientTransformation:
  # optax builds new closures on every call; one object per learning rate
  # keeps the jitted step's static argument equal, so it compiles once.
  return optax.adam(lr)


def _step_then_score(params, opt_state, graphdef, stats, x_train, y_train, x_eval, y_eval,
                     batch_key, optimizer, batch_size: int):
  """A step on a random batch of the training samples, then the accuracy on the eval set."""
  batch = jax.random.choice(batch_key, x_train.shape[0], (batch_size,), replace=False)
  params, opt_state, _ = relearn_step(params, opt_state, graphdef, stats, x_train[batch],
                                      y_train[batch], optimizer)
  return params, opt_state, _accuracy(graphdef, params, stats, x_eval, y_eval)


@functools.partial(jax.jit, static_argnames=("graphdef", "optimizer", "batch_size"))
def _relearn_loop(params, graphdef, stats, x_train, y_train, x_eval, y_eval, batch_key,
                  target_acc, max_steps, *, optimizer, batch_size: int):
  """Steps 1, 2, ... until the accuracy reaches `target_acc` or `max_steps` ran, as one
  `lax.while_loop` (no host round trip per step). Returns (steps run, last accuracy)."""

  def cond(carry):
    step, _, _, accuracy = carry
    return (step < max_steps) & (accuracy < target_acc)

  def body(carry):
    step, params, opt_state, _ = carry
    step = step + 1
    params, opt_state, accuracy = _step_then_score(
        params, opt_state, graphdef, stats, x_train, y_train, x_eval, y_eval,
        jax.random.fold_in(batch_key, step), optimizer, batch_size)
    return step, params, opt_state, accuracy

  init = (jnp.int32(0), params, optimizer.init(params), jnp.float32(-1.0))
  step, _, _, accuracy = jax.lax.while_loop(cond, body, init)
  return step, accuracy


def relearn_steps(classifier: F.SplitModel, x_forget: np.ndarray, y_forget: np.ndarray, *,
                  target_acc: float, max_steps: int, lr: float, batch_size: int,
                  key: jax.Array, eval_size: int = 1000) -> int | None:
  """Optimizer steps until fine-tuning on the forgotten samples brings their accuracy back.

  Adam on a copy of the classifier's params (the caller's model is left
  as it is), BatchNorm in eval mode; each step draws `batch_size` samples
  without replacement from all of `x_forget`. After every step the
  accuracy is measured on a fixed subset of at most `eval_size` of the same
  samples (all of them when there are few enough).

  Args:
    classifier: the model to probe (unlearned, or the retrained reference).
    x_forget: [N, H, W, C] float32 images in [0, 1] of the forgotten classes.
    y_forget: [N] int labels.
    target_acc: accuracy in [0, 1] to reach, e.g. a margin below the
      original model's accuracy on these samples.
    max_steps: the most steps to try.
    lr: Adam learning rate.
    batch_size: samples per step (at most N are used).
    key: randomness for the evaluation subset and the batches.
    eval_size: the most samples the accuracy is measured on.

  Returns:
    The number of steps after which the accuracy first reached
    `target_acc` (0 if the model already does), or None if it did not
    within `max_steps`.
  """
  if not 0.0 <= target_acc <= 1.0:
    raise ValueError(f"target_acc must be an accuracy in [0, 1], got {target_acc}")
  if max_steps < 0 or batch_size < 1 or eval_size < 1:
    raise ValueError(f"need max_steps >= 0, batch_size >= 1 and eval_size >= 1, got "
                     f"{max_steps}, {batch_size} and {eval_size}")
  if len(x_forget) != len(y_forget) or not len(x_forget):
    raise ValueError(f"need as many labels as images, and some: got {len(x_forget)} images "
                     f"and {len(y_forget)} labels")
  eval_key, batch_key = jax.random.split(key)
  x_train = jnp.asarray(x_forget, jnp.float32)
  y_train = jnp.asarray(y_forget, jnp.int32)
  num_samples = x_train.shape[0]
  if num_samples > eval_size:
    subset = jax.random.choice(eval_key, num_samples, (eval_size,), replace=False)
    x_eval, y_eval = x_train[subset], y_train[subset]
  else:
    x_eval, y_eval = x_train, y_train

  graphdef, params, stats = classifier
  if float(_accuracy_jit(graphdef, params, stats, x_eval, y_eval)) >= target_acc:
    return 0
  step, accuracy = _relearn_loop(params, graphdef, stats, x_train, y_train, x_eval, y_eval,
                                 batch_key, jnp.float32(target_acc), jnp.int32(max_steps),
                                 optimizer=_adam(float(lr)),
                                 batch_size=min(batch_size, num_samples))
  # The loop compared in float32; so does the answer.
  return int(step) if float(accuracy) >= float(jnp.float32(target_acc)) else None


def anamnesis_index(steps_unlearned: int | None, steps_retrained: int | None) -> float | None:
  """The GKT paper's Anamnesis Index, AIN = steps_unlearned / steps_retrained.

  Near 1 is ideal: the class comes back as slowly as in a model that never
  learnt it. Near 0 means the unlearned model relearns it almost at once,
  i.e. the class was forgotten only superficially. Above 1 it relearns more
  slowly than the retrained model.

  Args:
    steps_unlearned: `relearn_steps` of the unlearned model.
    steps_retrained: `relearn_steps` of the model retrained without the
      forgotten classes, with the same target and settings.

  Returns:
    The ratio as a float, or None when it is undefined: either count is
    None (the cap was reached, so only a bound is known), or
    steps_retrained is 0 (the reference already meets the target, so the
    target is too low to tell the models apart).
  """
  if steps_unlearned is None or steps_retrained is None or steps_retrained == 0:
    return None
  if steps_unlearned < 0 or steps_retrained < 0:
    raise ValueError(f"step counts cannot be negative: {steps_unlearned}, {steps_retrained}")
  return steps_unlearned / steps_retrained
