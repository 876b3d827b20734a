"""Executes every notebook in notebooks/ in-process: all code cells, in order, in one namespace.

No Jupyter kernel is needed (nbformat v4 is plain JSON), so CI runs the notebooks with the test
dependencies alone. Notebooks should use CPU-sized settings so this stays quick.
"""

import json
import pathlib

import matplotlib
import pytest

matplotlib.use("Agg")

NOTEBOOKS = sorted((pathlib.Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))
# The longest notebooks (~1 min each on 2 cores) run in CI's slow step, keeping the default
# run near ten minutes; every notebook still runs in CI.
SLOW = {"meanfield", "mitigations", "your_own_model"}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(p, id=p.stem, marks=[pytest.mark.slow] if p.stem in SLOW else [])
        for p in NOTEBOOKS
    ],
)
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
