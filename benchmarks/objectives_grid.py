"""The grid of ``bench_objectives.py``: its cells, the two presets, and the results file (JSONL).

A cell is one finetune: (prior, task, objective, LoRA rank, training seed) with the preset's steps, batch, LR
schedule and evaluations. Within a block every cell of a given rank gets the same LR (1e-3 for a LoRA, 1e-4
for a full finetune, rank 0), warm-up, cosine schedule, batch and steps, whatever its objective: no objective
is tuned more than another. The one exception is the ``lr-sweep`` block, which checks that fixed LR: every
objective at each of ``SWEEP_LRS`` on a tuning seed of its own (``TUNING_SEED``, none of the headline seeds),
scored on validation noise of its own (``VALIDATION_SEED``, not the grid's evaluation noise); the rule that
reads it is fixed here, before any run (``LR_RULE``, applied by ``objectives_report.best_lr``). A sweep cell
that diverges (NaN loss) is recorded as such and loses to every finite one. The sweep first had three LRs; when
every objective but naive FM picked its top one, 1e-2 was added (a pick at the edge of a sweep says the best rate
may lie beyond it); the picks stayed where they were, but naive FM's, whose tuned cells came with the new column.

The ``tuned`` block (issue #24, equal tuning effort) follows the sweep: once every sweep cell is in the results
file, each objective whose picked LR is not the fixed one is trained again at its own LR on the headline seeds,
task and rank (``tuned_cells``); an objective whose pick is the fixed LR keeps its headline or decomposition cells.
So every objective is compared at its own best rate on the same fresh seeds, none of them the tuning seed.

The ``decomposition`` block (issue #24, docs/math.md §9.1) runs the ablation objectives, which take the
difference between diffusion finetuning and Diff2Flow apart (time density, clamped ends, loss weight, input
scaling), on the headline task with the headline seeds and budget at rank 64, on both priors; on the v prior,
which has no headline cells, it also runs diffusion and diff2flow at those seeds, for the pairs.

Two blocks answer issue #24's other questions: ``longer``, the headline cell at 3000 steps (2 seeds per main
objective: do the curves cross at a longer budget?), and ``resolution``, the paper's own setting in miniature:
the v prior adapted to 48 px on its own data (``shapes-base``), Diff2Flow with and without ``--zero-terminal-snr``
(``Cell.zero_terminal_snr``; the report names it ``diff2flow+ztsnr``) against diffusion and naive FM, scored on its
48 px samples. A third, ``extremes``, asks for "true blacks and whites" (``d2f.world.extremes``: captions
"... on black" / "... on white") on both priors, diffusion against Diff2Flow (on v also with zero terminal SNR).
A fourth, ``recipe``, trains Diff2Flow on the headline cell with the paper's LoRA recipe (``RECIPES``).

One block of the full grid, ``long``, runs the demo's budget (1000 steps of batch 32, where the default
``d2f train`` ends at prompt accuracy 0.98) instead of the grid's 300 of batch 16, which the rebuilt world's
finetunes do not finish in: it answers whether the ranking holds for finished finetunes. Cells with the same
training seed see the same data order, posterior noise and FM noise x0 (``d2f.training.batches``: every draw
comes from (seed, step)); only the time each objective draws differs (t for the FM objectives, an integer
timestep for diffusion and diff2flow-discrete).

Results file: one JSON object per line, appended only when a cell has finished (one ``os.write`` of the whole
line on an ``O_APPEND`` file, then fsync), so a killed run leaves at most an unfinished cell, never a half
line that counts; ``read_records`` skips a torn last line. A cell whose ``key`` is in the file is done.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

PRIORS = {"eps": "tiny-shapes-eps", "v": "tiny-shapes-v"}


@dataclass(frozen=True)
class Cell:
    """One finetune and how it is scored (see the module doc); ``role`` says which question it serves."""

    model: str
    task: str
    objective: str
    rank: int
    seed: int
    steps: int
    batch_size: int
    curve_steps: tuple[int, ...]
    n_eval: int
    calls: tuple[int, ...]  # network calls of the final evaluations; the curve uses calls[0]
    guidance: float
    eval_seed: int
    max_samples: int | None = None
    other_sampler: bool = False  # also score with the other objective's sampler
    guidance_sweep: tuple[float, ...] = ()
    redraws: int = 0  # re-draws of the evaluation noise (the resolvable difference)
    role: str = ""
    lr_override: float | None = None  # the lr-sweep block's LR; None: the rank's fixed LR
    resolution: int | None = None  # training and sampling resolution in px; None: the prior's own (32)
    zero_terminal_snr: bool = False  # the run's --zero-terminal-snr (v prior only)
    recipe: str = "d2f"  # the LoRA recipe: d2f's defaults, or "paper" (RECIPES)

    @property
    def lr(self) -> float:
        if self.lr_override is not None:
            return self.lr_override
        return 1e-4 if self.rank == 0 else 1e-3

    @property
    def warmup_steps(self) -> int:
        return max(1, self.steps // 10)

    @property
    def label(self) -> str:
        return objective_label(asdict(self))

    @property
    def key(self) -> str:
        spec = asdict(self)
        for name, default in (
            ("lr_override", None),
            ("resolution", None),
            ("zero_terminal_snr", False),
            ("recipe", "d2f"),
        ):
            if spec[name] == default:  # cells from before these fields existed keep their keys (they are done)
                del spec[name]
        spec = json.dumps(spec, sort_keys=True)
        digest = hashlib.sha1(spec.encode()).hexdigest()[:10]
        rank = "full" if self.rank == 0 else f"r{self.rank}"
        return f"{self.model}|{self.task}|{self.label}|{rank}|s{self.seed}|{digest}"


def objective_label(spec: dict) -> str:
    """The objective of a cell's spec as the report names it: ``+ztsnr`` when the run rescales to zero terminal
    SNR, ``+paper`` for the paper's LoRA recipe (a spec from before these fields has neither)."""
    recipe = spec.get("recipe", "d2f")
    ztsnr = "+ztsnr" if spec.get("zero_terminal_snr") else ""
    return spec["objective"] + ztsnr + ("" if recipe == "d2f" else f"+{recipe}")


