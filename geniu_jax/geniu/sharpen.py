"""Sharpened forgotten proxies: the class's core, not its boundary, as the original sees it.

GENIU's generator maps each prompt to its class's most *ambiguous* training
sample (max-entropy supervision, §4.4): good retained proxies, because
in-batch tuning must keep the retained classes' boundaries, but poor
forgotten ones. Measured on the originals of `experiments.geniu_setting`
(Fashion-MNIST, validation images): the original gives the forgotten
proxies their class with probability 0.15-0.32, against 0.93-0.99 for the
class's real images, and only 2-9 % of the real images have one of the
class's own proxies as their nearest proxy. Tuning pushes these boundary
proxies out of the class within a few rounds and then has nothing left to
push, while most real images of the class stay in it (Acc_f 0.43 and 0.91
after 60 rounds on two of them).

`sharpen` moves each forgotten proxy, before tuning, by signed-gradient steps
on the original's log-probability of its class (the update of
Goodfellow et al.'s FGSM, iterated and clipped to the image range) until the
original gives it that class with probability >= `target`, at most `steps`
steps. The sharpened copies carry the features by which the original
recognises the class -- what unlearning has to remove. Only the original
model and the proxies are read: the unlearning phase stays data-free.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from geniu_jax.models import functional as F


def sharpen(graphdef, params, stats, x: jax.Array, labels: jax.Array, *, target: float,
            step: float, steps: int) -> jax.Array:
  """Moves images toward the classifier's confident answer for their labels.

  Args:
    graphdef, params, stats: the original classifier (eval mode).
    x: [N, H, W, C] images in [0, 1] (the forgotten proxies).
    labels: [N] the class each image should be confidently.
    target: stop moving an image once p(label | image) >= target.
    step: L-infinity size of one step.
    steps: the most steps (static).

  Returns:
    [N, H, W, C] sharpened images in [0, 1].
  """

  def log_prob(x):
    logp = jax.nn.log_softmax(F.classifier_logits(graphdef, params, stats, x))
    return jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]

  def body(x, _):
    logp, vjp = jax.vjp(log_prob, x)
    (grad,) = vjp(jnp.ones_like(logp))  # per-image gradients: the images do not interact
    moving = (jnp.exp(logp) < target)[:, None, None, None]
    return jnp.where(moving, jnp.clip(x + step * jnp.sign(grad), 0.0, 1.0), x), None

  x, _ = jax.lax.scan(body, x, None, length=steps)
  return x


def with_sharpened(graphdef, params, stats, proxies: jax.Array, labels: jax.Array,
                   forget_mask: jax.Array, *, target: float, step: float, steps: int,
                   num_forget: int) -> tuple[jax.Array, jax.Array]:
  """The proxy batch with a sharpened copy of every forgotten proxy appended.

  `num_forget` (static) is the number of forgotten proxies, so the batch has
  a static shape: the forgotten rows are gathered by a stable argsort.
  """
  rows = jnp.argsort(~forget_mask, stable=True)[:num_forget]
  sharp = sharpen(graphdef, params, stats, proxies[rows], labels[rows], target=target,
                  step=step, steps=steps)
  return jnp.concatenate([proxies, sharp]), jnp.concatenate([labels, labels[rows]])


def settings_from_config(cfg) -> tuple[float, float, int] | None:
  """(target, step, steps) of a Config, or None when sharpening is off."""
  if cfg.sharpen_target is None:
    return None
  return float(cfg.sharpen_target), float(cfg.sharpen_step), int(cfg.sharpen_steps)
