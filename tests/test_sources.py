"""Tests for geniu_jax/data/sources.py: tfds, idx, npz and embedded sources, real MNIST / Fashion-MNIST."""

from __future__ import annotations

import gzip
import os
import sys

import numpy as np
import pytest

from geniu_jax.data import DataError, Dataset, class_counts, from_arrays, load, sources

FMNIST_DIR = "/usr/share/datasets/fashion-mnist"
# scripts/get_mnist.sh (run by .ci/run) puts real MNIST here.
MNIST_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "data_cache", "mnist")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
EMBEDDED = os.path.join(os.path.dirname(sources.__file__), "embedded_fmnist.npz")


def _check(ds: Dataset, shape, num_classes):
    """Invariants every loaded dataset must satisfy."""
    assert ds.image_shape == shape
    assert ds.num_classes == num_classes
    for x, y in ((ds.x_train, ds.y_train), (ds.x_test, ds.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.shape[1:] == shape and x.shape[0] == y.shape[0] > 0
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert 0 <= y.min() and y.max() < num_classes


# --- tfds -----------------------------------------------------------------


@pytest.mark.parametrize("name,shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)),
                                        ("kmnist", (28, 28, 1)), ("cifar10", (32, 32, 3))])
def test_tfds_mock(name, shape):
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        ds = load(f"tfds:{name}")
    _check(ds, shape, 10)
    assert ds.x_train.shape[0] == 12 and ds.name == f"tfds:{name}"
    assert ds.x_train.max() > 0.5  # really scaled from uint8, not all zeros
    # The point of tfds.data_source: no TensorFlow import.
    assert "tensorflow" not in sys.modules


def test_tfds_unknown_name():
    with pytest.raises(DataError, match="unknown tfds dataset 'imagenet2012'"):
        load("tfds:imagenet2012")


def test_tfds_failure_is_one_line(monkeypatch):
    tfds = pytest.importorskip("tensorflow_datasets")

    def offline(*args, **kwargs):
        raise OSError("Max retries exceeded\nFailed to resolve 'storage.googleapis.com'")

    monkeypatch.setattr(tfds, "data_source", offline)
    with pytest.raises(DataError) as err:
        load("tfds:fashion_mnist")
    msg = str(err.value)
    assert "\n" not in msg and "tfds:fashion_mnist" in msg and "storage.googleapis.com" in msg


# --- idx ------------------------------------------------------------------


def _idx_bytes(a: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, a.ndim]) + np.asarray(a.shape, ">u4").tobytes()
    return header + a.astype(np.uint8).tobytes()


def _write_idx_dir(d, gz: bool, n_train=12, n_test=5, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 4, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(n_test, dtype=np.uint8) % 4,  # contains label 3
    }
    for stem, a in arrays.items():
        data = _idx_bytes(a)
        if gz:
            (d / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (d / stem).write_bytes(data)
    return arrays


@pytest.mark.parametrize("gz", [True, False])
def test_idx_roundtrip(tmp_path, gz):
    arrays = _write_idx_dir(tmp_path, gz)
    ds = load(f"idx:{tmp_path}")
    _check(ds, (28, 28, 1), 4)  # max label + 1
    np.testing.assert_array_equal(np.rint(ds.x_train[..., 0] * 255), arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])


@pytest.mark.parametrize("gz", [True, False])
def test_idx_truncated(tmp_path, gz):
    _write_idx_dir(tmp_path, gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    path = tmp_path / name
    data = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    data = data[:-100]
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match="train-images-idx3-ubyte.*payload"):
        load(f"idx:{tmp_path}")


def test_idx_bad_magic_and_bad_gzip(tmp_path):
    arrays = _write_idx_dir(tmp_path, gz=False)
    # Labels where images belong: rank 1 instead of 3.
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(_idx_bytes(arrays["t10k-labels-idx1-ubyte"]))
    with pytest.raises(DataError, match="magic"):
        load(f"idx:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"this is not gzip")
    with pytest.raises(DataError, match="cannot read IDX file"):
        load(f"idx:{tmp_path}")


def test_idx_missing_file(tmp_path):
    _write_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte"):
        load(f"idx:{tmp_path}")


@pytest.fixture(scope="module")
def real_fmnist():
    if not os.path.isdir(FMNIST_DIR):
        pytest.skip(f"{FMNIST_DIR} not available")
    return load(f"idx:{FMNIST_DIR}")


def test_idx_real_fashion_mnist(real_fmnist):
    _check(real_fmnist, (28, 28, 1), 10)
    assert real_fmnist.x_train.shape[0] == 60000 and real_fmnist.x_test.shape[0] == 10000
    np.testing.assert_array_equal(class_counts(real_fmnist.y_train, 10), [6000] * 10)


# --- npz ------------------------------------------------------------------


def test_npz_uint8_hw(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (10, 28, 28), dtype=np.uint8)
    # Classes 3 and 4 have no image, so K is declared rather than inferred.
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(10) % 3, x_test=x[:4], y_test=np.array([0, 1, 2, 5]),
             num_classes=6)
    ds = load(f"npz:{tmp_path / 'd.npz'}")
    _check(ds, (28, 28, 1), 6)
    np.testing.assert_allclose(ds.x_train[..., 0], x / 255.0, atol=1e-7)


