"""benchmarks/bench_objectives.py (issue #12): the results file's resume logic, the learning-curve and paired
summaries on synthetic numbers, the new-content task, and (slow tier) the --quick grid end to end."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, replace
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
    # (the lr-sweep block aside: it checks that fixed LR)
    for role, rank in {(c.role, c.rank) for c in full if c.role != "lr-sweep"}:
        same = {(c.lr, c.steps, c.batch_size, c.warmup_steps) for c in full if (c.role, c.rank) == (role, rank)}
        assert len(same) == 1
    long = [c for c in full if c.role == "long"]
    assert {(c.steps, c.batch_size) for c in long} == {(1000, 32)} and {c.objective for c in long} == {
        "diff2flow",
        "fm",
        "diffusion",
    }
    assert {c.task for c in full} == {"shapes-target", "shapes-novel-colours", "shapes-base", "shapes-extremes"}
    assert {c.model for c in full} == {"tiny-shapes-eps", "tiny-shapes-v"}
    assert sum(c.redraws > 1 for c in full) == 1


def test_decomposition_and_lr_sweep_blocks_and_the_published_cells_stay_done():
    """issue #24: the ablations on both priors with the headline's seeds and budget; every objective at each
    sweep LR on the tuning seed and its own validation noise; the published cells' keys unchanged."""
    from objectives_grid import DECOMPOSITION, MAIN, SWEEP_LRS, TUNING_SEED, VALIDATION_SEED

    from d2f.objectives import OBJECTIVES

    full = plan(PRESETS["full"])
    head = [c for c in full if c.role == "headline" and c.rank == 64]
    dec = [c for c in full if c.role == "decomposition"]
    assert set(DECOMPOSITION) <= set(OBJECTIVES) and {c.model for c in dec} == {"tiny-shapes-eps", "tiny-shapes-v"}
    for model, objectives in (
        ("tiny-shapes-eps", set(DECOMPOSITION)),
        ("tiny-shapes-v", {*DECOMPOSITION, "diffusion", "diff2flow"}),
    ):
        mine = [c for c in dec if c.model == model]
        assert {c.objective for c in mine} == objectives and {c.seed for c in mine} == {c.seed for c in head}
        assert {(c.task, c.rank, c.steps, c.batch_size, c.lr, c.eval_seed, c.curve_steps) for c in mine} == {
            (h.task, h.rank, h.steps, h.batch_size, h.lr, h.eval_seed, h.curve_steps) for h in head
        }
    sweep = [c for c in full if c.role == "lr-sweep"]
    assert sorted((c.objective, c.lr) for c in sweep) == sorted(
        (o, lr) for o in (*MAIN, *DECOMPOSITION) for lr in SWEEP_LRS
    )
    assert {(c.seed, c.eval_seed) for c in sweep} == {(TUNING_SEED, VALIDATION_SEED)}
    assert TUNING_SEED not in {c.seed for c in full if c.role != "lr-sweep"}
    roles = list(dict.fromkeys(c.role for c in full))  # the plan's order: what matters most first
    assert roles[:3] == ["headline", "decomposition", "lr-sweep"]
    published = BENCH / "results" / "objectives.jsonl"
    records = read_records(published)
    cells = {r["key"] for r in records if r.get("kind") == "cell"}
    # adding blocks re-runs nothing already published (the tuned block: as the published sweep plans it); a tuned
    # cell a wider sweep no longer plans (a pick that moved) stays in the file, at the three-LR sweep's pick
    planned = {c.key for c in plan(PRESETS["full"], records)}
    superseded = {r["key"] for r in records if r.get("kind") == "cell" and r["spec"]["role"] == "tuned"} - planned
    assert cells and cells - superseded <= planned
    assert all(r["spec"]["role"] == "tuned" and r["lr"] == 3e-3 for r in records if r.get("key") in superseded)
    quick = plan(PRESETS["quick"])
    assert set(DECOMPOSITION) <= {c.objective for c in quick} and any(c.role == "lr-sweep" for c in quick)
    assert len({c.key for c in quick}) == len(quick)


