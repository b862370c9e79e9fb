"""Eager PyTorch reference of GENIU's AllCNN, VAE, training step and unlearning loop.

Ordinary eager PyTorch, written the way the paper's code base (and the
baselines') would write it: `nn.Module`s, `torch.optim.Adam`, `loss.backward()`.
It mirrors geniu_jax operation for operation so that the benchmarks compare
the same arithmetic:

* AllCNN: eight conv(bias-free) -> BatchNorm(momentum 0.1, eps 1e-5) -> ReLU
  blocks with TF/Flax "SAME" padding (asymmetric on stride 2: pad (0, 1)),
  global average pool, one linear layer (`geniu_jax.models.allcnn`).
* VAE: four stride-2 convs (32-256) + leaky ReLU, dense mu/logvar, dense back,
  four (nearest x2 upsample -> conv) steps, conv to the image, crop, sigmoid
  (`geniu_jax.models.vae`).
* Classifier step: CE, Adam with coupled L2 weight decay (optax
  add_decayed_weights -> scale_by_adam), BatchNorm in train mode.
* Unlearning (Alg. 2 + Eq. 10): proxies = g(z) once, then per round a forward
  in eval mode, sum CE(retained) + sum 1/(CE + 1e-6) (forgotten), backward,
  Adam step. As in geniu_jax, the per-round trace (forgotten-class
  probability, retained accuracy) is read off that round's forward logits,
  plus one no-grad forward after the last round. `trace=False` gives the
  paper's bare loop without that bookkeeping.

The constants below duplicate geniu_jax's on purpose: this module must import
without JAX so that it can run in its own process (benchmarks start it as a
subprocess, so neither framework's thread pool competes with the other).

Usage: python -m benchmarks.torch_reference {unlearn,train} [--width W] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time

import torch
from torch import nn
from torch.nn import functional as TF

# Same as geniu_jax.models.allcnn.ALLCNN_BLOCKS and geniu_jax.models.vae.{VAE,DECODER}_CHANNELS.
ALLCNN_BLOCKS = ((96, 3, 1), (96, 3, 1), (192, 3, 2), (192, 3, 1), (192, 3, 1),
                 (192, 3, 2), (192, 3, 1), (192, 1, 1))
VAE_CHANNELS = (32, 64, 128, 256)
DECODER_CHANNELS = (128, 64, 32, 32)
CE_FLOOR = 1e-6


def same_pads(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF/Flax SAME padding (before, after) for one spatial axis."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


class SameConv(nn.Conv2d):
  """nn.Conv2d with SAME padding; symmetric padding goes to the conv itself."""

  def __init__(self, c_in, c_out, kernel, stride, bias):
    super().__init__(c_in, c_out, kernel, stride, padding=0, bias=bias)

  def forward(self, x):
    (t, b), (l, r) = (same_pads(x.shape[2], self.kernel_size[0], self.stride[0]),
                      same_pads(x.shape[3], self.kernel_size[1], self.stride[1]))
    if t == b and l == r:  # cuDNN / oneDNN pad inside the conv, no copy
      return TF.conv2d(x, self.weight, self.bias, self.stride, (t, l))
    return super().forward(TF.pad(x, (l, r, t, b)))


class AllCNN(nn.Module):
  """AllCNN with geniu_jax's layout (NCHW here, as PyTorch prefers)."""

  def __init__(self, num_classes=10, in_channels=1, width=1.0):
    super().__init__()
    layers, c_in = [], in_channels
    for channels, kernel, stride in ALLCNN_BLOCKS:
      c_out = max(1, int(channels * width))
      layers += [SameConv(c_in, c_out, kernel, stride, bias=False),
                 nn.BatchNorm2d(c_out, eps=1e-5, momentum=0.1), nn.ReLU(inplace=True)]
      c_in = c_out
    self.features = nn.Sequential(*layers)
    self.head = nn.Linear(c_in, num_classes)

  def forward(self, x):
    return self.head(self.features(x).mean(dim=(2, 3)))


