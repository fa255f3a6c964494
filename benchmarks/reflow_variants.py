"""Reflow variants on the built-in world (issue #23): which settings bring a student to its teacher in 1-2 calls,
against the teacher's own best few-step sampler at the same number of network calls, for both teachers.

    OMP_NUM_THREADS=1 python benchmarks/reflow_variants.py                     # the prior's variants not yet run
    OMP_NUM_THREADS=1 python benchmarks/reflow_variants.py --teacher finetune  # the finetune's (FINETUNE_VARIANTS)
    OMP_NUM_THREADS=1 python benchmarks/reflow_variants.py --teacher-rows      # only the teacher's sampler rows
    python benchmarks/reflow_variants.py --report-only                         # the tables from the records

Teachers (``TEACHERS``): ``tiny-shapes-eps`` untouched (guidance 2: 2 network calls a step), and the demo's
finetune (``d2f train`` with its defaults, trained here once into ``<work>/teacher-finetune``, sampled with its
run's guidance). Each variant is one ``d2f reflow`` of a teacher (``d2f.reflow.reflow``, the library call behind
the command) whose settings differ from the defaults as the variant says; pairs are made once per teacher, count
and window count and reused (``<work>/<teacher>-pairs-N[-wK]``; pair i comes from seed i whatever N). Every row
samples the 24 prompts x ``PER_PROMPT`` from the same noise (seed 1234, as ``bench_reflow.py``) and is scored by
the world's evaluator against the teacher's domain (prompt accuracy with a 95 % Wilson interval, FD).

**Calls are counted, not computed**: a forward hook on the UNet adds up the rows it was called on, divided by the
number of images, so guidance (2 rows an image) and Heun's extra evaluations count as they run. The teacher's rows
try every few-step sampler a user would pick (FM Euler, FM Euler with the time shift 3, FM Heun, DDIM) at 2, 4 and
8 calls, and the 25-step reference. Records: ``benchmarks/results/reflow_variants.jsonl`` (one per row, appended,
a rerun skips what is there; a record without ``teacher`` is the prior's); tables: ``reflow_variants.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench_reflow beside it

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "reflow_variants"
PER_PROMPT, SEED = 8, 1234
# the two teachers of issue #23: the untouched prior, and the demo's finetune (``d2f train`` with its defaults,
# trained by this script into <work>/teacher-finetune); FD against each one's own domain, guidance as each runs
TEACHERS = {"prior": dict(model="tiny-shapes-eps", domain="base"), "finetune": dict(model=None, domain="target")}
STUDENT_CALLS = (1, 2, 4)
# name -> (pairs, settings that differ from d2f reflow's defaults: the student's d2f train settings, and
# ``windows``, reflow's own)
VARIANTS = {  # in the order they ran: the control, then what the issue names, the last chosen after the others
    "defaults (near-noise t, mse)": (1024, {}),
    "u-shaped t, pseudo-Huber": (1024, {"t_sampling": "u-shaped", "loss": "pseudo-huber"}),
    "4096 pairs, 2000 steps": (4096, {"steps": 2000}),
    "full finetune, lr 1e-4": (1024, {"lora_rank": 0, "lr": 1e-4}),
    "4096 pairs, 4000 steps": (4096, {"steps": 4000}),
    "2 windows (PeRFlow)": (1024, {"windows": 2}),
    "8192 pairs, 8000 steps": (8192, {"steps": 8000}),  # twice the budget above (16384 pairs: ~30 min of pairs)
}
# the variants run with the finetune as the teacher: the control, the new one, and the prior's best (40 min of CPU)
FINETUNE_VARIANTS = ("defaults (near-noise t, mse)", "2 windows (PeRFlow)", "4096 pairs, 4000 steps")
# (sampler, shift, steps) of the teacher, guided: 2 calls per evaluation; Heun makes 2K - 1 evaluations in K steps
TEACHER_ROWS = [("euler", 1.0, 1), ("ddim", 1.0, 1)]  # 2 calls
TEACHER_ROWS += [("euler", 1.0, 2), ("euler", 3.0, 2), ("ddim", 1.0, 2)]  # 4 calls
TEACHER_ROWS += [("heun", 1.0, 2)]  # 6 calls
TEACHER_ROWS += [("euler", 1.0, 4), ("euler", 3.0, 4), ("ddim", 1.0, 4)]  # 8 calls
TEACHER_ROWS += [("euler", 1.0, 8), ("euler", 3.0, 8), ("ddim", 1.0, 8), ("heun", 1.0, 4)]  # 16 (Heun: 14) calls
TEACHER_ROWS += [("euler", 1.0, 25)]  # the reference, 50 calls
# issue #23's goals: at 2 calls FD within 1.5x of the teacher's 25-step FD and prompt accuracy >= 0.95 (prior) /
# >= 0.85 (finetune); at 1 call better than the teacher at 8 steps (16 calls) on both
GOAL_FD_RATIO, GOAL_PROMPT = 1.5, {"prior": 0.95, "finetune": 0.85}


def score(pipe, sampler: str, shift: float, steps: int, guidance: float, domain: str) -> dict:
    """``bench_reflow.score`` of the prompts from the fixed noise, with the UNet's rows per image counted."""
    from bench_reflow import score as sample_and_score

    from d2f.world.shapes import all_prompts

    prompts = [q for q in all_prompts() for _ in range(PER_PROMPT)]
    rows = []
    hook = pipe.unet.register_forward_hook(lambda module, args, output: rows.append(args[0].shape[0]))
    try:
        m = sample_and_score(pipe, prompts, steps, guidance, SEED, domain, sampler=sampler, shift=shift)
    finally:
        hook.remove()
    low, high = m["prompt_interval"]
    return dict(sampler=sampler, shift=shift, steps=steps, calls=sum(rows) / len(prompts),
                prompt_accuracy=m["prompt_accuracy"], prompt_low=low, prompt_high=high, fd=m["fd"],
                n=len(prompts))  # fmt: skip


