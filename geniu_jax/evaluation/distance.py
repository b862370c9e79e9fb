"""How far an unlearned model's outputs are from a reference (retrained) model's.

Both metrics compare two models' output distributions sample by sample on
the same inputs (usually the forgotten samples, with the reference a model
retrained without them), then average over samples. 0 means identical
outputs; smaller is closer to the reference.

* `js_divergence`: Jensen-Shannon divergence, natural log (nats, so at most
  ln 2), as in the ZRF score of bad teaching (Chundawat et al., 2023, "Can
  Bad Teaching Induce Forgetting? Unlearning in Deep Networks Using an
  Incompetent Teacher"), which reports 1 - JS. Their code reduces the two
  KL terms with PyTorch's elementwise mean (which also divides by K) and
  with KL(m || p) in place of KL(p || m); this is the textbook divergence
  per sample, averaged over samples.
* `activation_distance`: the L2 distance between the two probability
  vectors, averaged over samples (Golatkar et al., 2020, "Forgetting
  Outside the Box"; SSD, Foster et al., 2024).

Inputs are probabilities, not logits, so any model (or a stored output)
can be compared; take the softmax first.
"""

from __future__ import annotations

import numpy as np


def _check_pair(p, q) -> tuple[np.ndarray, np.ndarray]:
  p = np.asarray(p, np.float64)
  q = np.asarray(q, np.float64)
  if p.ndim != 2 or p.shape != q.shape:
    raise ValueError(f"expected two [N, K] probability arrays of one shape, "
                     f"got {p.shape} and {q.shape}")
  if not len(p):
    raise ValueError("no samples to compare")
  return p, q


def _kl_to_mixture(p: np.ndarray, mixture: np.ndarray) -> np.ndarray:
  """[N] KL(p || mixture) with 0 log 0 = 0; mixture > 0 wherever p > 0."""
  # Only entries with p > 0 count; the others would give 0 * log(0 / m)
  # = nan, and a float32 softmax does produce exact zeros.
  positive = p > 0
  ratio = np.divide(p, mixture, out=np.ones_like(p), where=positive)
  return np.sum(np.where(positive, p * np.log(ratio), 0.0), axis=1)


def js_divergence_per_sample(p: np.ndarray, q: np.ndarray) -> np.ndarray:
  """Jensen-Shannon divergence of each pair of output distributions, in nats.

  Args:
    p: [N, K] probabilities of one model.
    q: [N, K] probabilities of the other model on the same N inputs.

  Returns:
    [N] float64 values in [0, ln 2]: 0 exactly where the rows are equal,
    ln 2 where their supports are disjoint.
  """
  p, q = _check_pair(p, q)
  mixture = 0.5 * (p + q)
  js = 0.5 * _kl_to_mixture(p, mixture) + 0.5 * _kl_to_mixture(q, mixture)
  # Rounding can leave a tiny negative value for nearly equal rows; the
  # divergence itself never is.
  return np.maximum(js, 0.0)


def js_divergence(p: np.ndarray, q: np.ndarray) -> float:
  """Mean over samples of the Jensen-Shannon divergence (natural log).

  Symmetric in p and q.

  Args:
    p: [N, K] probabilities of one model (e.g. the unlearned one).
    q: [N, K] probabilities of the other (e.g. the retrained reference) on
      the same N inputs.

  Returns:
    A float in [0, ln 2], in nats; 0 for identical inputs.
  """
  return float(js_divergence_per_sample(p, q).mean())


def activation_distance(p: np.ndarray, q: np.ndarray) -> float:
  """Mean over samples of the L2 distance between two output probability vectors.

  Symmetric in p and q.

  Args:
    p: [N, K] probabilities of one model (e.g. the unlearned one).
    q: [N, K] probabilities of the other (e.g. the retrained reference) on
      the same N inputs.

  Returns:
    A float in [0, sqrt 2]; 0 for identical inputs.
  """
  p, q = _check_pair(p, q)
  return float(np.linalg.norm(p - q, axis=1).mean())
