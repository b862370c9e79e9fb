"""Unlearning methods behind one registry (`geniu_jax.methods.registry`).

Importing the package registers the built-in methods: GENIU and its Table 9
ablations, retraining, GKT, UNSIR, I-R (Amnesiac, and its relabelling
variant), Unrolling SGD, and Table 3's GKT_vae (GKT's noise through GENIU's
VAE).
"""

from geniu_jax.methods import registry  # noqa: F401  (first: the others register into it)
from geniu_jax.methods import (  # noqa: F401
    geniu_unlearning, geniu_variants, gkt, gkt_vae, ir, retrain, unrolling, unsir)