def test_npz_float_hwc(tmp_path):
    x = np.random.default_rng(2).random((6, 32, 32, 3))  # float64 in [0, 1)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=np.arange(6), x_test=x[:2], y_test=np.array([[0], [1]]))
    ds = load(f"npz:{tmp_path / 'd.npz'}")
    _check(ds, (32, 32, 3), 6)
    np.testing.assert_allclose(ds.x_test, x[:2], rtol=1e-6)
    np.savez(tmp_path / "bad.npz", x_train=x * 255, y_train=np.arange(6), x_test=x[:2], y_test=np.arange(2))
    with pytest.raises(DataError, match=r"must be in \[0, 1\]"):
        load(f"npz:{tmp_path / 'bad.npz'}")


def test_npz_bad_contents(tmp_path):
    np.savez(tmp_path / "partial.npz", x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.zeros(2, int))
    with pytest.raises(DataError, match="missing arrays x_test, y_test"):
        load(f"npz:{tmp_path / 'partial.npz'}")
    (tmp_path / "junk.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="not a readable npz"):
        load(f"npz:{tmp_path / 'junk.npz'}")
    x = np.zeros((3, 4, 4), np.uint8)
    np.savez(tmp_path / "n.npz", x_train=x, y_train=np.zeros(2, int), x_test=x, y_test=np.zeros(3, int))
    with pytest.raises(DataError, match="2 labels for 3 images"):
        load(f"npz:{tmp_path / 'n.npz'}")


# --- embedded -------------------------------------------------------------


def test_embedded():
    assert os.path.getsize(EMBEDDED) <= 3_000_000
    ds = load("embedded")
    _check(ds, (28, 28, 1), 10)
    assert ds.name == "embedded"
    assert ds.x_train.shape[0] >= 5000 and ds.x_test.shape[0] >= 1000
    # Stratified: every class has the same count.
    assert len(set(class_counts(ds.y_train, 10).tolist())) == 1
    assert len(set(class_counts(ds.y_test, 10).tolist())) == 1


def test_embedded_rows_are_real_fashion_mnist(real_fmnist):
    with np.load(EMBEDDED) as z:
        idx, x = z["train_index"], z["x_train"]
    np.testing.assert_array_equal(x, np.rint(real_fmnist.x_train[idx, ..., 0] * 255).astype(np.uint8))


# --- errors ---------------------------------------------------------------


@pytest.mark.parametrize(
    "source,match",
    [
        ("foo:bar", "unknown data source"),
        ("mnist", "unknown data source"),
        ("", "unknown data source"),
        ("idx:", "needs a value"),
        ("idx:/nonexistent/geniu", "directory not found: /nonexistent/geniu"),
        ("npz:/nonexistent/geniu.npz", "file not found: /nonexistent/geniu.npz"),
    ],
)
def test_bad_sources(source, match):
    with pytest.raises(DataError, match=match) as err:
        load(source)
    assert "\n" not in str(err.value)


def test_from_arrays_validation():
    x = np.zeros((4, 8, 8), np.uint8)
    with pytest.raises(DataError, match="out of range for 3 classes"):
        from_arrays(x, np.array([0, 1, 2, 3]), x, np.zeros(4, int), num_classes=3)
    with pytest.raises(DataError, match="test images"):
        from_arrays(x, np.zeros(4, int), np.zeros((4, 9, 9), np.uint8), np.zeros(4, int))
    with pytest.raises(DataError, match="integer pixels"):
        from_arrays(x.astype(np.int64) + 300, np.zeros(4, int), x, np.zeros(4, int))


def test_real_mnist_from_npm():
    """The npm package's IDX files are the canonical MNIST (sizes and label counts)."""
    if not os.path.isfile(os.path.join(MNIST_DIR, "train-labels-idx1-ubyte")):
        pytest.skip(f"{MNIST_DIR} not available (scripts/get_mnist.sh fetches it)")
    ds = load(f"idx:{MNIST_DIR}")
    _check(ds, (28, 28, 1), 10)
    assert np.bincount(ds.y_train).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(ds.y_test).tolist() == MNIST_TEST_COUNTS
