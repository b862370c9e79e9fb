"""Sharpened proxies: the class's core, not its boundary, as the original sees it.

GENIU's generator maps each prompt to its class's most *ambiguous* training
sample (max-entropy supervision, §4.4): tuning on those proxies alone moves
the classifier where the proxies are, at the classes' boundaries, and often
leaves the forgotten class's real images where they were
(`experiments/results/geniu_setting` has the diagnostics).

`sharpen` moves images, before tuning, by signed-gradient steps on the
original's log-probability of a class (the update of Goodfellow et al.'s
FGSM, iterated and clipped to the image range) until the original gives them
that class with probability >= `target`, at most `steps` steps. Only the
original model and the proxies are read: the unlearning phase stays
data-free. Two ways of adding sharpened copies to the tuning batch
(`Sharpening.mode`):

* `forgotten`: a copy of every forgotten proxy, sharpened toward its class.
* `all`: a copy of EVERY proxy sharpened toward a forgotten class -- the
  features by which the original turns an image of any class into the
  forgotten one, seen from every class rather than from one corner of it --
  plus an *anchor* per retained proxy, sharpened toward its own class and
  kept by the retained term, so that pushing the forgotten class out does
  not move the retained classes' cores.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from geniu_jax.config import SHARPEN_MODES
from geniu_jax.models import functional as F

MODES = SHARPEN_MODES


class Sharpening(NamedTuple):
  """How the tuning batch is extended (hashable: a static jit argument).

  Attributes:
    target: stop moving an image once the original gives it the class with
      at least this probability.
    step: L-infinity size of one signed-gradient step.
    steps: the most steps.
    mode: `forgotten` or `all` (module docstring).
  """
  target: float
  step: float
  steps: int
  mode: str = "forgotten"


def sharpen(graphdef, params, stats, x: jax.Array, labels: jax.Array, *, target: float,
            step: float, steps: int) -> jax.Array:
  """Moves images toward the classifier's confident answer for `labels`.

  Args:
    graphdef, params, stats: the original classifier (eval mode).
    x: [N, H, W, C] images in [0, 1].
    labels: [N] the class each image should become, confidently.
    target: stop moving an image once p(label | image) >= target.
    step: L-infinity size of one step.
    steps: the most steps (static).

  Returns:
    [N, H, W, C] sharpened images in [0, 1].
  """

  def log_prob(x):
    logp = jax.nn.log_softmax(F.classifier_logits(graphdef, params, stats, x))
    return jnp.take_along_axis(logp, labels[:, None], axis=1)[:, 0]

  def body(carry):
    i, x, _ = carry
    logp, vjp = jax.vjp(log_prob, x)
    (grad,) = vjp(jnp.ones_like(logp))  # per-image gradients: the images do not interact
    moving = jnp.exp(logp) < target
    x = jnp.where(moving[:, None, None, None], jnp.clip(x + step * jnp.sign(grad), 0.0, 1.0), x)
    return i + 1, x, jnp.any(moving)

  # A step that moves no image leaves every later step nothing to move (the
  # images, hence their probabilities, stay as they are), so the loop stops
  # there: the images of `steps` steps, usually after a third of them.
  _, x, _ = jax.lax.while_loop(lambda c: (c[0] < steps) & c[2], body,
                               (jnp.int32(0), x, jnp.bool_(True)))
  return x


def tuning_batch(graphdef, params, stats, proxies: jax.Array, labels: jax.Array,
                 forget: jax.Array, sharpening: Sharpening | None,
                 dropped: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """The proxy batch in-batch tuning runs on, with its labels.

  Args:
    graphdef, params, stats: the original classifier.
    proxies: [M, H, W, C] the generator's proxies; labels: [M] their classes.
    forget: [F] int, the forgotten classes that have proxies.
    sharpening: None keeps the paper's batch.
    dropped: [D] int or None, classes forgotten earlier whose prompts the
      checkpoint dropped: they have no proxies, and in mode `all` the
      retained rows are sharpened toward them too, in turn with `forget`.

  Returns:
    (proxies, labels), the sharpened copies appended. `mode="forgotten"`
    adds the forgotten rows again; `mode="all"` adds M rows labelled with a
    forgotten class (the retained ones take the forgotten classes in turn)
    and one anchor per retained proxy, labelled with its own class. Every
    count is static: rows are gathered by stable argsorts of the mask.
  """
  if sharpening is None:
    return proxies, labels
  is_forgotten = jnp.any(labels[:, None] == forget[None, :], axis=-1)
  # Labels tile the classes that have prompts (`prompts.stored_labels`), M / K' rows each.
  num_dropped = 0 if dropped is None else dropped.shape[0]
  per_class = proxies.shape[0] // (params["head"]["kernel"].shape[-1] - num_dropped)
  num_forget = forget.shape[0] * per_class
  kw = dict(target=sharpening.target, step=sharpening.step, steps=sharpening.steps)
  gone_rows = jnp.argsort(~is_forgotten, stable=True)[:num_forget]
  if sharpening.mode == "forgotten":
    sharp = sharpen(graphdef, params, stats, proxies[gone_rows], labels[gone_rows], **kw)
    return jnp.concatenate([proxies, sharp]), jnp.concatenate([labels, labels[gone_rows]])
  if sharpening.mode != "all":
    raise ValueError(f"unknown sharpening mode {sharpening.mode!r}; expected one of {MODES}")
  # The retained rows take the forgotten classes in turn (counting retained rows only,
  # so every forgotten class gets its share whatever K and |forget| are).
  gone = forget if dropped is None else jnp.concatenate([forget, dropped.astype(forget.dtype)])
  turn = gone[(jnp.cumsum(~is_forgotten) - 1) % gone.shape[0]]
  toward = jnp.where(is_forgotten, labels, turn).astype(labels.dtype)
  kept_rows = jnp.argsort(is_forgotten, stable=True)[:proxies.shape[0] - num_forget]
  sharp = sharpen(graphdef, params, stats, proxies, toward, **kw)
  anchors = sharpen(graphdef, params, stats, proxies[kept_rows], labels[kept_rows], **kw)
  return (jnp.concatenate([proxies, sharp, anchors]),
          jnp.concatenate([labels, toward, labels[kept_rows]]))


def from_config(cfg) -> Sharpening | None:
  """The `Sharpening` a Config asks for, or None when sharpening is off."""
  if cfg.sharpen_target is None:
    return None
  return Sharpening(float(cfg.sharpen_target), float(cfg.sharpen_step), int(cfg.sharpen_steps),
                    cfg.sharpen_mode)
