"""Dataset sources: tfds, IDX files, npz archives and a bundled Fashion-MNIST subset.

Every source becomes the same in-memory `Dataset`: float32 NHWC images in
[0, 1] and int32 labels in [0, num_classes). The datasets GENIU uses
(MNIST-style 28x28x1, CIFAR-10 32x32x3) fit in host memory, so there is no
streaming; training and unlearning code index plain arrays.

Source strings accepted by `load`:

* ``tfds:<name>`` -- ``mnist``, ``fashion_mnist``, ``kmnist`` or ``cifar10``
  through ``tfds.data_source`` (ArrayRecord, random access, no TensorFlow).
  Downloads and prepares the data on first use into TFDS_DATA_DIR (default
  ~/tensorflow_datasets); any failure becomes a one-line `DataError`.
* ``idx:<dir>`` -- the four standard IDX files, plain or gzipped (``.gz``).
* ``npz:<path>`` -- arrays ``x_train``, ``y_train``, ``x_test``, ``y_test``;
  uint8 images are scaled by 1/255, float images must already be in [0, 1].
  An optional scalar ``num_classes`` array declares K; without it K is the
  largest label + 1 and every class id below it must have a sample.

Images may have any height and width >= 1 (AllCNN pools globally; the VAE
generator crops its decoder's output to the input size) and 1 to 4 channels;
anything else, notably a channels-first [N, C, H, W] array, is refused.
* ``embedded`` -- the stratified Fashion-MNIST subset shipped in the package
  (540 train + 135 test images per class; see LICENSE-fashion-mnist.txt).
"""

from __future__ import annotations

import gzip
import importlib.resources
import os
import zipfile
import zlib
from typing import NamedTuple

import numpy as np

__all__ = ["DataError", "Dataset", "load", "from_arrays", "check_image_shape", "read_idx", "read_idx_dir",
           "TFDS_NAMES", "MIN_CLASSES", "MAX_CHANNELS"]

#: tfds datasets that `load` accepts; all have 10 classes.
TFDS_NAMES = ("mnist", "fashion_mnist", "kmnist", "cifar10")
_KNOWN_NUM_CLASSES = 10
#: Unlearning a class needs at least one class left to retain.
MIN_CLASSES = 2
#: Grayscale, grayscale + alpha, RGB, RGBA. More channels almost always means a
#: channels-first array read as channels-last.
MAX_CHANNELS = 4
_SUPPORTED_SHAPES = f"[H, W, C] with H, W >= 1 and 1 <= C <= {MAX_CHANNELS} (channels last)"
_SPLIT_KEYS = ("x_train", "y_train", "x_test", "y_test")
_IDX_UBYTE = 0x08  # IDX magic: two zero bytes, a type code (0x08 = ubyte), the rank.
_IDX_FILES = {  # key -> (standard file stem, expected rank)
    "x_train": ("train-images-idx3-ubyte", 3),
    "y_train": ("train-labels-idx1-ubyte", 1),
    "x_test": ("t10k-images-idx3-ubyte", 3),
    "y_test": ("t10k-labels-idx1-ubyte", 1),
}


class DataError(ValueError):
    """Bad data source; the message is one clear line."""


