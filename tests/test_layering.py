"""The import rules of the package map (README, design): each package in a fresh interpreter."""

from __future__ import annotations

import subprocess
import sys

import pytest

# package -> modules that must not be loaded by importing it
FORBIDDEN = {
    "scratchlm": ["torch", "scratchlm.cli"],
    "scratchlm.assets": ["torch", "scratchlm.cli"],
    "scratchlm.tokenizer": ["torch", "numpy", "scratchlm.model", "scratchlm.data", "scratchlm.cli"],
    "scratchlm.model": ["scratchlm.tokenizer", "scratchlm.data", "scratchlm.checkpoint", "scratchlm.train",
                        "scratchlm.generate", "scratchlm.cli"],
    "scratchlm.data": ["scratchlm.model", "scratchlm.train", "scratchlm.cli"],
    "scratchlm.checkpoint": ["scratchlm.train", "scratchlm.data", "scratchlm.cli"],
    "scratchlm.train": ["scratchlm.serve", "scratchlm.cli"],
    "scratchlm.generate": ["scratchlm.data", "scratchlm.train", "scratchlm.cli"],
    "scratchlm.eval": ["scratchlm.train", "scratchlm.cli"],
    "scratchlm.serve": ["scratchlm.train", "scratchlm.data", "scratchlm.cli"],
    # the verifier interface is pure Python (RL loops and evaluation import it); a reward model loads torch lazily
    "scratchlm.rl.verifiers": ["torch", "scratchlm.train", "scratchlm.cli"],
    "scratchlm.scaling.sweep": ["scratchlm.serve", "scratchlm.cli"],
    # fitting a finished sweep is arithmetic on its table: no torch
    "scratchlm.scaling.fit": ["torch", "scratchlm.cli"],
    "scratchlm.scaling.plots": ["torch", "scratchlm.cli"],
    "scratchlm.scaling.results": ["torch", "scratchlm.cli"],
}


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_import_rules(package: str) -> None:
    code = (
        f"import sys, importlib; importlib.import_module({package!r}); "
        f"print(','.join(m for m in {FORBIDDEN[package]!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing {package} loaded {out}"


# ---- static import graph: every import, also the lazy ones inside functions ----------------------------------------
def _import_graph() -> dict[str, set[str]]:
    import ast
    from pathlib import Path

    import scratchlm

    root = Path(scratchlm.__file__).parent.parent
    paths = {}
    for p in (root / "scratchlm").rglob("*.py"):
        parts = list(p.relative_to(root).with_suffix("").parts)
        paths[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = p
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
        found: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = pkg.split(".")[: len(pkg.split(".")) - node.level + 1]
                    base = ".".join(up + ([base] if base else []))
                found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in paths else base for a in node.names)
        graph[name] = {m for m in found if m in paths and m != name}
    return graph


def test_no_import_cycles() -> None:
    graph = _import_graph()
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    assert cycles == []


def test_inference_and_checkpoints_never_import_training() -> None:
    """generate/eval/serve (and their commands), the checkpoint door and HF interop never reach `scratchlm.train`."""
    graph = _import_graph()
    inference = ("scratchlm.generate", "scratchlm.eval", "scratchlm.serve", "scratchlm.checkpoint", "scratchlm.rl",
                 "scratchlm.interop", "scratchlm.cli.generate", "scratchlm.cli.eval", "scratchlm.cli.serve")
    bad = {m: sorted(d for d in deps if d.startswith("scratchlm.train"))
           for m, deps in graph.items() if m.startswith(inference)}
    assert {m: d for m, d in bad.items() if d} == {}


def test_only_the_checkpoint_package_opens_safetensors_files() -> None:
    """One door: checkpoint weights are read and written in `scratchlm.checkpoint` (HF folders in interop)."""
    import ast
    from pathlib import Path

    import scratchlm

    root = Path(scratchlm.__file__).parent
    users = []
    for p in root.rglob("*.py"):
        for node in ast.walk(ast.parse(p.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            if any(n.split(".")[0] == "safetensors" for n in names):
                users.append(p.relative_to(root).parts[0])
    assert set(users) <= {"checkpoint", "interop"}