def test_quick_without_out_never_touches_the_published_results(tmp_path, monkeypatch):
    """issue #21 (6): --quick defaults to a temporary file and its report beside it, refuses benchmarks/results;
    the grid runs (cost and cells stubbed: planning only, no training) without changing benchmarks/results."""
    import tempfile

    import bench_objectives

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    results = BENCH / "results"
    before = {p.name: p.read_bytes() for p in results.iterdir() if p.is_file()}
    out = bench_objectives.results_path("quick", None)
    assert out.parent == tmp_path / "d2f-bench-objectives" and not out.resolve().is_relative_to(results.resolve())
    assert bench_objectives.report_folder("quick", out, None) == out.parent
    assert bench_objectives.results_path("full", None) == results / "objectives.jsonl"
    for option, path in (("--out", results / "quick.jsonl"), ("--report-dir", results)):
        with pytest.raises(SystemExit) as exit_:
            bench_objectives.main(["--quick", option, str(path)])
        assert exit_.value.code == 2
    _stub_grid(monkeypatch, bench_objectives)
    bench_objectives.main(["--quick"])
    records = read_records(out)
    cells = [r for r in records if r["kind"] == "cell"]  # every cell of the plan, the tuned ones its sweep added
    assert {r["preset"] for r in records} == {"quick"} and len(cells) == len(plan(PRESETS["quick"], records))
    assert any(r["kind"] == "cost" for r in records) and any(r["spec"]["role"] == "tuned" for r in cells)
    assert {p.name: p.read_bytes() for p in results.iterdir() if p.is_file()} == before


def test_a_results_file_holds_one_preset(tmp_path, monkeypatch, capsys):
    """A file with one preset's cells refuses another's, with one line and exit 2; the published file (cells
    from before records said their preset) reads as the full preset's."""
    import bench_objectives

    full_file = tmp_path / "full.jsonl"
    append_record(full_file, {"kind": "cell", "key": "x", "spec": {"n_eval": PRESETS["full"].n_eval}})
    with pytest.raises(SystemExit) as exit_:
        bench_objectives.main(["--quick", "--out", str(full_file)])
    assert exit_.value.code == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(err) == 1 and "holds cells of the full preset" in err[0]
    quick_file = tmp_path / "quick.jsonl"
    append_record(quick_file, {"kind": "cell", "key": "y", "preset": "quick"})
    with pytest.raises(bench_objectives.UserError, match="quick preset; --full cells must go to a file"):
        bench_objectives.run_grid(PRESETS["full"], quick_file, dry_run=True)
    published = read_records(BENCH / "results" / "objectives.jsonl")
    assert {bench_objectives.preset_of(r) for r in published} == {"full"}
    bench_objectives.check_preset(BENCH / "results" / "objectives.jsonl", PRESETS["full"])  # no error


def _stub_grid(monkeypatch, bench_objectives):
    """measure_cost and run_cell replaced by records of the right shape (no training, no sampling)."""
    per_step = {o: [0.1] for o in ("diffusion", "diff2flow", "fm", "fm-raw-t")}
    cost = {"kind": "cost", "key": "cost|stub", "s_per_step": per_step, "sample_s_per_image_call": 1e-3}
    monkeypatch.setattr(bench_objectives, "measure_cost", lambda *a: cost | {"setup_seconds": 1.0})

    def fake_cell(cell, step0, progress):
        ev = bench_objectives.Eval(
            bench_objectives.natural_sampler(cell.objective), cell.calls[-1], cell.guidance, cell.eval_seed
        )
        zeros = {m: {"value": 0.0} for m in ("fd", "kid", "prompt_accuracy", "domain_accuracy")}
        return {"kind": "cell", "key": cell.key, "spec": asdict(cell), "lr": cell.lr, "wall_seconds": 0,
                "final": {ev.name: zeros}}  # fmt: skip

    monkeypatch.setattr(bench_objectives, "run_cell", fake_cell)


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
        return {"kind": "cell", "key": cell.key, "spec": asdict(cell), "lr": cell.lr, "wall_seconds": 0,
                "final": {ev.name: zeros}}  # fmt: skip

    monkeypatch.setattr(bench_objectives, "run_cell", fake_cell)
    bench_objectives.run_grid(PRESETS["quick"], path)
    # then, in the same run, the tuned cells the finished sweep added (quick's sweep: diff2flow at 3e-3 only)
    tuned = [c for c in plan(PRESETS["quick"], read_records(path)) if c.role == "tuned"]
    assert tuned and {(c.objective, c.lr) for c in tuned} == {("diff2flow", 3e-3)}
    assert ran == [c.key for c in cells[1:] + tuned]
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


