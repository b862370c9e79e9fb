"""Membership-inference attacks (MIA) that test whether forgotten samples still look trained on.

Both attacks are "shadow" attacks on one scalar feature per sample, read
off the model under test itself: a binary classifier learns to tell
retained TRAINING samples (members, label 1) from TEST samples
(non-members, label 0) by that feature, and is then applied to the
forgotten training samples.

* `confidence_mia`: the MIA-efficacy of Unlearn-Sparse (Jia et al., 2023,
  "Model Sparsity Can Simplify Machine Unlearning") and SalUn (Fan et al.,
  2024, "SalUn: Empowering Machine Unlearning via Gradient-based Weight
  Saliency"). Feature: the probability of the true class. Attacker: an
  RBF support-vector classifier (C=3, gamma="auto"). Score: the fraction of
  forgotten samples predicted NON-member. Higher = the forgotten samples
  look less like training data.
* `entropy_mia`: the attack of bad teaching (Chundawat et al., 2023, "Can
  Bad Teaching Induce Forgetting?") as used by SSD (Foster et al., 2024,
  "Fast Machine Unlearning Without Retraining Through Selective Synaptic
  Dampening"). Feature: the entropy of the output distribution. Attacker:
  logistic regression. Score: the fraction of forgotten samples predicted
  MEMBER. Lower = the forgotten samples look less like training data.

The two scores point in opposite directions, as in the papers that report
them. Neither has 1 (or 0) as its target in general: the papers compare an
unlearned model's score with the score of a model retrained without the
forgotten data, which is the reference to read them against.

The attackers are fit on equal numbers of members and non-members: the
larger of the two sets is subsampled at random (`seed`), so the attacker
has no prior to fall back on. Unlearn-Sparse / SalUn cut the retained set
to the test set's size (its first samples); SSD's code keeps both sets
whole and weights the classes instead. Here both attacks subsample, so a
run is reproducible from its seed alone.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.svm import SVC


def true_class_probs(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """The probability each sample's own label gets (the "confidence" feature).

  Args:
    probs: [N, K] output probabilities (softmax of the logits).
    labels: [N] int true classes.

  Returns:
    [N] float64, probs[i, labels[i]].
  """
  probs = np.asarray(probs, np.float64)
  labels = np.asarray(labels)
  if probs.ndim != 2 or labels.shape != probs.shape[:1]:
    raise ValueError(f"expected probs [N, K] and labels [N], got {probs.shape} and {labels.shape}")
  return np.take_along_axis(probs, labels[:, None].astype(np.intp), axis=1)[:, 0]


def entropy(probs: np.ndarray) -> np.ndarray:
  """Shannon entropy (natural log) of each output distribution, with 0 log 0 = 0.

  Args:
    probs: [N, K] output probabilities.

  Returns:
    [N] float64 entropies, in nats.
  """
  probs = np.asarray(probs, np.float64)
  if probs.ndim != 2:
    raise ValueError(f"expected probs [N, K], got shape {probs.shape}")
  # A softmax in float32 underflows to exact zeros; log(0) there would make
  # 0 * -inf = nan instead of the limit 0.
  safe = np.where(probs > 0, probs, 1.0)
  return -np.sum(np.where(probs > 0, probs * np.log(safe), 0.0), axis=1)


def _feature_column(values, name: str) -> np.ndarray:
  """[N] per-sample feature -> [N, 1] float64, the shape scikit-learn fits on."""
  values = np.asarray(values, np.float64)
  if values.ndim != 1 or not len(values):
    raise ValueError(f"{name} must be a non-empty 1-D array of per-sample values, "
                     f"got shape {values.shape}")
  if not np.all(np.isfinite(values)):
    raise ValueError(f"{name} has non-finite values")
  return values[:, None]


def _balanced_shadow_set(members: np.ndarray, non_members: np.ndarray,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Attack training set with as many members as non-members.

  Args:
    members: [M, 1] features of samples the model was trained on.
    non_members: [T, 1] features of samples it never saw.
    rng: draws which samples of the larger set are kept.

  Returns:
    (features [2 * min(M, T), 1], targets [2 * min(M, T)]: 1 member, 0 not).
  """
  count = min(len(members), len(non_members))
  keep_members = rng.choice(len(members), count, replace=False)
  keep_non_members = rng.choice(len(non_members), count, replace=False)
  features = np.concatenate([members[keep_members], non_members[keep_non_members]])
  targets = np.concatenate([np.ones(count, np.int64), np.zeros(count, np.int64)])
  return features, targets


def _attack(attacker, retain_train, test, forget, seed: int, names) -> np.ndarray:
  """Fits `attacker` on retained-train vs test features; its 0/1 predictions on `forget`."""
  members = _feature_column(retain_train, names[0])
  non_members = _feature_column(test, names[1])
  targets = _feature_column(forget, names[2])
  features, labels = _balanced_shadow_set(members, non_members, np.random.default_rng(seed))
  attacker.fit(features, labels)
  return attacker.predict(targets)


def confidence_mia(probs_retain_train: np.ndarray, probs_test: np.ndarray,
                   probs_forget: np.ndarray, *, seed: int = 0) -> float:
  """MIA-efficacy (Unlearn-Sparse / SalUn): share of forgotten samples judged non-members.

  HIGHER IS BETTER forgetting: 1 means the attacker takes every forgotten
  sample for unseen data. Read it against the value of a model retrained
  without the forgotten data.

  Args:
    probs_retain_train: [M] true-class probabilities (`true_class_probs`) of
      retained training samples: the members.
    probs_test: [T] true-class probabilities of test samples: the
      non-members.
    probs_forget: [F] true-class probabilities of the forgotten training
      samples, the ones the attack judges.
    seed: seeds the subsampling that balances members and non-members.

  Returns:
    A float in [0, 1]: the fraction of the F forgotten samples the
    attacker predicts to be non-members.
  """
  attacker = SVC(C=3, gamma="auto", kernel="rbf")
  predicted_member = _attack(attacker, probs_retain_train, probs_test, probs_forget, seed,
                             ("probs_retain_train", "probs_test", "probs_forget"))
  return float(1.0 - predicted_member.mean())


def entropy_mia(entropy_retain_train: np.ndarray, entropy_test: np.ndarray,
                entropy_forget: np.ndarray, *, seed: int = 0) -> float:
  """Entropy MIA (bad teaching / SSD): share of forgotten samples judged members.

  LOWER IS BETTER forgetting: 0 means the attacker takes no forgotten sample
  for training data. Read it against the value of a model retrained without
  the forgotten data.

  SSD's code asks scikit-learn for a multinomial logistic regression; for
  two classes that differs from the binomial one used here only in the
  strength of the default L2 penalty, and newer scikit-learn has dropped
  that option and fits two classes binomially.

  Args:
    entropy_retain_train: [M] output entropies (`entropy`) of retained
      training samples: the members.
    entropy_test: [T] output entropies of test samples: the non-members.
    entropy_forget: [F] output entropies of the forgotten training samples,
      the ones the attack judges.
    seed: seeds the subsampling that balances members and non-members.

  Returns:
    A float in [0, 1]: the fraction of the F forgotten samples the
    attacker predicts to be members.
  """
  attacker = LogisticRegression(solver="lbfgs")
  predicted_member = _attack(attacker, entropy_retain_train, entropy_test, entropy_forget, seed,
                             ("entropy_retain_train", "entropy_test", "entropy_forget"))
  return float(predicted_member.mean())
