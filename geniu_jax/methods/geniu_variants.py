"""The main-contribution ablations of GENIU's unlearning (Table 9 / App. G.1).

Two switches, one program (GENIU itself, proxies ``geniu`` with tuning
``in_batch``, is `geniu_unlearning`):

* proxies -- ``geniu``: x'_k = g(z_k, phi) from the prompts and generator
  trained alongside the classifier (Eq. 9; needs the ARTIFACTS).
  ``post``: "post-training generated proxies". Our reading: no generator was
  trained alongside, so the proxies are noise prompts optimised on the
  FINISHED original model with Eq. 8 (z_init ~ N(0, 1), Eq. 7, Adam at the
  prompt learning rate, for as many steps as GENIU's prompts get over the
  whole training phase, `prompt_steps * epochs`) and used as proxies
  directly. That is how the generative zero-shot baselines obtain proxies
  (noise fitted to the trained model), it needs nothing but the model, and
  it isolates the paper's point: proxies fitted to an imbalanced model carry
  majority-class features. (Training a VAE after training instead would need
  the training data at unlearning time.) These prompts are trained inside
  the unlearning run, so their cost counts as unlearning time.
* tuning -- ``in_batch``: Eq. 10 on one mini-batch with every class's proxy
  (`geniu_jax.geniu.unlearn.in_batch_tuning`, with the config's stop rule).
  ``impair_repair``: the "widely used impair-repair process" with "the
  learning rate and the number of rounds as the same as in-batch tuning":
  `unlearn_rounds` Adam rounds at `unlearn_lr` minimising the forgetting term
  of Eq. 10, sum_{forgotten} 1/CE (i.e. maximising their CE), then
  `unlearn_rounds` fresh-Adam rounds minimising sum_{retained} CE. BatchNorm
  statistics stay frozen in both, as in in-batch tuning; the stop rule does
  not apply (every round runs).

Registered: ``geniu_impair_repair`` (geniu, impair_repair), ``geniu_post``
(post, in_batch), ``geniu_post_impair_repair``. Each run is one jitted
program, compiled ahead of time (see `common`). They need a prompt of every
class (a checkpoint whose forgotten classes' prompts were dropped is refused
by the caller).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geniu_jax.config import Config
from geniu_jax.geniu import prompts as prompt_lib
from geniu_jax.geniu import sharpen as sharpen_lib
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.methods import common
from geniu_jax.methods.registry import TUNING_SETTINGS, Access, Grant, register
from geniu_jax.models import functional as F


def impair_repair(params, graphdef, stats, proxies: jax.Array, labels: jax.Array,
                  forget: jax.Array, *, rounds: int, lr: float,
                  ce_floor: float = unlearn_lib.CE_FLOOR):
  """Impair (sum_f 1/CE) then repair (sum_r CE) on the proxies, `rounds` Adam rounds each:
  the two terms of Eq. 10 (`unlearn.proxy_losses`), one after the other.

  Returns (params, (impair_losses [rounds], repair_losses [rounds])).
  """
  forget_mask = unlearn_lib.forget_mask_for(labels, forget)

  def terms(p):
    logits = F.classifier_logits(graphdef, p, stats, proxies)
    return unlearn_lib.proxy_losses(logits, labels, ce_floor)

  def impair_loss(p):
    return jnp.sum(jnp.where(forget_mask, terms(p)[1], 0.0))

  def repair_loss(p):
    return jnp.sum(jnp.where(forget_mask, 0.0, terms(p)[0]))

  def phase(params, loss_fn):
    optimizer = optax.adam(lr)

    def body(carry, _):
      p, opt_state = carry
      loss, grads = jax.value_and_grad(loss_fn)(p)
      updates, opt_state = optimizer.update(grads, opt_state, p)
      return (optax.apply_updates(p, updates), opt_state), loss

    (params, _), losses = jax.lax.scan(body, (params, optimizer.init(params)), None,
                                       length=rounds)
    return params, losses

  params, impair_losses = phase(params, impair_loss)
  params, repair_losses = phase(params, repair_loss)
  return params, (impair_losses, repair_losses)


@functools.lru_cache(maxsize=16)
def _program(cls_graphdef, gen_graphdef, proxy: str, tuning: str, num_classes: int,
             per_class: int, image_shape: tuple, prompt_lr: float, prompt_steps: int,
             rounds: int, lr: float, stop: float | None, objective: unlearn_lib.Objective,
             sharpen: sharpen_lib.Sharpening | None):
  """A jitted `(cls_params, cls_stats, source, forget) -> (params, info)`.

  `source` is (gen_params, prompts) for GENIU proxies, raw key data for post
  ones; `sharpen` extends the batch (`geniu.sharpen`) or is None.
  """

  def fn(cls_params, cls_stats, source, forget):
    if proxy == "geniu":
      gen_params, prompts = source
      proxies = make_proxies(gen_graphdef, gen_params, prompts)
      labels = prompt_lib.prompt_labels(num_classes, prompts.shape[0] // num_classes)
    else:
      optimizer = optax.adam(prompt_lr)
      state = prompt_lib.init_prompts(jax.random.wrap_key_data(source), num_classes,
                                      per_class, image_shape, optimizer)
      state, _ = prompt_lib.train_prompts(state, (cls_graphdef, cls_params, cls_stats),
                                          num_classes, optimizer, prompt_steps)
      proxies = state.z
      labels = prompt_lib.prompt_labels(num_classes, per_class)
    proxies, labels = sharpen_lib.tuning_batch(cls_graphdef, cls_params, cls_stats, proxies,
                                               labels, forget, sharpen)
    if tuning == "in_batch":
      params, trace = unlearn_lib.in_batch_tuning(
          cls_params, cls_graphdef, cls_stats, proxies, labels, forget,
          rounds=rounds, lr=lr, stop_forget_prob=stop, objective=objective)
      # The proxy checks every 10 rounds: with the held-out scores they show
      # whether forgetting stalls on the proxies or only on real images.
      return params, {"rounds_run": trace.rounds_run,
                      "forget_prob_trace": trace.forget_prob[::10],
                      "retain_proxy_acc_trace": trace.retain_proxy_acc[::10],
                      "final_forget_prob": trace.forget_prob[trace.rounds_run],
                      "final_retain_proxy_acc": trace.retain_proxy_acc[trace.rounds_run]}
    params, _ = impair_repair(cls_params, cls_graphdef, cls_stats, proxies, labels, forget,
                              rounds=rounds, lr=lr)
    return params, {"rounds_run": jnp.asarray(2 * rounds)}

  return jax.jit(fn)


def unlearn_with_proxies(grant: Grant, cfg: Config, key: jax.Array, *, proxy: str,
                         tuning: str) -> tuple[F.SplitModel, dict]:
  """Shared body of the four registered variants (see module docstring)."""
  watch = common.Stopwatch()
  classifier = grant.classifier
  forget = jnp.asarray(grant.forget, jnp.int32)
  stop = cfg.stop_forget_prob if tuning == "in_batch" else None
  if proxy == "geniu":
    generator, prompts = grant.artifacts.generator, grant.artifacts.prompts
    # A config asking for fewer proxies per class than were trained uses the
    # first ranks (B' = 1: the paper's single proxy), as `geniu unlearn
    # --proxies-per-class` does; one trained original serves every B' <= B.
    stored = prompts.shape[0] // grant.num_classes
    prompts = prompt_lib.first_ranks(jnp.asarray(prompts), grant.num_classes,
                                     min(cfg.proxies_per_class, stored))
    gen_graphdef, source = generator.graphdef, (generator.params, prompts)
  else:
    gen_graphdef, source = None, jax.random.key_data(key)
  fn = _program(classifier.graphdef, gen_graphdef, proxy, tuning, grant.num_classes,
                cfg.proxies_per_class, tuple(grant.image_shape), cfg.prompt_lr,
                cfg.prompt_steps * cfg.epochs, cfg.unlearn_rounds, cfg.unlearn_lr, stop,
                unlearn_lib.objective_from_config(cfg), sharpen_lib.from_config(cfg))
  params, info = jax.block_until_ready(
      watch.run(fn, classifier.params, classifier.stats, source, forget))
  report = {"proxy": proxy, "tuning": tuning,
            **{k: np.asarray(v).tolist() for k, v in info.items()}, **watch.report()}
  return F.SplitModel(classifier.graphdef, params, classifier.stats), report


def _variant(proxy: str, tuning: str):
  return functools.partial(unlearn_with_proxies, proxy=proxy, tuning=tuning)


# Impair-repair runs every round (no stop rule) and has its own losses (no
# objective); the sharpened batch and B' apply to both tunings.
_IMPAIR_REPAIR_SETTINGS = TUNING_SETTINGS - {"stop_forget_prob", "retain_target",
                                             "forget_loss", "forget_margin"}
register("geniu_impair_repair", {Access.ARTIFACTS},
         "Table 9: GENIU proxies, impair (1/CE) then repair (CE) rounds",
         settings=_IMPAIR_REPAIR_SETTINGS)(_variant("geniu", "impair_repair"))
register("geniu_post", set(),
         "Table 9: prompts fitted to the finished model as proxies, in-batch tuning",
         settings=TUNING_SETTINGS)(_variant("post", "in_batch"))
register("geniu_post_impair_repair", set(),
         "Table 9: post-training prompts as proxies, impair then repair",
         settings=_IMPAIR_REPAIR_SETTINGS)(_variant("post", "impair_repair"))
