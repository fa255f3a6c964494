"""How long two commands take as a user runs them, alone on the machine: ``/usr/bin/time -v`` around a real process.

    python benchmarks/time_commands.py own-images   # d2f train --data DIGITS, every option at its default
    python benchmarks/time_commands.py reflow       # d2f reflow with its defaults, in an empty folder
    python benchmarks/time_commands.py --report-only

``own-images``: the plain command of "your own images" (issue #25: at most 5 minutes of training on 2 cores) on
the digits folder of ``own_images_auto.py`` (1000 images, seed 0), the automatic new-content recipe included.
``reflow``: ``d2f reflow`` in a fresh folder (no runs: the built-in prior is the teacher; issue #23: under 10
minutes). Each run appends a record to ``benchmarks/results/command_times.jsonl``: wall time and peak memory from
``/usr/bin/time``, the command's own count of seconds (its ``--json`` summary), the machine's cores, and the load
average at the start, after waiting (up to 5 minutes) for it to fall below 0.3 (a timing is only worth quoting
from an idle machine: the table says the load).
``command_times.md`` is the table of the newest record per command.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "command_times"
COMMANDS = {
    "own-images": "d2f train --data DIGITS --output RUN --json",
    "reflow": "d2f reflow --output RUN --json",
}
GOALS = {"own-images": 300, "reflow": 600}  # seconds: issue #25's 5 minutes, issue #23's 10 minutes


def parse_time(stderr: str) -> tuple[float, int]:
    """(wall seconds, peak resident kB) from the report ``/usr/bin/time -v`` appends to a command's stderr."""
    peak_kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", stderr).group(1))
    elapsed = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", stderr).group(1)
    # h:mm:ss or m:ss.ss
    return sum(float(part) * 60**k for k, part in enumerate(reversed(elapsed.split(":")))), peak_kb


def settle(idle: float = 0.3, wait: float = 300) -> float:
    """Wait (at most ``wait`` s) until the 1-minute load average is below ``idle`` (the last command's load, or
    another job's, has died down); returns the load the command then starts at."""
    deadline = time.time() + wait
    while os.getloadavg()[0] >= idle and time.time() < deadline:
        time.sleep(5)
    return os.getloadavg()[0]


def measure(name: str, work: Path) -> dict:
    run = work / "run"
    words = COMMANDS[name].replace("RUN", str(run))
    if "DIGITS" in words:
        from d2f.world.class_sets import class_set

        digits = work / "digits"
        class_set("digits").write(digits, num_images=1000, seed=0)
        words = words.replace("DIGITS", str(digits))
    load = settle()
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    started = time.time()
    done = subprocess.run(
        ["/usr/bin/time", "-v", sys.executable, "-m", "d2f", *words.split()[1:]],
        cwd=work, env={**env, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}, capture_output=True, text=True,
    )  # fmt: skip
    if done.returncode:
        sys.exit(f"{words} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(done.stdout[done.stdout.rindex("\n{") + 1 :] if "\n{" in done.stdout else done.stdout)
    wall, peak_kb = parse_time(done.stderr)
    return {
        "command": name,
        "as_run": COMMANDS[name],
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": wall,
        "own_seconds": summary.get("seconds"),
        "pairs_seconds": (summary.get("pairs") or {}).get("seconds"),
        "peak_rss_mib": peak_kb / 1024,
        "load_before": load,
        "cpus": os.cpu_count(),
        "started": started,
    }


def report(records: list[dict]) -> str:
    latest = {r["command"]: r for r in records}
    lines = [
        "# The commands' time, alone on the machine (`benchmarks/time_commands.py`)",
        "",
        "`/usr/bin/time -v` around the command in a real process, torch's default threads; own count: the "
        "command's `--json` summary (`seconds`: training, validations included; for reflow the student's training, "
        "after its pairs). Load: the 1-minute load average just before the start (2 cores: near 0 is idle).",
        "",
        "| command | date | wall | own count | pairs | peak memory | load before | goal |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | --- |",
    ]
    for name, r in latest.items():
        pairs = f"{r['pairs_seconds']:.0f} s" if r.get("pairs_seconds") else "-"
        goal = GOALS[name]
        verdict = f"under {goal} s" if r["wall_seconds"] <= goal else f"over {goal} s"
        lines.append(
            f"| `{r['as_run']}` | {r['date']} | {r['wall_seconds']:.0f} s | {r['own_seconds']:.0f} s | {pairs} | "
            f"{r['peak_rss_mib']:.0f} MiB | {r['load_before']:.2f} | wall {verdict} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("commands", nargs="*", help=f"of {', '.join(COMMANDS)} (default: both)")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    if set(args.commands) - set(COMMANDS):  # checked by hand: argparse's nargs="*" with choices refuses []
        p.error(f"unknown command(s) {sorted(set(args.commands) - set(COMMANDS))}; choose from {', '.join(COMMANDS)}")
    jsonl = RESULTS.with_suffix(".jsonl")
    if not args.report_only:
        for name in args.commands or COMMANDS:
            with tempfile.TemporaryDirectory() as work:
                record = measure(name, Path(work))
            with open(jsonl, "a") as f:
                f.write(json.dumps(record) + "\n")
            print(json.dumps(record), flush=True)
    records = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    RESULTS.with_suffix(".md").write_text(report(records))
    print(report(records))


if __name__ == "__main__":
    main()
