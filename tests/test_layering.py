"""Imports flow one way: no upward import, no cycle, no private name crossing a module.

Every ``import`` / ``from ... import`` of the package is read from the source (those inside
functions included), so a lazy import cannot hide a layering violation.
"""

import ast
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "bq_jax"

#: Bottom to top: a module may import only from its own layer or lower ones.
LAYERS = (
    ("_src", "vocabulary", "stats"),
    ("quant",),
    ("data",),
    ("models",),
    ("train",),
    ("geometry",),
    ("ptq",),
    ("qat",),
    ("report",),
    ("studies",),
    ("cli",),
)
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_package(name: str) -> bool:
    return MODULES.get(name, pathlib.Path()).name == "__init__.py"


def _imports(name: str, path: pathlib.Path):
    """(target module, imported names) of every import of ``bq_jax`` in ``path``."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = name if _is_package(name) else name.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "bq_jax":
                    yield alias.name, ()
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            if module.split(".")[0] != "bq_jax":
                continue
            plain = []
            for alias in node.names:
                sub = f"{module}.{alias.name}"
                if sub in MODULES:  # `from bq_jax.x import y` where y is a module
                    yield sub, ()
                else:
                    plain.append(alias.name)
            if plain:
                yield module, tuple(plain)


def _edges():
    for name, path in MODULES.items():
        for target, names in _imports(name, path):
            yield name, target, names


def _layer(module: str):
    parts = module.split(".")
    return LAYER.get(parts[1]) if len(parts) > 1 else None


def test_every_subpackage_has_a_layer():
    subs = {m.split(".")[1] for m in MODULES if m.count(".") >= 1}
    assert subs <= set(LAYER), f"sub-packages without a layer: {sorted(subs - set(LAYER))}"


def test_no_upward_import():
    bad = []
    for src, dst, _ in _edges():
        ls, ld = _layer(src), _layer(dst)
        if ld is None:  # `import bq_jax` itself
            continue
        if ls is None or ld > ls:
            bad.append(f"{src} -> {dst}")
    assert not bad, "upward imports:\n" + "\n".join(bad)


def test_quant_imports_nothing_of_ours():
    bad = [
        f"{s} -> {d}"
        for s, d, _ in _edges()
        if s.startswith("bq_jax.quant") and not d.startswith("bq_jax.quant")
    ]
    assert not bad, bad


def test_geometry_never_imports_ptq():
    bad = [f"{s} -> {d}" for s, d, _ in _edges() if _layer(s) == LAYER["geometry"] and "ptq" in d]
    assert not bad, bad


def test_no_import_cycle():
    graph = {m: set() for m in MODULES}
    for src, dst, _ in _edges():
        if dst in graph and dst != src:
            graph[src].add(dst)
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []
    counter = [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                cycles.append(sorted(comp))

    for v in graph:
        if v not in index:
            strongconnect(v)
    assert not cycles, f"import cycles: {cycles}"


def _private_imports(files):
    bad = []
    for path in files:
        name = _module_name(path) if path.is_relative_to(PACKAGE) else path.stem
        for target, names in _imports(name, path):
            for n in names:
                if n.startswith("_") and not n.startswith("__"):
                    bad.append(f"{path.relative_to(ROOT)}: from {target} import {n}")
            if any(part.startswith("_") and part != "_src" for part in target.split(".")[1:]):
                bad.append(f"{path.relative_to(ROOT)}: imports private module {target}")
    return bad


def test_no_private_name_crosses_a_module():
    bad = _private_imports(MODULES.values())
    assert not bad, "\n".join(bad)


def test_tests_use_public_names_only():
    bad = _private_imports(sorted((ROOT / "tests").glob("*.py")))
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("bad", ["from bq_jax.geometry.sweep import _run_sweep"])
def test_the_checker_sees_a_private_import(tmp_path, bad):
    f = tmp_path / "t.py"
    f.write_text(f"def f():\n    {bad}\n")
    assert list(_imports("t", f)) == [("bq_jax.geometry.sweep", ("_run_sweep",))]
