"""Why in-batch tuning falls short: vary the tuning batch and the retained target (validation only).

A diagnostic, not a method. On a checkpoint trained by
`experiments.stop_rule_study` (training split minus a balanced validation
set), tune the classifier with Eq. 10's forgotten term (1/CE) and one of two
retained terms, on one of several tuning batches, and print validation
Acc_r / Acc_f every few rounds:

* `--batch proxies`: GENIU's proxies g(z) (the method);
* `--batch max|spread|min`: REAL training images, B per class, by softmax
  entropy of the original model: the B most entropic (what the generator is
  taught to reconstruct, §4.4), B evenly spaced entropy ranks, or the B least
  entropic. Real images are only possible because this is a diagnostic;
* `--retain label`: CE to the label (Eq. 10); `--retain teacher`: CE to the
  original model's own softmax on the same input with the forgotten classes
  removed and renormalised; `--retain mix`: the mean of the two.

    python -m experiments.tuning_batch_diagnostic --ckpt runs/study/seed0 \\
        --data idx:/usr/share/datasets/fashion-mnist --batch proxies --retain teacher
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
from geniu_jax.geniu.losses import batch_cross_entropy, batch_entropy
from geniu_jax.geniu.prompts import first_ranks, prompt_labels
from geniu_jax.models import functional as F


def real_batch(classifier, x, y, num_classes: int, per_class: int, rule: str):
  """B real images per class, class-fastest, chosen by the original model's entropy."""
  logits = jnp.concatenate([
      F.classifier_logits(classifier.graphdef, classifier.params, classifier.stats,
                          jnp.asarray(x[i:i + 2000])) for i in range(0, len(y), 2000)])
  ent = np.asarray(batch_entropy(logits))
  chosen = []
  for b in range(per_class):
    for k in range(num_classes):
      idx = np.flatnonzero(y == k)
      order = idx[np.argsort(-ent[idx])]
      pos = {"max": b, "min": len(order) - 1 - b,
             "spread": round(b * (len(order) - 1) / max(per_class - 1, 1))}[rule]
      chosen.append(order[pos])
  return jnp.asarray(x[chosen]), prompt_labels(num_classes, per_class)


def tuning_loss(params, classifier, x, y, forget_mask, teacher, retain: str,
                forget: str = "inv_ce", margin: float = 0.0, is_forgotten=None):
  """Retained term by `retain`; forgotten term by `forget`: `inv_ce` (Eq. 10),
  `margin` (`unlearn.margin_loss`) or `teacher` (CE to the original's softmax
  without the forgotten classes: "answer as the original would if f did not
  exist"). Unused terms are dropped by XLA."""
  logits = F.classifier_logits(classifier.graphdef, params, classifier.stats, x)
  ce = batch_cross_entropy(logits, y)
  ce_teacher = -jnp.sum(teacher * jax.nn.log_softmax(logits), -1)
  kept = {"label": ce, "teacher": ce_teacher, "mix": 0.5 * (ce + ce_teacher)}[retain]
  gone = {"inv_ce": lambda: 1.0 / (ce + U.CE_FLOOR), "teacher": lambda: ce_teacher,
          "margin": lambda: U.margin_loss(logits, y, is_forgotten, margin)}[forget]()
  return jnp.sum(jnp.where(forget_mask, gone, kept))


