"""The package's import graph: every module imports on its own, there are no cycles, and the
old module paths still work with a DeprecationWarning."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
import warnings

import pytest

import translution_ext

PACKAGE_DIR = os.path.dirname(translution_ext.__file__)
DEPRECATED = {
    "translution_ext.acmix_ops": "acmix_window_attention",
    "translution_ext.fused_attention": "translution_attention",
    "translution_ext.reference": "relative_offset_projection_by_class",
    "translution_ext.xvolution_ops": "pixel_shift_products",
}


def package_modules() -> dict[str, str]:
    """Module name -> file, for every .py file of the package."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE_DIR):
        for f in files:
            if f.endswith(".py"):
                rel = os.path.relpath(os.path.join(folder, f), os.path.dirname(PACKAGE_DIR))[:-3]
                parts = rel.split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = os.path.join(folder, f)
    return modules


def internal_imports(name: str, path: str, modules: dict[str, str]) -> set[str]:
    """The package modules that `name` imports anywhere in its file (module level or inside functions)."""
    is_package = path.endswith("__init__.py")
    base = name.split(".") if is_package else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(open(path).read())):
        targets = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            prefix = base[: len(base) - node.level + 1] if node.level else []
            mod = ".".join(prefix + ([node.module] if node.module else []))
            # `from pkg import sub` depends on the submodule; `from pkg import name` on pkg itself.
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        for t in targets:
            if t in modules and t != name:
                found.add(t)
    return found


def test_the_import_graph_has_no_cycles():
    modules = package_modules()
    graph = {name: internal_imports(name, path, modules) for name, path in modules.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name)


def test_every_module_imports_in_a_fresh_interpreter():
    names = sorted(n for n in package_modules() if n not in DEPRECATED and n != "translution_ext.__main__")
    code = ("import importlib, warnings\nwarnings.simplefilter('error', DeprecationWarning)\n"
            "for name in %r:\n    importlib.import_module(name)\n" % names)
    env = dict(os.environ, PYTHONWARNINGS="ignore::RuntimeWarning")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(PACKAGE_DIR))
    assert run.returncode == 0, run.stderr


@pytest.mark.parametrize("module,name", sorted(DEPRECATED.items()))
def test_old_module_paths_warn_and_still_work(module, name):
    code = (f"import warnings\nwarnings.simplefilter('always')\n"
            f"with warnings.catch_warnings(record=True) as w:\n"
            f"    import {module} as m\n"
            f"assert callable(m.{name})\n"
            f"msgs = [str(x.message) for x in w if issubclass(x.category, DeprecationWarning)]\n"
            f"assert any('{module} is deprecated' in s for s in msgs), msgs\n")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=os.path.dirname(PACKAGE_DIR))
    assert run.returncode == 0, run.stderr


def test_old_attribute_paths_resolve_lazily(monkeypatch):
    # As in a fresh process (an earlier test may have imported it): the attribute imports the old
    # module, which warns.
    monkeypatch.delitem(vars(translution_ext), "xvolution_ops", raising=False)  # not hasattr: that imports it
    monkeypatch.delitem(sys.modules, "translution_ext.xvolution_ops", raising=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ops = translution_ext.xvolution_ops
    assert ops.pixel_shift_products is translution_ext.ops.pixel_shift_products
    assert any(issubclass(w.category, DeprecationWarning) and "xvolution_ops is deprecated" in str(w.message)
               for w in caught)
    with pytest.raises(AttributeError, match="has no attribute 'no_such_module'"):
        translution_ext.no_such_module  # noqa: B018


def test_spec_references_import_nothing_from_the_package():
    # The op tests' references must stay independent: a bug copied from the package would pass them.
    for name in ("spec_reference.py", "translution_reference.py"):
        with open(os.path.join(os.path.dirname(__file__), name)) as f:
            tree = ast.parse(f.read())
        imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
        imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module}
        assert not any(m.split(".")[0] == "translution_ext" for m in imported), (name, imported)
        assert imported <= {"__future__", "math", "typing", "torch", "torch.nn.functional", "translution_reference"}
