"""Every command given bad input, once each, as a user would type it; a table of what happened.

    python benchmarks/probe_bad_input.py            # writes benchmarks/results/bad_input_probe.md

The cases: each numeric option of train / sample / reflow / inspect-schedule at -1, 0, nan, inf, 1e30 and a
number past any integer type, each choice option at a typo, and the paths a user gets wrong (a missing
model, data or run folder, a file where a folder belongs, an unreadable config, a wrong export target). Each
runs in this process through typer (no model is loaded: every case is meant to be refused before that, and
a missing ``--model`` stops any case that is not). Outcomes: ``refused`` (one line, exit 2), ``taken``
(the value is allowed; the run then stopped at the missing model), or anything else, which is a bug.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from typer.testing import CliRunner

from d2f.cli import app
from d2f.cli.sample_images import SampleSettings
from d2f.reflow.run import ReflowConfig
from d2f.settings import declared, option_name, type_hints
from d2f.training.config import TrainConfig

NUMBERS = ["-1", "0", "nan", "inf", "1e30", "99999999999999999999999"]


def numeric_cases(command: str, cls, missing: str) -> list[list[str]]:
    hints = type_hints(cls)
    cases = []
    for f in declared(cls):
        spec, kind = f.metadata["d2f"], str(hints[f.name])
        if not spec.cli or "list" in kind:
            continue
        if "int" in kind or "float" in kind:
            cases += [[command, option_name(f.name), v, "--model", missing] for v in NUMBERS]
        elif spec.allowed() is not None:
            cases.append([command, option_name(f.name), "bogus", "--model", missing])
    return cases


def path_cases(tmp: Path) -> list[list[str]]:
    a_file = tmp / "a-file.txt"
    a_file.write_text("not a folder\n")
    config = tmp / "bad.toml"
    config.write_text('steps = "abc"\n')
    return [
        ["train", "--model", str(tmp / "missing-model")],
        ["train", "--data", str(tmp / "missing-data")],
        ["train", "--data", str(a_file)],
        ["train", "--output", str(a_file)],
        ["train", "--output", str(a_file / "under-a-file")],
        ["train", "--config", str(tmp / "missing.toml")],
        ["train", "--config", str(config)],
        ["train", "--config", str(a_file)],
        ["train", "--resume-from", str(tmp / "missing-checkpoint"), "--output", str(tmp / "r")],
        ["sample", "--lora", str(tmp / "missing-run")],
        ["sample", "--lora", str(a_file)],
        ["sample", "--prompts-file", str(tmp / "missing.txt")],
        ["sample", "--output", str(tmp / "grid.txt")],
        ["sample", "--output", str(tmp)],
        ["sample", "--device", "tpu"],
        ["sample", "--height", "30000", "--width", "30000"],
        ["reflow", "--lora", str(tmp / "missing-run")],
        ["reflow", "--pairs", str(a_file), "--model", str(tmp / "missing-model")],
        ["export", str(tmp / "missing-run")],
        ["export", str(a_file)],
        ["inspect-schedule", "--preset", "sd99"],
        ["inspect-schedule", "--tau", "1000"],
        ["inspect-schedule", "--t", "nan"],
        ["inspect-schedule", "--rows", "100000000"],
        ["inspect-schedule", "--plot", str(tmp)],
        ["no-such-command"],
        ["train", "--no-such-option", "1"],
    ]


def run_case(args: list[str]) -> tuple[str, str]:
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    first = lines[0] if lines else ""
    if result.exit_code == 2 and len(lines) == 1 and first.startswith("error:"):
        return ("taken" if "missing-model" in first and "--model" != args[1] else "refused"), first
    return f"BUG (exit {result.exit_code}, {len(lines)} lines, {type(result.exception).__name__})", first


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bad_input_probe.md")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        os.chdir(tmp)  # a fresh folder: no runs/ to pick a default teacher from
        missing = str(tmp / "missing-model")
        cases = numeric_cases("train", TrainConfig, missing) + numeric_cases("sample", SampleSettings, missing)
        cases += numeric_cases("reflow", ReflowConfig, missing) + path_cases(tmp)
        rows = [(case, *run_case(case)) for case in cases]
    counts: dict[str, int] = {}
    for _, outcome, _ in rows:
        key = outcome.split(" ")[0]
        counts[key] = counts.get(key, 0) + 1
    lines = [
        "# Bad input, one case each (`python benchmarks/probe_bad_input.py`)",
        "",
        f"{len(rows)} cases: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())) + ".",
        "`refused`: one line and exit 2 before anything is loaded; `taken`: the value is allowed (the run then",
        "stopped at the probe's missing --model, one line, exit 2); anything else would be a bug.",
        "",
        "| command line | outcome | the line |",
        "| --- | --- | --- |",
    ]
    for case, outcome, first in rows:
        shown = " ".join(a.replace(str(tmp), "TMP") if isinstance(a, str) else a for a in case)
        message = first.replace(str(tmp), "TMP").replace("|", "\\|")
        lines.append(f"| `d2f {shown}` | {outcome} | {message} |")
    args.out.write_text("\n".join(lines) + "\n")
    print(lines[2])
    if any(k.startswith("BUG") for k in counts):
        sys.exit(1)


if __name__ == "__main__":
    main()
