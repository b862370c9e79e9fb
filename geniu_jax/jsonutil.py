"""Strict JSON for everything the package writes.

Python's `json` writes non-finite floats as the bare tokens `NaN`, `Infinity`
and `-Infinity`, which are not JSON (RFC 8259): strict parsers (JavaScript,
`jq`, Go, Rust's serde_json) reject the whole file. A metric that is
undefined (e.g. an accuracy over no examples) is written as null instead.
"""

from __future__ import annotations

import json
import math
import numbers
from typing import Any

import numpy as np


def finite_or_null(value: Any) -> Any:
  """Copy of `value` with every non-finite float (NaN, +-inf) replaced by None.

  Dicts keep their keys, tuples become lists (as `json` writes them); numpy
  floating scalars count as floats. Anything else is returned unchanged, so
  `json` still rejects what it cannot write.
  """
  if isinstance(value, dict):
    return {k: finite_or_null(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [finite_or_null(v) for v in value]
  if (isinstance(value, numbers.Real) and not isinstance(value, numbers.Integral)
      and not math.isfinite(value)):
    return None
  return value


def dumps(value: Any, **kwargs) -> str:
  """`json.dumps` of `finite_or_null(value)` that refuses to write bare NaN."""
  return json.dumps(finite_or_null(value), allow_nan=False, **kwargs)


def plain(value: Any) -> Any:
  """Plain JSON types from numbers, arrays and nested containers, floats
  rounded to 4 decimals (reports and grid records; not for exact data)."""
  if isinstance(value, dict):
    return {str(k): plain(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [plain(v) for v in value]
  if hasattr(value, "__array__"):   # numpy and jax arrays and scalars, 0-d included
    return plain(np.asarray(value).tolist())
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, numbers.Integral):
    return int(value)
  if isinstance(value, numbers.Real):
    return round(float(value), 4)
  return value