def run(ck, data, forget, *, batch: str, retain: str, per_class: int, rounds: int,
        lr: float, every: int, show_classes: bool = False, forget_loss: str = "inv_ce",
        margin: float = 0.0, stop_prob: float | None = None
        ) -> list[tuple[int, float, float, float]]:
  c, k = ck.classifier, ck.metadata["num_classes"]
  if batch == "proxies":
    x = make_proxies(ck.generator.graphdef, ck.generator.params,
                     first_ranks(ck.prompts, k, per_class))
    y = prompt_labels(k, per_class)
  else:
    x, y = real_batch(c, data.x_train, data.y_train, k, per_class, batch)
  forget_arr = jnp.asarray(forget, jnp.int32)
  mask = U.forget_mask_for(y, forget_arr)
  is_forgotten = U.forgotten_classes(forget_arr, k)
  original_logits = F.classifier_logits(c.graphdef, c.params, c.stats, x)
  teacher = U.teacher_targets(original_logits, is_forgotten)
  if show_classes:
    print("tuning batch labels (rows = ranks):\n", np.asarray(y).reshape(per_class, k))
    print("original model's predictions:\n",
          np.asarray(jnp.argmax(original_logits, -1)).reshape(per_class, k))
  optimizer = optax.adam(lr)

  @jax.jit
  def step(params, opt_state):
    grads = jax.grad(tuning_loss)(params, c, x, y, mask, teacher, retain, forget_loss,
                                  margin, is_forgotten)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  signal = jax.jit(lambda p: U.proxy_checks(
      F.classifier_logits(c.graphdef, p, c.stats, x), y, mask)[0])

  params, opt_state, rows, stop_seen = c.params, optimizer.init(c.params), [], False
  for r in range(rounds + 1):
    forget_prob_mean = float(signal(params))
    # Also evaluate where the data-free stop rule (mean forgotten-proxy
    # probability <= stop_prob) would first fire, so its outcome is on record.
    at_stop = (stop_prob is not None and not stop_seen and r > 0
               and forget_prob_mean <= stop_prob)
    stop_seen = stop_seen or at_stop
    if r % every == 0 or at_stop:
      acc = runs.evaluate(F.SplitModel(c.graphdef, params, c.stats), data.x_test,
                          data.y_test, k, forget)
      rows.append((r, acc["acc_r"], acc["acc_f"], forget_prob_mean))
      if show_classes:
        print(f"round {r} per-class accuracy: " +
              " ".join(f"{a:.2f}" for a in acc["per_class"]), flush=True)
    if r < rounds:
      params, opt_state = step(params, opt_state)
  return rows


def load(ckpt: str, data_source: str, val_per_class: int):
  """(checkpoint, data) with the split the checkpoint was trained on: its
  validation set stands in for the test split."""
  ck = ckpt_lib.restore(ckpt)
  meta = ck.metadata
  data = runs.prepare_data(data_source, meta["majority"], meta["imbalance"], meta["seed"],
                           validation_per_class=val_per_class, log=None)
  return ck, data


def record(ckpt: str, batch: str, retain: str, forget_loss: str, margin: float,
           per_class: int, rows) -> dict:
  """One curve as the JSON record `experiments.objective_study` reads."""
  desc = forget_loss + (f"({margin:g})" if forget_loss == "margin" else "")
  return {"ckpt": ckpt, "batch": batch, "retain": retain, "forget_loss": desc,
          "per_class": per_class, "rows": [
              {"round": r, "val_acc_r": ar, "val_acc_f": af, "forget_prob_mean": pf}
              for r, ar, af, pf in rows]}


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ckpt", required=True, help="a checkpoint of experiments.stop_rule_study")
  p.add_argument("--data", required=True)
  p.add_argument("--forget", type=int, nargs="+", default=[9])
  p.add_argument("--batch", choices=("proxies", "max", "spread", "min"), default="proxies")
  p.add_argument("--retain", choices=("label", "teacher", "mix"), default="label")
  p.add_argument("--forget-loss", choices=("inv_ce", "margin", "teacher"), default="inv_ce")
  p.add_argument("--margin", type=float, default=0.0, help="for --forget-loss margin")
  p.add_argument("--stop-prob", type=float, default=None,
                 help="also evaluate at the first round the cpu stop rule would fire")
  p.add_argument("--json", action="store_true", help="also print the rows as one JSON line")
  p.add_argument("--json-out", type=Path, help="also append that JSON line to this file")
  p.add_argument("--per-class", type=int, default=5)
  p.add_argument("--rounds", type=int, default=60)
  p.add_argument("--lr", type=float, default=4e-4)
  p.add_argument("--every", type=int, default=4)
  p.add_argument("--val-per-class", type=int, default=500)
  p.add_argument("--show-classes", action="store_true",
                 help="also print the original's predictions on the batch and per-class accuracy")
  args = p.parse_args(argv)
  ck, data = load(args.ckpt, args.data, args.val_per_class)
  rows = run(ck, data, args.forget, batch=args.batch, retain=args.retain,
             per_class=args.per_class, rounds=args.rounds, lr=args.lr, every=args.every,
             show_classes=args.show_classes, forget_loss=args.forget_loss, margin=args.margin,
             stop_prob=args.stop_prob)
  rec = record(args.ckpt, args.batch, args.retain, args.forget_loss, args.margin,
               args.per_class, rows)
  print(f"{args.ckpt} batch={args.batch} retain={args.retain} forget={rec['forget_loss']} "
        f"B={args.per_class}: " + " ".join(f"{r}:{ar:.3f}/{af:.3f}" for r, ar, af, _ in rows))
  if args.json or args.json_out:
    line = json.dumps(rec)
    if args.json:
      print(line)
    if args.json_out:
      with args.json_out.open("a") as f:
        f.write(line + "\n")


if __name__ == "__main__":
  main()
