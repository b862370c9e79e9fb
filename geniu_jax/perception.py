"""The original model's perception of generated noise (§5.1, Table 2).

The paper's question: does noise fitted to an imbalanced original carry the
majority class's features? Feed training samples of the majority class to
f(., theta_or) for the reference perception p_ref, feed the noise a method
generates for the OTHER classes for the observation perception p_obs, and
report D_KL(p_obs || p_ref). The larger it is, the less the original sees
the majority class in the noise (Table 2: GKT 11.5-12.7 nats, GENIU
11.8-13.3 nats, on the four datasets).

What a perception is. The paper calls it "basically the output logits" and
fits the distribution of one set's outputs with the other's. We take the
mean softmax of the original over a set (`perception`): one distribution over
the K classes per set, and the KL between the two. The paper's magnitudes
are consistent with that reading: noise the original classifies as a
non-majority class c puts most of p_obs on c, so D_KL(p_obs || p_ref) is
about -log p_ref[c], and Table 2's 11.5-13.3 nats are what a confident
original gives when its mean probability of the other classes on majority
samples is 1e-5 to 2e-6. The probabilities are floored (`PROB_FLOOR`) inside
the logarithms so that a class with probability exactly 0 in float32 keeps
the divergence finite; that caps one class's contribution at
-log(PROB_FLOOR) ~ 27.6 nats, well above the paper's values.

The noise of each method (`table2_noise`), from one original:
* GENIU: the proxies g(z_k) of the retained classes (stored VAE and prompts);
* GKT: samples of GKT's generator, trained data-free on the original as the
  `gkt` method trains it, that the original classifies as a retained class;
* UNSIR: its error-maximising noise, which exists only for the forgotten
  classes (the paper leaves UNSIR out of Table 2 for that reason); it is
  reported as noise of the forgotten classes, so its KL is not comparable.
The reference set is real training data of the majority class, passed by
the caller: Table 2 is an analysis of the original, not an unlearning run.
`perception`, `kl_divergence` and `perception_kl` are pure and jittable.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from geniu_jax.config import Config
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.geniu.prompts import first_ranks, prompt_labels
from geniu_jax.methods import common
from geniu_jax.methods import gkt as gkt_lib
from geniu_jax.methods import unsir as unsir_lib
from geniu_jax.models import functional as F

PROB_FLOOR = 1e-12
TABLE2_METHODS = ("geniu", "gkt", "unsir")


def probabilities(classifier: F.SplitModel, x: jax.Array, *,
                  batch_size: int | None = None) -> jax.Array:
  """The original's eval-mode softmax of every sample, [N, K].

  `batch_size` (static) bounds how many samples go through the network at
  once, so a large reference set does not hold all its activations.
  """
  def probs(xb):
    return jax.nn.softmax(F.classifier_logits(classifier.graphdef, classifier.params,
                                              classifier.stats, xb))

  if batch_size is None or batch_size >= x.shape[0]:
    return probs(x)
  return jax.lax.map(lambda xi: probs(xi[None])[0], x, batch_size=batch_size)


def perception(classifier: F.SplitModel, x: jax.Array, *,
               batch_size: int | None = None) -> jax.Array:
  """A set's perception by the original: its mean softmax over the set, [K] (module docstring)."""
  return jnp.mean(probabilities(classifier, x, batch_size=batch_size), axis=0)


def kl_divergence(p_obs: jax.Array, p_ref: jax.Array, *, floor: float = PROB_FLOOR) -> jax.Array:
  """D_KL(p_obs || p_ref) = sum_k p_obs_k (log p_obs_k - log p_ref_k), logs floored.

  Flooring both logarithms keeps every term finite (0 * finite = 0 for a class
  p_obs never visits) and the divergence of equal distributions exactly 0; it
  can lower the value by at most about K * floor * log(1 / floor).
  """
  p_obs, p_ref = jnp.asarray(p_obs), jnp.asarray(p_ref)
  return jnp.sum(p_obs * (jnp.log(jnp.maximum(p_obs, floor)) - jnp.log(jnp.maximum(p_ref, floor))),
                 axis=-1)


