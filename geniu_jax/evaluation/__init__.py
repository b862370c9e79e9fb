"""Unlearning-evaluation metrics beyond Acc_r / Acc_f (`geniu_jax.metrics`).

Modules (import the one you need; nothing is re-exported here, so importing
the package pulls in neither scikit-learn nor JAX):

* `mia`: membership-inference attacks on the forgotten samples, the
  confidence attack of Unlearn-Sparse / SalUn ("MIA-efficacy") and the
  entropy attack of bad teaching / SSD.
* `distance`: output distance to a reference (retrained) model, the
  Jensen-Shannon divergence of bad teaching and the activation distance of
  Golatkar et al. / SSD.
* `relearn`: relearn time and the Anamnesis Index (AIN) of the GKT paper.
"""
