"""Every notebook in notebooks/ runs top to bottom in a fresh kernel (a failing cell fails the test).

The kernel is this interpreter's (the venv's) ipykernel: we install a ``python3``
kernelspec into ``sys.prefix`` when the one Jupyter would pick is not ours. Each
notebook runs in its own temporary directory (run dirs and figures land there).
Notebooks are stored without outputs; ``test_notebooks_are_stored_clean`` checks it.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
EXPECTED = {"quickstart", "composition_explorer", "batching", "angle_analysis"}


def _kernel_name() -> str:
    """A kernelspec that starts *this* interpreter, installed into sys.prefix if needed."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec("python3")
        argv0 = spec.argv[0]
        if argv0 in ("python", "python3", "{python}") or Path(argv0).resolve() == Path(sys.executable).resolve():
            if argv0 in ("python", "python3"):  # resolved on PATH: make sure PATH starts with our bin dir
                os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
            return "python3"
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install

    install(prefix=sys.prefix, kernel_name="python3")
    return "python3"


def test_notebooks_present_and_stored_clean():
    assert {p.stem for p in NOTEBOOKS} >= EXPECTED
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        for cell in nb["cells"]:
            if cell["cell_type"] == "code":
                assert not cell.get("outputs") and cell.get("execution_count") is None, f"{path.name} has outputs"


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs(path, tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ["MPLBACKEND"] = "Agg"
    nb = nbformat.read(path, as_version=4)
    client = nbclient.NotebookClient(nb, kernel_name=_kernel_name(), timeout=600,
                                     resources={"metadata": {"path": str(tmp_path)}})
    t0 = time.perf_counter()
    try:
        client.execute()
    except nbclient.exceptions.CellExecutionError as e:  # the message names the cell and the traceback
        pytest.fail(f"{path.name}: {e}", pytrace=False)
    print(f"{path.name}: {time.perf_counter() - t0:.1f} s")
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    if path.stem == "composition_explorer":
        text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "stream")
        assert "lambda grid:" in text and "$ " in text  # the CLI ran (JSONL, train, generate) and the grid printed
