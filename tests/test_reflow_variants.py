"""benchmarks/reflow_variants.py's report: the goal table of issue #23 and the teacher's best sampler at each number
of calls, on synthetic records (the runs themselves are the benchmark's, hours of CPU)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from reflow_variants import report  # noqa: E402


def row(model, calls, acc, fd, variant="", sampler="euler", shift=1.0, steps=None):
    r = dict(
        model=model,
        variant=variant,
        settings={},
        sampler=sampler,
        shift=shift,
        steps=steps or calls,
        calls=calls,
        prompt_accuracy=acc,
        prompt_low=acc - 0.05,
        prompt_high=min(1.0, acc + 0.03),
        fd=fd,
        n=192,
    )
    if model == "student":
        r["cost"] = dict(pairs=1024, pair_seconds=100.0, pair_bytes=2e6, steps=1000, train_seconds=250.0)
    return r


def test_goal_table_and_the_teachers_best_at_equal_calls():
    records = [
        row("teacher", 2, 0.40, 143.4, steps=1),
        row("teacher", 4, 0.96, 8.6, steps=2),
        row("teacher", 4, 0.95, 14.3, sampler="ddim", steps=2),
        row("teacher", 16, 0.99, 3.9, steps=8),
        row("teacher", 50, 0.99, 3.7, steps=25),
        row("student", 1, 0.64, 69.8, "near"),
        row("student", 2, 0.96, 17.4, "near"),  # fmt: skip
        row("student", 1, 0.995, 3.0, "great"),
        row("student", 2, 0.96, 5.5, "great"),  # fmt: skip
        row("student", 1, 0.995, 4.0, "half"),
        row("student", 2, 0.90, 5.52, "half"),  # fmt: skip
    ]
    text = report(records)
    assert "<= 5.6) and prompt accuracy >= 0.95" in text  # 1.5 x the 25-step FD 3.7
    assert "| near | 17.4 / 4.70x, 0.96 | not met (FD) | 0.64, 69.8 | not met (prompt and FD) |" in text
    assert "| great | 5.5 / 1.49x, 0.96 | met | 0.99, 3.0 | met |" in text  # 0.995 > 0.99 and 3.0 < 3.9
    assert "| half | 5.5 / 1.49x, 0.90 | not met (prompt) | 0.99, 4.0 | not met (FD) |" in text  # each part named
    assert "| 4 | euler | 0.96 / 8.6 | - | - |" in text  # the lower FD of the two 4-call samplers
    assert "| 2 | euler | 0.40 / 143.4 | great | 0.96 / 5.5 |" in text
    assert text.index("| teacher | euler | 2 |") < text.index("| student | near | 1 |")  # teachers first


def test_summary_gives_each_teacher_its_best_student_and_its_own_prompt_goal():
    prior = [
        row("teacher", 2, 0.40, 143.4, steps=1), row("teacher", 16, 0.99, 3.9, steps=8),
        row("teacher", 50, 0.99, 3.7, steps=25), row("student", 1, 0.64, 69.8, "near"),
        row("student", 2, 0.96, 17.4, "near"), row("student", 1, 0.84, 36.1, "more"),
        row("student", 2, 0.98, 5.5, "more"),
    ]  # fmt: skip
    finetune = [
        row("teacher", 2, 0.17, 346.6, steps=1), row("teacher", 2, 0.16, 411.7, sampler="ddim", steps=1),
        row("teacher", 16, 0.91, 22.4, steps=8), row("teacher", 50, 0.91, 19.3, steps=25),
        row("student", 1, 0.45, 134.2, "near"), row("student", 2, 0.86, 28.0, "near"),
    ]  # fmt: skip
    text = report(prior + [dict(r, teacher="finetune") for r in finetune])
    assert (
        "| prior | 0.99 / 3.7 | 0.40 / 143.4 (euler) | more | 0.84 / 36.1 | 0.98 / 5.5 | "
        "met: FD <= 5.6, prompt >= 0.95 | not met (prompt and FD): beat 0.99 / 3.9 (16 calls) |" in text
    )
    # the finetune's prompt goal is 0.85 (0.86 meets it) and its FD goal 1.5 x 19.3
    assert (
        "| finetune | 0.91 / 19.3 | 0.17 / 346.6 (euler) | near | 0.45 / 134.2 | 0.86 / 28.0 | met: FD <= 29.0" in text
    )
    assert text.index("## Teacher: prior") < text.index("## Teacher: finetune")
