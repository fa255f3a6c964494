"""Every decimal number in a tutorial's prose comes from somewhere a reader can check.

A number in a markdown cell of a committed notebook (``tutorials/NN_name.ipynb``) must be one of:

1. printed by that notebook's own outputs (text, stream or ``text/plain`` of a code cell), to the
   precision the prose quotes (0.96 is backed by a printed 0.9612 or 0.96, not by 0.9712);
2. in a committed results file the notebook names (``benchmarks/results/<file>`` written anywhere in the
   notebook), exactly as the file writes it (a large table holds a number near almost anything);
3. on the short allowlist below: constants of the setting (a published constant, a check's threshold,
   a value chosen for an illustration), each with its reason.

Not quantities, so not checked: a section number where the text refers to it ("section 3.6", "(3.1)"),
"SD 1.5" / "SD 2.1", and dotted tokens after ":" or "/" (arXiv ids). A quoted percentage is backed by
the printed fraction (6.8 % by 0.068). Limits: only decimal numbers are checked (an integer typed by
hand is not), and a rounded number can be backed by an unrelated printed one; prefer prose that points
to the printed output over a quoted number.

So a number typed by hand that drifts from the run it describes fails here, in the fast tier, reading
only the committed JSON (nothing is executed). ``test_a_doctored_notebook_fails`` shows the check can fail.
"""

from __future__ import annotations

import json
import re
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TUTORIALS = ROOT / "tutorials"
NOTEBOOKS = sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))

# A decimal number: digits, a point, digits; not part of a version, a path or a longer dotted token.
NUMBER = re.compile(r"(?<![\w.:/])\d+\.\d+(?![\w.]*\d)")
# What is not a quantity: "SD 1.5" / "SD 2.1" (model versions), and a section number of a tutorial
# (a heading "## 3.6 ...") where the text refers to it ("## 3.6", "section 3.6", "(3.1)", "in 6.5", ...).
MODEL_VERSION = re.compile(r"SD (?:\d / )?\d\.\d\b")
HEADING = re.compile(r"^#+ (\d+\.\d+) ", re.MULTILINE)
SECTION_REF = r"(?:#+ |sections? |§|\(|of |from |in |and |notebook \d, )"
RESULTS_FILE = re.compile(r"benchmarks/results/[\w.-]+\.(?:jsonl|json|md)")

# Constants of the setting, not results: quoting them by hand cannot go stale against a run.
ALLOWED: dict[str, dict[str, str]] = {
    "02_time_map": {"0.18215": "SD's published VAE scaling_factor, a constant of SD, not of this run"},
    "03_velocity_and_sampling": {
        "0.56": "an illustration ('say 0.56 and 0.44') of overlapping intervals, not a result",
        "0.44": "the same illustration",
        "0.15": "the error threshold the check cell of 3.5 asserts (the measured errors are printed)",
        "0.005": "the tolerance the check cell of 3.6 asserts",
    },
    "06_reflow": {
        "0.75": "the error-ratio threshold the check cell of 6.6 asserts (the measured ratio is printed)",
    },
}


def _text(source) -> str:
    return "".join(source) if isinstance(source, list) else source


def output_text(nb: dict) -> str:
    """All text a notebook's code cells printed or displayed."""
    parts = []
    for cell in nb["cells"]:
        if cell["cell_type"] != "code":
            continue
        for out in cell.get("outputs", []):
            if "text" in out:
                parts.append(_text(out["text"]))
            for mime, data in out.get("data", {}).items():
                if mime in ("text/plain", "text/markdown", "text/html"):
                    parts.append(_text(data))
    return "\n".join(parts)


def named_results(nb: dict, root: Path = ROOT) -> list[Path]:
    """The committed results files the notebook names anywhere (markdown or code)."""
    names = set()
    for cell in nb["cells"]:
        names.update(RESULTS_FILE.findall(_text(cell["source"])))
    return sorted(root / name for name in names if (root / name).is_file())


def backs(quoted: str, printed: str) -> bool:
    """Whether a printed number supports a quoted one: the same, or the same after rounding to the
    quoted number's decimals (either rounding rule; a printed number with fewer decimals never does)."""
    if quoted == printed:
        return True
    places = len(quoted.split(".")[1])
    if len(printed.split(".")[1]) < places:
        return False
    step = Decimal(1).scaleb(-places)
    value = Decimal(printed)
    return Decimal(quoted) in (value.quantize(step, ROUND_HALF_UP), value.quantize(step, ROUND_HALF_EVEN))


def sections(notebooks: list[dict]) -> set[str]:
    """The section numbers of the tutorials ("3.6" for a heading "## 3.6 Where each objective trains")."""
    found = set()
    for nb in notebooks:
        for cell in nb["cells"]:
            if cell["cell_type"] == "markdown":
                found.update(HEADING.findall(_text(cell["source"])))
    return found