def teacher_source(teacher: str, work: Path) -> tuple[str | None, str | None, float]:
    """(model, lora, guidance) of a teacher; the finetune is trained first if it is not in ``work`` yet."""
    if teacher == "prior":
        return TEACHERS["prior"]["model"], None, 2.0
    from bench_reflow import demo_teacher

    out = work / "teacher-finetune"
    demo_teacher(out)
    return None, str(out), float(json.loads((out / "d2f_run.json").read_text()).get("guidance", 2.0))


def run_variant(name: str, work: Path, teacher: str) -> list[dict]:
    from d2f.pipeline.loading import load_pipeline
    from d2f.reflow.run import ReflowConfig, reflow
    from d2f.world.data import builtin_data

    num_pairs, settings = VARIANTS[name]
    train = {k: v for k, v in settings.items() if k != "windows"}
    windows = settings.get("windows", 1)
    model, lora, _ = teacher_source(teacher, work)
    slug = "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")
    out = work / (slug if teacher == "prior" else f"{teacher}-{slug}")  # the prior's folders as they were first run
    pairs = f"pairs-{num_pairs}" + (f"-w{windows}" if windows > 1 else "")
    pairs = pairs if teacher == "prior" else f"{teacher}-{pairs}"
    started = time.time()
    cfg = ReflowConfig(model=model, lora=lora, num_pairs=num_pairs, pairs=str(work / pairs), output=str(out))
    cfg.windows, cfg.train = windows, dict(train, overwrite=True)
    summary = reflow(cfg, builtin=builtin_data)
    record = json.loads((out / "d2f_run.json").read_text())
    cost = dict(pairs=num_pairs, pair_seconds=summary["pairs"]["seconds"], pair_bytes=summary["pairs"]["bytes"],
                pairs_made_now=summary["pairs"]["shards_written"], train_seconds=summary.get("seconds"),
                steps=record["settings"]["steps"], wall_seconds=time.time() - started)  # fmt: skip
    student = load_pipeline(None, str(out))
    rows = []
    for calls in STUDENT_CALLS:
        scored = score(student, "euler", 1, calls, 1, TEACHERS[teacher]["domain"])
        rows.append(dict(model="student", teacher=teacher, variant=name, settings=settings, cost=cost, **scored))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def teacher_rows(teacher: str, work: Path) -> list[dict]:
    from d2f.pipeline.loading import load_pipeline

    model, lora, guidance = teacher_source(teacher, work)
    pipe = load_pipeline(model, lora)
    rows = []
    for sampler, shift, steps in TEACHER_ROWS:
        scored = score(pipe, sampler, shift, steps, guidance, TEACHERS[teacher]["domain"])
        rows.append(dict(model="teacher", teacher=teacher, variant="", settings={}, guidance=guidance, **scored))
        print(json.dumps(rows[-1]), flush=True)
    return rows


def teacher_of(record: dict) -> str:
    return record.get("teacher", "prior")  # the first records, before the finetune teacher, are the prior's


def report(records: list[dict]) -> str:
    lines = [
        "# Reflow variants on the built-in world (`benchmarks/reflow_variants.py`)",
        "",
        f"Every row from the same noise (seed {SEED}), 24 prompts x {PER_PROMPT}, scored against the teacher's domain. "
        "Calls: the UNet's rows per image, counted by a hook.",
    ]
    lines += summary(records)
    for teacher in TEACHERS:
        mine = [r for r in records if teacher_of(r) == teacher]
        if mine:
            lines += teacher_section(teacher, mine)
    return "\n".join(lines) + "\n"


