"""Strict JSON for everything the package writes: `geniu_jax/jsonutil.py`.

Non-finite floats become null (never the non-JSON tokens NaN / Infinity),
`dumps` refuses what it cannot write strictly, and `plain` turns numpy / jax
numbers and arrays into plain JSON types with floats rounded to 4 decimals.
"""

from __future__ import annotations

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from geniu_jax import jsonutil


def _strict_loads(text: str):
  """json.loads that fails on NaN / Infinity instead of accepting them."""
  def refuse(token):
    raise ValueError(f"non-JSON token {token}")
  return json.loads(text, parse_constant=refuse)


def test_finite_or_null_replaces_every_non_finite_float():
  value = {"nan": math.nan, "inf": math.inf, "ninf": -math.inf,
           "np": [np.float32("nan"), np.float64("-inf"), np.float32(1.5)],
           "nested": ({"deep": (math.nan, 2.0)},)}
  assert jsonutil.finite_or_null(value) == {
      "nan": None, "inf": None, "ninf": None, "np": [None, None, 1.5],
      "nested": [{"deep": [None, 2.0]}]}


def test_finite_or_null_keeps_everything_else():
  arr = np.array([np.nan])
  value = {"i": 3, "b": True, "s": "nan", "n": None, "f": -0.25, "big": 1e308,
           "np_int": np.int64(7), "arr": arr}
  got = jsonutil.finite_or_null(value)
  assert got == {k: v for k, v in value.items() if k != "arr"} | {"arr": arr}
  assert got["arr"] is arr            # not a float: returned as is, for json to refuse
  assert type(got["b"]) is bool and type(got["i"]) is int
  assert jsonutil.finite_or_null((1, 2)) == [1, 2]   # tuples become lists, as json writes


def test_dumps_writes_null_for_non_finite_floats():
  text = jsonutil.dumps({"acc_f": math.nan, "trace": (math.inf, 0.5), "k": 3}, sort_keys=True)
  assert text == '{"acc_f": null, "k": 3, "trace": [null, 0.5]}'
  assert _strict_loads(text) == {"acc_f": None, "k": 3, "trace": [None, 0.5]}
  assert "NaN" not in jsonutil.dumps([np.float32("nan")]) and "Infinity" not in text


def test_dumps_refuses_what_strict_json_cannot_hold():
  assert "NaN" in json.dumps({math.nan: 1})     # plain json writes a bare NaN key here
  with pytest.raises(ValueError, match="not JSON compliant"):
    jsonutil.dumps({math.nan: 1})
  with pytest.raises(TypeError):
    jsonutil.dumps({"x": np.array([1.0, np.nan])})   # arrays need `plain` first


def test_plain_rounds_floats_to_4_decimals():
  got = jsonutil.plain({"a": 0.123456, "b": np.float32(2.00004), "c": -1.23455e-3,
                        "d": jnp.float32(0.5), "e": np.float64(1 / 3)})
  assert got == {"a": 0.1235, "b": 2.0, "c": -0.0012, "d": 0.5, "e": 0.3333}
  assert all(type(v) is float for v in got.values())


def test_plain_converts_arrays_bools_ints_and_keys():
  got = jsonutil.plain({
      1: np.array([[1.23456, 2.0], [3.0, 4.00001]], np.float32),
      "jax": jnp.array([0.5, 1.0 / 3.0]),
      "ints": np.arange(3, dtype=np.int64),
      "mask": jnp.array([True, False]),
      "np_bool": np.bool_(True), "bool": False,
      "np_int": np.int32(7), "tuple": (np.float64(0.99999), "x"), "none": None, "s": "s",
  })
  assert got == {"1": [[1.2346, 2.0], [3.0, 4.0]], "jax": [0.5, 0.3333], "ints": [0, 1, 2],
                 "mask": [True, False], "np_bool": True, "bool": False, "np_int": 7,
                 "tuple": [1.0, "x"], "none": None, "s": "s"}
  assert type(got["np_bool"]) is bool and type(got["mask"][0]) is bool
  assert type(got["np_int"]) is int and all(type(v) is int for v in got["ints"])
  assert _strict_loads(jsonutil.dumps(got)) == got


def test_plain_keeps_the_type_of_zero_dimensional_arrays():
  assert jsonutil.plain(jnp.asarray(True)) is True
  assert jsonutil.plain(np.asarray(3)) == 3 and isinstance(jsonutil.plain(np.asarray(3)), int)
  assert jsonutil.plain(jnp.asarray(0.123456)) == 0.1235
