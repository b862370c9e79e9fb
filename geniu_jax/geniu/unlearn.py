"""GENIU's unlearning phase (Alg. 2): proxies from the generator, in-batch tuning.

In-batch tuning (Eq. 10) updates the classifier on ONE mini-batch holding the
proxies of every class: CE on retained-class proxies plus 1/CE on
forgotten-class proxies, Adam, `rounds` rounds, as one `lax.while_loop`.

Two choices the paper leaves open:
* BatchNorm runs with the stored statistics during tuning. In train mode the
  few proxies overwrite the running averages and forgetting fails.
* 1/CE stays finite: CE is computed as softplus(logsumexp_{j != y}(l_j - l_y))
  (never exactly 0 in float32, never inf) and inverted as 1/(CE + ce_floor),
  so the first rounds, where the forgotten proxy is confidently its class,
  give a large but finite gradient that Adam normalises.

Optional objective other than Eq. 10 (`Objective`; the `cpu` preset uses
one, the `paper` preset keeps Eq. 10): the retained proxies can be held to
the ORIGINAL model's answer with the forgotten classes removed instead of to
their label (the proxies are ambiguous by design, so label CE reshuffles the
retained classes), and the forgotten proxies can be pushed by a margin loss
that keeps working after they leave their class (1/CE's gradient fades as CE
grows). Both read only the proxies and the original model. The `cpu`
preset's setting (with sharpened forgotten proxies, `geniu.sharpen`) was
chosen on validation splits across the protocol (`experiments.geniu_setting`).

Optional data-free stopping rule (`stop_forget_prob`): stop after the first
round where the forgotten proxies give their class a MEAN probability <= the
threshold and the retained proxies are classified at least as well as before
tuning. It reads the proxies only, never real data. Mean rather than max: a
max threshold is set off by the one proxy that flips last. No preset uses it:
on the forgotten classes where tuning stalls, the proxies leave their class
long before the class's real images do, so any proxy-only rule stops too
early there.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from geniu_jax.config import FORGET_LOSSES, RETAIN_TARGETS
from geniu_jax.geniu import sharpen as sharpen_lib
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.geniu.losses import batch_cross_entropy
from geniu_jax.geniu.prompts import stored_labels
from geniu_jax.models import functional as F

CE_FLOOR = 1e-6


class Objective(NamedTuple):
  """What in-batch tuning minimises; the defaults are Eq. 10.

  Attributes:
    retain: `label`: CE to the proxy's class (Eq. 10). `teacher`: CE to the
      original classifier's softmax on that proxy with the forgotten classes
      removed and renormalised.
    forget: `inv_ce`: 1/CE (Eq. 10). `margin`: softplus(margin + l_f -
      logsumexp of the retained classes' logits), zero once the forgotten
      logit sits `margin` below the retained ones.
    margin: the margin of `forget="margin"` (in logits).
  """
  retain: str = "label"
  forget: str = "inv_ce"
  margin: float = 0.0

  def check(self) -> "Objective":
    if self.retain not in RETAIN_TARGETS:
      raise ValueError(f"unknown retained target {self.retain!r}; expected one of {RETAIN_TARGETS}")
    if self.forget not in FORGET_LOSSES:
      raise ValueError(f"unknown forget loss {self.forget!r}; expected one of {FORGET_LOSSES}")
    return self

  def describe(self) -> str:
    if self == EQ10:
      return "Eq. 10 (label CE + 1/CE)"
    forget = f"margin {self.margin:g}" if self.forget == "margin" else "1/CE"
    return f"retained: {self.retain} CE, forgotten: {forget}"


EQ10 = Objective()


def objective_from_config(cfg) -> Objective:
  """The `Objective` a `Config` (or a checkpoint's stored config) asks for.

  Checkpoints written before these fields existed restore with the dataclass
  defaults, i.e. Eq. 10, which is what they were tuned with.
  """
  margin = cfg.forget_margin if cfg.forget_loss == "margin" else 0.0
  return Objective(cfg.retain_target, cfg.forget_loss, float(margin)).check()


class TuningInfo(NamedTuple):
  """Per-round trace of in-batch tuning.

  `loss[i]` is Eq. 10 before update i; `forget_prob[r]` / `retain_proxy_acc[r]`
  are the proxy checks after r updates (r = 0: the original model). Entries
  past `rounds_run` are NaN.
  """
  rounds_run: jax.Array          # int, rounds actually applied
  loss: jax.Array                # [max_rounds]
  forget_prob: jax.Array         # [max_rounds + 1] mean own-class prob of the forgotten proxies
  retain_proxy_acc: jax.Array    # [max_rounds + 1] accuracy on retained proxies


def forget_mask_for(labels: jax.Array, forget: jax.Array) -> jax.Array:
  """True where a proxy's label is one of the forgotten classes."""
  return jnp.any(labels[:, None] == forget[None, :], axis=-1)


def forgotten_classes(forget: jax.Array, num_classes: int) -> jax.Array:
  """[K] bool, True for the forgotten classes."""
  return jnp.any(jnp.arange(num_classes)[:, None] == forget[None, :], axis=-1)


def teacher_targets(original_logits: jax.Array, forgotten: jax.Array) -> jax.Array:
  """The original's softmax with the forgotten classes removed and renormalised."""
  return jax.nn.softmax(jnp.where(forgotten, -jnp.inf, original_logits))


def margin_loss(logits: jax.Array, labels: jax.Array, forgotten: jax.Array,
                margin: float) -> jax.Array:
  """Per proxy: softplus(margin + l_label - logsumexp of the retained classes' logits)."""
  own = jnp.take_along_axis(logits, labels[:, None], axis=1)[:, 0]
  others = jax.nn.logsumexp(jnp.where(forgotten, -jnp.inf, logits), axis=-1)
  return jax.nn.softplus(margin + own - others)


def proxy_losses(logits: jax.Array, labels: jax.Array, ce_floor: float = CE_FLOOR, *,
                 objective: Objective = EQ10, teacher: jax.Array | None = None,
                 forgotten: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
  """Per proxy ([M] each): (the retained term, the forgotten term) of `objective`.

  Eq. 10: (CE, 1/CE). With another `objective`, `teacher` ([M, K] targets,
  for `retain="teacher"`) and `forgotten` ([K] mask, for `forget="margin"`)
  must be given.
  """
  ce = batch_cross_entropy(logits, labels)
  if objective.retain == "teacher":
    kept = -jnp.sum(teacher * jax.nn.log_softmax(logits), axis=-1)
  else:
    kept = ce
  if objective.forget == "margin":
    gone = margin_loss(logits, labels, forgotten, objective.margin)
  else:
    # 1/(CE + floor), not 1/max(CE, floor): a confidently-kept forgotten proxy
    # (CE below the floor) must still push its logits apart.
    gone = 1.0 / (ce + ce_floor)
  return kept, gone


def loss_from_logits(logits: jax.Array, labels: jax.Array, forget_mask: jax.Array,
                     ce_floor: float = CE_FLOOR, *, objective: Objective = EQ10,
                     teacher: jax.Array | None = None,
                     forgotten: jax.Array | None = None) -> jax.Array:
  """Eq. 10 on given logits: sum_{retained} CE + sum_{forgotten} 1/CE
  (`proxy_losses` of `objective`, summed over the batch)."""
  kept, gone = proxy_losses(logits, labels, ce_floor, objective=objective, teacher=teacher,
                            forgotten=forgotten)
  return jnp.sum(jnp.where(forget_mask, gone, kept))


def in_batch_loss(params, graphdef, stats, proxies: jax.Array, labels: jax.Array,
                  forget_mask: jax.Array, ce_floor: float = CE_FLOOR) -> jax.Array:
  """Eq. 10: sum_{retained} CE + sum_{forgotten} 1/CE, classifier in eval mode."""
  logits = F.classifier_logits(graphdef, params, stats, proxies)
  return loss_from_logits(logits, labels, forget_mask, ce_floor)


def proxy_checks(logits: jax.Array, labels: jax.Array, forget_mask: jax.Array):
  """(mean own-class probability of the forgotten proxies, retained-proxy accuracy)."""
  probs = jax.nn.softmax(logits)
  own = jnp.take_along_axis(probs, labels[:, None], axis=1)[:, 0]
  forget_prob = jnp.sum(jnp.where(forget_mask, own, 0.0)) / jnp.maximum(forget_mask.sum(), 1)
  retained = ~forget_mask
  hits = (jnp.argmax(logits, -1) == labels) & retained
  retain_acc = hits.sum() / jnp.maximum(retained.sum(), 1)
  return forget_prob, retain_acc


def _loss_and_logits(params, graphdef, stats, proxies, labels, forget_mask, objective,
                     teacher, forgotten):
  logits = F.classifier_logits(graphdef, params, stats, proxies)
  loss = loss_from_logits(logits, labels, forget_mask, objective=objective, teacher=teacher,
                          forgotten=forgotten)
  return loss, logits


def _tuning_targets(params, graphdef, stats, proxies, labels, forget, objective):
  """(forget_mask [M], forgotten classes [K], teacher targets [M, K] or None)."""
  forget_mask = forget_mask_for(labels, forget)
  forgotten = forgotten_classes(forget, params["head"]["kernel"].shape[-1])
  teacher = None
  if objective.retain == "teacher":
    # The teacher is the model before tuning: fixed targets, one forward.
    teacher = teacher_targets(F.classifier_logits(graphdef, params, stats, proxies), forgotten)
  return forget_mask, forgotten, teacher


def tuning_step(params, opt_state, graphdef, stats, proxies: jax.Array, labels: jax.Array,
                forget_mask: jax.Array, optimizer: optax.GradientTransformation, *,
                objective: Objective = EQ10, teacher: jax.Array | None = None,
                forgotten: jax.Array | None = None):
  """One round of in-batch tuning: an optimizer step on `objective` (Eq. 10 by
  default; the loss of `in_batch_tuning`, `loss_from_logits`).

  Returns (params, opt_state, loss).
  """
  (loss, _), grads = jax.value_and_grad(_loss_and_logits, has_aux=True)(
      params, graphdef, stats, proxies, labels, forget_mask, objective, teacher, forgotten)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state, loss


def in_batch_tuning(params, graphdef, stats, proxies: jax.Array, labels: jax.Array,
                    forget: jax.Array, *, rounds: int, lr: float,
                    stop_forget_prob: float | None = None,
                    objective: Objective = EQ10) -> tuple[Any, TuningInfo]:
  """Tunes classifier params on the proxy mini-batch (Eq. 10), jit-friendly.

  Each round is ONE forward and backward: the proxy checks of the parameters
  after r updates are read off the forward that computes update r + 1, and
  when the stop rule holds there the update is dropped and the loop ends. So
  the trace and the stop rule cost no extra forward pass (one more forward
  after the loop gives the checks of the final parameters).

  Args:
    params, graphdef, stats: the original classifier (stats stay frozen).
    proxies: [M, H, W, C] proxies; labels: [M] their classes.
    forget: int array of forgotten classes.
    rounds: maximum number of tuning rounds (static).
    lr: Adam learning rate.
    stop_forget_prob: data-free stopping threshold, or None for all rounds.
    objective: what to minimise (static); the default is Eq. 10.

  Returns:
    (tuned params, TuningInfo).
  """
  objective = objective.check()
  optimizer = optax.adam(lr)
  forget_mask, forgotten, teacher = _tuning_targets(params, graphdef, stats, proxies, labels,
                                                    forget, objective)
  grad_fn = jax.value_and_grad(_loss_and_logits, has_aux=True)

  def cond(carry):
    i, _, _, done, _, _ = carry
    return (i < rounds) & ~done

  def body(carry):
    i, params, opt_state, _, retain_acc0, trace = carry
    (loss, logits), grads = grad_fn(params, graphdef, stats, proxies, labels, forget_mask,
                                    objective, teacher, forgotten)
    forget_prob, retain_acc = proxy_checks(logits, labels, forget_mask)
    retain_acc0 = jnp.where(i == 0, retain_acc, retain_acc0)
    done = jnp.array(False)
    if stop_forget_prob is not None:
      done = (i > 0) & (forget_prob <= stop_forget_prob) & (retain_acc >= retain_acc0)
    updates, new_opt_state = optimizer.update(grads, opt_state, params)
    new_params = optax.apply_updates(params, updates)
    params, opt_state = jax.tree.map(lambda old, new: jnp.where(done, old, new),
                                     (params, opt_state), (new_params, new_opt_state))
    losses, probs, accs = trace
    trace = (jnp.where(done, losses, losses.at[i].set(loss)), probs.at[i].set(forget_prob),
             accs.at[i].set(retain_acc))
    return i + (~done).astype(i.dtype), params, opt_state, done, retain_acc0, trace

  nan = jnp.full((rounds,), jnp.nan, jnp.float32)
  nan1 = jnp.full((rounds + 1,), jnp.nan, jnp.float32)
  init = (jnp.array(0), params, optimizer.init(params), jnp.array(False), jnp.array(0.0),
          (nan, nan1, nan1))
  rounds_run, params, _, _, _, (losses, probs, accs) = jax.lax.while_loop(cond, body, init)
  final = F.classifier_logits(graphdef, params, stats, proxies)
  forget_prob, retain_acc = proxy_checks(final, labels, forget_mask)
  info = TuningInfo(rounds_run, losses, probs.at[rounds_run].set(forget_prob),
                    accs.at[rounds_run].set(retain_acc))
  return params, info


@functools.partial(jax.jit, static_argnames=("graphdef", "rounds", "every", "objective"))
def tuning_snapshots(params, graphdef, stats, proxies: jax.Array, labels: jax.Array,
                     forget: jax.Array, *, rounds: int, lr: float, every: int,
                     objective: Objective = EQ10) -> Any:
  """The params of in-batch tuning after rounds every, 2 * every, ..., `rounds` (Figure 7).

  The rounds of `in_batch_tuning` with no stop rule (same loss, teacher and
  Adam state, carried through all rounds), as a `lax.scan` of `rounds //
  every` chunks of `every` rounds, each chunk's last params kept: the last
  snapshot is `in_batch_tuning(..., rounds=rounds, stop_forget_prob=None)`.

  Args:
    params, graphdef, stats: the original classifier (stats stay frozen).
    proxies: [M, H, W, C] proxies; labels: [M] their classes.
    forget: int array of forgotten classes.
    rounds: tuning rounds (static), a multiple of `every`.
    lr: Adam learning rate.
    every: rounds between snapshots (static).
    objective: what to minimise (static); the default is Eq. 10.

  Returns:
    params with a leading axis of `rounds // every` snapshots.
  """
  if every < 1 or rounds % every:
    raise ValueError(f"rounds ({rounds}) must be a positive multiple of every ({every})")
  objective = objective.check()
  optimizer = optax.adam(lr)
  forget_mask, forgotten, teacher = _tuning_targets(params, graphdef, stats, proxies, labels,
                                                    forget, objective)
  grad_fn = jax.value_and_grad(_loss_and_logits, has_aux=True)

  def one_round(carry, _):
    params, opt_state = carry
    _, grads = grad_fn(params, graphdef, stats, proxies, labels, forget_mask, objective,
                       teacher, forgotten)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), None

  def chunk(carry, _):
    carry, _ = jax.lax.scan(one_round, carry, None, length=every)
    return carry, carry[0]

  _, snapshots = jax.lax.scan(chunk, (params, optimizer.init(params)), None,
                              length=rounds // every)
  return snapshots


def unlearn(classifier: F.SplitModel, generator: F.SplitModel, prompts: jax.Array,
            forget: jax.Array, *, dropped: jax.Array | None = None, rounds: int, lr: float,
            stop_forget_prob: float | None = None,
            objective: Objective = EQ10,
            sharpen: sharpen_lib.Sharpening | None = None) -> tuple[F.SplitModel, TuningInfo]:
  """Alg. 2 end to end: x' = g(z), then in-batch tuning. Uses no training data.

  `forget` are the classes to forget that still have prompts; `dropped` the
  classes forgotten by earlier requests whose prompts the checkpoint no
  longer holds (`prompts.drop_classes`): they stay forgotten (the retained
  targets and, with sharpening, the sharpened rows keep them out) though no
  proxy of theirs exists. `sharpen` adds sharpened copies of proxies to the
  batch first (`geniu.sharpen`); None keeps the paper's batch.
  """
  num_classes = classifier.params["head"]["kernel"].shape[-1]
  labels = stored_labels(num_classes, prompts.shape[0], dropped)
  proxies = make_proxies(generator.graphdef, generator.params, prompts)
  forget = jnp.asarray(forget, jnp.int32)
  proxies, labels = sharpen_lib.tuning_batch(classifier.graphdef, classifier.params,
                                             classifier.stats, proxies, labels, forget, sharpen,
                                             dropped)
  gone = forget if dropped is None else jnp.concatenate([forget, dropped.astype(jnp.int32)])
  params, info = in_batch_tuning(
      classifier.params, classifier.graphdef, classifier.stats, proxies, labels,
      gone, rounds=rounds, lr=lr,
      stop_forget_prob=stop_forget_prob, objective=objective)
  return F.SplitModel(classifier.graphdef, params, classifier.stats), info


def make_unlearn_fn(classifier_graphdef, generator_graphdef, *, rounds: int, lr: float,
                    stop_forget_prob: float | None = None, objective: Objective = EQ10,
                    sharpen: sharpen_lib.Sharpening | None = None):
  """A jitted `(cls_params, cls_stats, gen_params, prompts, forget, dropped=None) ->
  (params, info)` (`unlearn`'s arguments).

  Graphdefs and hyperparameters are closed over (static), so repeated calls
  with equal shapes reuse one compiled program.
  """

  def fn(cls_params, cls_stats, gen_params, prompts, forget, dropped=None):
    classifier = F.SplitModel(classifier_graphdef, cls_params, cls_stats)
    generator = F.SplitModel(generator_graphdef, gen_params, None)
    tuned, info = unlearn(classifier, generator, prompts, forget, dropped=dropped,
                          rounds=rounds, lr=lr,
                          stop_forget_prob=stop_forget_prob, objective=objective,
                          sharpen=sharpen)
    return tuned.params, info

  return jax.jit(fn)