class VAE(nn.Module):
  """The proxy generator of geniu_jax.models.vae (prompt -> image)."""

  def __init__(self, image_shape=(28, 28, 1), latent_dim=128):
    super().__init__()
    h, w, c = image_shape
    self.image_shape = image_shape
    chans = (c,) + VAE_CHANNELS
    self.encoder = nn.ModuleList(SameConv(a, b, 3, 2, True) for a, b in zip(chans, chans[1:]))
    self.seed_hw = (-(-h // 16), -(-w // 16))
    flat = self.seed_hw[0] * self.seed_hw[1] * VAE_CHANNELS[-1]
    self.to_mu, self.to_logvar = nn.Linear(flat, latent_dim), nn.Linear(flat, latent_dim)
    self.from_latent = nn.Linear(latent_dim, flat)
    dec = (VAE_CHANNELS[-1],) + DECODER_CHANNELS
    self.decoder = nn.ModuleList(SameConv(a, b, 3, 1, True) for a, b in zip(dec, dec[1:]))
    self.to_image = SameConv(DECODER_CHANNELS[-1], c, 3, 1, True)

  def forward(self, z):
    x = z
    for conv in self.encoder:
      x = TF.leaky_relu(conv(x), 0.2)
    # NHWC flatten order, as geniu_jax reshapes NHWC maps.
    x = x.permute(0, 2, 3, 1).reshape(x.shape[0], -1)
    mu, logvar = self.to_mu(x), self.to_logvar(x)
    x = self.from_latent(mu).reshape(mu.shape[0], *self.seed_hw, VAE_CHANNELS[-1])
    x = x.permute(0, 3, 1, 2)
    for conv in self.decoder:
      x = TF.leaky_relu(conv(TF.interpolate(x, scale_factor=2, mode="nearest")), 0.2)
    x = self.to_image(x)
    h, w, _ = self.image_shape
    top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
    return torch.sigmoid(x[:, :, top:top + h, left:left + w]), mu, logvar


def cross_entropy(logits, labels):
  """Per-example CE as log1p(sum_{j != y} exp(l_j - l_y)), as geniu_jax.geniu.losses."""
  shifted = logits - logits.gather(1, labels[:, None])
  others = shifted.masked_fill(TF.one_hot(labels, logits.shape[1]).bool(), float("-inf"))
  return torch.log1p(torch.exp(torch.logsumexp(others, dim=1)))


def in_batch_tuning(model, proxies, labels, forget_mask, rounds, lr, trace=True):
  """Eq. 10 for `rounds` rounds; returns the per-round loss (and trace) lists.

  As geniu_jax, the trace of the parameters after r rounds is read off the
  forward that computes update r + 1 (one forward + backward per round), plus
  one forward after the last round.
  """
  model.eval()  # stored BatchNorm statistics, as geniu_jax
  opt = torch.optim.Adam(model.parameters(), lr=lr)
  losses, forget_probs, retain_accs = [], [], []

  def record(logits):
    own = logits.softmax(1).gather(1, labels[:, None])[:, 0]
    forget_probs.append(torch.where(forget_mask, own, 0.0).max())
    hits = (logits.argmax(1) == labels) & ~forget_mask
    retain_accs.append(hits.sum() / (~forget_mask).sum().clamp_min(1))

  for _ in range(rounds):
    logits = model(proxies)
    ce = cross_entropy(logits, labels)
    loss = torch.where(forget_mask, 1.0 / (ce + CE_FLOOR), ce).sum()
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    losses.append(loss.detach())
    if trace:
      with torch.no_grad():
        record(logits.detach())
  if trace:
    with torch.no_grad():
      record(model(proxies))
  return losses, forget_probs, retain_accs


def unlearn(model, vae, prompts, forget, rounds=100, lr=4e-4, trace=True):
  """Alg. 2: x' = g(z) (latent mean), then in-batch tuning of `model` in place."""
  num_classes = model.head.out_features
  labels = torch.arange(prompts.shape[0], device=prompts.device) % num_classes
  forget_mask = (labels[:, None] == torch.as_tensor(forget, device=prompts.device)[None, :]).any(1)
  with torch.no_grad():
    proxies = vae(prompts)[0]
  return in_batch_tuning(model, proxies, labels, forget_mask, rounds, lr, trace)


def make_train_step(model, lr=0.01, weight_decay=1e-4):
  """One eager classifier step on (x, y); Adam's weight_decay is coupled L2 like optax's chain."""
  opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)

  def step(x, y):
    model.train()
    logits = model(x)
    loss = TF.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach(), (logits.argmax(1) == y).sum()

  return step


def _sync(device):
  if device.type == "cuda":
    torch.cuda.synchronize()


def _timed(fn, device, warmup, reps):
  """(wall seconds per run, median process CPU seconds per run) after `warmup` runs."""
  for _ in range(warmup):
    fn()
  _sync(device)
  times, cpus = [], []
  for _ in range(reps):
    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    _sync(device)
    t1, r1 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF)
    times.append(t1 - t0)
    cpus.append(r1.ru_utime + r1.ru_stime - r0.ru_utime - r0.ru_stime)
  return times, statistics.median(cpus)


