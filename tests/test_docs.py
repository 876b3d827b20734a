"""The API reference covers every public name; README links it; CI builds it strictly.

The reference is built by ``mkdocs build --strict`` (.ci/run) from ``::: module`` directives in
docs/; mkdocstrings renders a module's ``__all__`` members (every one, documented or not, with
``show_if_no_docstring``). This checks, without building, that every public module and every
name in an ``__all__`` reaches some directive, so a new module or name cannot be left out.
"""

import importlib
import importlib.util
import inspect
import logging
import pathlib
import pkgutil
import re
import sys
import types

import numpy as np
import pytest

import gradflow
from gradflow import writers

ROOT = pathlib.Path(__file__).parent.parent
DOCS = ROOT / "docs"
README = (ROOT / "README.md").read_text()
MKDOCS = (ROOT / "mkdocs.yml").read_text()
DIRECTIVE = re.compile(r"^::: ([\w.]+)[ \t]*\n((?:[ \t]+\S.*\n?)*)", re.M)


def _public_modules() -> list[str]:
    names = ["gradflow"]
    for info in pkgutil.walk_packages(gradflow.__path__, prefix="gradflow."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return names


def _directives() -> dict[str, str]:
    """``{target: options block}`` of every ``::: target`` in docs/."""
    found = {}
    for page in sorted(DOCS.rglob("*.md")):
        for target, options in DIRECTIVE.findall(page.read_text()):
            assert target not in found, f"{target} is rendered twice ({page.name})"
            found[target] = options
    return found


def _resolve(target: str):
    """The module or object a directive names."""
    parts = target.split(".")
    for i in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:i]))
        except ImportError:
            continue
        for attr in parts[i:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(target)


def _public_names(module: types.ModuleType) -> list[str]:
    if hasattr(module, "__all__"):
        return list(module.__all__)
    # mkdocstrings' rule without __all__: names not starting with _, not imported from elsewhere.
    return [
        n
        for n, v in vars(module).items()
        if not n.startswith("_")
        and getattr(v, "__module__", module.__name__) == module.__name__
        and not isinstance(v, types.ModuleType)
    ]


class Reference:
    """What the directives render: modules, (module, name) pairs and the objects themselves."""

    def __init__(self, directives):
        self.modules, self.pairs, self.objects = set(), set(), []
        for target in directives:
            obj = _resolve(target)
            if isinstance(obj, types.ModuleType):
                self.modules.add(obj.__name__)
                for name in _public_names(obj):
                    self.pairs.add((obj.__name__, name))
                    self.objects.append(getattr(obj, name))
            else:
                module, _, name = target.rpartition(".")
                self.pairs.add((module, name))
                self.objects.append(obj)

    def covers_module(self, module: types.ModuleType) -> bool:
        if module.__name__ in self.modules:
            return True
        # A package is covered by its parts: every name of its __all__ rendered somewhere.
        return hasattr(module, "__all__") and all(self.covers(module, n) for n in module.__all__)

    def covers(self, module: types.ModuleType, name: str) -> bool:
        obj = getattr(module, name)
        if isinstance(obj, types.ModuleType):
            return self.covers_module(obj)
        if (module.__name__, name) in self.pairs:
            return True
        # A re-export (gradflow.models.MLP is gradflow.models.mlp.MLP) is rendered where it
        # lives; constants are not identified by value, only classes and functions.
        identifiable = inspect.isclass(obj) or inspect.isroutine(obj)
        return identifiable and any(obj is o for o in self.objects)


@pytest.fixture(scope="module")
def reference():
    return Reference(_directives())


def test_directives_render_every_member():
    # The coverage below assumes every member of a rendered module is shown.
    assert re.search(r"^\s+show_if_no_docstring: true$", MKDOCS, re.M)
    for target, options in _directives().items():
        assert "members:" not in options, f"{target}: a members list hides names"
        assert _resolve(target) is not None


@pytest.mark.parametrize("module_name", _public_modules())
def test_every_public_name_is_in_the_reference(module_name, reference):
    module = importlib.import_module(module_name)
    if module_name == "gradflow":
        assert gradflow.__all__
        missing = [n for n in gradflow.__all__ if not reference.covers(gradflow, n)]
    elif hasattr(module, "__all__"):
        missing = [n for n in module.__all__ if not reference.covers(module, n)]
    else:
        missing = [] if reference.covers_module(module) else [module_name]
    assert not missing, f"{module_name}: not in docs/ (add a '::: module' directive): {missing}"


def test_reference_check_can_fail(reference):
    # The check is not vacuous: a module with names nothing renders is reported.
    fake = types.ModuleType("gradflow.not_documented")
    fake.__all__ = ["thing", "Chain"]
    fake.thing = lambda: None
    fake.Chain = gradflow.Chain  # a re-export of a rendered class is covered
    assert not reference.covers(fake, "thing") and reference.covers(fake, "Chain")


def test_every_api_page_is_in_the_nav():
    for page in (DOCS / "api").glob("*.md"):
        assert f"api/{page.name}" in MKDOCS, f"{page.name} is missing from mkdocs.yml's nav"


def test_readme_links_the_reference():
    assert re.search(r"\]\(docs/index\.md\)", README), "README must link docs/index.md"
    assert "mkdocs build" in README


def test_ci_builds_the_docs_and_runs_readmes_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^[^#]*mkdocs build --strict", ci, re.M)
    command = re.search(r"\*\*Run the tests\*\*.*?```bash\n(.*?)\n```", README, re.S)[1]
    assert command in ci.splitlines(), "README's test command differs from .ci/run's"


# --- docs/recipes.md runs as written ------------------------------------------------------------
# 100 monitored training steps and three writers (~5 s on 2 cores): the slow step; monitor and
# writers are tested in the default run (test_monitor.py, test_writers.py).
@pytest.mark.slow
def test_recipes_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    # wandb is not a dependency: a stand-in records what the recipe logs.
    logged = []
    wandb = types.ModuleType("wandb")
    wandb.init = lambda **kwargs: types.SimpleNamespace(finish=lambda: logged.append("finish"))
    wandb.log = lambda data, *, step: logged.append((step, data))
    monkeypatch.setitem(sys.modules, "wandb", wandb)
    namespace = {"__name__": "__recipes__"}
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "recipes.md").read_text(), re.S)
    for i, block in enumerate(blocks):
        exec(compile(block, f"recipes.md[block {i}]", "exec"), namespace)
    record = namespace["record"]  # the nnx model's, after 100 steps monitored every 10
    assert record.step == 90 and record.names == ("hidden", "readout")
    assert np.all(np.isfinite(record.update_ratios)) and record.first_nonfinite_step == -1
    rows = writers.read_csv(tmp_path / "runs" / "exp1.csv")
    assert [r["step"] for r in rows] == list(range(0, 100, 10))
    assert rows == writers.read_jsonl(tmp_path / "runs" / "exp1.jsonl")
    assert list((tmp_path / "runs" / "exp1").glob("events.out.tfevents.*"))
    assert [entry[0] for entry in logged[:-1]] == list(range(0, 100, 10)) and logged[-1] == "finish"
    assert logged[0][1].keys() == rows[0].keys() - {"step"}


