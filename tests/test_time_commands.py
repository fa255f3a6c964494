"""benchmarks/time_commands.py: it reads ``/usr/bin/time -v``'s report of a real process, and its table says
whether each command's newest wall time is under its issue's goal."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from time_commands import GOALS, parse_time, report  # noqa: E402


@pytest.mark.skipif(not Path("/usr/bin/time").is_file(), reason="GNU time is not installed")
def test_parse_time_reads_gnu_time_of_a_real_process():
    done = subprocess.run(["/usr/bin/time", "-v", "sleep", "1.2"], capture_output=True, text=True, check=True)
    wall, peak_kb = parse_time(done.stderr)
    assert 1.2 <= wall < 5 and peak_kb > 0


def test_parse_time_reads_hours():
    stderr = "\tElapsed (wall clock) time (h:mm:ss or m:ss): 1:02:03\n\tMaximum resident set size (kbytes): 2048\n"
    assert parse_time(stderr) == (3723.0, 2048)


def test_report_takes_the_newest_record_and_says_the_goal():
    record = dict(command="reflow", as_run="d2f reflow --output RUN --json", date="2026-12-07", own_seconds=300.0,
                  pairs_seconds=100.0, peak_rss_mib=900.0, load_before=0.05)  # fmt: skip
    text = report([record | {"wall_seconds": 700.0}, record | {"wall_seconds": 590.0}])
    assert f"| 590 s | 300 s | 100 s | 900 MiB | 0.05 | wall under {GOALS['reflow']} s |" in text
    assert "700 s" not in text
    over = report([record | {"command": "own-images", "wall_seconds": 301.0}])
    assert f"wall over {GOALS['own-images']} s" in over