def test_extremes_task_is_scored_right_on_its_own_images_and_its_backgrounds_are_read_per_caption():
    """shapes-extremes: its real images score prompt accuracy 1 with backgrounds at 0 (black) and 1 (white); the
    wrong background in the caption reads as the wrong extreme; the grid's score splits the luminance by caption."""
    import pytest
    from objectives_eval import score

    from d2f.world import extremes
    from d2f.world.data import builtin_data

    prompts = [extremes.prompts()[k % 48] for k in range(96)]
    images = extremes.reference_images(prompts, seed=3)
    scores = extremes.evaluate(images, prompts)
    assert scores["prompt_accuracy"] == 1.0 and scores["fd"] < 20
    assert scores["black_background"] < 0.01 and scores["white_background"] > 0.99
    swapped = [p.replace("black", "X").replace("white", "black").replace("X", "white") for p in prompts]
    again = extremes.evaluate(images, swapped)
    assert again["black_background"] > 0.99 and again["white_background"] < 0.01
    with pytest.raises(ValueError, match="not a caption of shapes-extremes"):
        extremes.parse("a red circle")
    grid = score(images, "shapes-extremes", prompts)
    assert grid["black_background"]["value"] < 0.01 and grid["black_background"]["reference"] < 0.01
    assert grid["white_background"]["low"] > 0.99 and grid["prompt_accuracy"]["value"] == 1.0
    data = builtin_data("shapes-extremes", 32)
    assert data.prompts == extremes.prompts() and "shapes-extremes" in builtin_data.names


def test_extremes_table_pairs_each_objective_with_diffusion_on_its_prior():
    from objectives_report import extremes_table

    cells = [c for c in plan(PRESETS["full"]) if c.role == "extremes"]
    assert {(c.model, c.label) for c in cells} == {
        ("tiny-shapes-eps", "diffusion"), ("tiny-shapes-eps", "diff2flow"), ("tiny-shapes-v", "diffusion"),
        ("tiny-shapes-v", "diff2flow"), ("tiny-shapes-v", "diff2flow+ztsnr"),
    }  # fmt: skip
    records = []
    for c in cells:
        r = _synthetic_cell(c, 40.0, 0.5)
        black = {"diffusion": 0.20, "diff2flow": 0.05, "diff2flow+ztsnr": 0.02}[c.label] + 0.01 * c.seed
        for m in r["final"].values():
            m["black_background"] = {"value": black, "reference": 0.0}
            m["white_background"] = {"value": 0.9, "reference": 1.0}
        records.append(r)
    text = "\n".join(extremes_table(records))
    assert (
        "| tiny-shapes-v | diff2flow+ztsnr | 2 | 0.025 | 0.900 | -0.180 (95 % CI -0.180 to -0.180, 2 seeds) |" in text
    )
    assert "| tiny-shapes-eps | diffusion | 2 | 0.205 | 0.900 | - | - | 0.000 / 1.000 |" in text


