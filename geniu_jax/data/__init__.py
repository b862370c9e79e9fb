"""Data layer of geniu_jax: dataset sources and class imbalance.

`load` turns a source string (``tfds:<name>``, ``idx:<dir>``, ``npz:<path>``
or ``embedded``) into an in-memory `Dataset` of float32 NHWC images in [0, 1]
and int32 labels; `make_imbalanced` then subsamples the non-majority classes
as in the GENIU paper.
"""

from geniu_jax.data.imbalance import class_counts, format_counts, make_imbalanced, parse_imbalance
from geniu_jax.data.sources import DataError, Dataset, check_image_shape, from_arrays, load

__all__ = [
    "DataError",
    "Dataset",
    "load",
    "from_arrays",
    "check_image_shape",
    "parse_imbalance",
    "make_imbalanced",
    "class_counts",
    "format_counts",
]
