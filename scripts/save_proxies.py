"""Saves a checkpoint's prompts z and proxies g(z) as one PNG grid (App. D, Fig. 4).

Row pairs per proxy rank b: prompts (min-max scaled) above, proxies below; one
column per class. Needs pillow (`pip install -e ".[viz]"`).

    python scripts/save_proxies.py --ckpt runs/fm/original --out proxies.png
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from geniu_jax import checkpoint as ckpt_lib
from geniu_jax.geniu.generator import make_proxies


def grid(images: np.ndarray, rows: int, cols: int, scale: int = 3) -> np.ndarray:
  h, w, c = images.shape[1:]
  canvas = np.ones((rows * (h + 2), cols * (w + 2), c), np.float32)
  for i, img in enumerate(images):
    r, q = divmod(i, cols)
    canvas[r * (h + 2):r * (h + 2) + h, q * (w + 2):q * (w + 2) + w] = img
  canvas = np.kron(canvas, np.ones((scale, scale, 1), np.float32))
  return (np.clip(canvas, 0, 1) * 255).astype(np.uint8)


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--ckpt", required=True)
  p.add_argument("--out", required=True)
  args = p.parse_args(argv)
  from PIL import Image
  ck = ckpt_lib.restore(args.ckpt)
  if ck.generator is None:
    print(f"error: {args.ckpt} has no generator", file=sys.stderr)
    return 2
  k = ck.metadata["num_classes"]
  z = np.asarray(ck.prompts)
  x = np.asarray(make_proxies(ck.generator.graphdef, ck.generator.params, ck.prompts))
  zs = (z - z.min(axis=(1, 2, 3), keepdims=True)) / np.ptp(z, axis=(1, 2, 3), keepdims=True)
  per_class = z.shape[0] // k
  rows = []
  for b in range(per_class):
    rows += [zs[b * k:(b + 1) * k], x[b * k:(b + 1) * k]]
  img = grid(np.concatenate(rows), 2 * per_class, k)
  Image.fromarray(img[..., 0] if img.shape[-1] == 1 else img).save(args.out)
  print(f"wrote {args.out}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