def _one_line(e: BaseException, limit: int = 300) -> str:
    """An exception message squeezed onto one bounded line for DataError.

    Whitespace is collapsed rather than keeping the first line only, because
    tfds puts its useful hints (e.g. "already prepared ... in the tfrecord
    format") on later lines.
    """
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Dataset(NamedTuple):
    """A train/test image classification dataset held in memory.

    Attributes:
        x_train: float32 images [N, H, W, C] in [0, 1].
        y_train: int32 labels [N] in [0, num_classes).
        x_test: float32 images [M, H, W, C] in [0, 1].
        y_test: int32 labels [M] in [0, num_classes).
        num_classes: Number of classes K.
        name: The source string it came from, kept for run metadata.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    name: str

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(int(d) for d in self.x_train.shape[1:])


def check_image_shape(shape, what: str) -> tuple[int, int, int]:
    """Validates one image's (H, W, C) against what the models support.

    Raises:
        DataError: Not three integers, a zero-sized side, or a channel count
            outside [1, MAX_CHANNELS].
    """
    try:
        hwc = tuple(shape)
    except TypeError:
        hwc = None
    if (hwc is None or len(hwc) != 3
            or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in hwc)):
        raise DataError(f"{what}: image shape must be {_SUPPORTED_SHAPES}, got {shape!r}")
    h, w, c = (int(d) for d in hwc)
    if h < 1 or w < 1 or not 1 <= c <= MAX_CHANNELS:
        hint = ""
        if c > MAX_CHANNELS and h <= MAX_CHANNELS:
            hint = "; channels-first data must be transposed to [N, H, W, C]"
        raise DataError(f"{what}: image shape must be {_SUPPORTED_SHAPES}, got {[h, w, c]}{hint}")
    return h, w, c


def _images(x, what: str) -> np.ndarray:
    """Validates images and converts them to float32 NHWC in [0, 1]."""
    x = np.asarray(x)
    if x.ndim == 3:  # [N, H, W] grayscale: add the channel axis models expect.
        x = x[..., None]
    if x.ndim != 4 or x.shape[0] == 0:
        raise DataError(f"{what}: expected non-empty [N,H,W] or [N,H,W,C] images, got shape {x.shape}")
    check_image_shape(x.shape[1:], what)
    if np.issubdtype(x.dtype, np.integer):
        # uint8 is the norm; wider integer types (common in hand-made npz
        # files) are accepted only when they really hold 8-bit pixel values.
        if x.dtype != np.uint8 and (x.min() < 0 or x.max() > 255):
            raise DataError(f"{what}: integer pixels must be in [0, 255], got [{x.min()}, {x.max()}]")
        return x.astype(np.float32) / np.float32(255.0)
    if np.issubdtype(x.dtype, np.floating):
        # Floats are taken as already scaled. A [0, 255] float array is refused
        # rather than guessed at: "divide if max > 1" would silently misread
        # standardized or otherwise preprocessed data.
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise DataError(f"{what}: float images contain NaN or inf")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0.0 or hi > 1.0:
            raise DataError(f"{what}: float images must be in [0, 1] (got [{lo:g}, {hi:g}]); store uint8 or divide by 255")
        return x
    raise DataError(f"{what}: unsupported image dtype {x.dtype}")


def _labels(y, n: int, what: str) -> np.ndarray:
    """Validates labels and converts them to int32 [N]."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:  # CIFAR-style [N, 1] label columns.
        y = y[:, 0]
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{what}: expected 1-D integer labels, got {y.dtype} with shape {y.shape}")
    if y.shape[0] != n:
        raise DataError(f"{what}: {y.shape[0]} labels for {n} images")
    if y.min() < 0:
        raise DataError(f"{what}: negative label {y.min()}")
    return y.astype(np.int32)


