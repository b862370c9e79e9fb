"""Noise prompts z_k (Eq. 7-8): image-shaped noise the classifier labels as k.

B prompts per class are laid out class-fastest: prompt i has label i % K and
is the (i // K)-th proxy of its class. An unlearned checkpoint no longer holds
the prompts of the classes it forgot (`drop_classes`): its prompts tile the
remaining classes in the same order (`stored_labels`). All B*K prompts train together in one
batched Adam step. The classifier runs in eval mode (stored BatchNorm
statistics), which makes each prompt's loss independent of the others, so the
batched forward equals a vmap of per-prompt losses, and nothing of the
classifier (parameters or statistics) is written: prompts and classifier are
"updated independently" (§4.2).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geniu_jax.geniu.losses import batch_cross_entropy
from geniu_jax.models.functional import classifier_logits


class PromptState(NamedTuple):
  z: jax.Array          # [B*K, H, W, C]
  opt_state: optax.OptState


def prompt_labels(num_classes: int, per_class: int) -> jax.Array:
  return jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), per_class)


def present_classes(num_classes: int, dropped: jax.Array | None = None) -> jax.Array:
  """The classes that still have prompts, in layout order: all but `dropped`.

  `dropped` may be traced; its length is static, so the result's is too.
  """
  classes = jnp.arange(num_classes, dtype=jnp.int32)
  if dropped is None or dropped.shape[0] == 0:
    return classes
  is_dropped = jnp.any(classes[:, None] == dropped[None, :], axis=-1)
  return jnp.argsort(is_dropped, stable=True)[:num_classes - dropped.shape[0]].astype(jnp.int32)


def stored_labels(num_classes: int, count: int, dropped: jax.Array | None = None) -> jax.Array:
  """The labels of `count` stored prompts whose checkpoint dropped the classes `dropped`."""
  present = present_classes(num_classes, dropped)
  return jnp.tile(present, count // present.shape[0])


def drop_classes(z, num_classes: int, dropped_before, classes):
  """Host side: stored prompts without the rows of `classes` (layout kept).

  Args:
    z: [B * K', ...] stored prompts; their checkpoint had already dropped the
      classes `dropped_before` (K' = K - len(dropped_before)).
    classes: classes whose prompts go now (those already gone are ignored).
  """
  z = np.asarray(z)
  before = np.asarray(sorted(int(k) for k in dropped_before), np.int32)
  labels = np.asarray(stored_labels(num_classes, z.shape[0], jnp.asarray(before)))
  return z[~np.isin(labels, np.asarray(list(classes), np.int32))]


def first_ranks(z: jax.Array, num_classes: int, per_class: int) -> jax.Array:
  """The prompts of the first `per_class` ranks of every class (class-fastest layout).

  Rank b of class k was fitted to the class's b-th most entropic sample, so
  `first_ranks(z, K, 1)` is the paper's single proxy per class. For a
  checkpoint that dropped classes, `num_classes` is the number it still has.
  """
  have = z.shape[0] // num_classes
  if not 1 <= per_class <= have:
    raise ValueError(f"asked for {per_class} proxies per class; the checkpoint has {have}")
  return z[: num_classes * per_class]


def init_prompts(key: jax.Array, num_classes: int, per_class: int,
                 image_shape: tuple[int, int, int], optimizer: optax.GradientTransformation
                 ) -> PromptState:
  """z_init ~ N(0, 1) of the image's shape (Eq. 7)."""
  z = jax.random.normal(key, (num_classes * per_class, *image_shape))
  return PromptState(z, optimizer.init(z))


def prompt_loss(z: jax.Array, labels: jax.Array, classifier) -> jax.Array:
  """Mean over prompts of CE(f(z_k), k) (Eq. 8); `classifier` = (graphdef, params, stats)."""
  graphdef, params, stats = classifier
  return batch_cross_entropy(classifier_logits(graphdef, params, stats, z), labels).mean()


def train_prompts(state: PromptState, classifier, num_classes: int,
                  optimizer: optax.GradientTransformation, steps: int
                  ) -> tuple[PromptState, jax.Array]:
  """`steps` Adam steps on all prompts at once, as one `lax.scan`; returns the last loss."""
  labels = prompt_labels(num_classes, state.z.shape[0] // num_classes)

  def step(carry, _):
    z, opt_state = carry
    loss, grad = jax.value_and_grad(prompt_loss)(z, labels, classifier)
    updates, opt_state = optimizer.update(grad, opt_state, z)
    return (optax.apply_updates(z, updates), opt_state), loss

  (z, opt_state), losses = jax.lax.scan(step, tuple(state), None, length=steps)
  return PromptState(z, opt_state), losses[-1]


def prompts_correct(z: jax.Array, classifier, num_classes: int) -> jax.Array:
  """True when every prompt is classified as its class (the gate of Alg. 1, line 4)."""
  graphdef, params, stats = classifier
  labels = prompt_labels(num_classes, z.shape[0] // num_classes)
  preds = jnp.argmax(classifier_logits(graphdef, params, stats, z), axis=-1)
  return jnp.all(preds == labels)
