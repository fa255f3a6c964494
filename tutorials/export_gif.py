"""Copy the animation of notebook 6 (the 2D toy's samples along FM Euler, before and after reflow) from the
committed ``06_reflow.ipynb`` to ``docs/reflow_toy.gif``, so that the docs show what the notebook shows.

    python tutorials/export_gif.py        # after python tutorials/build.py 06

Needs only the standard library (the GIF is the ``image/gif`` output of the notebook, base64 in its JSON).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
NOTEBOOK = HERE / "06_reflow.ipynb"
TARGET = HERE.parent / "docs" / "reflow_toy.gif"


def notebook_gif(path: Path = NOTEBOOK) -> bytes:
    """The one GIF among the outputs of ``path``."""
    gifs = [
        base64.b64decode("".join(out["data"]["image/gif"]))
        for cell in json.loads(path.read_text())["cells"]
        if cell["cell_type"] == "code"
        for out in cell.get("outputs", [])
        if "image/gif" in out.get("data", {})
    ]
    if len(gifs) != 1:
        raise SystemExit(f"{path.name}: expected one GIF output, found {len(gifs)}; rebuild it (build.py 06)")
    return gifs[0]


if __name__ == "__main__":
    data = notebook_gif()
    TARGET.write_bytes(data)
    print(f"wrote {TARGET} ({len(data) / 1e3:.0f} kB)")