def test_longer_block_reports_each_objective_along_training_averaged_over_seeds():
    """The 3000-step block (issue #24, question 4) gets a table of FD / prompt accuracy at every curve step, so a
    crossing of the curves can be read off it."""
    from objectives_report import curve_table

    cells = [c for c in plan(PRESETS["full"]) if c.role == "longer"]
    assert {(c.label, c.seed, c.steps) for c in cells} == {
        (o, s, 3000) for o in ("diff2flow", "diffusion", "fm") for s in (0, 1)
    }
    records = []
    for c in cells:
        r = _synthetic_cell(c, 0.0, 0.0)
        for p in r["curve"]:  # fm falls from 400 to 100, diffusion stays at 200 (+ 2 on seed 1): they cross
            fd = {"fm": 400.0 - 0.1 * p["step"], "diffusion": 200.0 + 2 * c.seed}.get(c.label, 150.0)
            p["metrics"] = {"fd": {"value": fd}, "prompt_accuracy": {"value": p["step"] / 6000}}
        records.append(r)
    text = "\n".join(curve_table(records))
    assert "| objective | seeds | step 0: FD / prompt acc | step 500: FD / prompt acc |" in text
    assert "| diffusion | 2 | 201.0 / 0.00 | 201.0 / 0.08 | 201.0 / 0.17 | 201.0 / 0.33 | 201.0 / 0.50 |" in text
    assert "| fm | 2 | 400.0 / 0.00 | 350.0 / 0.08 | 300.0 / 0.17 | 200.0 / 0.33 | 100.0 / 0.50 |" in text
    # Diff2Flow's 150 against diffusion's 200 / 202 (seed 0 / 1): -51 paired, the interval the range of the two
    assert "| fd(diff2flow) - fd(diffusion) | -51.0 [-52.0, -50.0] | -51.0 [-52.0, -50.0] |" in text
    assert "| fd(diff2flow) - fd(fm) | -250.0 [-250.0, -250.0] | -200.0 [-200.0, -200.0] |" in text


@pytest.mark.slow
def test_quick_grid_end_to_end(tmp_path):
    import bench_objectives

    out = tmp_path / "quick.jsonl"
    bench_objectives.main(["--quick", "--out", str(out), "--report", "--report-dir", str(tmp_path)])
    records = read_records(out)
    cells = [r for r in records if r["kind"] == "cell"]
    assert len(cells) == len(plan(PRESETS["quick"], records)) and sum(r["kind"] == "cost" for r in records) == 1
    assert any(r["spec"]["role"] == "tuned" for r in cells)  # the sweep's pick, trained again on the headline seeds
    for r in cells:
        assert [p["step"] for p in r["curve"]] == list(r["spec"]["curve_steps"])
        for m in r["final"].values():
            assert 0 <= m["prompt_accuracy"]["value"] <= 1 and m["fd"]["value"] >= 0
            assert m["prompt_accuracy"]["low"] <= m["prompt_accuracy"]["value"] <= m["prompt_accuracy"]["high"]
            assert m["fd"]["low"] <= m["fd"]["value"] <= m["fd"]["high"]
        assert r["s_per_step"] > 0
    report = (tmp_path / "objectives.md").read_text()
    assert "Diff2Flow vs naive FM" in report and "Cost" in report and "smallest resolvable difference" in report
    assert "## Equal tuning: each objective at its own picked LR" in report
    assert "## Brightness: the samples' background against the data's" in report
    for r in cells:
        for m in r["final"].values():
            b = m["background_luminance"]
            assert b["low"] <= b["value"] <= b["high"] and 0 <= b["value"] <= 1
            low, high = {"shapes-target": (0.04, 0.16), "shapes-extremes": (0.3, 0.7)}.get(r["spec"]["task"], (0.84, 1))
            assert low < b["reference"] < high  # the target's dark backgrounds; half black, half white; light
            if r["spec"]["task"] == "shapes-extremes":
                assert m["black_background"]["reference"] < 0.01 and m["white_background"]["reference"] > 0.99
    # issue #24's new blocks: each ran its cells and has its section
    assert {"recipe", "extremes", "resolution"} <= {r["spec"]["role"] for r in cells}
    assert "The paper's LoRA recipe" in report and "diff2flow+paper" in report and "48 px" in report
    assert "| tiny-shapes-eps | diff2flow | 1 |" in report  # the extremes table (its on-black / on-white columns)
    assert (tmp_path / "objectives_curves.png").stat().st_size > 1000
    bench_objectives.main(["--quick", "--out", str(out)])  # resumed: nothing left to run
    assert len(read_records(out)) == len(records)


