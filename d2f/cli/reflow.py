"""``d2f reflow``: the options, progress bars and the summary; the work is ``d2f.reflow.reflow``."""

from __future__ import annotations

from pathlib import Path

import typer

from d2f.cli.app import app, console, err_console, friendly, print_json, quiet_third_party, require_extra
from d2f.training.config import TrainConfig as C


@app.command("reflow")
@friendly
def reflow(
    model: str | None = typer.Option(
        None, help="The teacher's model (default: the --lora run's base model; with neither, as d2f sample)."
    ),
    lora: str | None = typer.Option(None, help="The teacher run (a run folder of d2f train or d2f reflow)."),
    data: str | None = typer.Option(None, help="Whose captions the pairs use (default: the teacher run's data)."),
    num_pairs: int = typer.Option(1024, help="How many (noise, teacher sample) pairs."),
    pair_steps: int = typer.Option(25, help="Teacher sampler steps per pair."),
    pair_sampler: str | None = typer.Option(None, help="Teacher sampler (default: the teacher's own)."),
    guidance: float | None = typer.Option(None, help="Teacher guidance (default: the teacher run's, else 2.0)."),
    pairs: str | None = typer.Option(None, help="Pairs folder (default <output>/pairs); reused if it matches."),
    objective: str | None = typer.Option(
        None, help="Student objective: diff2flow or fm (default: fm for an fm teacher, else diff2flow)."
    ),
    t_sampling: str | None = typer.Option(
        None, help="Training t: near-noise (density 2(1 - t); the default, measured best), uniform or logit-normal."
    ),
    steps: int = typer.Option(C.steps, help="Optimizer steps of the student."),
    lora_rank: int | None = typer.Option(None, help="Student LoRA rank (default: the teacher's; 0 = full)."),
    lr: float = typer.Option(C.lr, help="Peak learning rate."),
    batch_size: int = typer.Option(C.batch_size, help="Batch size."),
    warmup_steps: int = typer.Option(C.warmup_steps, help="Linear warmup steps."),
    validate_every: int = typer.Option(C.validate_every, help="Validation grids (1, 2, 4 steps) every N steps."),
    checkpoint_every: int = typer.Option(C.checkpoint_every, help="Checkpoint every N steps (0 = off)."),
    mixed_precision: str | None = typer.Option(C.mixed_precision, help="no, fp16 (GPU) or bf16."),
    resolution: int | None = typer.Option(None, help="Resolution in px (default: the teacher's)."),
    output: str | None = typer.Option(None, help="Run folder (default runs/<teacher>-reflow-<objective>)."),
    seed: int = typer.Option(0, help="Seed of the pairs' noise (pair i: seed + i) and of training."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where to look for the latest run (the default teacher)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace the run in --output (its pairs are kept)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
):
    """Straighten a teacher into a few-step student (reflow): teacher pairs, then training on them.

    The student samples without guidance (distilled): one step is one network call. Sample it with
    d2f sample --lora RUN --steps 1.
    """
    require_extra("train", "accelerate", "datasets")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from d2f.cli.sample_images import choose_source
    from d2f.reflow import ReflowConfig
    from d2f.reflow import reflow as run_reflow
    from d2f.world.data import builtin_data

    quiet_third_party()
    if lora is None and model is None:
        model, lora, using = choose_source(None, None, runs_dir)
        err_console.print(f"teacher: {using}", highlight=False)
    train = dict(steps=steps, lr=lr, batch_size=batch_size, warmup_steps=warmup_steps)
    if t_sampling is not None:  # else the reflow default (d2f.reflow.run.T_SAMPLING)
        train["t_sampling"] = t_sampling
    train.update(validate_every=validate_every, checkpoint_every=checkpoint_every, resume=resume, overwrite=overwrite)
    train.update(mixed_precision=mixed_precision)
    if lora_rank is not None:
        train["lora_rank"] = lora_rank
    rcfg = ReflowConfig(
        model=model,
        lora=lora,
        data=data,
        num_pairs=num_pairs,
        pair_steps=pair_steps,
        pair_sampler=pair_sampler,
        guidance=guidance,
        pairs=pairs,
        objective=objective,
        output=output,
        seed=seed,
        resolution=resolution,
        train=train,
    )
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        tasks = {}

        def show(event: dict) -> None:
            kind = event["event"]
            if kind in ("pairs", "step"):
                name, done, total = ("pairs", event["done"], event["total"])
                if kind == "step":
                    name, done, total = ("train", event["step"], event["steps"])
                if name not in tasks:
                    tasks[name] = bar.add_task(f"reflow {name}", total=total)
                bar.update(tasks[name], completed=done)
            elif kind == "validation":
                bar.console.print(f"step {event['step']}: grid {event['grid']}", highlight=False)
            elif "message" in event:
                bar.console.print(f"note: {event['message']}", highlight=False, markup=False, soft_wrap=True)

        summary = run_reflow(rcfg, callback=show, builtin=builtin_data)
    if as_json:
        print_json(summary)
        return
    made = summary["pairs"]
    console.print(
        f"pairs: {made['folder']} ({made['shards_written']} of {made['shards']} shards made now, "
        f"{made['bytes'] / 2**20:.1f} MiB, teacher time {made['seconds']:.0f} s)"
    )
    console.print(f"[bold]done[/] in {summary['seconds']:.0f} s, final loss {summary['final_loss']:.4f}")
    console.print(f"run folder: {summary['output_dir']}")
    console.print(f"sample it: {summary['sample_command']}")