@dataclass(frozen=True)
class Preset:
    name: str
    steps: int
    batch_size: int
    curve_steps: tuple[int, ...]
    n_eval: int
    calls: tuple[int, ...]
    headline_seeds: tuple[int, ...]
    other_seeds: tuple[int, ...]
    guidance: float = 2.0
    eval_seed: int = 1_000_000
    max_samples: int | None = None
    guidance_sweep: tuple[float, ...] = (1.0, 2.0, 4.0)
    redraws: int = 5
    cost_rounds: int = 5
    cost_steps: int = 5
    blocks: list = field(default_factory=list)


MAIN = ("diff2flow", "fm", "diffusion")
DECOMPOSITION = ("diffusion-fm-t", "diff2flow-unweighted", "diff2flow-discrete", "diff2flow-no-scale")
SWEEP_LRS = (3e-4, 1e-3, 3e-3, 1e-2)  # 1e-2 added after every objective but fm picked 3e-3, the top edge
TUNING_SEED = 100  # the lr-sweep's training seed: not one of the seeds the answers are computed on
VALIDATION_SEED = 2_000_000  # the lr-sweep's evaluation noise: not the grid's
LR_RULE = (
    "per objective, the LR whose final evaluation (natural sampler, most calls, validation noise) has the highest "
    "prompt accuracy; ties (equal accuracy) go to the lower FD"
)


SWEEP = {"seeds": (TUNING_SEED,), "lrs": SWEEP_LRS, "eval_seed": VALIDATION_SEED}
LONG = {"steps": 1000, "batch_size": 32, "curve_steps": (0, 250, 500, 1000), "seeds": (0, 1)}
# issue #24, question 4: the headline cell (batch 16, fixed LR) ten times longer: do the curves cross?
LONGER = {"steps": 3000, "curve_steps": (0, 500, 1000, 2000, 3000), "seeds": (0, 1)}
# issue #24, the paper's setting in miniature: the v prior adapted to a resolution it was not trained at (its own
# data, shapes-base, at 48 px, where the untouched prior is visibly worse than at 32 px: its step 0), Diff2Flow
# with and without zero terminal SNR (the paper's code's default for v) against diffusion (without, as the paper)
# and naive FM; samples are scored at 48 px (the evaluator resizes them to its 32 px input)
RESOLUTION = {"resolution": 48, "seeds": (0, 1)}
# issue #24, "true blacks and whites": captions that ask for a pure black or pure white background
# (``d2f.world.extremes``), on both priors; the v prior's Diff2Flow also with zero terminal SNR
EXTREMES = {"seeds": (0, 1)}
# issue #24, the paper's LoRA recipe (``d2f train`` options, docs/training.md): conv_in and conv_out trained fully,
# constant LR (after the grid's warm-up), no weight decay, an EMA of decay 0.999 (scored with the EMA's weights);
# Diff2Flow on the headline cell and seeds, against its d2f-recipe headline cells
RECIPES = {
    "d2f": {},
    "paper": {"train_conv_io": True, "lr_scheduler": "constant", "weight_decay": 0.0, "ema": True, "ema_decay": 0.999},
}