def perception_kl(classifier: F.SplitModel, noise: jax.Array, reference: jax.Array, *,
                  floor: float = PROB_FLOOR, batch_size: int | None = None) -> jax.Array:
  """Table 2's D_KL(p_obs || p_ref): p_obs the perception of `noise`, p_ref of `reference`."""
  return kl_divergence(perception(classifier, noise, batch_size=batch_size),
                       perception(classifier, reference, batch_size=batch_size), floor=floor)


# --- the noise of each method (host side: it trains GKT and UNSIR's noise) ---------

class MethodNoise(NamedTuple):
  """The noise one method generates, as Table 2 reads it.

  Attributes:
    x: [M, H, W, C] noise (proxies for GENIU).
    classes: [M] the class each sample stands for: the prompt's class (GENIU),
      the original's argmax (GKT), the class it was fitted against (UNSIR).
    of: "retained" (noise of the other classes, what Table 2 compares) or
      "forgotten" (UNSIR, which has no other noise).
    info: how it was obtained (counts, the generator's training scalars).
  """
  x: np.ndarray
  classes: np.ndarray
  of: str
  info: dict


_probabilities = jax.jit(probabilities, static_argnames="batch_size")
_proxies = jax.jit(lambda generator, z: make_proxies(generator.graphdef, generator.params, z))
_sample = jax.jit(gkt_lib.sample, static_argnames=("batches", "batch_size"))


def _num_classes(classifier: F.SplitModel) -> int:
  return int(classifier.params["head"]["kernel"].shape[-1])


