"""GENIU's training phase (Alg. 1): classifier, noise prompts, selection, generator.

Every epoch: (1) one epoch of ordinary classifier training; (2) `prompt_steps`
Adam steps on all noise prompts at once (Eq. 8), classifier frozen; (3) if all
prompts are classified correctly, select the supervision samples (§4.4) and
(4) train the generator for `generator_steps` (Eq. 4-6). Steps (2)-(4) are one
jitted program with a `lax.cond` for the gate, so an epoch costs one dispatch
per classifier batch plus one for the auxiliaries.

Classifier optimizer: `geniu.optimizer` (our one-cycle schedule, or with
`lr_schedule="plateau"` the baselines' plateau rule, stepped after every
epoch on the loss of the `validation` split given to `train`).

Noise start (Table 11, Appendix). With `cfg.noise_start_acc = t`, steps
(2)-(4) start at the first epoch whose classifier training accuracy reaches t
and stay on from then on; earlier epochs train the classifier only. The
default None starts them at the first epoch (§5).

Sanity checks. `TrainResult.checks` says whether the generator ever trained
(the gate of step (3) may never open, e.g. with too few classifier steps on a
small split, leaving the VAE at its initialisation and Alg. 2 without proxies
worth tuning on) and which classes the classifier never predicted in its last
epoch, each with a one-line warning naming the likely cause and a remedy.

`geniu=False` trains the classifier alone (the original model of a baseline,
or the retrained model). A `Recorder` (see `geniu_jax.methods`) rides along the
train step to keep what I-R and Unrolling SGD need.
"""

from __future__ import annotations

import time
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from geniu_jax import parallel
from geniu_jax.config import Config
from geniu_jax.geniu import generator as gen_lib
from geniu_jax.geniu import optimizer as opt_lib
from geniu_jax.geniu import prompts as prompt_lib
from geniu_jax.geniu import resume as resume_lib
from geniu_jax.geniu import selection as sel_lib
from geniu_jax.models import functional as F


class Recorder(Protocol):
  """Training-time records for data-access baselines (I-R, Unrolling SGD)."""

  def init(self, params: Any, num_classes: int) -> Any: ...

  def update(self, records: Any, params: Any, grads: Any, updates: Any,
             labels: jax.Array) -> Any: ...


class ClassifierState(NamedTuple):
  """The classifier's training state.

  Attributes:
    params, stats: the AllCNN's parameters and BatchNorm statistics.
    opt_state: `geniu.optimizer.classifier_optimizer`'s state.
    plateau: the plateau rule (`lr_schedule="plateau"`), else None.
  """
  params: Any
  stats: Any
  opt_state: optax.OptState
  plateau: opt_lib.Plateau | None = None


class TrainResult(NamedTuple):
  """What the training phase hands to the unlearning phase (and to checkpoints)."""
  classifier: F.SplitModel
  generator: F.SplitModel | None
  prompts: jax.Array | None     # [B*K, H, W, C]
  history: list[dict[str, float]]
  records: Any                  # Recorder output, or None
  # `training_checks` output; None where a trainer did not compute it.
  checks: dict | None = None


classifier_optimizer = opt_lib.classifier_optimizer

KEY_STREAMS = ("classifier", "prompts", "generator", "shuffle", "vae_noise")


def key_streams(key: jax.Array) -> dict[str, jax.Array]:
  """The random streams of Alg. 1, by name, from one key: the classifier's,
  the prompts' and the generator's initialisation, the batch order (as a
  numpy seed) and the VAE's sampling noise (folded with the epoch). The
  single-run and the vmapped multi-run trainers (`geniu_jax.sweep`) both
  draw them here, so seed s gives the same run either way."""
  return dict(zip(KEY_STREAMS, jax.random.split(key, len(KEY_STREAMS))))


