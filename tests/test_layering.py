"""Imports flow one way through medmap's layers; no import cycle, imports inside functions
included (docs/architecture.md has the picture).

Layers, lowest first: config (and the pure metrics) -> data -> text -> models + losses -> train -> inference (and the fast inference path) ->
eval / predict / downstream -> cli / demo / ablation. A module may import its own layer or a
lower one; an import of a package's own ``__init__`` from inside that package is not an edge.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

LAYERS: list[tuple[str, ...]] = [
    ("medmap", "medmap._lazy", "medmap.config", "medmap.metrics", "medmap.linear"),
    ("medmap.data",),
    ("medmap.text",),
    ("medmap.models", "medmap.losses"),
    ("medmap.train",),
    ("medmap.inference", "medmap.fastpath", "medmap.cam"),
    ("medmap.eval", "medmap.predict", "medmap.downstream", "medmap.baselines"),
    ("medmap.api", "medmap.bundle"),
    ("medmap.cli", "medmap.cli_downstream", "medmap.cli_baseline", "medmap.demo", "medmap.demo_workers",
     "medmap.ablation"),
]


def module_names(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under the package folder ``root``."""
    out = {}
    for f in root.rglob("*.py"):
        parts = list(f.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph(root: Path) -> dict[str, set[str]]:
    """Module -> the package modules it imports (any depth: module level and in functions)."""
    files = module_names(root)
    pkg = root.name
    graph: dict[str, set[str]] = {m: set() for m in files}
    for mod, f in files.items():
        is_pkg = f.name == "__init__.py"
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"), str(f))):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [base] + [f"{base}.{a.name}" for a in node.names]
            else:
                continue
            for t in targets:
                if not (t == pkg or t.startswith(pkg + ".")):
                    continue
                while t and t not in files:
                    t = t.rpartition(".")[0]
                if t and t != mod and not mod.startswith(t + "."):
                    graph[mod].add(t)
    return graph


def layer_of(module: str, layers: list[tuple[str, ...]]) -> int:
    """Index of the layer whose prefix matches ``module`` best (exact name or a sub-module)."""
    best, best_len = None, -1
    for i, prefixes in enumerate(layers):
        for p in prefixes:
            exact_only = "." not in p            # the top package matches itself only
            hit = module == p or (not exact_only and module.startswith(p + "."))
            if hit and len(p) > best_len:
                best, best_len = i, len(p)
    if best is None:
        raise KeyError(f"module {module} belongs to no layer; add it to LAYERS")
    return best


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
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


def violations(root: Path, layers: list[tuple[str, ...]]) -> list[str]:
    """Every upward import and every cycle of the package at ``root``, one line each."""
    graph = import_graph(root)
    for m in graph:                       # every module must sit in a layer
        layer_of(m, layers)
    problems = []
    for a in sorted(graph):
        for b in sorted(graph[a]):
            if layer_of(b, layers) > layer_of(a, layers):
                problems.append(f"upward import: {a} (layer {layer_of(a, layers)}) imports "
                                f"{b} (layer {layer_of(b, layers)})")
    problems += [f"import cycle: {' <-> '.join(c)}" for c in cycles(graph)]
    return problems


def test_medmap_imports_flow_one_way():
    root = Path(__file__).resolve().parents[1] / "src" / "medmap"
    assert violations(root, LAYERS) == []


# ---- the checker on a small fake package ---------------------------------------------------
def _fake_package(tmp_path: Path, files: dict[str, str]) -> Path:
    root = tmp_path / "fake"
    for name, body in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(body, encoding="utf-8")
    for d in [root, *[p for p in root.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return root


FAKE_LAYERS = [("fake",), ("fake.low",), ("fake.high",)]


def test_checker_passes_a_clean_package(tmp_path):
    root = _fake_package(tmp_path, {"low/a.py": "import os\n",
                                    "high/b.py": "from fake.low import a\nfrom . import c\n",
                                    "high/c.py": "from fake.low.a import x\n"})
    assert violations(root, FAKE_LAYERS) == []


def test_checker_finds_an_upward_import_inside_a_function(tmp_path):
    root = _fake_package(tmp_path, {"low/a.py": "def f():\n    from fake.high import b\n",
                                    "high/b.py": "x = 1\n"})
    assert violations(root, FAKE_LAYERS) == [
        "upward import: fake.low.a (layer 1) imports fake.high (layer 2)",
        "upward import: fake.low.a (layer 1) imports fake.high.b (layer 2)"]


def test_checker_finds_a_cycle_within_one_layer(tmp_path):
    root = _fake_package(tmp_path, {"high/b.py": "from fake.high import c\n",
                                    "high/c.py": "def g():\n    from .b import x\n"})
    assert violations(root, FAKE_LAYERS) == ["import cycle: fake.high.b <-> fake.high.c"]


def test_checker_refuses_a_module_outside_every_layer(tmp_path):
    root = _fake_package(tmp_path, {"other/z.py": "import fake.low\n"})
    with pytest.raises(KeyError, match="belongs to no layer"):
        violations(root, FAKE_LAYERS)
