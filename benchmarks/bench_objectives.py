"""Does Diff2Flow beat naive FM and diffusion finetuning, most under LoRA, at no extra cost? (issue #12)

A grid of finetunes of the built-in priors, objective x LoRA rank x training seed x task
(``objectives_grid.py``), each scored along its learning curve and at the end with fixed evaluation noise
(``objectives_eval.py``), plus the cost of a training step of every objective measured in this process.
One cell at a time per process, one thread per process; each finished cell is appended to the results file,
and a rerun skips the cells already there (resumable: kill it at any time and start it again with the same
command). ``--workers N`` runs N such processes side by side, worker k taking every N-th cell not yet done
(``--shard k/N``), each logging to ``<out>.worker<k>.log``; give it no more workers than idle cores.

    OMP_NUM_THREADS=1 python benchmarks/bench_objectives.py --quick --report      # a check, into a temporary folder
    OMP_NUM_THREADS=1 python benchmarks/bench_objectives.py --full --dry-run      # the plan and its time estimate
    python benchmarks/bench_objectives.py --full --workers 2 --report             # the published numbers
    python benchmarks/bench_objectives.py --report-only --out benchmarks/results/objectives.jsonl

``--full`` writes ``benchmarks/results/objectives.jsonl`` by default; ``--report`` (after the grid) or
``--report-only`` writes ``benchmarks/results/objectives.md`` and its plots (``--report-dir`` to put them
elsewhere). ``--quick`` is a check of the pipeline, never a result: it writes ``quick.jsonl`` (and its report)
in ``d2f-bench-objectives`` under the system's temporary folder unless ``--out`` says where, and refuses any
path inside ``benchmarks/results``. A results file holds one preset's cells: a run refuses a file that holds
another preset's (``check_preset``). Progress and the ETA go to stderr.

A cell: set up a ``d2f train`` run (``d2f.training.loop.setup``: the same model, data, adapter, optimizer and
LR schedule as ``d2f train``) in a temporary folder, run its steps with the trainer's own ``train_step``,
score the model at each of ``curve_steps`` (the objective's natural sampler at ``calls[0]`` network calls),
and at the end with the natural sampler at every ``calls`` (and, for headline cells, the other objective's
sampler, a guidance sweep, and evaluation-noise re-draws). Nothing of a cell is kept but its record. A cell whose
loss becomes NaN or infinite (an LR too high for its objective) is recorded as ``diverged`` (the step, no scores):
a result of the sweep, not a crash of the grid. A cell with an EMA (the paper's recipe) is scored with the EMA's
weights, as ``d2f train`` saves them.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import asdict, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from objectives_eval import Eval, evaluate, natural_sampler, other_sampler  # noqa: E402
from objectives_grid import PRESETS, Cell, append_record, done_keys, plan, read_records  # noqa: E402

from d2f.errors import UserError  # noqa: E402
from d2f.objectives import OBJECTIVES  # noqa: E402
from d2f.training.loop import Diverged  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
COST_OBJECTIVES = ("diffusion", "diff2flow", "fm", "fm-raw-t")


def _quiet():
    """diffusers / transformers progress bars and notices off: the grid prints its own progress."""
    import diffusers
    import transformers

    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()


def _setup(cell: Cell, out: str, objective: str | None = None):
    from objectives_grid import RECIPES

    from d2f.training import TrainConfig
    from d2f.training.setup import setup
    from d2f.world.data import builtin_data

    cfg = TrainConfig(
        model=cell.model, data=cell.task, objective=objective or cell.objective, lora_rank=cell.rank,
        lr=cell.lr, warmup_steps=cell.warmup_steps, steps=cell.steps, batch_size=cell.batch_size,
        seed=cell.seed, max_samples=cell.max_samples, output=os.path.join(out, "run"),
        validate_every=0, checkpoint_every=0, resolution=cell.resolution, zero_terminal_snr=cell.zero_terminal_snr,
        **RECIPES[cell.recipe],
    )  # fmt: skip
    run, _ = setup(cfg, callback=lambda event: None, builtin=builtin_data)
    return run


def final_evals(cell: Cell) -> list[Eval]:
    """The evaluations at the last step (see the module doc)."""
    nat, oth = natural_sampler(cell.objective), other_sampler(cell.objective)
    evals = [Eval(nat, k, cell.guidance, cell.eval_seed) for k in cell.calls]
    if cell.other_sampler:
        evals += [Eval(oth, k, cell.guidance, cell.eval_seed) for k in cell.calls]
    evals += [Eval(nat, cell.calls[-1], w, cell.eval_seed) for w in cell.guidance_sweep if w != cell.guidance]
    for r in range(1, cell.redraws):
        evals += [Eval(nat, k, cell.guidance, cell.eval_seed + 1000 * r) for k in cell.calls]
    return evals


def curve_eval(cell: Cell) -> Eval:
    return Eval(natural_sampler(cell.objective), cell.calls[0], cell.guidance, cell.eval_seed)


def results_path(preset: str, out: str | None) -> Path:
    """The results file of a run of ``preset``: ``out``, else the published file for ``full`` and a file in the
    system's temporary folder for a check (``quick``). A check given a path inside ``benchmarks/results`` is
    refused: a check never writes where the published numbers live."""
    if out is None:
        if preset == "full":
            return RESULTS / "objectives.jsonl"
        return Path(tempfile.gettempdir()) / "d2f-bench-objectives" / f"{preset}.jsonl"
    path = Path(out)
    _refuse_published(preset, path, "--out")
    return path


def report_folder(preset: str, out: Path, report_dir: str | None) -> Path:
    """Where the report goes: ``report_dir``, else ``benchmarks/results`` for ``full`` and the results file's
    folder for a check (refused inside ``benchmarks/results``, as ``results_path``)."""
    if report_dir is None:
        return RESULTS if preset == "full" else out.parent
    folder = Path(report_dir)
    _refuse_published(preset, folder, "--report-dir")
    return folder


def _refuse_published(preset: str, path: Path, option: str) -> None:
    if preset != "full" and path.resolve().is_relative_to(RESULTS.resolve()):
        raise UserError(
            f"{option} {path} lies in {RESULTS}, where the published results live, and --{preset} is a check: "
            f"give {option} a path elsewhere (or leave it out: a temporary folder)"
        )


def preset_of(record: dict) -> str | None:
    """The preset a record was run with: its ``preset``, else (records from before it was written) the preset
    whose evaluation size its cell has; None if neither says."""
    if record.get("preset"):
        return record["preset"]
    n_eval = record.get("spec", {}).get("n_eval")
    return next((name for name, p in PRESETS.items() if p.n_eval == n_eval), None)


def check_preset(out: Path, preset) -> None:
    """Refuse to add ``preset``'s cells to a results file that holds another preset's (one preset per file:
    the report reads a file as one grid)."""
    others = sorted({preset_of(r) for r in read_records(out)} - {preset.name, None})
    if others:
        raise UserError(
            f"{out} holds cells of the {', '.join(others)} preset; --{preset.name} cells must go to a file of "
            f"their own: give --out a new path"
        )


def _step0_key(cell: Cell, ev: Eval) -> str:
    """The untouched prior's score depends on the model, the task, how it is sampled and the evaluation only:
    an objective that samples as another (``samples_as``, e.g. diffusion-fm-t as diffusion) shares its step 0."""
    sampled = OBJECTIVES[cell.objective].samples_as or cell.objective
    schedule = "|ztsnr" if cell.zero_terminal_snr else ""  # the untouched prior sampled on another schedule
    size = f"|{cell.resolution}px" if cell.resolution else ""
    return f"{cell.model}|{cell.task}|{sampled}{schedule}{size}|{ev.name}|n{cell.n_eval}"


def _step0_cache(records: list[dict]) -> dict:
    """Step-0 scores already measured: the untouched prior depends on (model, task, objective, evaluation, n)
    only, not on rank or seed."""
    cache = {}
    for r in records:
        for point in r.get("curve", []):
            if point["step"] == 0:
                cache[point["step0_key"]] = point["metrics"]
    return cache


def run_cell(cell: Cell, step0: dict, progress) -> dict:
    """Train and score one cell; returns its record."""
    start = time.perf_counter()
    torch.manual_seed(cell.seed)
    with tempfile.TemporaryDirectory(prefix="bench-objectives-") as out:
        run = _setup(cell, out)
        with run.lock:
            setup_s = time.perf_counter() - start
            ce, curve, losses = curve_eval(cell), [], []
            finals = {ev.name: None for ev in final_evals(cell)}

            def score(step: int, ev: Eval) -> dict:
                if step == cell.steps and finals.get(ev.name) is not None:
                    return finals[ev.name]
                with run.ema.averaged() if run.ema is not None else nullcontext():  # an EMA run: its averages
                    return evaluate(
                        run.pipe, run.unet, cell.objective, cell.task, ev, cell.n_eval, cell.resolution or 32
                    )

            try:
                train_s = _train_and_score(cell, run, step0, ce, curve, losses, finals, score, progress)
            except Diverged as e:  # an LR too high for the objective: a result of the sweep, not a crash
                return _diverged_record(cell, curve, losses, e, start)
            for ev in final_evals(cell):
                finals[ev.name] = score(cell.steps, ev)
    return {
        "kind": "cell", "key": cell.key, "spec": asdict(cell), "lr": cell.lr, "curve": curve, "final": finals,
        "loss_first10": statistics.fmean(losses[:10]), "loss_last10": statistics.fmean(losses[-10:]),
        "s_per_step": train_s / cell.steps, "setup_seconds": round(setup_s, 2),
        "wall_seconds": round(time.perf_counter() - start, 2), "machine": _machine(),
    }  # fmt: skip


def _train_and_score(cell: Cell, run, step0: dict, ce: Eval, curve, losses, finals, score, progress) -> float:
    """The cell's steps, scored at its curve steps (appended to ``curve``; the last one also kept in ``finals``);
    returns the seconds spent training. Raises ``Diverged`` on a NaN or infinite loss."""
    train_s = 0.0
    for step in range(cell.steps + 1):
        if step in cell.curve_steps:
            key = _step0_key(cell, ce)
            metrics = step0.get(key) if step == 0 else None
            metrics = metrics or score(step, ce)
            if step == 0:
                step0[key] = metrics
            if step == cell.steps:
                finals[ce.name] = metrics
            curve.append({"step": step, "eval": ce.name, "step0_key": key, "metrics": metrics})
        if step == cell.steps:
            return train_s
        tick = time.perf_counter()
        per_sample, _ = _train_step(run, step)
        train_s += time.perf_counter() - tick
        losses.append(float(per_sample.mean()))
        progress(1)
    return train_s


def _diverged_record(cell: Cell, curve: list, losses: list, error: Exception, start: float) -> dict:
    """The record of a cell whose loss became NaN or infinite: no final scores, the step it stopped at."""
    return {
        "kind": "cell", "key": cell.key, "spec": asdict(cell), "lr": cell.lr, "curve": curve,
        "final": {ev.name: None for ev in final_evals(cell)}, "diverged": {"step": len(losses), "message": str(error)},
        "loss_first10": statistics.fmean(losses[:10]) if losses else None,
        "wall_seconds": round(time.perf_counter() - start, 2), "machine": _machine(),
    }  # fmt: skip


def _train_step(run, step: int):
    from d2f.training.loop import train_step

    out = train_step(run, step)
    run.lr_scheduler.step()
    if run.ema is not None:  # as d2f train's loop
        run.ema.update()
    return out


def measure_cost(cell: Cell, rounds: int, steps: int) -> dict:
    """Seconds per training step of every objective, interleaved in one process (round r times ``steps``
    steps of each objective in turn, so that load drifting over time hits all alike), and seconds per
    image-call of sampling. Ratios are per round, to diffusion."""
    from objectives_eval import TASKS

    from d2f.pipeline import generate

    runs, folders = {}, []
    for objective in COST_OBJECTIVES:
        folders.append(tempfile.TemporaryDirectory(prefix="bench-cost-"))
        start = time.perf_counter()
        long = replace(cell, steps=10**6)  # the timed steps never reach the end of the LR schedule
        runs[objective] = (_setup(long, folders[-1].name, objective), time.perf_counter() - start)
    times = {o: [] for o in COST_OBJECTIVES}
    for r in range(rounds + 1):  # round 0 warms up
        for objective in COST_OBJECTIVES[r % len(COST_OBJECTIVES) :] + COST_OBJECTIVES[: r % len(COST_OBJECTIVES)]:
            run = runs[objective][0]
            tick = time.perf_counter()
            for k in range(steps):
                _train_step(run, r * steps + k)
            if r:
                times[objective].append((time.perf_counter() - tick) / steps)
    run = runs["diff2flow"][0]
    prompts, calls = TASKS[cell.task].eval_prompts(64), 4
    tick = time.perf_counter()
    with torch.no_grad():
        generate(run.pipe, prompts, steps=calls, guidance=cell.guidance, seed=0, objective="diff2flow", batch_size=256)
    per_image_call = (time.perf_counter() - tick) / (len(prompts) * calls)
    for objective in COST_OBJECTIVES:
        runs[objective][0].lock.release()
    for folder in folders:
        folder.cleanup()
    return {
        "kind": "cost", "key": f"cost|{cell.key}", "spec": asdict(cell), "rounds": rounds, "steps_per_round": steps,
        "s_per_step": {o: times[o] for o in COST_OBJECTIVES},
        "ratio_to_diffusion": {o: [a / b for a, b in zip(times[o], times["diffusion"])] for o in COST_OBJECTIVES},
        "setup_seconds": statistics.fmean(s for _, s in runs.values()),
        "sample_s_per_image_call": per_image_call, "machine": _machine(),
    }  # fmt: skip


def estimate_seconds(cell: Cell, cost: dict) -> float:
    """Planned wall time of a cell from the measured costs: setup, steps, and every evaluation's image-calls
    (guidance != 1 doubles the batch; sampling a batch of 2 x 256 costs about 2 x one of 256)."""
    # an objective not measured (the ablations: one forward and backward, like every other) at diffusion's cost
    s_step = statistics.median(cost["s_per_step"].get(cell.objective, cost["s_per_step"]["diffusion"]))
    per_call = cost["sample_s_per_image_call"]  # measured at guidance != 1: w = 1 runs half the batch
    evals = [curve_eval(cell)] * (len(cell.curve_steps) - 1) + final_evals(cell)
    sampling = sum(per_call * cell.n_eval * ev.calls * (0.5 if ev.guidance == 1 else 1.0) for ev in evals)
    return cost["setup_seconds"] + cell.steps * s_step + sampling + 1.5 * len(evals)


def _machine() -> dict:
    return {
        "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
        "torch": torch.__version__, "load_1min": os.getloadavg()[0],
    }  # fmt: skip


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--quick", action="store_true", help="a handful of tiny cells: checks the pipeline (minutes)")
    which.add_argument("--full", action="store_true", help="the published grid (hours)")
    parser.add_argument(
        "--out", default=None, help="results JSONL (default: benchmarks/results/objectives.jsonl; --quick: a temp file)"
    )
    parser.add_argument("--dry-run", action="store_true", help="measure the costs, print the plan and its ETA, stop")
    parser.add_argument("--report", action="store_true", help="write the report after the grid")
    parser.add_argument("--report-only", action="store_true", help="only write the report from --out")
    parser.add_argument("--report-dir", default=None, help="where the report goes (default: benchmarks/results)")
    parser.add_argument("--workers", type=int, default=1, help="processes side by side, one thread each (<= cores)")
    parser.add_argument("--shard", default="0/1", help="K/N: every N-th cell not yet done, from the K-th")
    args = parser.parse_args(argv)
    preset = PRESETS["quick" if args.quick else "full"]
    try:
        out = results_path(preset.name, args.out)
        report_dir = report_folder(preset.name, out, args.report_dir)
        if not args.report_only:
            check_preset(out, preset)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    print(f"results: {out}", file=sys.stderr)
    shard = tuple(int(x) for x in args.shard.split("/"))
    if not args.report_only and args.workers > 1 and not args.dry_run:
        run_workers(preset, out, args.workers)
    elif not args.report_only:
        run_grid(preset, out, args.dry_run, shard, args.workers)
    if args.report or args.report_only:
        from objectives_report import write_report

        print(f"report: {write_report(out, report_dir)}", file=sys.stderr)


def run_workers(preset, out: Path, workers: int) -> None:
    """Measure the costs once, then run ``workers`` shards of the grid as child processes and wait for them;
    again while the finished cells added new ones (the tuned block, once the sweep is complete)."""
    import subprocess

    run_grid(preset, out, dry_run=False, shard=(0, 1), workers=workers, cost_only=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    todo = [c.key for c in plan(preset, read_records(out)) if c.key not in done_keys(out)]
    while todo:
        children = []
        for k in range(workers):
            log = open(f"{out}.worker{k}.log", "a")
            argv = [sys.executable, __file__, f"--{preset.name}", "--out", str(out), "--shard", f"{k}/{workers}"]
            children.append((subprocess.Popen(argv, env=env, stdout=log, stderr=log), log))
        codes = [child.wait() for child, _ in children]
        for _, log in children:
            log.close()
        if any(codes):
            sys.exit(f"a worker failed (exit codes {codes}); see {out}.worker*.log, then rerun to resume")
        left = [c.key for c in plan(preset, read_records(out)) if c.key not in done_keys(out)]
        todo = left if set(left) != set(todo) else []  # nothing new: stop (a rerun resumes)


def run_grid(preset, out: Path, dry_run=False, shard=(0, 1), workers=1, cost_only=False) -> None:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    _quiet()
    console = Console(stderr=True)
    check_preset(out, preset)
    records = read_records(out)
    cells = plan(preset, records)  # the tuned block appears once the sweep's cells are in the file
    done = done_keys(out)
    cost_cell = replace(cells[0], objective="diffusion", rank=64 if preset.name == "full" else cells[0].rank)
    cost = next((r for r in records if r.get("key") == f"cost|{cost_cell.key}"), None)
    if cost is None:
        console.print(f"measuring the cost of a step of {', '.join(COST_OBJECTIVES)} (interleaved, one process)")
        cost = measure_cost(cost_cell, preset.cost_rounds, preset.cost_steps)
        if not dry_run:
            append_record(out, cost | {"preset": preset.name})
    k, n = shard  # every worker reads the same file at the same start: the same list, split k::n
    todo = [c for c in cells if c.key not in done][k::n]
    eta = sum(estimate_seconds(c, cost) for c in todo) / (workers if n == 1 else 1)
    s_step = {o: statistics.median(v) for o, v in cost["s_per_step"].items()}
    console.print(
        f"[bold]{preset.name}[/]: {len(cells)} cells ({len(cells) - len(todo)} done), "
        f"{sum(c.steps for c in todo)} training steps; measured s/step "
        + ", ".join(f"{o} {v:.3f}" for o, v in s_step.items())
        + f", sampling {cost['sample_s_per_image_call'] * 1e3:.2f} ms per image-call; "
        f"planned wall time {eta / 3600:.2f} h ({eta:.0f} s"
        + (f", {workers} workers on idle cores" if workers > 1 else "")
        + f") -> {out}"
    )
    blocks = {}  # the plan block by block, in its order (a rerun runs what is left in this order)
    for c in todo:
        blocks.setdefault((c.role, c.model), []).append(c)
    for (role, model), block in blocks.items():
        seconds = sum(estimate_seconds(c, cost) for c in block) / (workers if n == 1 else 1)
        objectives = ", ".join(dict.fromkeys(c.objective for c in block))
        console.print(f"  {role} ({model}): {len(block)} cells of {objectives}: {seconds / 3600:.2f} h")
    if dry_run or cost_only:
        return
    step0 = _step0_cache(records)
    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn()]
    with Progress(*columns, TimeRemainingColumn(), console=console) as bar:
        total = bar.add_task("grid (training steps)", total=sum(c.steps for c in todo))
        for k, cell in enumerate(todo):
            bar.update(total, description=f"cell {k + 1}/{len(todo)} {cell.key.rsplit('|', 1)[0]}")
            record = run_cell(cell, step0, lambda n: bar.advance(total, n)) | {"preset": preset.name}
            append_record(out, record)
            nat = record["final"][
                Eval(natural_sampler(cell.objective), cell.calls[-1], cell.guidance, cell.eval_seed).name
            ]
            if nat is None:
                console.print(f"diverged {cell.key.rsplit('|', 1)[0]} at step {record['diverged']['step']}")
                continue
            console.print(
                f"done {cell.key.rsplit('|', 1)[0]}: FD {nat['fd']['value']:.1f} KID {nat['kid']['value']:.4f} "
                f"prompt {nat['prompt_accuracy']['value']:.2f} domain {nat['domain_accuracy']['value']:.2f} "
                f"({record['wall_seconds']:.0f} s)"
            )
    console.print(f"grid finished: {len(todo)} cells in this process")
    if n == 1 and any(c.key not in done_keys(out) for c in plan(preset, read_records(out))):
        run_grid(preset, out, shard=shard, workers=workers)  # the cells the finished ones added (the tuned block)


if __name__ == "__main__":
    main()