def make_train_step(graphdef, optimizer, selection: str | None,
                    recorder: Recorder | None, num_classes: int | None = None,
                    mesh: jax.sharding.Mesh | None = None) -> Callable:
  """One classifier step; optionally merges the batch into the running top-B.

  With a `mesh` (`geniu_jax.parallel`) the batch is split over its `data`
  axis; XLA adds the all-reduce of the gradients.

  Returns (state, topb, records, loss, correct), plus the batch's [K] counts
  of argmax predictions per class when `num_classes` is given.
  """

  def train_step(state: ClassifierState, topb, records, x_all, y_all, batch_idx):
    # Constraining the indices too makes the gather local to each device.
    batch_idx = parallel.shard_batch(batch_idx, mesh)
    x = parallel.shard_batch(x_all[batch_idx], mesh)
    y = parallel.shard_batch(y_all[batch_idx], mesh)

    def loss_fn(params):
      logits, stats = F.classifier_apply(graphdef, params, state.stats, x, train=True)
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
      return loss, (logits, stats)

    (loss, (logits, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    if selection is not None:
      scores = sel_lib.selection_scores(jax.lax.stop_gradient(logits), selection)
      topb = sel_lib.update_topb(topb, scores, y, batch_idx)
    if recorder is not None:
      records = recorder.update(records, state.params, grads, updates, y)
    pred = jnp.argmax(logits, -1)
    correct = jnp.sum(pred == y)
    out = (state._replace(params=params, stats=stats, opt_state=opt_state), topb, records,
           loss, correct)
    if num_classes is None:
      return out
    # Counted from the logits the step already has rather than by an extra
    # evaluation pass: a [batch, K] reduction instead of a second compiled
    # program and a forward pass over the training set. They are train-mode
    # predictions of a model still moving through its last epoch, which is
    # enough to spot a class the classifier has collapsed away from.
    counts = jnp.sum(jax.nn.one_hot(pred, num_classes, dtype=jnp.int32), axis=0)
    return (*out, counts)

  return jax.jit(train_step, donate_argnums=(0, 1, 2))


class EpochSums(NamedTuple):
  """What one classifier epoch adds up (per run, when the step is vmapped).

  Attributes:
    loss: sum of the batches' mean losses.
    correct: correctly classified training samples.
    counts: [K] argmax predictions per class, when the step reports them
      (`make_train_step(..., num_classes)`), else None.
  """
  loss: Any
  correct: Any
  counts: Any


def classifier_epoch(train_step: Callable, cstate, topb, records, x_all, y_all,
                     order: np.ndarray) -> tuple[Any, Any, Any, EpochSums]:
  """One epoch of classifier steps over `order` ([steps, ...] batch indices:
  [steps, batch] for one run, [steps, runs, batch] for a vmapped step), the
  batches gathered on the device from `x_all`, `y_all`. The one epoch loop of
  `train` and of the vmapped multi-run trainer (`geniu_jax.sweep`).

  Returns (cstate, topb, records, EpochSums).
  """
  loss_sum = correct_sum = 0.0
  counts_sum = None
  for batch_idx in order:
    out = train_step(cstate, topb, records, x_all, y_all, jnp.asarray(batch_idx, jnp.int32))
    cstate, topb, records, loss, correct = out[:5]
    loss_sum, correct_sum = loss_sum + loss, correct_sum + correct
    if len(out) > 5:
      counts_sum = out[5] if counts_sum is None else counts_sum + out[5]
  return cstate, topb, records, EpochSums(loss_sum, correct_sum, counts_sum)


def make_aux_epoch(cfg: Config, cls_graphdef, gen_graphdef, num_classes: int,
                   prompt_opt, gen_opt) -> Callable:
  """Prompts, gate, selection and generator of one epoch as one jitted function."""
  per_class = cfg.proxies_per_class

  def aux_epoch(classifier, prompts, gen_state, topb, x_all, y_all, key):
    prompts, prompt_loss = prompt_lib.train_prompts(
        prompts, classifier, num_classes, prompt_opt, cfg.prompt_steps)
    correct = prompt_lib.prompts_correct(prompts.z, classifier, num_classes)

    def fit_generator(gen_state):
      chosen = topb
      if cfg.selection_source == "pass":
        chosen = sel_lib.select_by_pass(classifier, x_all, y_all, num_classes,
                                        per_class, cfg.selection)
      targets = x_all[sel_lib.supervision_indices(chosen)]
      return gen_lib.train_generator(gen_state, gen_graphdef, prompts.z, targets, key,
                                     gen_opt, cfg.generator_steps, cfg.kl_weight)

    def skip(gen_state):
      return gen_state, jnp.array(jnp.nan, jnp.float32)

    gen_state, rec = jax.lax.cond(correct, fit_generator, skip, gen_state)
    return prompts, gen_state, prompt_loss, correct, rec

  return jax.jit(aux_epoch, donate_argnums=(1, 2))


def train(cfg: Config, x_train: np.ndarray, y_train: np.ndarray, num_classes: int, *,
          geniu: bool = True, recorder: Recorder | None = None,
          log: Callable[[str], None] | None = print,
          state_dir: str | None = None, resume: bool = False,
          validation: tuple[np.ndarray, np.ndarray] | None = None,
          mesh: jax.sharding.Mesh | None = None,
          key: jax.Array | None = None) -> TrainResult:
  """Runs Alg. 1 (or plain classifier training with `geniu=False`).

  Args:
    cfg: run configuration (epochs, learning rates, B, selection, seed ...).
    x_train: float32 images [N, H, W, C] in [0, 1] (already imbalanced).
    y_train: int labels [N].
    num_classes: K.
    geniu: also train prompts and generator.
    recorder: optional training-time recorder for data-access baselines.
    log: progress sink, one line per epoch; None for silence.
    state_dir: where to keep the state after every epoch (`geniu.resume`);
      None keeps none.
    resume: continue from the state in `state_dir` (it must exist and belong
      to the same config and data); the result equals an uninterrupted run's.
    validation: (x [M, H, W, C], y [M]) held out of the training data; the
      plateau rule of `cfg.lr_schedule="plateau"` steps on its loss (needed
      then, unused otherwise).
    mesh: None trains on one device. A mesh with a `data` axis
      (`geniu_jax.parallel.make_mesh`) splits every batch over it, with the
      training set and every state replicated: the same function as one
      device, up to the order of float32 sums. Several hosts: call
      `jax.distributed.initialize()` first and pass each process the same
      arrays and config.
    key: the run's randomness (`key_streams`); None: `jax.random.key(cfg.seed)`,
      so a config alone names a run.

  Returns:
    A `TrainResult`; `generator` and `prompts` are None when `geniu=False`.
    With `geniu`, every history row has `noise_started` (False before the
    Table 11 threshold `cfg.noise_start_acc` was reached; `prompt_loss` and
    `generator_rec` are NaN then) and `prompts_correct` (the gate opened and
    the generator trained this epoch). With the plateau rule every row has
    `val_loss` and the learning rate `lr` of that epoch.
  """
  kwargs = dict(geniu=geniu, recorder=recorder, log=log, state_dir=state_dir, resume=resume,
                validation=validation, mesh=mesh,
                key=jax.random.key(cfg.seed) if key is None else key)
  if mesh is None:
    return _train(cfg, x_train, y_train, num_classes, **kwargs)
  parallel.check_batch_size(min(cfg.batch_size, len(y_train)), mesh)
  # Arrays created inside start out replicated on the mesh; otherwise each
  # jitted step would compile twice (single-device, then mesh inputs).
  with jax.set_mesh(mesh):
    return _train(cfg, x_train, y_train, num_classes, **kwargs)


def _train(cfg: Config, x_train: np.ndarray, y_train: np.ndarray, num_classes: int, *,
           geniu: bool, recorder: Recorder | None, log: Callable[[str], None] | None,
           state_dir: str | None, resume: bool,
           validation: tuple[np.ndarray, np.ndarray] | None,
           mesh: jax.sharding.Mesh | None, key: jax.Array) -> TrainResult:
  image_shape = tuple(x_train.shape[1:])
  n = x_train.shape[0]
  if n == 0 or len(y_train) != n:
    raise ValueError(f"training split: {n} images and {len(y_train)} labels; training needs "
                     "at least one image with one label each (a validation hold-out as large "
                     "as a class empties the split)")
  plateau = cfg.lr_schedule == "plateau"
  if plateau and (validation is None or len(validation[1]) == 0):
    raise ValueError("lr_schedule 'plateau' steps on a validation loss: train needs a "
                     "validation split held out of the training data")
  batch = min(cfg.batch_size, n)
  steps_per_epoch = n // batch
  keys = key_streams(key)

  classifier = F.make_classifier(num_classes, image_shape, cfg.width, cfg.lowering,
                                 keys["classifier"], cfg.precision)
  cls_opt = classifier_optimizer(cfg, cfg.epochs * steps_per_epoch)
  cstate = ClassifierState(classifier.params, classifier.stats,
                           cls_opt.init(classifier.params),
                           opt_lib.plateau_init() if plateau else None)
  selection = cfg.selection if geniu and cfg.selection_source == "epoch" else None
  train_step = make_train_step(classifier.graphdef, cls_opt, selection, recorder,
                               num_classes, mesh)
  records = recorder.init(classifier.params, num_classes) if recorder else None

  x_all = np.asarray(x_train, np.float32)
  y_all = np.asarray(y_train, np.int32)
  # Copied to the device(s) once: each step gathers its batch from these.
  x_all, y_all = ((jnp.asarray(x_all), jnp.asarray(y_all)) if mesh is None
                  else parallel.replicate((x_all, y_all), mesh))
  generator = prompts = gen_state = aux_epoch = None
  if geniu:
    generator = F.make_generator(image_shape, cfg.latent_dim, cfg.lowering, keys["generator"])
    prompt_opt, gen_opt = optax.adam(cfg.prompt_lr), optax.adam(cfg.generator_lr)
    prompts = prompt_lib.init_prompts(keys["prompts"], num_classes, cfg.proxies_per_class,
                                      image_shape, prompt_opt)
    gen_state = gen_lib.GeneratorState(generator.params, gen_opt.init(generator.params))
    aux_epoch = make_aux_epoch(cfg, classifier.graphdef, generator.graphdef, num_classes,
                               prompt_opt, gen_opt)

  history = []
  started = cfg.noise_start_acc is None
  last_counts = None
  shuffle_rng = np.random.default_rng(np.asarray(jax.random.key_data(keys["shuffle"])))
  first_epoch = 0
  custom_key = not np.array_equal(jax.random.key_data(key),
                                  jax.random.key_data(jax.random.key(cfg.seed)))
  fp = (resume_lib.fingerprint(cfg, x_train, y_train, num_classes, geniu,
                               key if custom_key else None) if state_dir else None)
  if resume:
    if state_dir is None:
      raise ValueError("resume needs the state_dir of the interrupted run")
    found = resume_lib.restore(state_dir, (cstate, prompts, gen_state, records), fp)
    (cstate, prompts, gen_state, records) = found.state
    first_epoch, history, started = found.epochs_done, found.history, found.noise_started
    for _ in range(first_epoch):   # the data order of the finished epochs
      shuffle_rng.permutation(n)
    if log:
      log(f"resuming after epoch {first_epoch}/{cfg.epochs} from {state_dir}")
  for epoch in range(first_epoch, cfg.epochs):
    t0 = time.perf_counter()
    topb = sel_lib.init_topb(num_classes, cfg.proxies_per_class)
    order = shuffle_rng.permutation(n)[: steps_per_epoch * batch].reshape(steps_per_epoch, batch)
    cstate, topb, records, sums = classifier_epoch(train_step, cstate, topb, records, x_all,
                                                   y_all, order)
    last_counts = sums.counts   # the last epoch's: only the trained classifier is checked
    row = {"epoch": epoch + 1, "loss": float(sums.loss) / steps_per_epoch,
           "train_acc": float(sums.correct) / (steps_per_epoch * batch)}
    if plateau:
      row["lr"] = float(cstate.opt_state.hyperparams["learning_rate"])
      row["val_loss"] = opt_lib.validation_loss(
          F.SplitModel(classifier.graphdef, cstate.params, cstate.stats), *validation)
      rule, opt_state = opt_lib.plateau_step(cfg, cstate.plateau, cstate.opt_state,
                                             row["val_loss"])
      cstate = cstate._replace(opt_state=opt_state, plateau=rule)
    if geniu:
      started = started or row["train_acc"] >= cfg.noise_start_acc
      if started:
        frozen = (classifier.graphdef, cstate.params, cstate.stats)
        prompts, gen_state, p_loss, ok, rec = aux_epoch(
            frozen, prompts, gen_state, topb, x_all, y_all,
            jax.random.fold_in(keys["vae_noise"], epoch))
        row.update(noise_started=True, prompt_loss=float(p_loss), prompts_correct=bool(ok),
                   generator_rec=float(rec))
      else:
        row.update(noise_started=False, prompt_loss=float("nan"), prompts_correct=False,
                   generator_rec=float("nan"))
    row["seconds"] = time.perf_counter() - t0
    history.append(row)
    if log:
      log(_format_row(row, cfg.epochs))
    if state_dir is not None and epoch + 1 < cfg.epochs:
      resume_lib.save(state_dir, epoch + 1, (cstate, prompts, gen_state, records), history,
                      started, fp)

  final = F.SplitModel(classifier.graphdef, cstate.params, cstate.stats)
  if geniu:
    generator = F.SplitModel(generator.graphdef, gen_state.params, generator.stats)
    prompts = prompts.z
  checks = training_checks(history, None if last_counts is None else np.asarray(last_counts),
                           geniu=geniu, noise_start_acc=cfg.noise_start_acc)
  return TrainResult(final, generator, prompts, history, records, checks)


def training_checks(history: Sequence[dict], prediction_counts: np.ndarray | None, *,
                    geniu: bool, noise_start_acc: float | None = None) -> dict:
  """Sanity checks of a finished training phase (`TrainResult.checks`).

  Args:
    history: the per-epoch rows of `train`.
    prediction_counts: [K] argmax predictions per class over the last epoch's
      classifier batches; None when unknown (then no class is reported).
    geniu: whether prompts and generator were trained (Alg. 1).
    noise_start_acc: the run's Table 11 threshold, to name the right cause.

  Returns:
    {"generator_epochs": epochs in which the generator trained, i.e. the gate
    "all prompts classified correctly" opened (None without GENIU),
    "unpredicted_classes": sorted classes never predicted,
    "warnings": one line per problem, naming the likely cause and a remedy}.
  """
  warnings = []
  generator_epochs = None
  if geniu:
    generator_epochs = sum(bool(row.get("prompts_correct")) for row in history)
    if generator_epochs == 0:
      if noise_start_acc is not None and not any(row.get("noise_started") for row in history):
        best = max((row["train_acc"] for row in history), default=float("nan"))
        warnings.append(
            f"the generator never trained: the training accuracy never reached the noise "
            f"start threshold {noise_start_acc} (best {best:.3f}; lower --noise-start-acc "
            f"or add --epochs)")
      else:
        warnings.append(
            "the generator never trained: no epoch had every noise prompt classified "
            "correctly (too few classifier steps for a small dataset? add --epochs)")
  unpredicted = []
  if prediction_counts is not None:
    unpredicted = [int(k) for k in np.flatnonzero(np.asarray(prediction_counts) == 0)]
  if unpredicted:
    warnings.append(
        f"the classifier predicted no training sample as class {', '.join(map(str, unpredicted))}"
        f" in its last epoch (too few classifier steps, or too few samples of "
        f"{'that class' if len(unpredicted) == 1 else 'these classes'}? add --epochs or "
        f"raise --imbalance)")
  return {"generator_epochs": generator_epochs, "unpredicted_classes": unpredicted,
          "warnings": warnings}


def _format_row(row: dict, epochs: int) -> str:
  text = f"epoch {row['epoch']}/{epochs} loss {row['loss']:.4f} train_acc {row['train_acc']:.4f}"
  if row.get("noise_started") is False:
    text += " noise off (train_acc below noise_start_acc)"
  elif "prompt_loss" in row:
    text += (f" prompt_loss {row['prompt_loss']:.4f} prompts_ok {int(row['prompts_correct'])}"
             f" gen_rec {row['generator_rec']:.4f}")
  return text + f" ({row['seconds']:.1f}s)"