def from_arrays(x_train, y_train, x_test, y_test, num_classes: int | None = None, name: str = "arrays") -> Dataset:
    """Builds a validated `Dataset` from in-memory arrays.

    Args:
        x_train: Train images [N,H,W] or [N,H,W,C]; uint8 (scaled by 1/255),
            integers in [0, 255] (scaled likewise) or floats in [0, 1].
        y_train: Train labels [N] (or [N, 1]), non-negative integers.
        x_test: Test images, same per-image shape as `x_train`.
        y_test: Test labels [M].
        num_classes: K; defaults to the largest label (train and test) + 1,
            and then every class id below it must label at least one image
            (train or test): a class with no image at all is a stray label
            such as 12 in 10-class data, not a class.
        name: Recorded in `Dataset.name`.

    Returns:
        The dataset with float32 images and int32 labels.

    Raises:
        DataError: On bad shapes, dtypes, pixel ranges, labels >= K, fewer
            than 2 classes, or (K inferred) class ids with no image.
    """
    xtr, xte = _images(x_train, f"{name} x_train"), _images(x_test, f"{name} x_test")
    if xtr.shape[1:] != xte.shape[1:]:
        raise DataError(f"{name}: train images are {xtr.shape[1:]} but test images are {xte.shape[1:]}")
    ytr = _labels(y_train, xtr.shape[0], f"{name} y_train")
    yte = _labels(y_test, xte.shape[0], f"{name} y_test")
    top = int(max(ytr.max(), yte.max()))
    if num_classes is None:
        absent = np.setdiff1d(np.arange(top + 1), np.concatenate([ytr, yte]))
        if absent.size:
            shown = ", ".join(map(str, absent[:5])) + (", ..." if absent.size > 5 else "")
            raise DataError(
                f"{name}: label {top} is out of range: labels must be the class ids 0..K-1 with "
                f"every class present, but no image has label {shown} (an npz may declare K in a "
                f"'num_classes' array)")
        num_classes = top + 1
    elif top >= num_classes:
        raise DataError(
            f"{name}: label {top} is out of range for {num_classes} classes (labels must be in [0, {num_classes}))")
    if num_classes < MIN_CLASSES:
        raise DataError(
            f"{name}: the labels give K = {num_classes}, but unlearning needs at least {MIN_CLASSES} classes "
            "(labels 0..K-1)")
    return Dataset(xtr, ytr, xte, yte, int(num_classes), name)


def read_idx(path: str | os.PathLike, rank: int) -> np.ndarray:
    """Reads one unsigned-byte IDX file (optionally gzipped) with numpy.

    Args:
        path: File path; a ``.gz`` suffix means gzip.
        rank: Expected number of dimensions (3 for images, 1 for labels).

    Returns:
        A uint8 array with the shape stored in the header.

    Raises:
        DataError: If the file cannot be read, is not an unsigned-byte IDX
            file of that rank, or its payload is truncated or too long.
    """
    path = os.fspath(path)
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # gzip.BadGzipFile is an OSError.
        raise DataError(f"cannot read IDX file {path}: {_one_line(e)}") from None
    header = 4 + 4 * rank
    if len(raw) < header or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE or raw[3] != rank:
        raise DataError(f"{path}: not an unsigned-byte IDX file of rank {rank} (bad magic number {raw[:4].hex()})")
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=rank, offset=4))
    expected = int(np.prod(shape))
    if len(raw) - header != expected:
        raise DataError(f"{path}: header says {shape} = {expected} bytes but payload has {len(raw) - header}")
    return np.frombuffer(raw, np.uint8, offset=header).reshape(shape)


def read_idx_dir(directory: str | os.PathLike) -> dict[str, np.ndarray]:
    """Reads the four standard (Fashion-)MNIST IDX files of a directory.

    Each file may be plain or gzipped; ``train-images.idx3-ubyte`` style names
    (a dot instead of the last hyphen, as some mirrors unpack them) also work.

    Returns:
        uint8 arrays keyed ``x_train``, ``y_train``, ``x_test``, ``y_test``.

    Raises:
        DataError: If the directory or a file is missing or corrupt.
    """
    directory = os.fspath(directory)
    if not os.path.isdir(directory):
        raise DataError(f"idx: directory not found: {directory}")
    out = {}
    for key, (stem, rank) in _IDX_FILES.items():
        dotted = stem.replace("-idx", ".idx")
        candidates = [os.path.join(directory, s + ext) for s in (stem, dotted) for ext in ("", ".gz")]
        found = next((c for c in candidates if os.path.isfile(c)), None)
        if found is None:
            raise DataError(f"idx: {stem}[.gz] not found in {directory}")
        out[key] = read_idx(found, rank)
    return out