def quoted_numbers(markdown: str, section_numbers: set[str]) -> list[tuple[str, bool]]:
    """The quantities in a markdown text, each with whether it is a percentage."""
    text = MODEL_VERSION.sub("SD", markdown)
    found = []
    for match in NUMBER.finditer(text):
        number, before = match.group(), text[max(0, match.start() - 12) : match.start()]
        if number in section_numbers and re.search(SECTION_REF + "$", before, re.IGNORECASE):
            continue
        found.append((number, text[match.end() : match.end() + 2].lstrip().startswith("%")))
    return found


def unsupported(nb: dict, name: str, root: Path = ROOT, section_numbers: set[str] | None = None) -> list[str]:
    """The numbers in ``nb``'s markdown that no output, named results file or allowlist entry backs.

    A printed number backs a quoted one after rounding; a results file's number must be quoted exactly
    (a large table holds a number near almost anything). A quoted percentage is backed by the printed
    fraction (6.8 % by 0.068) or by a printed percentage."""
    printed = set(NUMBER.findall(output_text(nb)))
    percents = {format(Decimal(p) * 100, "f") for p in printed}
    results = set()
    for path in named_results(nb, root):
        results.update(NUMBER.findall(path.read_text()))
    allowed = ALLOWED.get(name, {})
    section_numbers = sections([nb]) if section_numbers is None else section_numbers
    missing = []
    for index, cell in enumerate(nb["cells"]):
        if cell["cell_type"] != "markdown":
            continue
        for quoted, percent in quoted_numbers(_text(cell["source"]), section_numbers):
            candidates = printed | percents if percent else printed
            if quoted in allowed or quoted in results or any(backs(quoted, p) for p in candidates):
                continue
            missing.append(f"cell {index}: {quoted}")
    return missing


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_prose_numbers_are_printed_or_in_results(path):
    nb = json.loads(path.read_text())
    everywhere = sections([json.loads(p.read_text()) for p in sorted(TUTORIALS.glob("[0-9][0-9]_*.ipynb"))])
    missing = unsupported(nb, path.stem, section_numbers=everywhere)
    assert not missing, (
        f"{path.name}: numbers in the prose that its outputs and named results files do not show "
        f"(refer to the printed output, print the number, or name the results file): {missing}"
    )


def test_every_allowlisted_number_is_still_quoted():
    for path in NOTEBOOKS:
        nb = json.loads(path.read_text())
        prose = "\n".join(_text(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown")
        quoted = {number for number, _ in quoted_numbers(prose, set())}
        stale = set(ALLOWED.get(path.stem, {})) - quoted
        assert not stale, f"{path.name}: allowlisted numbers no longer in the prose, remove them: {stale}"


def _notebook(markdown: str, printed: str) -> dict:
    return {
        "cells": [
            {"cell_type": "markdown", "source": markdown},
            {"cell_type": "code", "source": "print(x)", "outputs": [{"output_type": "stream", "text": printed}]},
        ]
    }


def test_a_doctored_notebook_fails():
    # the prose quotes what the output printed: fine, also after rounding
    assert unsupported(_notebook("the spread is 0.895 (about 0.90)", "spread 0.8953\n"), "x") == []
    # the prose was typed by hand and the run drifted: caught
    assert unsupported(_notebook("the spread is about 1.1", "spread 0.8953\n"), "x") == ["cell 0: 1.1"]
    # rounding the wrong way is not support, nor is a printed number with fewer decimals
    assert unsupported(_notebook("accuracy 0.97", "accuracy 0.9612\n"), "x") == ["cell 0: 0.97"]
    assert unsupported(_notebook("accuracy 0.96", "accuracy 1.0\n"), "x") == ["cell 0: 0.96"]


def test_results_files_sections_and_percentages(tmp_path):
    (tmp_path / "benchmarks" / "results").mkdir(parents=True)
    (tmp_path / "benchmarks" / "results" / "cost.md").write_text("ratio 0.946 (0.866 to 1.013)\n")
    named = "the cost (benchmarks/results/cost.md): "
    # a named results file backs its numbers as written, not rounded; an unnamed one backs nothing
    assert unsupported(_notebook(named + "0.946", ""), "x", tmp_path) == []
    assert unsupported(_notebook(named + "0.95", ""), "x", tmp_path) == ["cell 0: 0.95"]
    assert unsupported(_notebook("the cost: 0.946", ""), "x", tmp_path) == ["cell 0: 0.946"]
    # a reference to a section is not a quantity; the same number as a quantity is
    sections_ = {"3.6"}
    assert unsupported(_notebook("see section 3.6", ""), "x", tmp_path, sections_) == []
    assert unsupported(_notebook("a ratio of about 3.6", ""), "x", tmp_path, sections_) == ["cell 0: 3.6"]
    # a percentage is backed by the printed fraction
    assert unsupported(_notebook("6.8 % of the signal", "alpha 0.0683\n"), "x", tmp_path) == []
    assert unsupported(_notebook("7.8 % of the signal", "alpha 0.0683\n"), "x", tmp_path) == ["cell 0: 7.8"]


def test_backs():
    assert backs("0.96", "0.9612") and backs("0.96", "0.96") and backs("0.9", "0.895")
    assert not backs("0.96", "0.9") and not backs("0.96", "0.9712")
