"""Build the tutorial notebooks: each jupytext percent script ``NN_name.py`` becomes ``NN_name.ipynb``,
executed top to bottom with nbclient so that the committed notebook carries its outputs and execution
counts 1, 2, 3, ... (``tests/test_tutorials.py`` checks both and re-executes every notebook).

    python tutorials/build.py              # all notebooks
    python tutorials/build.py 01 03        # only those whose name starts with 01 or 03

Needs jupytext (to read the scripts) besides what the tests need. Run with HF_HUB_OFFLINE=1 and
HF_DATASETS_OFFLINE=1 like the tests. Each notebook runs in a fresh temporary working directory, so
nothing it writes lands in the repository. The measured run times are written to ``timings.json``.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import jupytext
import nbformat
from nbclient import NotebookClient

HERE = Path(__file__).resolve().parent
CELL_TIMEOUT_S = 600


def scripts(prefixes: list[str]) -> list[Path]:
    found = sorted(p for p in HERE.glob("[0-9][0-9]_*.py"))
    return [p for p in found if not prefixes or any(p.name.startswith(x) for x in prefixes)]


def build(script: Path) -> float:
    """Execute ``script`` as a notebook and write ``script.with_suffix('.ipynb')``; return seconds."""
    nb = jupytext.read(script)
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    nb.metadata.pop("jupytext", None)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="d2f-tutorial-") as cwd:
        try:
            NotebookClient(
                nb,
                timeout=CELL_TIMEOUT_S,
                kernel_name="python3",
                record_timing=False,
                resources={"metadata": {"path": cwd}},
            ).execute()
        except Exception:
            failed = Path(tempfile.gettempdir()) / f"{script.stem}.failed.ipynb"
            nbformat.write(nb, failed)
            print(f"  FAILED; the partly executed notebook is in {failed}", flush=True)
            raise
    seconds = time.perf_counter() - start
    nbformat.validate(nb)
    nbformat.write(nb, script.with_suffix(".ipynb"))
    return seconds


def main(argv: list[str]) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    timings_path = HERE / "timings.json"
    timings = json.loads(timings_path.read_text()) if timings_path.is_file() else {}
    for script in scripts(argv):
        print(f"building {script.with_suffix('.ipynb').name} ...", flush=True)
        seconds = build(script)
        timings[script.with_suffix(".ipynb").name] = round(seconds, 1)
        print(f"  done in {seconds:.1f} s", flush=True)
    timings_path.write_text(json.dumps(dict(sorted(timings.items())), indent=2) + "\n")


if __name__ == "__main__":
    main(sys.argv[1:])