def _load_tfds(name: str, source: str) -> Dataset:
    if name not in TFDS_NAMES:
        raise DataError(f"unknown tfds dataset {name!r}; supported: {', '.join(TFDS_NAMES)}")
    import tensorflow_datasets as tfds  # Lazy: heavy import, only this source needs it.

    try:
        # ArrayRecord is the random-access format that needs no TensorFlow;
        # tfds picks it by itself only when neither data_dir nor builder_kwargs
        # is given, so ask for it. download=True is a no-op once the data is
        # prepared; offline, tfds retries for minutes before failing.
        kwargs = {"download": True, "builder_kwargs": {"file_format": "array_record"}}
        train, test = tfds.data_source(name, split=["train", "test"], **kwargs)
        # One record at a time: `__getitems__` would batch reads, but
        # tfds.testing.mock_data (4.9.10) breaks it; image decoding dominates.
        arrays = []
        for split in (train, test):
            examples = [split[i] for i in range(len(split))]
            arrays.append(np.stack([ex["image"] for ex in examples]))
            arrays.append(np.asarray([ex["label"] for ex in examples]))
    except Exception as e:  # noqa: BLE001 -- any tfds failure becomes one line.
        raise DataError(
            f"{source}: tfds could not provide the data ({type(e).__name__}: {_one_line(e)}); "
            "check network access or TFDS_DATA_DIR, or use an idx:/npz: source"
        ) from e
    return from_arrays(*arrays, num_classes=_KNOWN_NUM_CLASSES, name=source)


def _declared_classes(value, what: str) -> int:
    """The optional ``num_classes`` array of an npz: one integer."""
    k = np.asarray(value)
    if k.size != 1 or not np.issubdtype(k.dtype, np.integer):
        raise DataError(f"{what}: 'num_classes' must be one integer, got {k.dtype} with shape {k.shape}")
    return int(k.reshape(()))


def _load_npz_file(file, what: str) -> dict:
    """Reads the four split arrays (and ``num_classes`` if declared) from an npz path or binary file object."""
    try:
        z = np.load(file, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):  # np.load also reads bare .npy files.
            raise DataError(f"{what}: expected an npz archive, got a single array")
        with z:
            missing = [k for k in _SPLIT_KEYS if k not in z.files]
            if missing:
                raise DataError(f"{what}: missing arrays {', '.join(missing)} (need {', '.join(_SPLIT_KEYS)})")
            arrays = {k: z[k] for k in _SPLIT_KEYS}
            if "num_classes" in z.files:
                arrays["num_classes"] = _declared_classes(z["num_classes"], what)
            return arrays
    except DataError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error) as e:
        raise DataError(f"{what}: not a readable npz archive ({type(e).__name__}: {_one_line(e)})") from None


def _load_embedded() -> Dataset:
    resource = importlib.resources.files("geniu_jax.data") / "embedded_fmnist.npz"
    if not resource.is_file():
        raise DataError("embedded: geniu_jax/data/embedded_fmnist.npz is missing from the installed package")
    with resource.open("rb") as f:
        arrays = _load_npz_file(f, "embedded")
    arrays["num_classes"] = _KNOWN_NUM_CLASSES
    return from_arrays(**arrays, name="embedded")


def load(source: str) -> Dataset:
    """Loads a dataset from a source string.

    Args:
        source: ``tfds:<name>``, ``idx:<dir>``, ``npz:<path>`` or ``embedded``
            (see the module docstring).

    Returns:
        The `Dataset`; `name` is the source string.

    Raises:
        DataError: Unknown prefix or tfds name, missing path, corrupt file,
            bad arrays, or a tfds download/prepare failure.
    """
    if not isinstance(source, str):
        raise DataError(f"data source must be a string, got {type(source).__name__}")
    source = source.strip()
    if source == "embedded":
        return _load_embedded()
    prefix, sep, rest = source.partition(":")
    if not sep or prefix not in ("tfds", "idx", "npz"):
        raise DataError(f"unknown data source {source!r}; use tfds:<name>, idx:<dir>, npz:<path> or embedded")
    if not rest:
        raise DataError(f"data source {source!r} needs a value after '{prefix}:'")
    if prefix == "tfds":
        return _load_tfds(rest, source)
    path = os.path.expanduser(rest)
    if prefix == "idx":
        return from_arrays(**read_idx_dir(path), name=source)
    if not os.path.isfile(path):
        raise DataError(f"npz: file not found: {path}")
    return from_arrays(**_load_npz_file(path, source), name=source)