def _synthetic_cell(cell, fd, acc):
    """A finished cell's record with the given final FD and prompt accuracy (natural sampler, most calls)."""
    from dataclasses import asdict

    from objectives_eval import Eval, natural_sampler

    name = Eval(natural_sampler(cell.objective), cell.calls[-1], cell.guidance, cell.eval_seed).name
    metrics = {"fd": {"value": fd}, "kid": {"value": 0.0}, "prompt_accuracy": {"value": acc}}
    metrics["domain_accuracy"] = {"value": 1.0}
    curve = [{"step": s, "metrics": metrics} for s in cell.curve_steps]
    return {
        "kind": "cell",
        "key": cell.key,
        "spec": asdict(cell),
        "lr": cell.lr,
        "final": {name: metrics},
        "curve": curve,
    }


def test_lr_rule_and_decomposition_section_on_synthetic_numbers(tmp_path):
    """best_lr applies LR_RULE (prompt accuracy first, ties to the lower FD); the decomposition section pairs each
    step of the chain over seeds, the eps prior's references taken from the headline block."""
    from objectives_report import best_lr, decomposition_section, lr_sweep_section

    full = plan(PRESETS["full"])
    sweep = [c for c in full if c.role == "lr-sweep" and c.objective in ("diff2flow", "fm")]
    acc = {("diff2flow", 3e-4): 0.5, ("diff2flow", 1e-3): 0.9, ("diff2flow", 3e-3): 0.9, ("fm", 3e-4): 0.2}
    fd = {("diff2flow", 1e-3): 30.0, ("diff2flow", 3e-3): 20.0}
    records = [_synthetic_cell(c, fd.get((c.objective, c.lr), 50.0), acc.get((c.objective, c.lr), 0.1)) for c in sweep]
    assert best_lr(records) == {"diff2flow": 3e-3, "fm": 3e-4}
    table = "\n".join(lr_sweep_section(records))
    assert "| diff2flow | 0.003 | 0.90 | 20.0 | yes |" in table and "| diff2flow | 0.001 | 0.90 | 30.0 |  |" in table
    eps = [c for c in full if c.model == "tiny-shapes-eps" and c.rank == 64]
    fd_of = {"diffusion": 40.0, "diffusion-fm-t": 35.0, "diff2flow-unweighted": 33.0, "diff2flow": 30.0}
    by_role = {"headline": [], "decomposition": []}
    for c in eps:
        if c.role in by_role and c.objective in (*fd_of, "diff2flow-discrete", "diff2flow-no-scale"):
            by_role[c.role].append(_synthetic_cell(c, fd_of.get(c.objective, 38.0) + c.seed, 0.5))
    text = "\n".join(decomposition_section(by_role, tmp_path))
    assert "Diff2Flow's time density: fd(diffusion-fm-t) - fd(diffusion) = -5.0 (95 % CI -5.0 to -5.0, 5 seeds)" in text
    assert "the loss weight w(t): fd(diff2flow) - fd(diff2flow-unweighted) = -3.0" in text
    assert "the input scaling c(t): fd(diff2flow) - fd(diff2flow-no-scale) = -8.0" in text