def _blocks(full: bool) -> list[tuple]:
    """(prior, task, objectives, ranks, role[, overrides]) of each block of cells; headline blocks get the
    headline seeds, the others the preset's other seeds unless the overrides name theirs."""
    if not full:
        tiny = {"seeds": (0,), "steps": 2, "curve_steps": (2,), "calls": (2,)}  # every new objective, one score
        return [
            ("eps", "shapes-target", MAIN, (4,), "headline"),
            ("eps", "shapes-target", ("fm-raw-t",), (4,), "raw-t"),
            ("eps", "shapes-novel-colours", ("diff2flow",), (4,), "novel"),
            ("eps", "shapes-target", DECOMPOSITION, (4,), "decomposition", tiny),
            ("eps", "shapes-target", ("diff2flow",), (4,), "lr-sweep", {**tiny, **SWEEP, "lrs": (3e-3,)}),
            ("v", "shapes-base", ("diff2flow",), (4,), "resolution", {**tiny, **RESOLUTION, "zero_terminal_snr": True}),
            ("eps", "shapes-extremes", ("diff2flow",), (4,), "extremes", tiny),
            ("eps", "shapes-target", ("diff2flow",), (4,), "recipe", {**tiny, "recipe": "paper"}),
        ]
    # in the order of what matters most, so that a grid stopped early has the most important cells (a rerun
    # skips the cells already done, so the blocks added later run first); the blocks from "long" on were cut to
    # fit about 2.5 hours on 2 cores: the v prior's novel-colours block, and ranks 16 and full have one seed
    return [
        ("eps", "shapes-target", MAIN, (4, 64), "headline"),
        ("eps", "shapes-target", DECOMPOSITION, (64,), "decomposition", {"seeds": "headline"}),
        (
            "v",
            "shapes-target",
            ("diffusion", "diff2flow", *DECOMPOSITION),
            (64,),
            "decomposition",
            {"seeds": "headline"},
        ),
        ("eps", "shapes-target", (*MAIN, *DECOMPOSITION), (64,), "lr-sweep", SWEEP),
        ("eps", "shapes-target", MAIN, (64,), "long", LONG),
        # issue #24's paper-setting and budget blocks, cheapest first (the 3000-step curves last)
        ("eps", "shapes-target", ("diff2flow",), (64,), "recipe", {"seeds": "headline", "recipe": "paper"}),
        ("eps", "shapes-extremes", ("diffusion", "diff2flow"), (64,), "extremes", EXTREMES),
        ("v", "shapes-extremes", ("diffusion", "diff2flow"), (64,), "extremes", EXTREMES),
        ("v", "shapes-extremes", ("diff2flow",), (64,), "extremes", {**EXTREMES, "zero_terminal_snr": True}),
        ("v", "shapes-base", MAIN, (64,), "resolution", RESOLUTION),
        ("v", "shapes-base", ("diff2flow",), (64,), "resolution", {**RESOLUTION, "zero_terminal_snr": True}),
        ("eps", "shapes-target", MAIN, (64,), "longer", LONGER),
        ("eps", "shapes-novel-colours", MAIN, (64,), "novel"),
        ("v", "shapes-target", MAIN, (64,), "v-prior"),
        ("eps", "shapes-target", ("fm-raw-t",), (4, 64), "raw-t"),
        ("eps", "shapes-target", MAIN, (16, 0), "ranks", {"seeds": (0,)}),
    ]


PRESETS = {
    "quick": Preset(
        "quick", steps=4, batch_size=4, curve_steps=(0, 2, 4), n_eval=24, calls=(2, 4), headline_seeds=(0, 1),
        other_seeds=(0,), max_samples=64, guidance_sweep=(1.0, 2.0), redraws=2, cost_rounds=2, cost_steps=2,
    ),
    "full": Preset(
        "full", steps=300, batch_size=16, curve_steps=(0, 100, 200, 300), n_eval=256, calls=(8, 25),
        headline_seeds=(0, 1, 2, 3, 4), other_seeds=(0, 1),
    ),
}  # fmt: skip


