"""Accuracy against in-batch tuning rounds (the paper's Fig. 7, App. G.3).

Restores a GENIU checkpoint, tunes round by round on its proxies and records
Acc_r / Acc_f every `--every` rounds, plus what the data-free stopping rule
sees (max forgotten-class probability on forgotten proxies, accuracy on
retained proxies). By default the scores come from a balanced validation split
held out of the training data exactly as `experiments.tune_unlearning` does
(the checkpoint must have been trained that way); `--split test` scores on the
test split and is for reporting only, never for choosing settings.

    python -m experiments.unlearning_curve --ckpt runs/tune/B5 --forget 9 --out runs/curve
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax import runs
from geniu_jax.geniu import unlearn as U
from geniu_jax.geniu.generator import make_proxies
from geniu_jax.geniu.prompts import prompt_labels
from geniu_jax.models import functional as F
from geniu_jax.models.functional import SplitModel


def curve(ck, x_eval, y_eval, forget, *, rounds: int, lr: float, every: int) -> list[dict]:
  c, g = ck.classifier, ck.generator
  k = ck.metadata["num_classes"]
  labels = prompt_labels(k, ck.prompts.shape[0] // k)
  proxies = make_proxies(g.graphdef, g.params, ck.prompts)
  mask = U.forget_mask_for(labels, jnp.asarray(forget))
  optimizer = optax.adam(lr)
  step = jax.jit(lambda p, o: U.tuning_step(p, o, c.graphdef, c.stats, proxies, labels, mask,
                                            optimizer))
  checks = jax.jit(lambda p: U.proxy_checks(
      F.classifier_logits(c.graphdef, p, c.stats, proxies), labels, mask))
  params, opt_state = c.params, optimizer.init(c.params)
  rows = []
  for r in range(rounds + 1):
    if r % every == 0:
      acc = runs.evaluate(SplitModel(c.graphdef, params, c.stats), x_eval, y_eval, k, forget)
      fp, ra = checks(params)
      rows.append({"round": r, "acc_r": acc["acc_r"], "acc_f": acc["acc_f"],
                   "forget_proxy_prob": float(fp), "retain_proxy_acc": float(ra)})
      print(json.dumps(rows[-1]), flush=True)
    if r < rounds:
      params, opt_state, _ = step(params, opt_state)
  return rows


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ckpt", required=True)
  p.add_argument("--forget", type=int, nargs="+", default=[9])
  p.add_argument("--rounds", type=int, default=200)
  p.add_argument("--lr", type=float, default=4e-4)
  p.add_argument("--every", type=int, default=5)
  p.add_argument("--split", choices=("validation", "test"), default="validation")
  p.add_argument("--val-per-class", type=int, default=500)
  p.add_argument("--out", type=Path, required=True)
  args = p.parse_args(argv)
  ck = ckpt_lib.restore(args.ckpt)
  meta = ck.metadata
  data = runs.prepare_data(meta["data_source"], meta["majority"], meta["imbalance"],
                           meta["seed"], validation_per_class=(
                               args.val_per_class if args.split == "validation" else 0))
  rows = curve(ck, data.x_test, data.y_test, args.forget, rounds=args.rounds, lr=args.lr,
               every=args.every)
  args.out.mkdir(parents=True, exist_ok=True)
  name = f"curve_{args.split}_lr{args.lr:g}.json"
  (args.out / name).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
  main()
