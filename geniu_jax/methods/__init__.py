"""Unlearning methods behind one registry (`geniu_jax.methods.registry`).

Importing the package registers the built-in methods: GENIU and its Table 9
ablations, retraining, GKT, UNSIR, I-R (Amnesiac, and its relabelling
variant) and Unrolling SGD.
"""

from geniu_jax.methods import registry  # noqa: F401  (first: the others register into it)
from geniu_jax.methods import geniu_variants, gkt, ir, retrain, unrolling, unsir  # noqa: F401
