"""The package's layering (DESIGN.md section 5), checked by walking the imports of every module.

Every ``import`` counts, at module level or inside a function: a function-level import is how a
circle hides. ``from A import B`` is an import of ``A.B`` where that is a module, else of ``A``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import psc_seg

ROOT = Path(psc_seg.__file__).parent
# the domain: what the stages are built from; none of it may depend on a stage or on training
DOMAIN = ("segment", "engine", "evaluate", "io", "models", "nn")
UPPER = ("train", "pipelines", "cli")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py"))}


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The psc_seg modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                child = f"{base}.{alias.name}"
                found.add(child if child in modules else base)
    return {m for m in found if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of ``graph`` (as a path that ends where it starts), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_walker_sees_function_level_and_relative_imports(tmp_path):
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycle(graph) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from psc_seg.io import open_volume\n    from . import errors\n")
    modules = {"psc_seg.io": Path(), "psc_seg.errors": Path(), "psc_seg.x.m": Path()}
    assert _imports("psc_seg.x.m", source, modules) == {"psc_seg.io"}
    modules["psc_seg.x.errors"] = Path()
    assert _imports("psc_seg.x.m", source, modules) == {"psc_seg.io", "psc_seg.x.errors"}


@pytest.mark.parametrize("layer", DOMAIN)
def test_domain_does_not_import_training_or_stages(layer):
    graph = _graph()
    wrong = {
        f"{name} imports {target}"
        for name, targets in graph.items() if name.split(".")[1:2] == [layer]
        for target in targets if target.split(".")[1:2] and target.split(".")[1] in UPPER
    }
    assert not wrong, sorted(wrong)


def test_no_import_circle():
    assert _cycle(_graph()) is None, " -> ".join(_cycle(_graph()) or [])


def test_top_level_configs_is_the_package_presets():
    """``configs/`` at the top of the repository (DESIGN.md section 5) shows the presets the
    package reads, not a copy that could drift."""
    top = Path(__file__).resolve().parents[1] / "configs"
    presets = sorted(p.relative_to(top).as_posix() for p in top.rglob("*.yaml"))
    assert presets, f"{top} holds no presets"
    assert top.resolve() == (top.parent / "psc_seg" / "configs").resolve()
    assert {"em/unet-p2sc2.yaml", "mri/densenet-p2sc2.yaml"} <= set(presets)
