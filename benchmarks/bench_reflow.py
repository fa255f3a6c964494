"""Reflow on the built-in world: few-step quality of teachers and their reflowed students, counted in network calls.

    python benchmarks/bench_reflow.py                          # ~25 min on 2 cores (teacher run + 3 reflows + scoring)
    python benchmarks/bench_reflow.py --teacher-run runs/x     # a finished `d2f train` run as the finetuned teacher

Teachers: (a) the default ``d2f train`` run (Diff2Flow finetune of ``tiny-shapes-eps`` on ``shapes-target``) and
(b) the untouched prior. Students: ``d2f reflow`` of each with its defaults (Diff2Flow objective), plus a naive-FM
reflow of (a) at the same budget (does the bridge matter here too?).

Every row is sampled with FM Euler from the same noise (seed ``--seed``) for the same prompts (the 24 prompts,
``--per-prompt`` each), and scored by the world's evaluator against the teacher's domain: prompt accuracy (95 %
Wilson interval), domain accuracy and FD (n as given; FD at this n has a floor of a few points from sampling noise
alone, ``d2f.world.metrics``). **Network calls are counted honestly**: a teacher step with classifier-free guidance
is 2 calls (conditional and unconditional), so the teacher has no 1-call row; a student is unguided (guidance
distilled into the pairs), so a step is 1 call. Writes ``benchmarks/results/reflow.md``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CALLS = (1, 2, 4, 8)


def demo_teacher(folder: Path) -> dict:
    """The demo's finetune (``d2f train``'s defaults on the built-in world) in ``folder``: trained, resumed from
    where it stopped, or (finished before) only read back; its run summary."""
    from d2f.training import TrainConfig, train
    from d2f.world.data import builtin_data

    return train(TrainConfig(output=str(folder), resume=(folder / "d2f_run.json").is_file()), builtin=builtin_data)


def score(
    pipe, prompts: list[str], steps: int, guidance: float, seed: int, domain: str, sampler="euler", shift=1.0
) -> dict:
    """Sample ``prompts`` from the noise of ``seed`` and score them against ``domain``: the evaluator's metrics and
    ``prompt_interval``, the 95 % Wilson interval of the prompt accuracy."""
    from d2f.pipeline.generate import generate
    from d2f.world.estimators import wilson_interval
    from d2f.world.metrics import evaluate

    images = generate(pipe, prompts, sampler=sampler, steps=steps, guidance=guidance, seed=seed, shift=shift)
    m = evaluate(images, prompts, domain)
    correct = round(m["prompt_accuracy"] * len(prompts))
    m["prompt_interval"] = wilson_interval(correct, len(prompts))
    return m


def rows_of(name: str, pipe, teacher: bool, guidance: float, prompts, seed: int, domain: str) -> list[dict]:
    rows = []
    for calls in CALLS:
        per_step = 2 if teacher and guidance != 1.0 else 1
        if calls % per_step:
            continue
        m = score(pipe, prompts, calls // per_step, guidance if teacher else 1.0, seed, domain)
        rows.append(dict(model=name, calls=calls, steps=calls // per_step, **m))
        print(json.dumps(rows[-1]), flush=True)
    if teacher:
        m = score(pipe, prompts, 25, guidance, seed, domain)
        rows.append(dict(model=name, calls=25 * per_step, steps=25, reference=True, **m))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> None:
    from d2f.pipeline.loading import load_pipeline
    from d2f.reflow.run import ReflowConfig, reflow
    from d2f.world.data import builtin_data
    from d2f.world.shapes import all_prompts

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/bench-reflow")
    p.add_argument("--teacher-run", help="a finished `d2f train` run to use as the finetuned teacher")
    p.add_argument("--per-prompt", type=int, default=8, help="samples per prompt (x24)")
    p.add_argument("--seed", type=int, default=1234, help="evaluation noise (the pairs use seed 0)")
    p.add_argument("--results", default=str(ROOT / "benchmarks" / "results" / "reflow.md"))
    args = p.parse_args(argv)
    work, start = Path(args.work), time.time()
    prompts = [q for q in all_prompts() for _ in range(args.per_prompt)]

    teacher_run, teacher_seconds = args.teacher_run, None
    if teacher_run is None:
        teacher_run = str(work / "teacher")
        teacher_seconds = demo_teacher(Path(teacher_run)).get("seconds")

    plans = {  # name -> (teacher model, teacher lora, student objective, domain)
        "finetune": (None, teacher_run, "diff2flow", "target"),
        "finetune, naive-FM reflow": (None, teacher_run, "fm", "target"),
        "prior": ("tiny-shapes-eps", None, "diff2flow", "base"),
    }
    costs, rows = {}, []
    for name, (model, lora, objective, domain) in plans.items():
        out = work / f"reflow-{name.replace(', ', '-').replace(' ', '-')}"
        cfg = ReflowConfig(model=model, lora=lora, objective=objective, output=str(out))
        if not (out / "d2f_run.json").is_file() or json.loads((out / "d2f_run.json").read_text())["status"] != "done":
            cfg.train = dict(resume=(out / "d2f_run.json").is_file())
        summary = reflow(cfg, builtin=builtin_data)
        record = json.loads((out / "d2f_run.json").read_text())
        costs[name] = dict(
            pairs=record["reflow"]["pair_settings"]["num_pairs"],
            pair_seconds=record["reflow"]["pairs_seconds"],
            pair_bytes=record["reflow"]["pairs_bytes"],
            train_seconds=summary.get("seconds"),
            steps=record["settings"]["steps"],
        )
        teacher = load_pipeline(model, lora)
        guidance = (teacher.d2f_run or {}).get("guidance", 2.0)
        if not any(r["model"] == f"teacher: {name.split(',')[0]}" for r in rows):
            rows += rows_of(f"teacher: {name.split(',')[0]}", teacher, True, guidance, prompts, args.seed, domain)
        rows += rows_of(f"student: {name}", load_pipeline(None, str(out)), False, 1.0, prompts, args.seed, domain)
    write_report(rows, costs, teacher_seconds, time.time() - start, args)


def write_report(rows, costs, teacher_seconds, seconds, args) -> None:
    lines = [
        "# Reflow on the built-in world (`benchmarks/bench_reflow.py`)",
        "",
        f"FM Euler from the same noise (seed {args.seed}), 24 prompts x {args.per_prompt}; teacher guidance as its run "
        "(2 network calls per guided step), students unguided (1 call per step). FD against the teacher's domain.",
        "",
        "| model | calls | steps | prompt acc. [95 %] | domain acc. | FD |",
        "| --- | ---: | ---: | --- | ---: | ---: |",
    ]
    for r in rows:
        low, high = r["prompt_interval"]
        ref = " (reference)" if r.get("reference") else ""
        lines.append(
            f"| {r['model']}{ref} | {r['calls']} | {r['steps']} | {r['prompt_accuracy']:.2f} [{low:.2f}, {high:.2f}] "
            f"| {r['domain_accuracy']:.2f} | {r['fd']:.1f} |"
        )
    lines += ["", "| reflow | pairs | pair generation | pairs on disk | student steps | training |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, c in costs.items():
        lines.append(
            f"| {name} | {c['pairs']} | {c['pair_seconds'] or 0:.0f} s | {(c['pair_bytes'] or 0) / 1e6:.1f} MB "
            f"| {c['steps']} | {c['train_seconds'] or 0:.0f} s |"
        )
    lines += [
        "",
        (f"The finetuned teacher's own `d2f train` took {teacher_seconds:.0f} s. " if teacher_seconds else "")
        + f"Whole benchmark: {seconds / 60:.0f} min on 2 CPU cores.",
    ]
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
