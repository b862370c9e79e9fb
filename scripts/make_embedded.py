"""Builds geniu_jax/data/embedded_fmnist.npz, the Fashion-MNIST subset shipped in the package.

Usage:
    python scripts/make_embedded.py --idx /usr/share/datasets/fashion-mnist \\
        --out geniu_jax/data/embedded_fmnist.npz

The subset is stratified (the same number of images per class) and
deterministic: for class k the candidates are shuffled with
``np.random.default_rng((seed, k))`` and the first n are kept, so a smaller n
gives a subset of a larger one. The script starts at --train-per-class /
--test-per-class and, while the compressed file exceeds --max-bytes, lowers
both by the same fraction (step 10 train images per class), so it ships as
much real data as the size budget allows.

The archive is written in exactly the np.savez_compressed format (a zip of
.npy members, read with np.load), but through zipfile directly so that member
timestamps are fixed and deflate runs at level 9: rerunning the script gives
a byte-identical file, which makes the committed binary checkable.

Stored arrays (no pickles):
    x_train uint8 [N,28,28], y_train uint8 [N], x_test uint8 [M,28,28],
    y_test uint8 [M], train_index / test_index uint16: the rows of the
    original Fashion-MNIST files, so the subset can be audited.
Rows are kept in original file order, not grouped by class, so that slicing
x_train[:n] still gives a class mix.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import zipfile

import numpy as np

# Run as a plain script from a checkout: make the package importable.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from geniu_jax.data.sources import read_idx_dir  # noqa: E402

NUM_CLASSES = 10


def stratified_indices(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Picks `per_class` rows of each class, seeded per class, in file order."""
    picks = []
    for k in range(NUM_CLASSES):
        rows = np.flatnonzero(labels == k)
        if rows.size < per_class:
            raise SystemExit(f"class {k} has only {rows.size} images, {per_class} requested")
        picks.append(np.random.default_rng((seed, k)).permutation(rows)[:per_class])
    return np.sort(np.concatenate(picks))


def build(arrays: dict[str, np.ndarray], n_train: int, n_test: int, seed: int) -> bytes:
    """Returns the npz bytes for a subset with the given per-class counts."""
    tr = stratified_indices(arrays["y_train"], n_train, seed)
    te = stratified_indices(arrays["y_test"], n_test, seed)
    members = {
        "x_train": arrays["x_train"][tr],
        "y_train": arrays["y_train"][tr],
        "x_test": arrays["x_test"][te],
        "y_test": arrays["y_test"][te],
        # uint16 holds every row number of the 60000-image train file.
        "train_index": tr.astype(np.uint16),
        "test_index": te.astype(np.uint16),
    }
    return npz_bytes(members)


def npz_bytes(members: dict[str, np.ndarray]) -> bytes:
    """np.savez_compressed's format with fixed timestamps and deflate level 9."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, array in members.items():
            npy = io.BytesIO()
            np.lib.format.write_array(npy, np.ascontiguousarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0))
            zf.writestr(info, npy.getvalue(), compress_type=zipfile.ZIP_DEFLATED, compresslevel=9)
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idx", required=True, help="directory with the four Fashion-MNIST IDX files")
    parser.add_argument("--out", required=True, help="output .npz path")
    parser.add_argument("--train-per-class", type=int, default=600)
    parser.add_argument("--test-per-class", type=int, default=150)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-bytes", type=int, default=3_000_000, help="size budget (decimal MB)")
    args = parser.parse_args(argv)

    arrays = read_idx_dir(args.idx)
    if arrays["x_train"].shape[1:] != (28, 28) or int(arrays["y_train"].max()) != NUM_CLASSES - 1:
        raise SystemExit(f"{args.idx} does not look like Fashion-MNIST")
    ratio = args.test_per_class / args.train_per_class
    n_train = args.train_per_class
    while n_train > 0:
        n_test = max(1, round(n_train * ratio))
        data = build(arrays, n_train, n_test, args.seed)
        print(f"{n_train}/{n_test} per class -> {len(data)} bytes")
        if len(data) <= args.max_bytes:
            break
        n_train -= 10
    else:
        raise SystemExit(f"nothing fits in {args.max_bytes} bytes")
    with open(args.out, "wb") as f:
        f.write(data)
    print(
        f"wrote {args.out}: {NUM_CLASSES * n_train} train + {NUM_CLASSES * n_test} test images "
        f"({n_train}/{n_test} per class, seed {args.seed}), {len(data)} bytes"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
