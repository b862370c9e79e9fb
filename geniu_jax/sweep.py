"""Many runs as one compiled program: `jax.vmap` over forgotten classes or seeds.

Experiments repeat GENIU over seeds (the paper averages five) and over
forgotten classes (Table 6 forgets each class in turn). Each such run is small
-- ten proxies, or one AllCNN -- and vmapped, N runs become one program with
N-times larger operations and one dispatch. Whether that is faster depends on
the lowering: on an H100 with native (cuDNN) convolutions it was not (per-run
weights turn each convolution into a grouped one; benchmarks/RESULTS.md), so
`with_lowering` can give the vmapped program matmul convolutions instead.
On a CPU, throughput is about that of sequential runs. The functions here vmap
the library's own programs (`make_unlearn_fn`, `make_train_step`,
`make_aux_epoch`), so a vmapped run computes what N sequential runs compute,
up to the order of float32 sums.

* `unlearn_many`: one classifier, N forget sets (vmap over `forget`).
* `unlearn_seeds`: N (classifier, generator, prompts) triples, one forget set.
* `train_many`: Alg. 1 for N seeds at once; each seed gets the parameter
  initialisation and shuffling `train(cfg.replace(seed=s))` would give it.

Memory grows N-fold; `chunk_size` picks how many runs fit the device. One
semantic note for `train_many` with GENIU: under vmap the gate of Alg. 1
(`lax.cond` on "all prompts correct") becomes a select, so every seed computes
its generator update each epoch and keeps it only where its gate is open:
same results, more arithmetic.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from geniu_jax.config import Config
from geniu_jax.geniu import generator as gen_lib
from geniu_jax.geniu import prompts as prompt_lib
from geniu_jax.geniu import selection as sel_lib
from geniu_jax.geniu import train as train_lib
from geniu_jax.geniu import unlearn as unlearn_lib
from geniu_jax.models import functional as F
from geniu_jax.models.conv import Conv2d, resolve_lowering


def stack(trees: Sequence[Any]) -> Any:
  """Stacks equally shaped pytrees along a new leading axis."""
  return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def unstack(tree: Any, n: int) -> list[Any]:
  """Inverse of `stack`: n pytrees."""
  return [jax.tree.map(lambda leaf, i=i: leaf[i], tree) for i in range(n)]


def with_lowering(model: F.SplitModel, lowering: str) -> F.SplitModel:
  """The same model (same parameter pytree) with every convolution lowered as `lowering`.

  Why: vmapped over runs that each have their own weights, a native
  convolution becomes one grouped convolution (feature groups = runs), which
  cuDNN runs no faster than the runs one by one (benchmarks/RESULTS.md); the
  patches lowering becomes a batched matmul instead.
  """
  states = (model.params,) if model.stats is None else (model.params, model.stats)
  module = nnx.merge(model.graphdef, *states)
  for _, sub in nnx.iter_modules(module):
    if isinstance(sub, Conv2d):
      sub.lowering = resolve_lowering(lowering)
  graphdef, params, stats = F.split(module)
  return F.SplitModel(graphdef, params, stats if model.stats is not None else None)


def make_unlearn_many_fn(classifier_graphdef, generator_graphdef, *, rounds: int, lr: float,
                         stop_forget_prob: float | None = None, over: str = "forget",
                         objective: unlearn_lib.Objective = unlearn_lib.EQ10):
  """`make_unlearn_fn`'s program vmapped over forget sets or over models.

  Args:
    over: `forget` -- args (params, stats, gen_params, prompts, forget[N, F]);
      `models` -- params, stats, gen_params, prompts stacked [N, ...], one
      forget set [F].

  Returns:
    A jitted function with `make_unlearn_fn`'s signature returning stacked
    (params, TuningInfo).
  """
  one = unlearn_lib.make_unlearn_fn(classifier_graphdef, generator_graphdef, rounds=rounds,
                                    lr=lr, stop_forget_prob=stop_forget_prob,
                                    objective=objective)
  in_axes = {"forget": (None, None, None, None, 0), "models": (0, 0, 0, 0, None)}[over]
  return jax.jit(jax.vmap(one, in_axes=in_axes))


def unlearn_many(classifier: F.SplitModel, generator: F.SplitModel, prompts: jax.Array,
                 forget_sets, *, rounds: int, lr: float,
                 stop_forget_prob: float | None = None, chunk: int | None = None,
                 lowering: str | None = None,
                 objective: unlearn_lib.Objective = unlearn_lib.EQ10):
  """Alg. 2 for N forget sets of one trained model, vmapped.

  Args:
    classifier, generator, prompts: the training phase's outputs.
    forget_sets: int array [N, F] (N forget sets of F classes each), or a
      list of N class ids (one class each).
    rounds, lr, stop_forget_prob, objective: as `unlearn.unlearn`.
    chunk: at most this many sets per compiled call (memory); default all.
    lowering: convolution lowering of the vmapped program (see
      `with_lowering`); default: the models' own.

  Returns:
    (list of N tuned `SplitModel`s, stacked `TuningInfo` with leading axis N).
  """
  forget = jnp.asarray(forget_sets, jnp.int32)
  forget = forget[:, None] if forget.ndim == 1 else forget
  graphdef = classifier.graphdef
  if lowering is not None:
    classifier = with_lowering(classifier, lowering)
    generator = with_lowering(generator._replace(stats=None), lowering)
  fn = make_unlearn_many_fn(classifier.graphdef, generator.graphdef, rounds=rounds, lr=lr,
                            stop_forget_prob=stop_forget_prob, over="forget",
                            objective=objective)
  outs = [fn(classifier.params, classifier.stats, generator.params, prompts, part)
          for part in _chunks(forget, chunk)]
  params, info = jax.tree.map(lambda *xs: jnp.concatenate(xs), *outs)
  tuned = [F.SplitModel(graphdef, p, classifier.stats) for p in unstack(params, forget.shape[0])]
  return tuned, info


def unlearn_seeds(classifiers: Sequence[F.SplitModel], generators: Sequence[F.SplitModel],
                  prompts: Sequence[jax.Array], forget, *, rounds: int, lr: float,
                  stop_forget_prob: float | None = None,
                  objective: unlearn_lib.Objective = unlearn_lib.EQ10):
  """Alg. 2 for N independently trained models (e.g. seeds), one forget set, vmapped."""
  n = len(classifiers)
  fn = make_unlearn_many_fn(classifiers[0].graphdef, generators[0].graphdef, rounds=rounds,
                            lr=lr, stop_forget_prob=stop_forget_prob, over="models",
                            objective=objective)
  params, info = fn(stack([c.params for c in classifiers]),
                    stack([c.stats for c in classifiers]),
                    stack([g.params for g in generators]), stack(list(prompts)),
                    jnp.atleast_1d(jnp.asarray(forget, jnp.int32)))
  tuned = [F.SplitModel(c.graphdef, p, c.stats) for c, p in zip(classifiers, unstack(params, n))]
  return tuned, info


def _chunks(x: jax.Array, size: int | None):
  size = size or x.shape[0]
  return [x[i:i + size] for i in range(0, x.shape[0], size)]


def available_memory_bytes(device: jax.Device | None = None) -> int | None:
  """Free memory of `device` (accelerator) or of the host (CPU), if known."""
  device = device or jax.devices()[0]
  stats = getattr(device, "memory_stats", lambda: None)()
  if stats and "bytes_limit" in stats:
    return int(stats["bytes_limit"] - stats.get("bytes_in_use", 0))
  try:
    with open("/proc/meminfo") as f:
      info = dict(line.split(":", 1) for line in f)
    return int(info["MemAvailable"].split()[0]) * 1024
  except (OSError, KeyError, ValueError):
    return None


def chunk_size(n: int, bytes_per_run: int, budget: int | None = None,
               fraction: float = 0.7) -> int:
  """How many of n runs to vmap at once so that they fit `fraction` of the memory."""
  budget = available_memory_bytes() if budget is None else budget
  if budget is None or bytes_per_run <= 0:
    return n
  return int(max(1, min(n, fraction * budget // bytes_per_run)))


def compiled_bytes(compiled) -> int:
  """Arguments + outputs + temporaries of a compiled program (XLA's own count)."""
  m = compiled.memory_analysis()
  if m is None:
    return 0
  return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)


