"""GKT_vae (§5.1, Table 3): GKT's noise reconstructed by GENIU's VAE, then in-batch tuning.

The paper's test of its claim that noise fitted to an imbalanced original
carries majority-class features: take the noise GKT generates, make it "more
specific" with GENIU's trained VAE, and unlearn with GENIU's own tuning. If
the noise of the other classes looks like the majority class, the
reconstructed proxies do too, and tuning cannot remove the majority without
damaging the rest (Table 3; Fig. 3 shows the reconstructions). Per run:

1. GKT's generator is trained from the original model alone, data-free, by
   the loop the `gkt` method runs (`gkt.train_gkt`, the preset's GKT budget);
   GKT's student is not used.
2. `sample_batches` pseudo batches (`gkt.SAMPLE_BATCHES`) are drawn from it
   and classified by the original (eval mode). For every class k the noise is
   the B = `cfg.proxies_per_class` samples the original assigns to k (argmax)
   with the highest p_k; a class with fewer than B assigned samples is filled
   with the samples of highest p_k among the others (`pick_per_class`;
   `info["classes_without_samples"]` lists the classes with none).
3. Proxies x'_k = g(noise_k) through GENIU's VAE (`make_proxies`: Eq. 9 with
   GKT's noise in place of the prompts z_k), class-fastest like the prompts.
4. In-batch tuning (Eq. 10, or the config's objective) with the config's
   rounds, learning rate and stop rule.

Access: ARTIFACTS, for GENIU's generator (the prompts are not read). Timing:
GKT's generator training is part of this method's unlearning, so it runs on
the method's `Stopwatch` with the sampling and the tuning; steps 2-4 are one
jitted program, compiled ahead of time.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from geniu_jax.config import Config
from geniu_jax.geniu import sharpen as sharpen_lib
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.geniu.prompts import prompt_labels
from geniu_jax.methods import common
from geniu_jax.methods import gkt as gkt_lib
from geniu_jax.methods.registry import TUNING_SETTINGS, Access, Grant, register
from geniu_jax.models import functional as F


def pick_per_class(probs: jax.Array, per_class: int) -> tuple[jax.Array, jax.Array]:
  """Indices of the noise of every class, class-fastest (index b*K + k: rank b of class k).

  For class k: first the samples whose argmax is k, by decreasing p_k, then
  the rest by decreasing p_k (the fallback when fewer than `per_class` are
  assigned to k). A sample may serve several classes through the fallback.

  Args:
    probs: [N, K] the original's probabilities of N samples, N >= per_class.
    per_class: B.

  Returns:
    ([K * B] indices into the N samples, [K] samples assigned to each class).
  """
  num_classes = probs.shape[-1]
  assigned = jax.nn.one_hot(jnp.argmax(probs, axis=-1), num_classes, dtype=probs.dtype)
  # +2 lifts every assigned sample above every unassigned one (p <= 1).
  _, top = jax.lax.top_k((probs + 2.0 * assigned).T, per_class)
  return top.T.reshape(-1), jnp.sum(assigned, axis=0).astype(jnp.int32)


@functools.lru_cache(maxsize=16)
def _program(cls_graphdef, gkt_graphdef, vae_graphdef, num_classes: int, per_class: int,
             batches: int, batch_size: int, rounds: int, lr: float, stop: float | None,
             objective: unlearn_lib.Objective, sharpen: sharpen_lib.Sharpening | None):
  """Steps 2-4 (module docstring), jitted:
  `(cls_params, cls_stats, gkt_params, vae_params, key_data, forget) -> (params, info)`."""

  def fn(cls_params, cls_stats, gkt_params, vae_params, key_data, forget):
    generator = F.SplitModel(gkt_graphdef, gkt_params, None)
    noise = gkt_lib.sample(generator, key=jax.random.wrap_key_data(key_data), batches=batches,
                           batch_size=batch_size)
    # Classified one pseudo batch at a time: the whole sample at once would
    # hold every activation of `batches` batches in memory.
    probs = jax.lax.map(
        lambda xb: jax.nn.softmax(F.classifier_logits(cls_graphdef, cls_params, cls_stats, xb)),
        noise.reshape(batches, batch_size, *noise.shape[1:])).reshape(-1, num_classes)
    idx, assigned = pick_per_class(probs, per_class)
    labels = prompt_labels(num_classes, per_class)
    proxies = make_proxies(vae_graphdef, vae_params, noise[idx])
    # Extended as the `geniu` method extends its own proxies.
    proxies, labels = sharpen_lib.tuning_batch(cls_graphdef, cls_params, cls_stats, proxies,
                                               labels, forget, sharpen)
    params, trace = unlearn_lib.in_batch_tuning(
        cls_params, cls_graphdef, cls_stats, proxies, labels, forget, rounds=rounds, lr=lr,
        stop_forget_prob=stop, objective=objective)
    own = probs[idx, prompt_labels(num_classes, per_class)].reshape(
        per_class, num_classes).mean(axis=0)
    return params, {"rounds_run": trace.rounds_run, "assigned": assigned, "noise_own_prob": own}

  return jax.jit(fn)


@register("gkt_vae", {Access.ARTIFACTS},
          "Table 3: GKT's generated noise through GENIU's VAE as proxies, in-batch tuning",
          settings=TUNING_SETTINGS | {"method_settings"})
def gkt_vae(grant: Grant, cfg: Config, key: jax.Array,
            settings: gkt_lib.GKTSettings | None = None,
            sample_batches: int | None = None) -> tuple[F.SplitModel, dict]:
  """GKT's noise -> GENIU's VAE -> in-batch tuning (module docstring).

  `settings` (GKT's loop) defaults to `gkt.PRESETS`, `sample_batches` to
  `gkt.SAMPLE_BATCHES`, both by the config's preset.
  """
  s = settings or common.by_preset(cfg, gkt_lib.PRESETS, method="gkt_vae")
  batches = sample_batches or common.by_preset(cfg, gkt_lib.SAMPLE_BATCHES, method=None)
  per_class = cfg.proxies_per_class
  if batches * s.batch_size < per_class:
    raise ValueError(f"{batches} x {s.batch_size} GKT samples cannot give {per_class} per class")
  watch = common.Stopwatch()
  classifier = grant.classifier
  vae = grant.artifacts.generator
  k_gkt, k_sample = jax.random.split(key)
  run = gkt_lib.train_gkt(classifier, grant.forget, grant.num_classes, grant.image_shape, cfg,
                          key=k_gkt, settings=s, watch=watch)
  fn = _program(classifier.graphdef, run.generator.graphdef, vae.graphdef, grant.num_classes,
                per_class, batches, s.batch_size, cfg.unlearn_rounds, cfg.unlearn_lr,
                cfg.stop_forget_prob, unlearn_lib.objective_from_config(cfg),
                sharpen_lib.from_config(cfg))
  params, info = jax.block_until_ready(watch.run(
      fn, classifier.params, classifier.stats, run.generator.params, vae.params,
      jax.random.key_data(k_sample), jnp.asarray(grant.forget, jnp.int32)))
  assigned = np.asarray(info["assigned"]).tolist()
  report = {"rounds_run": int(info["rounds_run"]),
            "samples": batches * s.batch_size,
            "assigned_per_class": assigned,
            "classes_without_samples": [k for k, n in enumerate(assigned) if n == 0],
            "noise_own_prob": np.asarray(info["noise_own_prob"]).tolist(),
            **{f"gkt_{k}": v for k, v in run.info.items()},
            "pseudo_batches": s.pseudo_batches, "batch_size": s.batch_size,
            **watch.report()}
  return F.SplitModel(classifier.graphdef, params, classifier.stats), report
