"""The import graph of `geniu_jax` and `experiments` has no cycle.

Every `import` statement counts, those inside functions included: a
function-level import that closes a cycle still ties two layers together.
"""

import ast
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


def import_graph(package: str) -> dict[str, set[str]]:
  """module -> the modules of `package` it imports (statically, at any depth)."""
  files = {_module_name(p): p for p in (ROOT / package).rglob("*.py")}
  modules = set(files)
  graph: dict[str, set[str]] = {m: set() for m in modules}
  for module, path in files.items():
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
      targets: list[str] = []
      if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
          anchor = module.split(".") if is_package else module.split(".")[:-1]
          anchor = anchor[:len(anchor) - (node.level - 1)]
          base = ".".join(anchor + ([base] if base else []))
        # `from pkg import mod` imports the submodule `pkg.mod` when there is
        # one, else a name defined in `pkg` itself.
        targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                   for alias in node.names]
      for target in targets:
        resolved = _resolve(target, modules)
        if resolved and resolved != module:
          graph[module].add(resolved)
  return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
  """Tarjan's algorithm: the components of more than one module."""
  index: dict[str, int] = {}
  low: dict[str, int] = {}
  stack: list[str] = []
  on_stack: set[str] = set()
  found: list[list[str]] = []

  def visit(v: str) -> None:
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1:
        found.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return found


def test_cycle_finder_finds_a_planted_cycle():
  graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
  assert strongly_connected(graph) == [["a", "b", "c"]]
  assert strongly_connected({"a": {"b"}, "b": set()}) == []


@pytest.mark.parametrize("package", ["geniu_jax", "experiments"])
def test_no_import_cycle(package):
  graph = import_graph(package)
  assert len(graph) > 5   # the walk found the package's modules
  assert strongly_connected(graph) == []


def test_library_does_not_import_experiments_or_benchmarks():
  # The library is installed alone; the experiments and benchmarks run from the
  # repository root and sit above it.
  for path in (ROOT / "geniu_jax").rglob("*.py"):
    for node in ast.walk(ast.parse(path.read_text())):
      if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
      elif isinstance(node, ast.ImportFrom) and not node.level:
        names = [node.module or ""]
      else:
        continue
      assert not any(n.split(".")[0] in ("experiments", "benchmarks") for n in names), (
          f"{path.relative_to(ROOT)} imports {names}")