def _seed_keys(seed: int) -> dict[str, jax.Array]:
  return train_lib.key_streams(jax.random.key(seed))


def train_step_bytes(cfg: Config, image_shape, num_classes: int, n_images: int,
                     per_seed_data: bool = False) -> int:
  """Device memory one seed adds to a vmapped classifier step (XLA's count, AOT).

  Compiles the one-seed step once (no execution); the shared training set is
  counted only when every seed has its own copy (`per_seed_data`).
  """
  classifier = F.make_classifier(num_classes, image_shape, cfg.width, cfg.lowering,
                                 jax.random.key(0), cfg.precision)
  opt = train_lib.classifier_optimizer(cfg, 1)
  state = train_lib.ClassifierState(classifier.params, classifier.stats,
                                    opt.init(classifier.params))
  step = train_lib.make_train_step(classifier.graphdef, opt, None, None)
  x = jax.ShapeDtypeStruct((n_images, *image_shape), jnp.float32)
  y = jax.ShapeDtypeStruct((n_images,), jnp.int32)
  idx = jax.ShapeDtypeStruct((min(cfg.batch_size, n_images),), jnp.int32)
  total = compiled_bytes(step.lower(state, None, None, x, y, idx).compile())
  data = n_images * (int(np.prod(image_shape)) * 4 + 4)
  return total if per_seed_data else max(total - data, 1)