def plan(preset: Preset, records: list[dict] | None = None) -> list[Cell]:
    """Every cell of a preset, block by block, headline cells first (seed-major, so a partial grid already
    pairs seeds); the lr-sweep block's cells LR by LR, followed, given the results file's ``records`` and a
    complete sweep, by the ``tuned`` block (``tuned_cells``); then the other blocks."""
    cells = _fixed_plan(preset)
    after_sweep = max((k + 1 for k, c in enumerate(cells) if c.role == "lr-sweep"), default=len(cells))
    return cells[:after_sweep] + tuned_cells(cells, records or []) + cells[after_sweep:]


def tuned_cells(cells: list[Cell], records: list[dict]) -> list[Cell]:
    """Each swept objective whose picked LR (``LR_RULE``) is not the fixed LR, at that LR, on the cells of the
    headline seeds the sweep's task, prior and rank have at the fixed LR (the headline or decomposition block's);
    none until every sweep cell of the plan is in ``records``."""
    from objectives_report import best_lr  # the rule's reader; the report imports this module at its top

    sweep = [c for c in cells if c.role == "lr-sweep"]
    done = {r["key"]: r for r in records if r.get("kind") == "cell"}
    if not sweep or any(c.key not in done for c in sweep):
        return []
    best, spec = best_lr([done[c.key] for c in sweep]), sweep[0]
    fixed = [
        c for c in cells
        if c.role in ("headline", "decomposition") and (c.model, c.task, c.rank) == (spec.model, spec.task, spec.rank)
    ]  # fmt: skip
    return [
        replace(c, role="tuned", lr_override=best[c.objective], other_sampler=False, guidance_sweep=(), redraws=0)
        for c in fixed
        if best.get(c.objective, c.lr) != c.lr
    ]


def _fixed_plan(preset: Preset) -> list[Cell]:
    cells = []
    for prior, task, objectives, ranks, role, *over in _blocks(preset.name == "full"):
        over = over[0] if over else {}
        headline = role == "headline"
        seeds = over.get("seeds", preset.headline_seeds if headline else preset.other_seeds)
        seeds = preset.headline_seeds if seeds == "headline" else seeds
        steps, batch = over.get("steps", preset.steps), over.get("batch_size", preset.batch_size)
        curve, calls = over.get("curve_steps", preset.curve_steps), over.get("calls", preset.calls)
        eval_seed = over.get("eval_seed", preset.eval_seed)
        for seed, rank, lr, objective in itertools.product(seeds, ranks, over.get("lrs", (None,)), objectives):
            sweep = headline and rank == max(ranks) and seed in preset.headline_seeds[:2]
            swap = headline and seed in preset.headline_seeds[:3]  # the other sampler: 3 seeds
            first = headline and objective == "diff2flow" and rank == max(ranks) and seed == seeds[0]
            cells.append(
                Cell(
                    model=PRIORS[prior], task=task, objective=objective, rank=rank, seed=seed,
                    steps=steps, batch_size=batch, curve_steps=curve,
                    n_eval=preset.n_eval, calls=calls, guidance=preset.guidance,
                    eval_seed=eval_seed, max_samples=preset.max_samples, other_sampler=swap,
                    guidance_sweep=preset.guidance_sweep if sweep else (),
                    redraws=preset.redraws if first else 0, role=role, lr_override=lr,
                    resolution=over.get("resolution"), zero_terminal_snr=over.get("zero_terminal_snr", False),
                    recipe=over.get("recipe", "d2f"),
                )
            )  # fmt: skip
    return cells


def read_records(path: str | Path) -> list[dict]:
    """The records of a results file (none if it does not exist); a torn last line is skipped."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def done_keys(path: str | Path) -> set[str]:
    return {r["key"] for r in read_records(path) if "key" in r}


def append_record(path: str | Path, record: dict) -> None:
    """Append one record as one line, in one write (see the module doc)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        if os.fstat(fd).st_size and not _ends_with_newline(path):
            line = b"\n" + line  # after a torn line: start a fresh one
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def _ends_with_newline(path: Path) -> bool:
    with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        return f.read(1) == b"\n"