def test_tuned_block_follows_a_complete_sweep_and_its_section_pairs_each_objective_at_its_pick(tmp_path):
    """issue #24, equal tuning effort: no tuned cells until every sweep cell is recorded; then each objective whose
    pick is not the fixed LR gets the headline seeds at its pick (same task, prior, rank, budget), the others keep
    their fixed-LR cells; the section pairs every objective at its pick with diffusion at its own."""
    from objectives_grid import TUNING_SEED
    from objectives_report import tuned_section

    full = plan(PRESETS["full"])
    sweep = [c for c in full if c.role == "lr-sweep"]
    picks = {"diff2flow": 3e-3, "fm": 3e-4}  # every other objective: the fixed 1e-3
    records = [_synthetic_cell(c, 50.0, 0.9 if c.lr == picks.get(c.objective, 1e-3) else 0.1) for c in sweep]
    assert plan(PRESETS["full"], records[:-1]) == full  # the sweep is not complete: nothing added
    tuned = [c for c in plan(PRESETS["full"], records) if c.role == "tuned"]
    assert sorted({(c.objective, c.lr) for c in tuned}) == sorted(picks.items())
    head = [c for c in full if c.role == "headline" and c.rank == 64]
    assert {c.seed for c in tuned} == {c.seed for c in head} and TUNING_SEED not in {c.seed for c in tuned}
    assert {(c.model, c.task, c.rank, c.steps, c.batch_size, c.eval_seed) for c in tuned} == {
        (h.model, h.task, h.rank, h.steps, h.batch_size, h.eval_seed) for h in head
    }
    assert len({c.key for c in tuned} | {c.key for c in full}) == len(tuned) + len(full)  # new cells, new keys

    fixed = [c for c in head if c.objective == "diffusion"]
    cells = [_synthetic_cell(c, 40.0 + c.seed, 0.5) for c in fixed]
    cells += [_synthetic_cell(c, 30.0 + c.seed, 0.7) for c in tuned if c.objective == "diff2flow"]
    by_role = {"lr-sweep": records, "headline": cells[: len(fixed)], "decomposition": [], "tuned": cells[len(fixed) :]}
    text = "\n".join(tuned_section(by_role))
    assert "| diff2flow | 0.003 | 5 | 32.0 | 0.70 | -10.0 (95 % CI -10.0 to -10.0, 5 seeds) | +0.20" in text
    assert "| diffusion | 0.001 | 5 | 42.0 | 0.50 | - | - |" in text
    assert "| fm | 0.0003 | 0 | - | - | not run yet | not run yet |" in text
    # the decomposition's steps at each objective's pick: those whose objectives ran are paired
    assert "the loss weight w(t): fd(diff2flow) - fd(diff2flow-unweighted) = no paired seeds" in text


def test_brightness_section_averages_the_cells_that_measured_it():
    from objectives_report import brightness_section

    cells = [c for c in plan(PRESETS["full"]) if c.role == "headline" and c.rank == 64 and c.objective != "fm"]
    records = []
    for c in cells:
        r = _synthetic_cell(c, 40.0, 0.5)
        if c.seed < 2:  # cells from before the measure existed have none
            value = 0.10 + 0.02 * c.seed if c.objective == "diff2flow" else 0.20
            for m in r["final"].values():
                m["background_luminance"] = {"value": value, "low": value, "high": value, "reference": 0.09}
        records.append(r)
    text = "\n".join(brightness_section(records))
    assert "| headline | tiny-shapes-eps | shapes-target | diff2flow | 0.001 | 2 | 0.110 | 0.090 | +0.020 |" in text
    assert "| headline | tiny-shapes-eps | shapes-target | diffusion | 0.001 | 2 | 0.200 | 0.090 | +0.110 |" in text
    assert brightness_section([_synthetic_cell(cells[0], 40.0, 0.5)]) == []


def test_a_partial_sweep_is_said_so_and_waits_for_its_tuned_section():
    from objectives_report import lr_sweep_section, sweep_missing, tuned_section

    sweep = [c for c in plan(PRESETS["full"]) if c.role == "lr-sweep"]
    records = [_synthetic_cell(c, 50.0, 0.5) | {"preset": "full"} for c in sweep]
    assert sweep_missing(records) == 0 and sweep_missing(records[:-3]) == 3
    assert "provisional" in "\n".join(lr_sweep_section(records[:-3]))
    assert "provisional" not in "\n".join(lr_sweep_section(records))
    by_role = {"lr-sweep": records[:-3], "headline": [], "decomposition": [], "tuned": []}
    assert tuned_section(by_role) == []