def train_many(cfg: Config, x_train, y_train, num_classes: int, seeds: Sequence[int], *,
               geniu: bool = True, max_parallel: int | None = None,
               log: Callable[[str], None] | None = print) -> list[train_lib.TrainResult]:
  """Alg. 1 (or plain training) for several seeds, vmapped as far as memory allows.

  Args:
    cfg: run configuration; `cfg.seed` is ignored in favour of `seeds`.
    x_train: images [n, H, W, C] shared by all seeds, or [S, n, H, W, C] one
      split per seed (e.g. each seed's imbalanced subsample; equal sizes).
    y_train: labels [n] or [S, n], matching `x_train`.
    num_classes: K.
    seeds: S seeds; seed s gets the initialisation and batch order of
      `train.train(cfg.replace(seed=s), ...)`.
    geniu: also train prompts and generator.
    max_parallel: seeds per vmapped group; None = as many as fit 70 % of the
      free device (or host) memory by `train_step_bytes`, 0 = all at once.
    log: progress sink, one line per epoch (all seeds); None for silence.

  Returns:
    One `TrainResult` per seed, in the order of `seeds` (no baseline records).
  """
  if cfg.lr_schedule != "one_cycle":
    raise ValueError(f"train_many runs the one_cycle schedule only (lr_schedule "
                     f"{cfg.lr_schedule!r}: train each seed with geniu.train.train)")
  x_train, y_train = np.asarray(x_train, np.float32), np.asarray(y_train, np.int32)
  per_seed = x_train.ndim == 5
  if max_parallel is None:
    per_run = train_step_bytes(cfg, tuple(x_train.shape[-3:]), num_classes,
                               x_train.shape[-4], per_seed)
    max_parallel = chunk_size(len(seeds), per_run)
  size = max_parallel or len(seeds)
  results = []
  for start in range(0, len(seeds), size):
    part = slice(start, start + size)
    xs, ys = (x_train[part], y_train[part]) if per_seed else (x_train, y_train)
    results += _train_group(cfg, xs, ys, num_classes, list(seeds)[part], geniu, log)
  return results


