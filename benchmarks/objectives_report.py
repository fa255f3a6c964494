"""The report of ``bench_objectives.py``: ``objectives.md`` and ``objectives_curves.png`` from the results JSONL.

Every number is computed from the records: the four answers of issue #12 as paired differences over training
seeds with bootstrap intervals (``d2f.world.curves``), the resolvable difference from evaluation-noise
re-draws, learning-curve summaries (area under the curve, steps to a threshold) and the cost ratios measured
in one process. The text around the numbers is fixed in advance; it does not look at which objective won.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from pathlib import Path

from objectives_eval import Eval, natural_sampler, other_sampler
from objectives_grid import LR_RULE, PRESETS, objective_label, plan, read_records

from d2f.world.curves import (
    area_under_curve,
    bootstrap_mean,
    paired_difference,
    resolvable_difference,
    steps_to_threshold,
)

METRICS = ("fd", "kid", "prompt_accuracy", "domain_accuracy")
# steps-to-threshold: fixed before any run: the style task must reach the target domain, the content task
# must draw the asked new colour and shape half of the time
THRESHOLDS = {
    "shapes-target": ("domain_accuracy", 0.9),
    "shapes-novel-colours": ("prompt_accuracy", 0.5),
    "shapes-base": ("prompt_accuracy", 0.95),  # the resolution block: the prior reads 0.90 at 48 px, 1.00 at 32
    "shapes-extremes": ("prompt_accuracy", 0.8),
}
NAIVE_FM_FINDING = """\
**Why d2f's naive FM got worse with training on the previous built-in world** (before issue #11's rebuild:
`benchmarks/probe_naive_fm.py`, 100-step runs, table below; the grid above is on the rebuilt world).
At step 0 the naive-FM model is the epsilon prior read as a velocity: it outputs eps-hat ~ x0 where FM wants
x1 - x0, the noise with the wrong sign and no data term, so its samples are no shapes at all (FD ~ 540, prompt
accuracy at chance). The default LoRA (`attn+conv`) does not reach `conv_in`, `conv_out`, the time embedding,
the `time_emb_proj`, `proj_in/out` and feed-forward layers (43 of the tiny UNet's 132 linear / conv layers),
but that is not the cause: a full finetune, which trains all of them, moves the same way (FD 543 -> 607), and
so do a 10x lower LR (-> 599), rank 4 (-> 658) and the paper's raw timestep (fm-raw-t, 525 -> 651). In every
naive-FM run the loss falls (3.6 -> 1.3) but stays at twice Diff2Flow's (0.61 after the same 100 steps): the
network has to relearn its output's meaning (eps -> velocity), its input scale and, with the raw t, its
time conditioning, and until it has, its samples are still not shapes. FD above ~500 compares shapeless
samples with the target's outlines: a rise from 540 to 600-660 is one kind of non-shape turning into another
(not measured further here), not a model losing what it knew. So, as far as these runs show, d2f's naive FM
is not broken; it starts from nothing and needs far more than 300 steps. The issue's "the paper's naive FM does
improve" is not reproduced here at 100 steps for either timestep; the grid's curves (fm, fm-raw-t) show
whether it does by 300."""


def _key(spec: dict) -> tuple:
    return (spec["model"], spec["task"], objective_label(spec), spec["rank"])


def _natural(spec: dict, calls: int | None = None, guidance: float | None = None, sampler: str | None = None) -> str:
    return Eval(
        sampler or natural_sampler(spec["objective"]), calls or spec["calls"][-1],
        spec["guidance"] if guidance is None else guidance, spec["eval_seed"],
    ).name  # fmt: skip


def _value(record: dict, name: str, metric: str) -> float | None:
    m = record["final"].get(name)
    return None if m is None else m[metric]["value"]


def _group(cells: list[dict]) -> dict[tuple, dict[int, dict]]:
    groups = defaultdict(dict)
    for r in cells:
        groups[_key(r["spec"])][r["spec"]["seed"]] = r
    return groups


def _curve(record: dict, metric: str) -> tuple[list[int], list[float]]:
    pts = sorted(record["curve"], key=lambda p: p["step"])
    return [p["step"] for p in pts], [p["metrics"][metric]["value"] for p in pts]


def _fmt(x: float | None, digits: int = 1) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def _ci(d: dict | None, digits: int = 1, short: bool = False) -> str:
    """A paired difference with its 95 % interval: in prose, or (``short``) as a table cell, 'mean [low, high]'."""
    if d is None:
        return "no paired seeds"
    if short:
        return f"{d['mean']:+.{digits}f} [{d['low']:+.{digits}f}, {d['high']:+.{digits}f}]"
    return f"{d['mean']:+.{digits}f} (95 % CI {d['low']:+.{digits}f} to {d['high']:+.{digits}f}, {d['n']} seeds)"


def _rank_name(rank: int) -> str:
    return "full" if rank == 0 else f"r{rank}"


def summary_table(groups: dict) -> list[str]:
    lines = [
        "| prior | task | objective | rank | seeds | FD | KID | prompt acc | domain acc | FD AUC | steps to thr. |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (model, task, objective, rank), by_seed in sorted(groups.items(), key=lambda kv: str(kv[0])):
        rs = list(by_seed.values())
        spec = rs[0]["spec"]
        name = _natural(spec)
        cols = []
        for metric, scale, digits in (
            ("fd", 1, 1),
            ("kid", 1, 1),
            ("prompt_accuracy", 1, 2),
            ("domain_accuracy", 1, 2),
        ):
            vals = [_value(r, name, metric) * scale for r in rs]
            sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
            cols.append(f"{statistics.fmean(vals):.{digits}f} +- {sd:.{digits}f}")
        aucs = [area_under_curve(*_curve(r, "fd")) for r in rs]
        metric, thr = THRESHOLDS[task]
        reach = [steps_to_threshold(*_curve(r, metric), thr, lower_is_better=False) for r in rs]
        got = [s for s in reach if s is not None]
        reach_txt = f"{statistics.fmean(got):.0f} ({len(got)}/{len(rs)} reach)" if got else f"never (0/{len(rs)})"
        lines.append(
            f"| {model} | {task} | {objective} | {_rank_name(rank)} | {len(rs)} | {' | '.join(cols)} | "
            f"{statistics.fmean(aucs):.1f} | {reach_txt} |"
        )
    return lines


def curve_table(cells: list[dict]) -> list[str]:
    """FD / prompt accuracy along training (mean over seeds) of each objective in ``cells`` (one block, one prior),
    then Diff2Flow minus each baseline at every step, paired over seeds: where do the curves cross?"""
    groups = _group(cells)
    steps = sorted({p["step"] for r in cells for p in r["curve"]})

    def at(by_seed, step, metric):  # {seed: metric at step}
        return {s: p["metrics"][metric]["value"] for s, r in by_seed.items() for p in r["curve"] if p["step"] == step}

    lines = [
        "| objective | seeds | " + " | ".join(f"step {s}: FD / prompt acc" for s in steps) + " |",
        "| --- | ---: |" + " ---: |" * len(steps),
    ]
    by_label = {key[2]: by_seed for key, by_seed in sorted(groups.items(), key=lambda kv: str(kv[0]))}
    for label, by_seed in by_label.items():
        cols = []
        for step in steps:
            fd, acc = at(by_seed, step, "fd").values(), at(by_seed, step, "prompt_accuracy").values()
            cols.append(f"{statistics.fmean(fd):.1f} / {statistics.fmean(acc):.2f}" if fd else "-")
        lines.append(f"| {label} | {len(by_seed)} | " + " | ".join(cols) + " |")
    pairs = [(o, "diff2flow") for o in ("fm", "diffusion") if o in by_label and "diff2flow" in by_label]
    if pairs:
        lines += ["", "| paired difference | " + " | ".join(f"step {s}" for s in steps) + " |"]
        lines += ["| --- |" + " --- |" * len(steps)]
    for other, mine in pairs:
        for metric, digits in (("fd", 1), ("prompt_accuracy", 2)):
            cols = []
            for step in steps:
                d = paired_difference(at(by_label[mine], step, metric), at(by_label[other], step, metric))
                cols.append("-" if d is None else _ci(d, digits, short=True))
            lines.append(f"| {metric}({mine}) - {metric}({other}) | " + " | ".join(cols) + " |")
    return lines


def sampler_table(groups: dict) -> list[str]:
    lines = [
        "| objective | rank | sampler | calls | FD (mean over seeds) | prompt acc | seeds |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    # both samplers over the same seeds: those whose cells also ran the other sampler
    for (_, _, objective, rank), by_seed in sorted(groups.items(), key=lambda kv: str(kv[0])):
        spec = next(iter(by_seed.values()))["spec"]
        swapped = [r for r in by_seed.values() if r["spec"]["other_sampler"]]
        for sampler in (natural_sampler(objective), other_sampler(objective)) if swapped else ():
            for calls in spec["calls"]:
                name = _natural(spec, calls=calls, sampler=sampler)
                fds = [_value(r, name, "fd") for r in swapped]
                acc = [_value(r, name, "prompt_accuracy") for r in swapped]
                lines.append(
                    f"| {objective} | {_rank_name(rank)} | {sampler} | {calls} | {statistics.fmean(fds):.1f} | "
                    f"{statistics.fmean(acc):.2f} | {len(swapped)} |"
                )
    return lines


def guidance_table(groups: dict) -> list[str]:
    lines = [
        "| objective | rank | guidance | FD (mean over seeds) | prompt acc | seeds |",
        "| --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (_, _, objective, rank), by_seed in sorted(groups.items(), key=lambda kv: str(kv[0])):
        swept = [r for r in by_seed.values() if r["spec"]["guidance_sweep"]]
        for w in sorted(set(swept[0]["spec"]["guidance_sweep"]) | {swept[0]["spec"]["guidance"]}) if swept else []:
            fds = [_value(r, _natural(r["spec"], guidance=w), "fd") for r in swept]
            acc = [_value(r, _natural(r["spec"], guidance=w), "prompt_accuracy") for r in swept]
            lines.append(
                f"| {objective} | {_rank_name(rank)} | {w:g} | {statistics.fmean(fds):.1f} | "
                f"{statistics.fmean(acc):.2f} | {len(swept)} |"
            )
    return lines


def answers(groups: dict, cost: dict | None, precision: dict | None) -> list[str]:
    """The four answers of issue #12, one sentence each, from the headline block (eps prior, shapes-target)."""
    head = {k: v for k, v in groups.items() if next(iter(v.values()))["spec"]["role"] == "headline"}
    ranks = sorted({k[3] for k in head}, key=lambda r: (r == 0, r))
    model, task = next(iter(head))[:2] if head else (None, None)
    out = []

    def scores(objective, rank, sampler_of=None, metric="fd"):  # {seed: final metric}
        by_seed = head.get((model, task, objective, rank), {})
        out = {s: _value(r, _natural(r["spec"], sampler=sampler_of), metric) for s, r in by_seed.items()}
        return {s: v for s, v in out.items() if v is not None}  # the other sampler: only the seeds that have it

    for number, other in ((1, "fm"), (2, "diffusion")):
        parts = []
        for rank in ranks:
            d = paired_difference(scores("diff2flow", rank), scores(other, rank))
            swapped = paired_difference(
                scores("diff2flow", rank, other_sampler("diff2flow")), scores(other, rank, other_sampler(other))
            )
            acc = paired_difference(
                *(scores(o, rank, metric="prompt_accuracy") for o in ("diff2flow", other))
            )  # FD alone misleads where samples have no shapes at all (naive FM): read prompt accuracy beside it
            parts.append(
                f"at {_rank_name(rank)} FD(diff2flow) - FD({other}) = {_ci(d)}; "
                f"with the samplers swapped {_ci(swapped)}; prompt accuracy (positive = Diff2Flow better) "
                f"{_ci(acc, 2)}"
            )
        title = "naive FM" if other == "fm" else "diffusion"
        out.append(f"{number}. **Diff2Flow vs {title}** (final FD, natural sampler, "
                   f"negative = Diff2Flow better): " + "; ".join(parts) + ".")  # fmt: skip
    if len(ranks) >= 2:
        low, high = ranks[0], ranks[-1]
        parts = []
        for other in ("fm", "diffusion"):
            a = {s: v - scores(other, low).get(s, float("nan")) for s, v in scores("diff2flow", low).items()}
            b = {s: v - scores(other, high).get(s, float("nan")) for s, v in scores("diff2flow", high).items()}
            parts.append(
                f"vs {other}: gap at {_rank_name(low)} minus gap at {_rank_name(high)} = {_ci(paired_difference(a, b))}"
            )
        out.append(
            "3. **Does the gap widen at low rank?** (negative = Diff2Flow's advantage larger at low rank): "
            + "; ".join(parts)
            + "."
        )
    else:
        out.append("3. **Does the gap widen at low rank?** Needs two headline ranks; this grid has one.")
    if cost:
        r = bootstrap_mean(cost["ratio_to_diffusion"]["diff2flow"])
        out.append(
            f"4. **Cost**: a Diff2Flow step costs {r['mean']:.3f} x a diffusion step (95 % CI {r['low']:.3f} to "
            f"{r['high']:.3f}, {r['n']} interleaved rounds in one process)."
        )
    if precision:
        out.append(
            f"\nAn FD difference smaller than {precision['fd']['smallest_difference']:.1f} between two single "
            "measurements is within the evaluation noise (1.96 sqrt 2 x the sd over "
            f"{precision['fd']['n_redraws']} re-draws)."
        )
    return out


def naive_fm_trend(groups: dict) -> list[str]:
    """Naive FM's FD at step 0 and at the end in this grid (mean over seeds), per form and rank: does it learn?"""
    lines = []
    for (model, task, objective, rank), by_seed in sorted(groups.items(), key=lambda kv: str(kv[0])):
        if not objective.startswith("fm") or task != "shapes-target" or model != "tiny-shapes-eps":
            continue
        first, last = (statistics.fmean(_curve(r, "fd")[1][k] for r in by_seed.values()) for k in (0, -1))
        acc0, acc1 = (statistics.fmean(_curve(r, "prompt_accuracy")[1][k] for r in by_seed.values()) for k in (0, -1))
        steps = next(iter(by_seed.values()))["spec"]["steps"]
        lines.append(
            f"- {objective} {_rank_name(rank)} ({steps} steps, {len(by_seed)} seeds): FD {first:.1f} -> {last:.1f} "
            f"({'falls' if last < first else 'rises'}), prompt accuracy {acc0:.2f} -> {acc1:.2f}."
        )
    return lines


def _precision(cells: list[dict]) -> dict | None:
    for r in cells:
        spec = r["spec"]
        if spec["redraws"] > 1:
            sampler, calls = natural_sampler(spec["objective"]), spec["calls"][-1]
            names = [
                Eval(sampler, calls, spec["guidance"], spec["eval_seed"] + 1000 * k).name
                for k in range(spec["redraws"])
            ]
            return {m: resolvable_difference([_value(r, n, m) for n in names]) for m in METRICS} | {"cell": r["key"]}
    return None


def plot_curves(groups: dict, path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    blocks = sorted({(k[0], k[1], k[3]) for k in groups}, key=str)
    if not blocks:
        return None
    fig, axes = plt.subplots(1, len(blocks), figsize=(4 * len(blocks), 3.4), squeeze=False)
    for ax, (model, task, rank) in zip(axes[0], blocks):
        for (m, t, objective, r), by_seed in sorted(groups.items(), key=lambda kv: str(kv[0])):
            if (m, t, r) != (model, task, rank):
                continue
            curves = [_curve(rec, "fd") for rec in by_seed.values()]
            steps = curves[0][0]
            vals = list(zip(*[c[1] for c in curves]))
            mean = [statistics.fmean(v) for v in vals]
            line = ax.plot(steps, mean, marker="o", label=f"{objective} ({len(curves)} seeds)")[0]
            ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.2, color=line.get_color())
        ax.set_title(f"{model.replace('tiny-shapes-', '')} / {task} / {_rank_name(rank)}", fontsize=8)
        ax.set_xlabel("training step")
        ax.set_ylabel("FD (natural sampler, fewest calls)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


BLOCK_TITLES = {
    "long": "The demo's budget",
    "longer": "A longer budget: the headline cell at 3000 steps (issue #24, question 4)",
    "resolution": "The paper's setting in miniature: the v prior adapted to 48 px (issue #24)",
    "extremes": "True blacks and whites: captions that ask for a pure black or white background (issue #24)",
    "recipe": "The paper's LoRA recipe: conv_in and conv_out trained fully, constant LR, no weight decay, EMA",
    "novel": "New content: shapes in colours the prior never drew",
    "v-prior": "The v-prediction prior",
}


def block_section(cells: list[dict], folder: Path, headline: list[dict] | None = None) -> list[str]:
    """One block other than the headline (all its cells share a role): its table, the paired differences of
    Diff2Flow against each baseline (FD and prompt accuracy), and its curves."""
    if not cells:
        return []
    groups = _group(cells)
    spec = cells[0]["spec"]
    role = spec["role"]
    models = sorted({r["spec"]["model"] for r in cells})

    def final(model, objective, metric):
        by_seed = groups.get((model, spec["task"], objective, spec["rank"]), {})
        return {s: _value(r, _natural(r["spec"]), metric) for s, r in by_seed.items()}

    lines = [
        f"## {BLOCK_TITLES.get(role, role)} ({', '.join(models)}, {spec['task']}, {spec['steps']} steps of batch "
        f"{spec['batch_size']}, {_rank_name(spec['rank'])}"
        + (f", {spec['resolution']} px" if spec.get("resolution") else "")
        + ")",
        "",
        *summary_table(groups),
        "",
    ]
    for model in models:  # Diff2Flow (and its variants) against each baseline of the same prior
        labels = {k[2] for k in groups if k[0] == model}
        mine = sorted(label for label in labels if label.startswith("diff2flow"))
        others = [o for o in ("fm", "diffusion") if o in labels]
        prefix = f"{model}: " if len(models) > 1 else ""
        for label, other in [(label, other) for label in mine for other in others]:
            for metric, digits in (("fd", 1), ("prompt_accuracy", 2)):
                d = paired_difference(final(model, label, metric), final(model, other, metric))
                lines.append(f"- {prefix}{metric}({label}) - {metric}({other}) = {_ci(d, digits)}")
    if role == "extremes":
        lines += ["", *extremes_table(cells)]
    if role == "recipe":
        lines += ["", *recipe_pairs(cells, headline or [])]
    if role in ("long", "longer"):
        calls = spec["calls"][0]
        lines += ["", f"Along training (each objective's own sampler at {calls} calls):", "", *curve_table(cells)]
    plot = plot_curves(groups, folder / f"objectives_{role.replace('-', '_')}_curves.png")
    if plot:
        lines += ["", f"![FD along training, {role} block]({plot.name})"]
    return lines + [""]


def recipe_pairs(cells: list[dict], headline: list[dict]) -> list[str]:
    """The paper's recipe paired with the headline cells of the same task, prior and rank (d2f's recipe) on the
    same seeds: against Diff2Flow and against diffusion finetuning."""
    spec = cells[0]["spec"]
    same = [r for r in headline if _key(r["spec"])[:2] == _key(spec)[:2] and r["spec"]["rank"] == spec["rank"]]

    def final(records, metric):
        return {r["spec"]["seed"]: _value(r, _natural(r["spec"]), metric) for r in records}

    lines = []
    for other in ("diff2flow", "diffusion"):
        theirs = [r for r in same if objective_label(r["spec"]) == other]
        for metric, digits in (("fd", 1), ("prompt_accuracy", 2)):
            d = paired_difference(final(cells, metric), final(theirs, metric))
            lines.append(f"- {metric}({objective_label(spec)}) - {metric}({other}, d2f's recipe) = {_ci(d, digits)}")
    return lines


def extremes_table(cells: list[dict]) -> list[str]:
    """The background luminance of the samples asked for black (0 is right) and for white (1), mean over seeds,
    per prior and objective, and each objective's paired difference to diffusion on the same prior."""
    by = defaultdict(dict)  # (model, label) -> seed -> (black, white, black data, white data)
    for r in cells:
        m = r["final"].get(_natural(r["spec"]))
        if m and "black_background" in m:
            b, w = m["black_background"], m["white_background"]
            by[(r["spec"]["model"], objective_label(r["spec"]))][r["spec"]["seed"]] = (
                b["value"], w["value"], b["reference"], w["reference"]
            )  # fmt: skip
    lines = [
        "Background luminance (outer 2 px, 0 = black, 1 = white) of the samples whose caption asks for black and of "
        "those asking for white (natural sampler, most calls), mean over seeds; the data's in the last columns; "
        "the paired difference to diffusion on the same prior (negative on black and positive on white: nearer "
        "the extreme).",
        "",
        "| prior | objective | seeds | on black | on white | black - diffusion | white - diffusion "
        "| data black / white |",
        "| --- | --- | ---: | ---: | ---: | --- | --- | ---: |",
    ]
    for (model, label), seeds in sorted(by.items()):
        base = by.get((model, "diffusion"), {})
        diffs = ["-", "-"]
        if label != "diffusion":
            diffs = [_ci(paired_difference({s: v[i] for s, v in seeds.items()}, {s: v[i] for s, v in base.items()}), 3)
                     for i in (0, 1)]  # fmt: skip
        mean = [statistics.fmean(v[i] for v in seeds.values()) for i in range(4)]
        lines.append(f"| {model} | {label} | {len(seeds)} | {mean[0]:.3f} | {mean[1]:.3f} | {diffs[0]} | {diffs[1]} | "
                     f"{mean[2]:.3f} / {mean[3]:.3f} |")  # fmt: skip
    return lines


# the decomposition (docs/math.md §9.1): (from, to, what the step adds), along the chain and beside it
DECOMPOSITION_STEPS = (
    ("diffusion", "diffusion-fm-t", "Diff2Flow's time density"),
    ("diffusion-fm-t", "diff2flow-unweighted", "the FM target on the clamped ends"),
    ("diff2flow-unweighted", "diff2flow", "the loss weight w(t)"),
    ("diffusion", "diff2flow-discrete", "the loss weight at diffusion's timesteps (the loss-only bridge)"),
    ("diff2flow-discrete", "diff2flow", "Diff2Flow's time density and ends, with the weight"),
    ("diff2flow-no-scale", "diff2flow", "the input scaling c(t)"),
)
SIDE_ROLES = ("decomposition", "lr-sweep", "tuned")  # blocks with their own sections, kept out of the main tables
OWN_BUDGET = (
    "long",
    "longer",
    "resolution",
    "extremes",
    "recipe",
)  # another budget, resolution or task: own sections only


def decomposition_section(by_role: dict, folder: Path) -> list[str]:
    """The decomposition block, per prior: its table (with diffusion and diff2flow at the same seeds, the eps
    prior's from the headline block) and the paired difference of each step of ``DECOMPOSITION_STEPS``."""
    cells = by_role["decomposition"]
    lines = []
    for model in sorted({r["spec"]["model"] for r in cells}):
        mine = [r for r in cells if r["spec"]["model"] == model]
        spec = mine[0]["spec"]
        same = (spec["model"], spec["task"], spec["rank"], spec["steps"], spec["batch_size"])
        refs = [
            r for r in by_role["headline"]
            if (r["spec"]["model"], r["spec"]["task"], r["spec"]["rank"], r["spec"]["steps"], r["spec"]["batch_size"])
            == same
        ]  # fmt: skip
        groups = _group(refs + mine)

        def final(objective, metric, groups=groups, spec=spec):
            by_seed = groups.get((spec["model"], spec["task"], objective, spec["rank"]), {})
            return {s: _value(r, _natural(r["spec"]), metric) for s, r in by_seed.items()}

        lines += [
            f"## Decomposition: Diff2Flow taken apart ({model}, {spec['task']}, {spec['steps']} steps of batch "
            f"{spec['batch_size']}, {_rank_name(spec['rank'])}; docs/math.md §9.1)",
            "",
            *summary_table(groups),
            "",
        ]
        for a, b, what in DECOMPOSITION_STEPS:
            for metric, digits in (("fd", 1), ("prompt_accuracy", 2)):
                d = paired_difference(final(b, metric), final(a, metric))
                lines.append(f"- {what}: {metric}({b}) - {metric}({a}) = {_ci(d, digits)}")
        plot = plot_curves(groups, folder / f"objectives_decomposition_{model.rsplit('-', 1)[-1]}_curves.png")
        if plot:
            lines += ["", f"![FD along training, decomposition, {model}]({plot.name})"]
        lines.append("")
    return lines


def best_lr(cells: list[dict]) -> dict[str, float]:
    """The LR of each objective by ``LR_RULE`` (fixed before the run): the highest final prompt accuracy
    (natural sampler, most calls, the sweep's own validation noise), ties to the lower FD."""
    by_objective = defaultdict(list)
    for r in cells:
        by_objective[r["spec"]["objective"]].append(r)
    best = {}
    for objective, rs in by_objective.items():
        name = _natural(rs[0]["spec"])
        top = max(rs, key=lambda r: _rule_key(r, name))
        best[objective] = top["lr"]
    return best


def _rule_key(record: dict, name: str) -> tuple[float, float]:
    """``LR_RULE`` as a sort key: (prompt accuracy, -FD); a diverged cell below every finite one."""
    if record.get("diverged"):
        return (-1.0, -math.inf)
    return (_value(record, name, "prompt_accuracy"), -_value(record, name, "fd"))


def sweep_missing(cells: list[dict]) -> int:
    """How many of its preset's planned sweep cells (``plan``) are not among ``cells`` yet (0 for records that do
    not name their preset)."""
    preset = PRESETS.get(cells[0].get("preset", "")) if cells else None
    if preset is None:
        return 0
    planned = {(c.objective, c.lr) for c in plan(preset) if c.role == "lr-sweep"}
    return len(planned - {(r["spec"]["objective"], r["lr"]) for r in cells})


def lr_sweep_section(cells: list[dict]) -> list[str]:
    """The lr-sweep block: every (objective, LR) cell's final scores and the LR the rule picks."""
    if not cells:
        return []
    spec, missing = cells[0]["spec"], sweep_missing(cells)
    best = best_lr(cells)
    lines = [
        f"## Learning-rate sweep ({spec['model']}, {spec['task']}, {spec['steps']} steps of batch "
        f"{spec['batch_size']}, {_rank_name(spec['rank'])}, training seed {spec['seed']}, validation noise seed "
        f"{spec['eval_seed']})",
        "",
        f"Rule, fixed before the run: {LR_RULE}. The grid's fixed LR is {1e-3:g} for a LoRA.",
        "",
        *(
            [f"**The sweep is not complete ({missing} cells to go): the picks below are provisional.**", ""]
            if missing
            else []
        ),
        "| objective | LR | prompt acc | FD | picked |",
        "| --- | ---: | ---: | ---: | --- |",
    ]
    for r in sorted(cells, key=lambda r: (r["spec"]["objective"], r["lr"])):
        name, objective = _natural(r["spec"]), r["spec"]["objective"]
        if r.get("diverged"):
            lines.append(f"| {objective} | {r['lr']:g} | diverged at step {r['diverged']['step']} | - | |")
            continue
        lines.append(
            f"| {objective} | {r['lr']:g} | {_fmt(_value(r, name, 'prompt_accuracy'), 2)} | "
            f"{_fmt(_value(r, name, 'fd'))} | {'yes' if best[objective] == r['lr'] else ''} |"
        )
    top = max(r["lr"] for r in cells)
    edge = sorted(o for o, lr in best.items() if lr == top)
    if edge:
        lines += ["", f"Picked at the sweep's top LR ({top:g}), so the best rate may lie above it: {', '.join(edge)}."]
    return lines + [""]


def tuned_section(by_role: dict) -> list[str]:
    """Equal tuning effort: each swept objective at the LR the rule picked for it, on the headline seeds (its tuned
    cells, or its fixed-LR cells where the pick is the fixed LR), each paired with diffusion at diffusion's pick."""
    sweep = by_role["lr-sweep"]
    if not sweep or sweep_missing(sweep):
        return []  # the tuned cells wait for the complete sweep (objectives_grid.tuned_cells)
    best, spec = best_lr(sweep), sweep[0]["spec"]
    where = (spec["model"], spec["task"], spec["rank"], spec["steps"], spec["batch_size"])
    at_pick = [
        r for role in ("headline", "decomposition", "tuned") for r in by_role[role]
        if (r["spec"]["model"], r["spec"]["task"], r["spec"]["rank"], r["spec"]["steps"], r["spec"]["batch_size"])
        == where and r["lr"] == best.get(r["spec"]["objective"])
    ]  # fmt: skip
    diverged = defaultdict(int)
    for r in [r for r in at_pick if r.get("diverged")]:
        diverged[r["spec"]["objective"]] += 1
        at_pick.remove(r)

    def final(objective, metric):
        return {r["spec"]["seed"]: _value(r, _natural(r["spec"]), metric) for r in at_pick
                if r["spec"]["objective"] == objective}  # fmt: skip

    lines = [
        f"## Equal tuning: each objective at its own picked LR ({spec['model']}, {spec['task']}, "
        f"{_rank_name(spec['rank'])}, headline seeds)",
        "",
        "Paired with diffusion finetuning at its own picked LR "
        f"({best.get('diffusion', 0):g}); seeds counted where both ran.",
        "",
        "| objective | picked LR | seeds | FD | prompt acc | FD - diffusion | prompt acc - diffusion |",
        "| --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    notes = [f"{o}: {k} seed(s) diverged at its pick, left out" for o, k in sorted(diverged.items())]
    for objective in sorted(best):
        fd, acc = final(objective, "fd"), final(objective, "prompt_accuracy")
        if not fd:
            lines.append(f"| {objective} | {best[objective]:g} | 0 | - | - | not run yet | not run yet |")
            continue
        diffs = ["-", "-"]
        if objective != "diffusion":
            diffs = [_ci(paired_difference(fd, final("diffusion", "fd")))]
            diffs.append(_ci(paired_difference(acc, final("diffusion", "prompt_accuracy")), 2))
        lines.append(
            f"| {objective} | {best[objective]:g} | {len(fd)} | {statistics.fmean(fd.values()):.1f} | "
            f"{statistics.fmean(acc.values()):.2f} | {' | '.join(diffs)} |"
        )
    lines += [""] + [f"- {n}" for n in notes] if notes else []
    lines += ["", "The decomposition (docs/math.md §9.1) at each objective's own pick, paired over the same seeds:", ""]
    for a, b, what in DECOMPOSITION_STEPS:
        for metric, digits in (("fd", 1), ("prompt_accuracy", 2)):
            d = paired_difference(final(b, metric), final(a, metric))
            lines.append(f"- {what}: {metric}({b}) - {metric}({a}) = {_ci(d, digits)}")
    return lines + [""]


def brightness_section(cells: list[dict]) -> list[str]:
    """issue #24's "true blacks and whites": the samples' background luminance (natural sampler, most calls) against
    the task's real images, per block and objective, over the cells that measured it (those run since it exists)."""
    groups = defaultdict(list)
    for r in cells:
        m = r["final"].get(_natural(r["spec"]))
        if m and "background_luminance" in m:
            spec = r["spec"]
            groups[(spec["role"], spec["model"], spec["task"], objective_label(spec), r["lr"])].append(m)
    if not groups:
        return []
    lines = [
        "## Brightness: the samples' background against the data's",
        "",
        "Mean luminance of the outer 2 px of each sample (where the world draws no shape: its background), mean over "
        "the cells' samples, against the same of the task's real images (`d2f.world.metrics.background_luminance`; "
        "the target domain is dark, 10-40 of 255). Only cells run since the measure exists.",
        "",
        "| block | prior | task | objective | LR | cells | samples | data | samples - data |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for (role, model, task, objective, lr), ms in sorted(groups.items(), key=lambda kv: str(kv[0])):
        mine = statistics.fmean(m["background_luminance"]["value"] for m in ms)
        data = statistics.fmean(m["background_luminance"]["reference"] for m in ms)
        lines.append(
            f"| {role} | {model} | {task} | {objective} | {lr:g} | {len(ms)} | {mine:.3f} | {data:.3f} | "
            f"{mine - data:+.3f} |"
        )
    return lines + [""]


def write_report(results: str | Path, folder: str | Path) -> Path:
    records = read_records(results)
    every = all_cells = [r for r in records if r.get("kind") == "cell"]
    by_role = defaultdict(list)
    for r in every:  # a diverged cell has no scores: only the sweep and tuned sections read it (and say so)
        if not r.get("diverged") or r["spec"]["role"] in ("lr-sweep", "tuned"):
            by_role[r["spec"]["role"]].append(r)
    every = [r for r in every if not r.get("diverged")]
    cells = [r for r in every if r["spec"]["role"] not in (*OWN_BUDGET, *SIDE_ROLES)]
    long = by_role["long"]
    cost = next((r for r in records if r.get("kind") == "cost"), None)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    groups = _group(cells)
    precision = _precision(cells)
    plot = plot_curves(groups, folder / "objectives_curves.png")
    spec = cells[0]["spec"] if cells else {}
    lines = [
        "# Diff2Flow vs naive FM vs diffusion finetuning (issue #12)", "",
        f"`{Path(results).name}`: {len(all_cells)} finetunes in all; the main tables below read {len(cells)} of them "
        f"(the decomposition, sweep and tuned blocks have their own sections), {spec.get('steps')} steps, batch "
        f"{spec.get('batch_size')}, "
        f"n = {spec.get('n_eval')} samples per evaluation, guidance {spec.get('guidance')} for all, evaluation noise "
        f"seed {spec.get('eval_seed')} (fixed, separate from the training seeds); grid wall time "
        f"{sum(r['wall_seconds'] for r in all_cells) / 3600:.2f} h (sum over cells; {len(long)} of them at the demo's "
        "budget, below). Regenerate with "
        "`python benchmarks/bench_objectives.py --report-only --out RESULTS.jsonl`.", "",
        "## The four answers", "", *answers(groups, cost, precision), "",
        "## Precision", "",
    ]  # fmt: skip
    if precision:
        lines += [f"Re-draws of the evaluation noise of one fixed model ({precision['cell']}):", "",
                  "| metric | sd over re-draws | smallest resolvable difference (95 %) |",
                  "| --- | ---: | ---: |"]  # fmt: skip
        lines += [f"| {m} | {precision[m]['sd']:.4g} | {precision[m]['smallest_difference']:.4g} |" for m in METRICS]
    example = cells[0]["final"][_natural(spec)] if cells else None
    if example:
        lines += ["", f"One evaluation's own intervals (first cell): FD {example['fd']['value']:.1f} "
                  f"[{example['fd']['low']:.1f}, {example['fd']['high']:.1f}] (bootstrap), prompt accuracy "
                  f"{example['prompt_accuracy']['value']:.2f} [{example['prompt_accuracy']['low']:.2f}, "
                  f"{example['prompt_accuracy']['high']:.2f}] (Wilson)."]  # fmt: skip
    lines += [
        "",
        "## Every cell (final, natural sampler at the most calls; mean +- sd over seeds)",
        "",
        *summary_table(groups),
    ]
    lines += ["", "FD AUC: the mean FD over training (trapezoid over the curve steps). Steps to threshold: "
              + ", ".join(f"{t}: {m} >= {v}" for t, (m, v) in THRESHOLDS.items()) + ".", ""]  # fmt: skip
    lines += ["## Samplers at equal network calls (headline cells)", "", *sampler_table(groups), ""]
    lines += ["## Guidance sweep (headline cells, natural sampler, most calls)", "", *guidance_table(groups), ""]
    for role in BLOCK_TITLES:
        lines += block_section(by_role[role], folder, by_role["headline"])
    lines += decomposition_section(by_role, folder)
    lines += lr_sweep_section(by_role["lr-sweep"])
    lines += tuned_section(by_role)
    lines += brightness_section(every)
    if cost:
        lines += [
            "## Cost",
            "",
            "| objective | s / step (median) | ratio to diffusion (mean, 95 % CI) |",
            "| --- | ---: | ---: |",
        ]
        for o, v in cost["s_per_step"].items():
            b = bootstrap_mean(cost["ratio_to_diffusion"][o])
            lines.append(f"| {o} | {statistics.median(v):.4f} | {b['mean']:.3f} ({b['low']:.3f} to {b['high']:.3f}) |")
        lines.append("")
    if plot:
        lines += ["## Learning curves", "", f"![FD along training, mean and min-max over seeds]({plot.name})", ""]
    lines += ["## Baselines", "", "Naive FM in this grid (FD along its own curve, FM Euler at the fewest calls):", ""]
    lines += [*naive_fm_trend(groups), *naive_fm_trend(_group(long)), "", NAIVE_FM_FINDING, ""]
    probe = Path(__file__).resolve().parent / "results" / "naive_fm_probe.md"
    if probe.is_file():
        lines += [probe.read_text().strip(), ""]
    path = folder / "objectives.md"
    path.write_text("\n".join(lines) + "\n")
    return path