def test_a_diverged_sweep_cell_is_recorded_loses_to_every_finite_one_and_is_said_so():
    """An LR too high for an objective is a result, not a crash: ``run_cell`` (a real tiny finetune at an absurd LR)
    records where it stopped and no scores; the rule never picks it; the sweep and tuned sections name it."""
    import bench_objectives
    from objectives_report import best_lr, lr_sweep_section, tuned_section

    cell = replace(plan(PRESETS["quick"])[0], steps=4, curve_steps=(0,), lr_override=1e12, role="lr-sweep")
    record = bench_objectives.run_cell(cell, {}, lambda n: None)
    assert record["diverged"]["step"] < cell.steps and "NaN or infinite" in record["diverged"]["message"]
    assert set(record["final"].values()) == {None}

    sweep = [c for c in plan(PRESETS["full"]) if c.role == "lr-sweep" and c.objective in ("diffusion", "fm")]
    records = [_synthetic_cell(c, 50.0, 0.05) for c in sweep]
    top = max(c.lr for c in sweep)
    for r in records:
        if r["lr"] == top:  # the highest LR diverges for both; diffusion is best just below it
            r.update(final={name: None for name in r["final"]}, diverged={"step": 7, "message": "NaN"})
        elif r["spec"]["objective"] == "diffusion" and r["lr"] == 3e-3:
            r.update(_synthetic_cell(next(c for c in sweep if c.key == r["key"]), 40.0, 0.6))
    assert best_lr(records) == {"diffusion": 3e-3, "fm": 3e-4}  # fm: all ties at 0.05 and FD 50, the first kept
    table = "\n".join(lr_sweep_section(records))
    assert f"| diffusion | {top:g} | diverged at step 7 | - | |" in table and "top LR" not in table
    assert "| diffusion | 0.003 | 0.60 | 40.0 | yes |" in table
    head = [c for c in plan(PRESETS["full"]) if c.role == "headline" and c.rank == 64 and c.objective == "diffusion"]
    tuned = [_synthetic_cell(replace(c, role="tuned", lr_override=3e-3), 30.0, 0.7) for c in head]
    tuned[0].update(final={name: None for name in tuned[0]["final"]}, diverged={"step": 3, "message": "NaN"})
    text = "\n".join(tuned_section({"lr-sweep": records, "headline": [], "decomposition": [], "tuned": tuned}))
    assert "| diffusion | 0.003 | 4 | 30.0 | 0.70 | - | - |" in text and "diffusion: 1 seed(s) diverged" in text


def test_longer_and_resolution_blocks_and_the_tuned_block_right_after_the_sweep():
    """issue #24: the headline cell at 3000 steps (2 seeds, the main objectives); the v prior adapted to 48 px on
    its own data, Diff2Flow also with zero terminal SNR; their step-0 scores cached apart from the 32 px ones;
    the tuned cells planned right after the sweep's."""
    import bench_objectives
    from objectives_eval import Eval
    from objectives_grid import MAIN

    full = plan(PRESETS["full"])
    longer = [c for c in full if c.role == "longer"]
    assert {(c.objective, c.seed) for c in longer} == {(o, s) for o in MAIN for s in (0, 1)}
    assert {(c.steps, c.curve_steps[-1], c.batch_size, c.lr, c.model) for c in longer} == {
        (3000, 3000, 16, 1e-3, "tiny-shapes-eps")
    }
    res = [c for c in full if c.role == "resolution"]
    assert {(c.model, c.task, c.resolution) for c in res} == {("tiny-shapes-v", "shapes-base", 48)}
    assert sorted(c.label for c in res if c.seed == 0) == ["diff2flow", "diff2flow+ztsnr", "diffusion", "fm"]
    assert len({c.key for c in res}) == len(res) and all("+ztsnr|" in c.key for c in res if c.zero_terminal_snr)
    ev = Eval("euler", 8, 2.0, 1)
    plain, ztsnr = (
        next(c for c in res if c.label == label and c.seed == 0) for label in ("diff2flow", "diff2flow+ztsnr")
    )
    keys = {bench_objectives._step0_key(c, ev) for c in (plain, ztsnr, replace(plain, resolution=None))}
    assert len(keys) == 3

    sweep = [c for c in full if c.role == "lr-sweep"]
    records = [_synthetic_cell(c, 50.0, 0.9 if c.lr == 3e-3 else 0.1) for c in sweep]
    roles = [c.role for c in plan(PRESETS["full"], records)]
    last_sweep = max(k for k, r in enumerate(roles) if r == "lr-sweep")
    assert roles[last_sweep + 1] == "tuned" and roles.index("longer") > last_sweep