# --- docs/griffe_ext.py: the docstring conventions the reference understands ---------------------
@pytest.fixture(scope="module")
def griffe_ext():
    pytest.importorskip("griffe")
    spec = importlib.util.spec_from_file_location("griffe_ext", DOCS / "griffe_ext.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _load(griffe_ext, code):
    import griffe

    extensions = griffe.load_extensions(griffe_ext.DocstringConventions)
    return griffe.temporary_visited_package("pkg", {"__init__.py": code}, extensions=extensions)


CODE = '''
def fit(a, b, *, c=1):
    """Fits.

    Args:
      a, b: the two inputs,
        broadcasting together.
      c: a constant.

    Raises:
      TypeError, ValueError: bad input.
    """


def report():
    """See :func:`fit`, :class:`~pkg.sub.Thing` and :func:`jax.jit`."""
'''


def test_grouped_arguments_are_split(griffe_ext):
    with _load(griffe_ext, CODE) as pkg:
        sections = {s.kind.value: s.value for s in pkg["fit"].docstring.parse("google")}
    assert [p.name for p in sections["parameters"]] == ["a", "b", "c"]
    shared = "the two inputs,\nbroadcasting together."
    assert [p.description for p in sections["parameters"]][:2] == [shared, shared]
    # Raises keeps its "TypeError, ValueError" entry (an exception list, not names).
    [raises] = sections["raises"]
    assert re.findall(r"\w+", str(raises.annotation)) == ["TypeError", "ValueError"]


def test_a_wrong_name_in_a_group_still_warns(griffe_ext, caplog):
    code = CODE.replace("a, b: the two", "a, d: the two")
    with caplog.at_level(logging.WARNING), _load(griffe_ext, code) as pkg:
        pkg["fit"].docstring.parse("google")
    assert "Parameter 'd' does not appear in the function signature" in caplog.text


def test_sphinx_roles_become_optional_links(griffe_ext):
    with _load(griffe_ext, CODE) as pkg:
        text = pkg["report"].docstring.value
    # Relative names resolve in the docstring's scope; "~" shows the last component only.
    assert '<autoref identifier="pkg.fit" optional><code>fit</code></autoref>' in text
    assert '<autoref identifier="pkg.sub.Thing" optional><code>Thing</code></autoref>' in text
    assert '<autoref identifier="jax.jit" optional><code>jax.jit</code></autoref>' in text
    assert ":func:" not in text and ":class:" not in text


# --- packaging ------------------------------------------------------------------------------------
def test_one_version_source():
    import tomllib

    from gradflow import _version

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"]["dynamic"]
    dynamic = project["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "gradflow._version.__version__"}
    assert gradflow.__version__ is _version.__version__
    assert re.fullmatch(r"\d+\.\d+\.\d+", gradflow.__version__)
    # No other file writes the version down.
    for path in (ROOT / "gradflow").rglob("*.py"):
        if path.name != "_version.py":
            assert not re.search(r"^__version__\s*=", path.read_text(), re.M), path


def test_license_and_typing_marker_ship():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    text = (ROOT / "LICENSE").read_text()
    # The full Apache-2.0 text: its nine sections, the end of the terms and the appendix.
    assert text.lstrip().startswith("Apache License\n                           Version 2.0")
    for heading in ("1. Definitions.", "9. Accepting Warranty or Additional Liability."):
        assert heading in text
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX:" in text
    assert (ROOT / "gradflow" / "py.typed").exists()
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["gradflow"]