def summary(records: list[dict]) -> list[str]:
    """Issue #23's goal table, one row per teacher: its best student (lowest FD at 2 calls) against the teacher's
    25-step reference, the teacher's best sampler at 2 calls, and the goals (prompt accuracy / FD in each cell)."""
    lines = [
        "",
        "## Both teachers: the best student against the goals",
        "",
        "Each cell: prompt accuracy / FD. Best student: the variant with the lowest FD at 2 calls.",
        "",
        "| teacher | teacher, 25 steps (50 calls) | teacher's best at 2 calls | best student | student, 1 call | "
        "student, 2 calls | goal at 2 calls | goal at 1 call |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    pair = lambda r: f"{r['prompt_accuracy']:.2f} / {r['fd']:.1f}"  # noqa: E731
    for teacher in TEACHERS:
        mine = [r for r in records if teacher_of(r) == teacher]
        by = {(r["sampler"], r["shift"], r["steps"]): r for r in mine if r["model"] == "teacher"}
        students = [r for r in mine if r["model"] == "student"]
        reference, eight = by.get(("euler", 1.0, 25)), by.get(("euler", 1.0, 8))
        two = [r for r in students if r["calls"] == 2]
        if not (reference and eight and two):
            continue
        best = min(two, key=lambda r: r["fd"])
        one = next(r for r in students if r["variant"] == best["variant"] and r["calls"] == 1)
        teacher_two = min((r for r in mine if r["model"] == "teacher" and r["calls"] == 2), key=lambda r: r["fd"])
        miss2, miss1 = goal_misses(best, one, reference, eight, GOAL_PROMPT[teacher])
        lines.append(
            f"| {teacher} | {pair(reference)} | {pair(teacher_two)} ({_label(teacher_two)}) | {best['variant']} | "
            f"{pair(one)} | {pair(best)} | {_verdict(miss2)}: FD <= {GOAL_FD_RATIO * reference['fd']:.1f}, "
            f"prompt >= {GOAL_PROMPT[teacher]:g} | {_verdict(miss1)}: beat {pair(eight)} (16 calls) |"
        )
    return lines


def teacher_section(teacher: str, records: list[dict]) -> list[str]:
    cell = lambda r: f"{r['prompt_accuracy']:.2f} [{r['prompt_low']:.2f}, {r['prompt_high']:.2f}]"  # noqa: E731
    guidance = next((r.get("guidance", 2.0) for r in records if r["model"] == "teacher"), 2.0)
    what = "`tiny-shapes-eps`, untouched" if teacher == "prior" else "the demo's finetune (`d2f train` defaults)"
    lines = [
        "",
        f"## Teacher: {teacher} ({what}, guidance {guidance:g}; domain {TEACHERS[teacher]['domain']})",
        "",
        "| model | variant / sampler | calls | steps | prompt acc. [95 %] | FD |",
        "| --- | --- | ---: | ---: | --- | ---: |",
    ]
    for r in sorted(records, key=lambda r: (r["model"] == "student", r["calls"])):  # stable: run order kept
        lines.append(f"| {r['model']} | {_label(r)} | {r['calls']:g} | {r['steps']} | {cell(r)} | {r['fd']:.1f} |")
    lines += best_at_equal_calls(records)
    lines += goals(records, GOAL_PROMPT[teacher])
    costs = {r["variant"]: r["cost"] for r in records if r["model"] == "student"}
    lines += ["", "| variant | pairs | pair generation | pairs on disk | student steps | training |"]
    lines += ["| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name, c in costs.items():
        megabytes = (c["pair_bytes"] or 0) / 1e6
        lines.append(f"| {name} | {c['pairs']} | {c['pair_seconds'] or 0:.0f} s | {megabytes:.1f} MB "
                     f"| {c['steps']} | {c['train_seconds'] or 0:.0f} s |")  # fmt: skip
    return lines


def _label(r: dict) -> str:
    """A student's variant, or a teacher's sampler (and its shift)."""
    return r["variant"] or r["sampler"] + (f", shift {r['shift']:g}" if r["shift"] != 1 else "")


def best_at_equal_calls(records: list[dict]) -> list[str]:
    """At each call count: the teacher's best few-step sampler (lowest FD) against the best student."""
    calls = sorted({r["calls"] for r in records if r["calls"] <= 16})
    lines = [
        "",
        "What a user would otherwise pick: at each number of calls, the teacher's best sampler (lowest FD) and the "
        "best student.",
        "",
        "| calls | teacher's best | prompt acc. / FD | best student | prompt acc. / FD |",
        "| ---: | --- | --- | --- | --- |",
    ]
    for n in calls:
        cells = []
        for model in ("teacher", "student"):
            rows = [r for r in records if r["model"] == model and r["calls"] == n]
            best = min(rows, key=lambda r: r["fd"]) if rows else None
            cells += [_label(best), f"{best['prompt_accuracy']:.2f} / {best['fd']:.1f}"] if best else ["-", "-"]
        lines.append(f"| {n:g} | " + " | ".join(cells) + " |")
    return lines if calls else []


def goal_misses(two: dict, one: dict, reference: dict, eight: dict, goal_prompt: float) -> tuple[list, list]:
    """What a student's 2-call and 1-call rows miss of issue #23's goals (empty lists: both met): at 2 calls FD
    within ``GOAL_FD_RATIO`` x the teacher's 25-step FD and prompt accuracy >= ``goal_prompt``; at 1 call a higher
    prompt accuracy and a lower FD than the teacher at 8 steps."""
    two_ok = (("FD", two["fd"] <= GOAL_FD_RATIO * reference["fd"]), ("prompt", two["prompt_accuracy"] >= goal_prompt))
    one_ok = (("prompt", one["prompt_accuracy"] > eight["prompt_accuracy"]), ("FD", one["fd"] < eight["fd"]))
    return [what for what, ok in two_ok if not ok], [what for what, ok in one_ok if not ok]


def _verdict(misses: list[str]) -> str:
    return "met" if not misses else f"not met ({' and '.join(misses)})"


def goals(records: list[dict], goal_prompt: float) -> list[str]:
    """The goal table: each variant's student against the teacher's 25-step and 8-step (Euler) rows."""
    teacher = {(r["sampler"], r["shift"], r["steps"]): r for r in records if r["model"] == "teacher"}
    reference, eight = teacher.get(("euler", 1.0, 25)), teacher.get(("euler", 1.0, 8))
    students = [r for r in records if r["model"] == "student"]
    if not (reference and eight and students):
        return []
    lines = ["", f"Goals: at 2 calls FD <= {GOAL_FD_RATIO:g} x the teacher's 25-step FD ({reference['fd']:.1f}, so "
             f"<= {GOAL_FD_RATIO * reference['fd']:.1f}) and prompt accuracy >= {goal_prompt:g}; at 1 call a higher "
             f"prompt accuracy and a lower FD than the teacher at 8 steps, 16 calls ({eight['prompt_accuracy']:.2f}, "
             f"FD {eight['fd']:.1f}).", ""]  # fmt: skip
    lines += [
        "| variant | 2 calls: FD / ratio, prompt | goal | 1 call: prompt, FD | goal |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in dict.fromkeys(r["variant"] for r in students):
        by_calls = {r["calls"]: r for r in students if r["variant"] == name}
        two, one = by_calls.get(2), by_calls.get(1)
        if not (two and one):
            continue
        ratio = two["fd"] / reference["fd"]
        miss2, miss1 = goal_misses(two, one, reference, eight, goal_prompt)
        lines.append(f"| {name} | {two['fd']:.1f} / {ratio:.2f}x, {two['prompt_accuracy']:.2f} | {_verdict(miss2)} | "
                     f"{one['prompt_accuracy']:.2f}, {one['fd']:.1f} | {_verdict(miss1)} |")  # fmt: skip
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="*", help="variants to run (default: the teacher's, all not yet recorded)")
    p.add_argument("--teacher", choices=list(TEACHERS), default="prior")
    p.add_argument("--work", default="runs/reflow-variants")
    p.add_argument("--teacher-rows", action="store_true", help="only the teacher's sampler rows")
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args(argv)
    unknown = set(args.variants) - set(VARIANTS)
    if unknown:
        p.error(f"unknown variant(s) {sorted(unknown)}; choose from {list(VARIANTS)}")
    jsonl = RESULTS.with_suffix(".jsonl")
    read = lambda: [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.is_file() else []  # noqa: E731
    if not args.report_only:
        done = {r["variant"] or "teacher" for r in read() if teacher_of(r) == args.teacher}
        default = VARIANTS if args.teacher == "prior" else FINETUNE_VARIANTS
        todo = ([] if "teacher" in done else ["teacher"]) + [v for v in args.variants or default if v not in done]
        work = Path(args.work)
        for name in todo if not args.teacher_rows else ["teacher"]:
            rows = teacher_rows(args.teacher, work) if name == "teacher" else run_variant(name, work, args.teacher)
            with open(jsonl, "a") as f:
                f.writelines(json.dumps(r) + "\n" for r in rows)
    RESULTS.with_suffix(".md").write_text(report(read()))
    print(report(read()))


if __name__ == "__main__":
    main()