def test_workers_run_again_for_the_cells_the_finished_ones_added(tmp_path, monkeypatch):
    """--workers N: the shards run as child processes (here run in this process, with cells stubbed); once the
    sweep is complete the tuned cells it adds are run by a second round of workers, then it stops."""
    import subprocess

    import bench_objectives

    _stub_grid(monkeypatch, bench_objectives)
    out, rounds = tmp_path / "q.jsonl", []

    class Child:  # a worker: its share of the cells not done when it starts (all start at once), then runs them
        def __init__(self, argv, **kwargs):
            k, n = (int(x) for x in argv[argv.index("--shard") + 1].split("/"))
            rounds.append((k, n))
            self.cells = [c for c in plan(PRESETS["quick"], read_records(out)) if c.key not in done_keys(out)][k::n]

        def wait(self):
            for cell in self.cells:
                append_record(out, bench_objectives.run_cell(cell, {}, None) | {"preset": "quick"})
            return 0

    monkeypatch.setattr(subprocess, "Popen", Child)
    bench_objectives.run_workers(PRESETS["quick"], out, 2)
    records = read_records(out)
    assert rounds == [(0, 2), (1, 2)] * 2  # the second round: the tuned cells
    assert {c.key for c in plan(PRESETS["quick"], records)} <= done_keys(out)
    assert any(r["spec"]["role"] == "tuned" for r in records if r["kind"] == "cell")


def test_recipe_block_pairs_the_papers_recipe_with_the_headline_on_the_same_seeds():
    """issue #24 (b): Diff2Flow with the paper's LoRA recipe on the headline cell and seeds (its own keys), paired
    with the d2f-recipe headline cells of Diff2Flow and diffusion."""
    from objectives_grid import RECIPES
    from objectives_report import recipe_pairs

    full = plan(PRESETS["full"])
    recipe = [c for c in full if c.role == "recipe"]
    head = [c for c in full if c.role == "headline" and c.rank == 64]
    assert {c.label for c in recipe} == {"diff2flow+paper"} and {c.seed for c in recipe} == {c.seed for c in head}
    assert RECIPES["paper"] == {"train_conv_io": True, "lr_scheduler": "constant", "weight_decay": 0.0, "ema": True,
                                "ema_decay": 0.999}  # fmt: skip
    assert not {c.key for c in recipe} & {c.key for c in head}
    cells = [_synthetic_cell(c, 30.0 + c.seed, 0.8) for c in recipe]
    fd = {"diff2flow": 35.0, "diffusion": 32.0}
    headline = [_synthetic_cell(c, fd.get(c.objective, 90.0) + c.seed, 0.7) for c in head]
    text = "\n".join(recipe_pairs(cells, headline))
    assert "fd(diff2flow+paper) - fd(diff2flow, d2f's recipe) = -5.0 (95 % CI -5.0 to -5.0, 5 seeds)" in text
    assert "prompt_accuracy(diff2flow+paper) - prompt_accuracy(diffusion, d2f's recipe) = +0.10" in text
