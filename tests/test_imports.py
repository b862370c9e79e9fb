"""The import graph of `geniu_jax` and `experiments` has no cycle.

Every `import` statement counts, those inside functions included: a
function-level import that closes a cycle still ties two layers together.
"""

import ast
import graphlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _module_name(path: Path) -> str:
  parts = list(path.relative_to(ROOT).with_suffix("").parts)
  if parts[-1] == "__init__":
    parts.pop()
  return ".".join(parts)


def _resolve(name: str, modules: set[str]) -> str | None:
  """The longest prefix of `name` that is one of `modules` (`a.b.c` -> `a.b`)."""
  while name:
    if name in modules:
      return name
    name = name.rpartition(".")[0]
  return None


def imported_modules(path: Path, module: str, modules: set[str] = frozenset()):
  """The absolute names each `import` statement of `path` imports (at any depth)."""
  is_package = path.name == "__init__.py"
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = module.split(".") if is_package else module.split(".")[:-1]
        anchor = anchor[:len(anchor) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      # `from pkg import mod` imports the submodule `pkg.mod` when `modules`
      # has it, else a name defined in `pkg` itself.
      yield from (f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                  for alias in node.names)


def import_graph(package: str) -> dict[str, set[str]]:
  """module -> the modules of `package` it imports (statically, at any depth)."""
  files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
  modules = set(files)
  graph: dict[str, set[str]] = {}
  for module, path in files.items():
    names = (_resolve(name, modules) for name in imported_modules(path, module, modules))
    graph[module] = {name for name in names if name and name != module}
  return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
  """One import cycle of `graph` (a list of modules, first = last), or None."""
  try:
    graphlib.TopologicalSorter(graph).prepare()
  except graphlib.CycleError as err:
    return err.args[1]
  return None


def test_cycle_finder_finds_a_planted_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  cycle = find_cycle(graph)
  assert cycle[0] == cycle[-1] and set(cycle) == {"a", "b", "c"}
  assert find_cycle({"a": {"b"}, "b": set()}) is None


@pytest.mark.parametrize("package", ["geniu_jax", "experiments"])
def test_no_import_cycle(package):
  graph = import_graph(package)
  assert len(graph) > 5   # the walk found the package's modules
  assert find_cycle(graph) is None


def test_library_does_not_import_experiments_or_benchmarks():
  # The library is installed alone; the experiments and benchmarks run from the
  # repository root and sit above it.
  for path in (ROOT / "geniu_jax").rglob("*.py"):
    names = set(imported_modules(path, _module_name(path)))
    assert not {n.split(".")[0] for n in names} & {"experiments", "benchmarks"}, path
