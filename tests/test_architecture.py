"""The package's layers, read from its import statements (ast, no module is imported).

- **Utility** modules hold the shared pieces (statistics, batching, I/O, model loading, the head patcher, the logit
  lens, ...). They import only other utility modules.
- **Experiment** modules are one study step each (the ``patching`` package counts as one experiment: its modules
  may import each other). They import utility modules, never another experiment.
- **Report** modules read the experiments' outputs; nothing below them imports them.

Every module of the package must be in exactly one of the lists below, so a new module is classified on purpose.
There is no import cycle between the package's modules (top-level or nested imports alike).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "cotmech"

EXPERIMENT = {"activations", "circuits", "flow", "generation", "horizon", "lens", "pairs", "prior_shift", "probing",
              "roles", "patching"}
UTILITY = {"ablation", "batching", "cli", "config", "configcheck", "decoding", "embedded", "heads", "io",
           "modelfiles", "models", "patch_results", "plotting", "prontoqa", "provenance", "readout", "stats",
           "tracing", "unembed", "vocab"}
REPORT = {"report", "figures", "findings"}


def module_name(path: Path, root: Path = PKG) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = PKG) -> set[str]:
    """Package modules imported anywhere in the file (``from .x import y`` may name a submodule y)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "cotmech")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "cotmech":
                continue
            out.add(mod)
            out.update(f"{mod}.{a.name}" for a in node.names)
    return out


def package_graph() -> dict[str, set[str]]:
    """Module -> package modules it imports (names that are not modules, e.g. functions, are dropped)."""
    files = {module_name(p): p for p in PKG.rglob("*.py")}
    graph = {}
    for name, path in files.items():
        deps = set()
        for imp in imports_of(path):
            while imp and imp not in files:  # ``cotmech.x.func`` -> ``cotmech.x``
                imp = imp.rpartition(".")[0]
            if imp and imp != name:
                deps.add(imp)
        graph[name] = deps
    return graph


def top(module: str) -> str:
    """The unit a module belongs to: ``cotmech.patching.exact`` -> ``patching``; ``cotmech`` -> ``cotmech``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "cotmech"


def layer(unit: str) -> str:
    return "experiment" if unit in EXPERIMENT else "utility" if unit in UTILITY else "report" if unit in REPORT \
        else "unknown"


def violations(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for mod, deps in sorted(graph.items()):
        u = top(mod)
        for dep in sorted(deps):
            v = top(dep)
            if u == v or v == "cotmech":
                continue
            if layer(v) == "report" or (layer(u) == "utility" and layer(v) == "experiment") \
                    or (layer(u) == "experiment" and layer(v) == "experiment"):
                bad.append(f"{mod} ({layer(u)}) imports {dep} ({layer(v)})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_module_is_classified_once():
    assert not EXPERIMENT & UTILITY and not EXPERIMENT & REPORT and not UTILITY & REPORT
    units = {top(m) for m in package_graph()} - {"cotmech"}
    assert units == EXPERIMENT | UTILITY | REPORT, (f"unclassified: {sorted(units - EXPERIMENT - UTILITY - REPORT)}; "
                                                    f"gone: {sorted(EXPERIMENT | UTILITY | REPORT - units)}")


def test_experiments_import_only_utilities_and_utilities_only_utilities():
    assert violations(package_graph()) == []


def test_no_import_cycle_in_the_package():
    assert cycles(package_graph()) == []


# The checks themselves, on small hand-made graphs.
def test_the_checks_find_a_planted_violation_and_cycle():
    g = {"cotmech.probing": {"cotmech.circuits", "cotmech.stats"}, "cotmech.circuits": {"cotmech.tracing"},
         "cotmech.stats": set(), "cotmech.tracing": set(), "cotmech.io": {"cotmech.flow"},
         "cotmech.flow": set(), "cotmech.models": {"cotmech.embedded"}, "cotmech.embedded": {"cotmech.models"},
         "cotmech.patching.exact": {"cotmech.patching.data", "cotmech.tracing"}, "cotmech.patching.data": set(),
         "cotmech.plotting": {"cotmech.report"}, "cotmech.report": {"cotmech.flow"}}
    assert violations(g) == ["cotmech.io (utility) imports cotmech.flow (experiment)",
                             "cotmech.plotting (utility) imports cotmech.report (report)",
                             "cotmech.probing (experiment) imports cotmech.circuits (experiment)"]
    assert cycles(g) == [["cotmech.embedded", "cotmech.models"]]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("source, want", [
    ("from .circuits import x\n", {"cotmech.circuits", "cotmech.circuits.x"}),
    ("def f():\n    from . import tracing as core\n", {"cotmech", "cotmech.tracing"}),
    ("import cotmech.io\nimport numpy\n", {"cotmech.io"}),
])
def test_imports_are_read_nested_and_relative(tmp_path, source, want):
    pkg = tmp_path / "cotmech"
    pkg.mkdir()
    (pkg / "m.py").write_text(source)
    assert imports_of(pkg / "m.py", pkg) == want
