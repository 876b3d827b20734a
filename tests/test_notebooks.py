"""The notebooks in notebooks/: they still execute, and they are stored executed, with outputs.

`test_notebook_runs` executes every code cell in order in one namespace, in-process: no Jupyter
kernel is needed (nbformat v4 is plain JSON), so CI runs the notebooks with the test dependencies
alone. Notebooks use CPU-sized settings so this stays quick.

The stored copies carry their outputs (figures inline) so they can be read without running them.
After editing a notebook, execute it again in a fresh Jupyter kernel and store the result:

    python tests/test_notebooks.py [notebooks/NAME.ipynb ...]   # all notebooks without arguments

(nbclient + ipykernel, installed by the ``docs`` extra; about 4 minutes for all on 2 cores).
"""

import json
import pathlib
import sys
import tempfile

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# Executing a notebook is an end-to-end run (5–60 s each on 2 cores): all of them run in CI's slow
# step, keeping the default run under five minutes; the default run checks their stored outputs.
SLOW = {p.stem for p in NOTEBOOKS}
# Stored outputs are PNG figures and short text; a notebook past this has an oversized figure
# or a runaway print (the five are 0.1–0.3 MB).
MAX_BYTES = 1_000_000


def _params(slow=()):
    return [
        pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in slow else [])
        for p in NOTEBOOKS
    ]


@pytest.mark.parametrize("path", _params(SLOW))
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    nb = json.loads(path.read_text())
    assert nb["nbformat"] == 4
    namespace = {"__name__": "__notebook__"}
    import matplotlib.pyplot as plt

    for i, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "code":
            continue
        source = "".join(cell["source"])
        # Notebook magics are not Python; the notebooks avoid them except for display helpers.
        source = "\n".join(
            line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))
        )
        exec(compile(source, f"{path.name}[cell {i}]", "exec"), namespace)
        plt.close("all")


def test_there_are_notebooks():
    assert {p.stem for p in NOTEBOOKS} >= {"vanishing", "meanfield", "your_own_model"}


@pytest.mark.parametrize("path", _params())
def test_notebook_is_stored_executed(path):
    assert path.stat().st_size <= MAX_BYTES, f"{path.name}: {path.stat().st_size} bytes"
    nb = json.loads(path.read_text())
    # nbformat 4.5: every cell has a unique id (Jupyter rewrites files that lack them).
    assert (nb["nbformat"], nb["nbformat_minor"]) >= (4, 5)
    ids = [cell.get("id") for cell in nb["cells"]]
    assert None not in ids and len(set(ids)) == len(ids)
    code = [cell for cell in nb["cells"] if cell["cell_type"] == "code"]
    # 1, 2, …, n: executed top to bottom in one kernel, no cell skipped or run twice.
    assert [cell["execution_count"] for cell in code] == list(range(1, len(code) + 1))
    for cell in code:
        for out in cell["outputs"]:
            assert out["output_type"] != "error", f"{path.name}: {out.get('ename')}"
            # Warnings and tracebacks go to stderr; a clean run has none.
            assert out.get("name") != "stderr", f"{path.name}: {''.join(out['text'])[:500]}"
    # The figures are stored inline (each notebook draws at least one).
    kinds = {key for cell in code for out in cell["outputs"] for key in out.get("data", {})}
    assert "image/png" in kinds, f"{path.name} has no stored figure"


def execute(path: pathlib.Path) -> None:
    """Executes ``path`` in a fresh ``python3`` kernel and stores it with its outputs."""
    import nbclient
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.nbformat_minor = max(nb.nbformat_minor, 5)
    for i, cell in enumerate(nb.cells):
        cell.setdefault("id", f"cell-{i}")  # stable ids keep re-executions' diffs small
    with tempfile.TemporaryDirectory() as cwd:  # files a notebook writes land here
        nbclient.NotebookClient(
            nb,
            timeout=900,
            kernel_name="python3",
            record_timing=False,
            resources={"metadata": {"path": cwd}},
        ).execute()
    nbformat.validate(nb)
    nbformat.write(nb, path)


if __name__ == "__main__":
    for arg in sys.argv[1:] or NOTEBOOKS:
        execute(pathlib.Path(arg))
        print(f"executed {arg}")
