"""Sequential unlearning requests: what a checkpoint has forgotten, and when.

GENIU's stored prompts and generator serve future requests (abstract), so a
checkpoint can be unlearned again and again. Each request forgets the UNION
of what was forgotten before and what it asks for: the earlier classes' proxies
are tuned as forgotten again, never back toward their labels, and the retained
targets keep every forgotten class out (`geniu.unlearn.teacher_targets`).

The unlearned checkpoint no longer holds the forgotten classes' prompts (the
retained classes' stay, for later requests), so the artifact meant to have
forgotten a class cannot draw it from its own prompts; `geniu unlearn
--drop-generator` leaves out the generator and the prompts altogether.

Metadata kept in the checkpoint:
  forgotten: sorted list of every class forgotten so far;
  dropped_prompts: sorted list of the classes whose prompts are gone (absent
    in checkpoints that kept every prompt);
  requests: one entry per request, oldest first -- the classes it asked
    for, the union it tuned on, its method and report, and when it finished;
  unlearned: the last request's report.
"""

from __future__ import annotations

import datetime
from typing import Sequence


class NothingToForget(ValueError):
  """Every class of a request is already forgotten."""


def forgotten(meta: dict) -> list[int]:
  """The classes a checkpoint has forgotten (none for a trained original)."""
  if "forgotten" in meta:
    return sorted(int(k) for k in meta["forgotten"])
  last = meta.get("unlearned")   # checkpoints that kept only the last request
  return sorted(int(k) for k in last["forget"]) if isinstance(last, dict) else []


def dropped_prompts(meta: dict) -> list[int]:
  """The classes whose prompts a checkpoint no longer holds."""
  return sorted(int(k) for k in meta.get("dropped_prompts", []))


def with_prompts(meta: dict, union: Sequence[int]) -> list[int]:
  """The classes of `union` that still have prompts, i.e. the ones tuning has proxies of."""
  gone = set(dropped_prompts(meta))
  return [int(k) for k in union if int(k) not in gone]


def kept_prompts(meta: dict, prompts, union: Sequence[int]):
  """The prompts an unlearned checkpoint keeps: `prompts` (as stored with
  `meta`) without those of the classes of `union`, to be saved with
  `record(meta, ..., union, ...)`; None stays None."""
  if prompts is None:
    return None
  from geniu_jax.geniu import prompts as prompt_lib
  return prompt_lib.drop_classes(prompts, meta["num_classes"], dropped_prompts(meta), union)


def needs_every_prompt(method: str, meta: dict) -> str:
  """Why `method` (a registered GENIU variant, which assumes a prompt of every
  class) cannot run on a checkpoint that dropped prompts."""
  return (f"method {method!r} needs a prompt of every class; the checkpoint dropped those of "
          f"classes {dropped_prompts(meta)} when it forgot them (use --method geniu)")


def plan(meta: dict, requested: Sequence[int], where: str = "the checkpoint") -> list[int]:
  """The classes a new request tunes on: the union with the earlier ones.

  Raises:
    NothingToForget: every requested class is already forgotten.
  """
  before = forgotten(meta)
  new = sorted(set(int(k) for k in requested) - set(before))
  if not new:
    raise NothingToForget(f"{where} has already forgotten class(es) "
                          f"{sorted(set(int(k) for k in requested))} (forgotten so far: "
                          f"{before}); nothing to do")
  return sorted(set(before) | set(int(k) for k in requested))


def record(meta: dict, requested: Sequence[int], union: Sequence[int], report: dict) -> dict:
  """New metadata: `meta` with this request appended to its history and the
  prompts of every class of `union` marked as dropped."""
  entry = {"requested": sorted(int(k) for k in requested), "forget": [int(k) for k in union],
           "report": report,
           "finished": datetime.datetime.now(datetime.timezone.utc).isoformat(
               timespec="seconds")}
  history = list(meta.get("requests", []))
  if not history and isinstance(meta.get("unlearned"), dict):
    history.append({"requested": forgotten(meta), "forget": forgotten(meta),
                    "report": meta["unlearned"], "finished": None})
  return dict(meta, forgotten=[int(k) for k in union], requests=history + [entry],
              unlearned=report,
              dropped_prompts=sorted(set(dropped_prompts(meta)) | set(int(k) for k in union)))