def _train_group(cfg: Config, x_train: np.ndarray, y_train: np.ndarray, num_classes: int,
                 seeds: Sequence[int], geniu: bool, log) -> list[train_lib.TrainResult]:
  """`train_many` for one group of seeds: one vmapped program."""
  s_count = len(seeds)
  per_seed = x_train.ndim == 5
  data_axis = 0 if per_seed else None
  image_shape = tuple(x_train.shape[-3:])
  n = x_train.shape[-4]
  batch = min(cfg.batch_size, n)
  steps = n // batch
  keys = [_seed_keys(s) for s in seeds]
  stacked = lambda name: jnp.stack([k[name] for k in keys])

  graphdef = F.make_classifier(num_classes, image_shape, cfg.width, cfg.lowering,
                               keys[0]["classifier"], cfg.precision).graphdef
  # Jitted: eager vmapped initialisation dispatches every op of every layer.
  init_cls = jax.jit(jax.vmap(lambda k: F.make_classifier(
      num_classes, image_shape, cfg.width, cfg.lowering, k, cfg.precision)[1:]))
  params, stats = init_cls(stacked("classifier"))
  cls_opt = train_lib.classifier_optimizer(cfg, cfg.epochs * steps)
  cstate = train_lib.ClassifierState(params, stats, jax.jit(jax.vmap(cls_opt.init))(params))
  selection = cfg.selection if geniu and cfg.selection_source == "epoch" else None
  step = jax.jit(jax.vmap(train_lib.make_train_step(graphdef, cls_opt, selection, None),
                          in_axes=(0, 0, None, data_axis, data_axis, 0)),
                 donate_argnums=(0, 1))
  x_all, y_all = jnp.asarray(x_train), jnp.asarray(y_train)

  aux = gen_graphdef = None
  if geniu:
    gen_graphdef = F.make_generator(image_shape, cfg.latent_dim, cfg.lowering,
                                    keys[0]["generator"]).graphdef
    gen_params = jax.jit(jax.vmap(lambda k: F.make_generator(
        image_shape, cfg.latent_dim, cfg.lowering, k).params))(stacked("generator"))
    prompt_opt, gen_opt = optax.adam(cfg.prompt_lr), optax.adam(cfg.generator_lr)
    prompts = jax.jit(jax.vmap(lambda k: prompt_lib.init_prompts(
        k, num_classes, cfg.proxies_per_class, image_shape, prompt_opt)))(stacked("prompts"))
    gen_state = gen_lib.GeneratorState(gen_params, jax.jit(jax.vmap(gen_opt.init))(gen_params))
    aux = jax.jit(jax.vmap(
        train_lib.make_aux_epoch(cfg, graphdef, gen_graphdef, num_classes, prompt_opt,
                                 gen_opt),
        in_axes=((None, 0, 0), 0, 0, 0, data_axis, data_axis, 0)), donate_argnums=(1, 2))

  rngs = [np.random.default_rng(np.asarray(jax.random.key_data(k["shuffle"]))) for k in keys]
  histories: list[list[dict]] = [[] for _ in seeds]
  for epoch in range(cfg.epochs):
    t0 = time.perf_counter()
    topb = jax.tree.map(lambda a: jnp.broadcast_to(a, (s_count, *a.shape)),
                        sel_lib.init_topb(num_classes, cfg.proxies_per_class))
    orders = np.stack([r.permutation(n)[: steps * batch].reshape(steps, batch) for r in rngs])
    # [steps, seeds, batch]: step i of every seed in one vmapped call.
    cstate, topb, _, sums = train_lib.classifier_epoch(step, cstate, topb, None, x_all, y_all,
                                                       orders.transpose(1, 0, 2))
    rows = [{"epoch": epoch + 1, "loss": float(l) / steps,
             "train_acc": float(c) / (steps * batch)}
            for l, c in zip(np.asarray(sums.loss), np.asarray(sums.correct))]
    if geniu:
      noise = jax.vmap(lambda k: jax.random.fold_in(k, epoch))(stacked("vae_noise"))
      prompts, gen_state, p_loss, ok, rec = aux((graphdef, cstate.params, cstate.stats),
                                                prompts, gen_state, topb, x_all, y_all, noise)
      for row, pl, o, r in zip(rows, np.asarray(p_loss), np.asarray(ok), np.asarray(rec)):
        row.update(prompt_loss=float(pl), prompts_correct=bool(o), generator_rec=float(r))
    seconds = time.perf_counter() - t0
    for hist, row in zip(histories, rows):
      hist.append(dict(row, seconds=seconds))
    if log:
      log(f"epoch {epoch + 1}/{cfg.epochs} ({s_count} seeds, {seconds:.1f}s) loss "
          + " ".join(f"{r['loss']:.4f}" for r in rows))

  results = []
  for i in range(s_count):
    take = lambda tree, i=i: jax.tree.map(lambda leaf: leaf[i], tree)
    classifier = F.SplitModel(graphdef, take(cstate.params), take(cstate.stats))
    generator = z = None
    if geniu:
      generator = F.SplitModel(gen_graphdef, take(gen_state.params), None)
      z = prompts.z[i]
    results.append(train_lib.TrainResult(classifier, generator, z, histories[i], None))
  return results