def geniu_noise(classifier: F.SplitModel, forget, generator: F.SplitModel,
                prompts: jax.Array) -> MethodNoise:
  """GENIU's proxies x'_k = g(z_k) (Eq. 9) of the retained classes."""
  num_classes = _num_classes(classifier)
  labels = np.asarray(prompt_labels(num_classes, prompts.shape[0] // num_classes))
  keep = ~np.isin(labels, np.asarray(tuple(forget)))
  proxies = np.asarray(_proxies(generator, jnp.asarray(prompts)))
  return MethodNoise(proxies[keep], labels[keep], "retained",
                     {"proxies_per_class": int(prompts.shape[0] // num_classes)})


def gkt_noise(classifier: F.SplitModel, forget, image_shape, cfg: Config, *, key: jax.Array,
              settings: gkt_lib.GKTSettings | None = None,
              sample_batches: int | None = None) -> MethodNoise:
  """Samples of GKT's trained generator that the original classifies as a retained class.

  The generator is trained by `gkt.train_gkt` (the `gkt` method's loop and
  preset budget, `settings` to override); `sample_batches` pseudo batches
  (default `gkt.SAMPLE_BATCHES` by preset) are drawn from it. May be empty if
  the original classifies every sample as a forgotten class.
  """
  s = settings or common.by_preset(cfg, gkt_lib.PRESETS, method="gkt")
  batches = sample_batches or common.by_preset(cfg, gkt_lib.SAMPLE_BATCHES, method=None)
  num_classes = _num_classes(classifier)
  k_train, k_sample = jax.random.split(key)
  run = gkt_lib.train_gkt(classifier, forget, num_classes, image_shape, cfg, key=k_train,
                          settings=s)
  x = _sample(run.generator, key=k_sample, batches=batches, batch_size=s.batch_size)
  pred = np.asarray(jnp.argmax(_probabilities(classifier, x, batch_size=s.batch_size), -1))
  keep = ~np.isin(pred, np.asarray(tuple(forget)))
  info = {"samples": int(pred.size), "retained_samples": int(keep.sum()),
          "per_class": np.bincount(pred, minlength=num_classes).tolist(),
          **{f"gkt_{k}": v for k, v in run.info.items()}}
  return MethodNoise(np.asarray(x)[keep], pred[keep], "retained", info)


def unsir_noise(classifier: F.SplitModel, forget, image_shape, cfg: Config, *, key: jax.Array,
                settings: unsir_lib.UNSIRSettings | None = None) -> MethodNoise:
  """UNSIR's error-maximising noise: it exists for the forgotten classes only."""
  s = settings or common.by_preset(cfg, unsir_lib.PRESETS, method="unsir")
  noises, losses = unsir_lib.error_maximising_noise(classifier, tuple(forget), image_shape, s,
                                                    key=key)
  x = np.concatenate([n for n, _ in noises])
  classes = np.concatenate([np.full(len(n), f, np.int32) for n, f in noises])
  return MethodNoise(x, classes, "forgotten", {"noise_loss": losses})


def table2_noise(classifier: F.SplitModel, forget, cfg: Config, *, key: jax.Array,
                 image_shape, artifacts: tuple[F.SplitModel, jax.Array] | None = None,
                 methods: tuple[str, ...] = TABLE2_METHODS,
                 gkt_settings: gkt_lib.GKTSettings | None = None,
                 unsir_settings: unsir_lib.UNSIRSettings | None = None,
                 sample_batches: int | None = None) -> dict[str, MethodNoise]:
  """The noise Table 2 compares, of every method in `methods`, from one original.

  `artifacts` = (GENIU's generator, prompts) is needed for "geniu"; its noise
  is the proxies of the first `cfg.proxies_per_class` prompt ranks. Each
  method draws from its own key (`key` folded with its index in
  `TABLE2_METHODS`), so a method's noise does not depend on which others run.
  """
  unknown = set(methods) - set(TABLE2_METHODS)
  if unknown:
    raise ValueError(f"no Table 2 noise for {sorted(unknown)}; expected {TABLE2_METHODS}")
  keys = {m: jax.random.fold_in(key, i) for i, m in enumerate(TABLE2_METHODS)}
  out: dict[str, MethodNoise] = {}
  for m in methods:
    if m == "geniu":
      if artifacts is None:
        raise ValueError("GENIU's noise needs artifacts=(generator, prompts)")
      generator, prompts = artifacts
      # The proxies the `geniu` method tunes on: the first min(B, stored) ranks.
      num_classes = _num_classes(classifier)
      per_class = min(cfg.proxies_per_class, prompts.shape[0] // num_classes)
      out[m] = geniu_noise(classifier, forget, generator,
                           first_ranks(jnp.asarray(prompts), num_classes, per_class))
    elif m == "gkt":
      out[m] = gkt_noise(classifier, forget, image_shape, cfg, key=keys[m],
                         settings=gkt_settings, sample_batches=sample_batches)
    else:
      out[m] = unsir_noise(classifier, forget, image_shape, cfg, key=keys[m],
                           settings=unsir_settings)
  return out


def table2(classifier: F.SplitModel, reference, noises: dict[str, MethodNoise], *,
           floor: float = PROB_FLOOR, batch_size: int | None = 256) -> dict[str, dict[str, Any]]:
  """D_KL(p_obs || p_ref) of every method's noise against the majority samples `reference`.

  Returns {method: {"kl": all of its noise, "kl_per_class": {class: KL of that
  class's noise}, "samples", "of"}}; "kl" is NaN for a method without noise.
  """
  p_ref = np.asarray(_probabilities(classifier, jnp.asarray(reference),
                                    batch_size=batch_size)).mean(0)
  rows = {}
  for name, noise in noises.items():
    row: dict[str, Any] = {"samples": int(len(noise.classes)), "of": noise.of, "kl": float("nan"),
                           "kl_per_class": {}}
    if len(noise.classes):
      probs = np.asarray(_probabilities(classifier, jnp.asarray(noise.x), batch_size=batch_size))
      row["kl"] = float(kl_divergence(probs.mean(0), p_ref, floor=floor))
      row["kl_per_class"] = {
          int(c): float(kl_divergence(probs[noise.classes == c].mean(0), p_ref, floor=floor))
          for c in np.unique(noise.classes)}
    rows[name] = row
  return rows
