"""The package's layout rules, read from the source by ``ast`` (no import of gradflow needed).

- No module uses another module's private name (``from gradflow.x import _y`` or ``x._y``), except
  names of private helper modules (``gradflow._checks``, ``gradflow.models._common``, a package's
  own ``_x.py``): a private name is a promise to the module's own code only.
- Imports point one way: every module imports only modules of its own layer or below (``LAYERS``),
  so a model never depends on an analysis and no analysis on the sweep or an experiment.
- No module is longer than ``MAX_LINES``: one concern per file.
"""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "gradflow"
MAX_LINES = 600

# Lowest layer first. A module's layer is that of the longest prefix listed here.
LAYERS = [
    ("gradflow._checks", "gradflow._numerics", "gradflow._io", "gradflow._version"),
    ("gradflow.progress", "gradflow.activations", "gradflow.checking"),
    ("gradflow.chain", "gradflow.meanfield", "gradflow.theory", "gradflow.dynamics"),
    ("gradflow.init", "gradflow.tasks"),
    ("gradflow.models",),
    (
        "gradflow.jacobians",
        "gradflow.gradients",
        "gradflow.spectra",
        "gradflow.matfree",
        "gradflow.lyapunov",
        "gradflow.attention",
    ),
    ("gradflow.monitor", "gradflow.writers"),
    ("gradflow.train", "gradflow.gradient_free", "gradflow.sweep"),
    ("gradflow.plots",),
    ("gradflow.experiments",),
    ("gradflow.cli", "gradflow"),
]


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources():
    return sorted(PACKAGE.rglob("*.py"))


def _is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    root = PACKAGE.parent
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


def _is_private_module(name: str) -> bool:
    return any(part.startswith("_") and not part.startswith("__") for part in name.split("."))


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _resolve(path: Path, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    here = _module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    base = package[: len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(path: Path):
    """``(line, module, name or None)`` for every gradflow import in the file, nested ones too."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "gradflow":
                    yield node.lineno, alias.name, None, alias.asname
        elif isinstance(node, ast.ImportFrom):
            module = _resolve(path, node)
            if module.split(".")[0] == "gradflow":
                for alias in node.names:
                    yield node.lineno, module, alias.name, alias.asname


def _private_uses(path: Path) -> list[str]:
    bad, module_aliases = [], {}
    for line, module, name, asname in _imports(path):
        if name is None:
            module_aliases[asname or module.split(".")[0]] = module
            continue
        full = f"{module}.{name}"
        if _is_module(full):
            module_aliases[asname or name] = full
        elif _private(name) and not _is_private_module(module):
            bad.append(f"{path.name}:{line} imports {module}.{name}")
    for node in ast.walk(ast.parse(path.read_text())):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in module_aliases
            and _private(node.attr)
            and not _is_private_module(module_aliases[node.value.id])
        ):
            owner = module_aliases[node.value.id]
            bad.append(f"{path.name}:{node.lineno} uses {owner}.{node.attr}")
    return bad


def _layer(module: str) -> int:
    best, layer = -1, None
    for i, names in enumerate(LAYERS):
        for prefix in names:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, layer = len(prefix), i
    assert layer is not None, f"{module} is in no layer of tests/test_layout.py: place it"
    return layer


@pytest.mark.parametrize("path", _sources(), ids=lambda p: _module_name(p))
def test_no_private_names_across_modules(path):
    assert _private_uses(path) == []


@pytest.mark.parametrize("path", _sources(), ids=lambda p: _module_name(p))
def test_imports_point_down(path):
    me = _module_name(path)
    upward = [
        f"line {line}: {module}"
        for line, module, name, _ in _imports(path)
        if _layer(f"{module}.{name}" if name and _is_module(f"{module}.{name}") else module)
        > _layer(me)
    ]
    assert upward == [], f"{me} (layer {_layer(me)}) imports from a higher layer"


@pytest.mark.parametrize("path", _sources(), ids=lambda p: _module_name(p))
def test_modules_are_short(path):
    assert len(path.read_text().splitlines()) <= MAX_LINES


def test_the_checks_catch_what_they_look_for(tmp_path, monkeypatch):
    """The scanners flag a private import, a private attribute and an upward import."""
    pkg = tmp_path / "gradflow"
    (pkg / "models").mkdir(parents=True)
    for name in ("__init__.py", "train.py", "models/__init__.py"):
        (pkg / name).write_text("")
    bad = pkg / "models" / "bad.py"
    bad.write_text(
        "from gradflow.train import _loop\nfrom gradflow import train\nx = train._step\n"
    )
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    assert len(_private_uses(bad)) == 2
    assert _layer("gradflow.models.bad") < _layer("gradflow.train")
