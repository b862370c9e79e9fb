"""GENIU's unlearning phase (Alg. 2): proxies from the generator, in-batch tuning.

In-batch tuning (Eq. 10) updates the classifier on ONE mini-batch holding the
proxies of every class: CE on retained-class proxies plus 1/CE on
forgotten-class proxies, Adam, `rounds` rounds, as one `lax.while_loop`.

Two choices the paper leaves open, made from what an independent prototype
measured:
* BatchNorm runs with the stored statistics during tuning. In train mode the
  few proxies overwrite the running averages and forgetting fails.
* 1/CE stays finite: CE is computed as softplus(logsumexp_{j != y}(l_j - l_y))
  (never exactly 0 in float32, never inf) and inverted as 1/(CE + ce_floor),
  so the first rounds, where the forgotten proxy is confidently its class,
  give a large but finite gradient that Adam normalises.

Optional data-free stopping rule (`stop_forget_prob`): stop after the first
round where every forgotten proxy gives its class probability <= the
threshold and the retained proxies are classified at least as well as before
tuning. It reads the proxies only, never real data.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from geniu_jax.geniu.generator import make_proxies
from geniu_jax.geniu.losses import batch_cross_entropy
from geniu_jax.geniu.prompts import prompt_labels
from geniu_jax.models import functional as F

CE_FLOOR = 1e-6


class TuningInfo(NamedTuple):
  """Per-round trace of in-batch tuning (entries past `rounds_run` are NaN)."""
  rounds_run: jax.Array          # int, rounds actually applied
  loss: jax.Array                # [max_rounds] Eq. 10 before each update
  forget_prob: jax.Array         # [max_rounds] max forgotten-class prob over forgotten proxies
  retain_proxy_acc: jax.Array    # [max_rounds] accuracy on retained proxies


def forget_mask_for(labels: jax.Array, forget: jax.Array) -> jax.Array:
  """True where a proxy's label is one of the forgotten classes."""
  return jnp.any(labels[:, None] == forget[None, :], axis=-1)


def in_batch_loss(params, graphdef, stats, proxies: jax.Array, labels: jax.Array,
                  forget_mask: jax.Array, ce_floor: float = CE_FLOOR) -> jax.Array:
  """Eq. 10: sum_{retained} CE + sum_{forgotten} 1/CE, classifier in eval mode."""
  logits = F.classifier_logits(graphdef, params, stats, proxies)
  ce = batch_cross_entropy(logits, labels)
  # 1/(CE + floor), not 1/max(CE, floor): a confidently-kept forgotten proxy
  # (CE below the floor) must still push its logits apart.
  inv = 1.0 / (ce + ce_floor)
  return jnp.sum(jnp.where(forget_mask, inv, ce))


def _proxy_checks(params, graphdef, stats, proxies, labels, forget_mask):
  logits = F.classifier_logits(graphdef, params, stats, proxies)
  probs = jax.nn.softmax(logits)
  own = jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
  forget_prob = jnp.max(jnp.where(forget_mask, own, 0.0))
  retained = ~forget_mask
  hits = (jnp.argmax(logits, -1) == labels) & retained
  retain_acc = hits.sum() / jnp.maximum(retained.sum(), 1)
  return forget_prob, retain_acc


def tuning_step(params, opt_state, graphdef, stats, proxies: jax.Array, labels: jax.Array,
                forget_mask: jax.Array, optimizer: optax.GradientTransformation):
  """One round of in-batch tuning: an Adam step on Eq. 10. Returns (params, opt_state, loss)."""
  loss, grads = jax.value_and_grad(in_batch_loss)(params, graphdef, stats, proxies, labels,
                                                  forget_mask)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def in_batch_tuning(params, graphdef, stats, proxies: jax.Array, labels: jax.Array,
                    forget: jax.Array, *, rounds: int, lr: float,
                    stop_forget_prob: float | None = None) -> tuple[Any, TuningInfo]:
  """Tunes classifier params on the proxy mini-batch (Eq. 10), jit-friendly.

  Args:
    params, graphdef, stats: the original classifier (stats stay frozen).
    proxies: [M, H, W, C] proxies; labels: [M] their classes.
    forget: int array of forgotten classes.
    rounds: maximum number of tuning rounds (static).
    lr: Adam learning rate.
    stop_forget_prob: data-free stopping threshold, or None for all rounds.

  Returns:
    (tuned params, TuningInfo).
  """
  optimizer = optax.adam(lr)
  forget_mask = forget_mask_for(labels, forget)
  nan = jnp.full((rounds,), jnp.nan, jnp.float32)
  _, retain_acc0 = _proxy_checks(params, graphdef, stats, proxies, labels, forget_mask)

  def cond(carry):
    i, _, _, done, _ = carry
    return (i < rounds) & ~done

  def body(carry):
    i, params, opt_state, _, trace = carry
    params, opt_state, loss = tuning_step(params, opt_state, graphdef, stats, proxies,
                                          labels, forget_mask, optimizer)
    forget_prob, retain_acc = _proxy_checks(params, graphdef, stats, proxies, labels,
                                            forget_mask)
    trace = (trace[0].at[i].set(loss), trace[1].at[i].set(forget_prob),
             trace[2].at[i].set(retain_acc))
    done = jnp.array(False)
    if stop_forget_prob is not None:
      done = (forget_prob <= stop_forget_prob) & (retain_acc >= retain_acc0)
    return i + 1, params, opt_state, done, trace

  init = (jnp.array(0), params, optimizer.init(params), jnp.array(False), (nan, nan, nan))
  rounds_run, params, _, _, trace = jax.lax.while_loop(cond, body, init)
  return params, TuningInfo(rounds_run, *trace)


def unlearn(classifier: F.SplitModel, generator: F.SplitModel, prompts: jax.Array,
            forget: jax.Array, *, rounds: int, lr: float,
            stop_forget_prob: float | None = None) -> tuple[F.SplitModel, TuningInfo]:
  """Alg. 2 end to end: x' = g(z), then in-batch tuning. Uses no training data."""
  num_classes = classifier.params["head"]["kernel"].shape[-1]
  labels = prompt_labels(num_classes, prompts.shape[0] // num_classes)
  proxies = make_proxies(generator.graphdef, generator.params, prompts)
  params, info = in_batch_tuning(
      classifier.params, classifier.graphdef, classifier.stats, proxies, labels,
      jnp.asarray(forget, jnp.int32), rounds=rounds, lr=lr,
      stop_forget_prob=stop_forget_prob)
  return F.SplitModel(classifier.graphdef, params, classifier.stats), info


def make_unlearn_fn(classifier_graphdef, generator_graphdef, *, rounds: int, lr: float,
                    stop_forget_prob: float | None = None):
  """A jitted `(cls_params, cls_stats, gen_params, prompts, forget) -> (params, info)`.

  Graphdefs and hyperparameters are closed over (static), so repeated calls
  with equal shapes reuse one compiled program.
  """

  def fn(cls_params, cls_stats, gen_params, prompts, forget):
    classifier = F.SplitModel(classifier_graphdef, cls_params, cls_stats)
    generator = F.SplitModel(generator_graphdef, gen_params, None)
    tuned, info = unlearn(classifier, generator, prompts, forget, rounds=rounds, lr=lr,
                          stop_forget_prob=stop_forget_prob)
    return tuned.params, info

  return jax.jit(fn)