def bench_unlearn(width=1.0, rounds=100, per_class=1, num_classes=10, reps=5, warmup=1,
                  trace=True, device="cpu", seed=0):
  """Median wall time of Alg. 2 (proxy generation + `rounds` rounds), fresh model each run."""
  dev = torch.device(device)
  torch.manual_seed(seed)
  base = AllCNN(num_classes, 1, width).to(dev)
  vae = VAE().to(dev).eval()
  prompts = torch.randn(num_classes * per_class, 1, 28, 28, device=dev)
  state = {k: v.clone() for k, v in base.state_dict().items()}

  def run():
    base.load_state_dict(state)  # every run starts from the original model
    unlearn(base, vae, prompts, [0], rounds, trace=trace)

  times, cpu_s = _timed(run, dev, warmup, reps)
  return {"median_ms": statistics.median(times) * 1e3, "times_ms": [t * 1e3 for t in times],
          "cpu_s": cpu_s}


def bench_train(width=1.0, batch=256, reps=5, warmup=2, device="cpu", seed=0, n=2048):
  """Median time of one classifier step (index a batch, forward, backward, Adam)."""
  dev = torch.device(device)
  torch.manual_seed(seed)
  model = AllCNN(10, 1, width).to(dev)
  x_all = torch.rand(n, 1, 28, 28, device=dev)
  y_all = torch.randint(0, 10, (n,), device=dev)
  step = make_train_step(model)
  gen = torch.Generator().manual_seed(seed)

  def run():
    idx = torch.randint(0, n, (batch,), generator=gen).to(dev)
    step(x_all[idx], y_all[idx])

  times, cpu_s = _timed(run, dev, warmup, reps)
  med = statistics.median(times)
  return {"median_ms": med * 1e3, "img_s": batch / med, "times_ms": [t * 1e3 for t in times],
          "cpu_s": cpu_s}


def environment(device="cpu") -> dict:
  env = {"torch": torch.__version__, "threads": torch.get_num_threads(), "device": device}
  if device.startswith("cuda") and torch.cuda.is_available():
    env["gpu"] = torch.cuda.get_device_name()
  return env


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("task", choices=("unlearn", "train"))
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--rounds", type=int, default=100)
  p.add_argument("--per-class", type=int, default=1)
  p.add_argument("--batch", type=int, default=256)
  p.add_argument("--reps", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--no-trace", action="store_true", help="paper's bare loop, no per-round trace")
  p.add_argument("--threads", type=int, default=os.cpu_count(),
                 help="intra-op threads (default: all cores, as XLA uses)")
  p.add_argument("--device", default="cpu")
  p.add_argument("--malloc-tuning", action="store_true",
                 help="glibc: keep freed memory in the heap (as benchmarks._common.tune_malloc)")
  p.add_argument("--json", action="store_true")
  args = p.parse_args(argv)
  if args.malloc_tuning:
    import ctypes
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-4, 0)        # M_MMAP_MAX: no mmap-served blocks
    libc.mallopt(-1, 1 << 30)  # M_TRIM_THRESHOLD: keep 1 GiB of free heap
  torch.set_num_threads(args.threads)
  if args.task == "unlearn":
    out = bench_unlearn(args.width, args.rounds, args.per_class, reps=args.reps,
                        warmup=args.warmup, trace=not args.no_trace, device=args.device)
    print(f"torch unlearn width {args.width} rounds {args.rounds}: "
          f"median {out['median_ms']:.1f} ms over {args.reps} runs")
  else:
    out = bench_train(args.width, args.batch, reps=args.reps, warmup=max(args.warmup, 1),
                      device=args.device)
    print(f"torch train width {args.width} batch {args.batch}: {out['img_s']:.1f} img/s "
          f"(median step {out['median_ms']:.1f} ms)")
  out.update(task=args.task, **environment(args.device))
  if args.json:
    print(json.dumps(out))
  return 0


if __name__ == "__main__":
  sys.exit(main())
