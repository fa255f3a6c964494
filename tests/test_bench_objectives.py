"""benchmarks/bench_objectives.py (issue #12): the results file's resume logic, the learning-curve and paired
summaries on synthetic numbers, the new-content task, and (slow tier) the --quick grid end to end."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from objectives_grid import PRESETS, append_record, done_keys, plan, read_records  # noqa: E402

from d2f.world.curves import (  # noqa: E402
    area_under_curve,
    bootstrap_mean,
    paired_difference,
    resolvable_difference,
    steps_to_threshold,
)


def test_results_file_appends_whole_lines_skips_a_torn_one_and_says_what_is_done(tmp_path):
    path = tmp_path / "r.jsonl"
    assert read_records(path) == [] and done_keys(path) == set()
    append_record(path, {"key": "a", "x": 1})
    with open(path, "a") as f:
        f.write('{"key": "torn", "x"')  # a process killed mid-write
    append_record(path, {"key": "b", "x": 2})
    assert [r["key"] for r in read_records(path)] == ["a", "b"]
    assert done_keys(path) == {"a", "b"}
    assert all(json.loads(line)["key"] for line in path.read_text().splitlines()[::2])


def test_plan_keys_are_unique_stable_and_change_with_any_setting():
    for preset in PRESETS.values():
        cells = plan(preset)
        assert len({c.key for c in cells}) == len(cells)
        assert [c.key for c in plan(preset)] == [c.key for c in cells]
    cell = plan(PRESETS["quick"])[0]
    assert replace(cell, steps=cell.steps + 1).key != cell.key
    full = plan(PRESETS["full"])
    head = [c for c in full if c.role == "headline"]
    assert {c.seed for c in head} == {0, 1, 2, 3, 4} and {c.rank for c in head} == {4, 64}
    # no objective tuned more than another: within a block and rank, the same LR, steps, batch and warm-up
    for role, rank in {(c.role, c.rank) for c in full}:
        same = {(c.lr, c.steps, c.batch_size, c.warmup_steps) for c in full if (c.role, c.rank) == (role, rank)}
        assert len(same) == 1
    long = [c for c in full if c.role == "long"]
    assert {(c.steps, c.batch_size) for c in long} == {(1000, 32)} and {c.objective for c in long} == {
        "diff2flow",
        "fm",
        "diffusion",
    }
    assert {c.task for c in full} == {"shapes-target", "shapes-novel-colours"}
    assert {c.model for c in full} == {"tiny-shapes-eps", "tiny-shapes-v"}
    assert sum(c.redraws > 1 for c in full) == 1


def test_a_rerun_skips_the_cells_already_in_the_file(tmp_path, monkeypatch):
    import bench_objectives

    path = tmp_path / "r.jsonl"
    cells = plan(PRESETS["quick"])
    append_record(path, {"kind": "cost", "key": "cost|x", "s_per_step": {"diffusion": [0.1]}})
    append_record(path, {"kind": "cell", "key": cells[0].key})
    ran = []
    per_step = {o: [0.1] for o in ("diffusion", "diff2flow", "fm", "fm-raw-t")}
    cost = {"kind": "cost", "key": "cost|y", "s_per_step": per_step, "sample_s_per_image_call": 1e-3}
    monkeypatch.setattr(bench_objectives, "measure_cost", lambda *a: cost | {"setup_seconds": 1.0})

    def fake_cell(cell, step0, progress):
        ran.append(cell.key)
        ev = bench_objectives.Eval(
            bench_objectives.natural_sampler(cell.objective), cell.calls[-1], cell.guidance, cell.eval_seed
        )
        zeros = {m: {"value": 0.0} for m in ("fd", "kid", "prompt_accuracy", "domain_accuracy")}
        return {"kind": "cell", "key": cell.key, "wall_seconds": 0, "final": {ev.name: zeros}}

    monkeypatch.setattr(bench_objectives, "run_cell", fake_cell)
    bench_objectives.run_grid(PRESETS["quick"], path)
    assert ran == [c.key for c in cells[1:]]
    ran.clear()
    bench_objectives.run_grid(PRESETS["quick"], path)  # everything done: nothing runs
    assert ran == []
    assert done_keys(path) >= {c.key for c in cells}


def test_curve_summaries_on_synthetic_curves():
    steps, fd = [0, 50, 100, 200], [200.0, 100.0, 60.0, 40.0]
    # trapezoids: 50*150 + 50*80 + 100*50 = 16500 over 200 steps
    assert area_under_curve(steps, fd) == pytest.approx(82.5)
    assert area_under_curve([10], [3.0]) == 3.0
    assert steps_to_threshold(steps, fd, 80.0) == pytest.approx(75.0)  # between 100 (50) and 60 (100)
    assert steps_to_threshold(steps, fd, 10.0) is None
    assert steps_to_threshold(steps, fd, 300.0) == 0.0
    acc = [0.0, 0.5, 0.9, 1.0]
    assert steps_to_threshold(steps, acc, 0.9, lower_is_better=False) == pytest.approx(100.0)
    with pytest.raises(ValueError):
        area_under_curve([0, 0], [1.0, 2.0])


def test_paired_difference_and_resolvable_difference_on_synthetic_numbers():
    a = {0: 10.0, 1: 12.0, 2: 11.0, 3: 13.0, 4: 9.0}
    b = {s: v + 5.0 for s, v in a.items()} | {7: 0.0}
    d = paired_difference(a, b)
    assert d["mean"] == pytest.approx(-5.0) and d["low"] == pytest.approx(-5.0) and d["high"] == pytest.approx(-5.0)
    assert d["seeds"] == [0, 1, 2, 3, 4] and paired_difference({0: 1.0}, {1: 1.0}) is None
    noisy = bootstrap_mean([1.0, 2.0, 3.0, 4.0, 5.0], n_boot=4000)
    assert noisy["low"] < 3.0 < noisy["high"] and 1.0 <= noisy["low"] and noisy["high"] <= 5.0
    r = resolvable_difference([10.0, 12.0, 8.0])
    assert r["sd"] == pytest.approx(2.0) and r["smallest_difference"] == pytest.approx(1.96 * 2**0.5 * 2.0)


def test_novel_colours_task_is_scored_right_on_its_own_images():
    from d2f.world import novel
    from d2f.world.data import builtin_data

    prompts = [novel.prompts()[k % 12] for k in range(48)]
    scores = novel.evaluate(novel.reference_images(prompts, seed=3), prompts)
    assert scores["prompt_accuracy"] == 1.0 and scores["domain_accuracy"] == 1.0 and scores["fd"] < 20
    wrong = [
        "a " + {"pink": "cyan", "cyan": "brown", "brown": "pink"}[p.split()[1]] + " " + p.split()[2] for p in prompts
    ]
    assert novel.evaluate(novel.reference_images(prompts, seed=3), wrong)["prompt_accuracy"] == 0.0
    assert "shapes-novel-colours" in builtin_data.names


@pytest.mark.slow
def test_quick_grid_end_to_end(tmp_path):
    import bench_objectives

    out = tmp_path / "quick.jsonl"
    bench_objectives.main(["--quick", "--out", str(out), "--report", "--report-dir", str(tmp_path)])
    records = read_records(out)
    cells = [r for r in records if r["kind"] == "cell"]
    assert len(cells) == len(plan(PRESETS["quick"])) and sum(r["kind"] == "cost" for r in records) == 1
    for r in cells:
        assert [p["step"] for p in r["curve"]] == list(r["spec"]["curve_steps"])
        for m in r["final"].values():
            assert 0 <= m["prompt_accuracy"]["value"] <= 1 and m["fd"]["value"] >= 0
            assert m["prompt_accuracy"]["low"] <= m["prompt_accuracy"]["value"] <= m["prompt_accuracy"]["high"]
            assert m["fd"]["low"] <= m["fd"]["value"] <= m["fd"]["high"]
        assert r["s_per_step"] > 0
    report = (tmp_path / "objectives.md").read_text()
    assert "Diff2Flow vs naive FM" in report and "Cost" in report and "smallest resolvable difference" in report
    assert (tmp_path / "objectives_curves.png").stat().st_size > 1000
    bench_objectives.main(["--quick", "--out", str(out)])  # resumed: nothing left to run
    assert len(read_records(out)) == len(records)
