"""``d2f reflow``: the options, progress bars and the summary; the work is ``d2f.reflow.reflow``."""

from __future__ import annotations

from pathlib import Path

from d2f.cli.app import app, console, err_console, friendly, print_json, quiet_third_party, require_extra
from d2f.cli.options import command, option, parameters, plain
from d2f.reflow.run import ReflowConfig, check_reflow_config
from d2f.training.config import TrainConfig

# the student's training settings that d2f reflow takes, as d2f train spells them; None: reflow's own default
TRAIN_OPTIONS = ("t_sampling", "loss", "steps", "lora_rank", "lr", "batch_size", "warmup_steps", "validate_every")
TRAIN_OPTIONS += ("checkpoint_every", "mixed_precision", "resume", "overwrite")
TRAIN_OVERRIDES = {
    "t_sampling": dict(default=None, help="Training t (default near-noise, density 2(1 - t): measured best)."),
    "lora_rank": dict(default=None, help="Student LoRA rank (default: the teacher's; 0 = full)."),
    "validate_every": dict(help="Validation grids (1, 2, 4 steps) every N steps."),
    "overwrite": dict(help="Replace the run in --output (its pairs are kept)."),
}


def reflow(runs_dir: Path, as_json: bool, **options):
    """Straighten a teacher into a few-step student (reflow): teacher pairs, then training on them.

    The student samples without guidance (distilled): one step is one network call. Sample it with
    d2f sample --lora RUN --steps 1 (--steps K after --windows K: one step per window).
    """
    require_extra("train", "accelerate", "datasets")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from d2f.cli.sample_images import choose_source
    from d2f.reflow import reflow as run_reflow
    from d2f.world.data import builtin_data

    quiet_third_party()
    settings = plain(options)
    train = {k: settings.pop(k) for k in TRAIN_OPTIONS}
    rcfg = ReflowConfig(**settings, train={k: v for k, v in train.items() if v is not None})
    check_reflow_config(rcfg)  # before the default teacher is named
    if rcfg.lora is None and rcfg.model is None:
        rcfg.model, rcfg.lora, using = choose_source(None, None, runs_dir)
        err_console.print(f"teacher: {using}", highlight=False)
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
                if kind == "step":
                    name, done, total = ("train", event["step"], event["steps"])
                else:
                    name, done, total = ("pairs", event["done"], event["total"])
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


app.command("reflow")(
    friendly(
        command(
            reflow,
            [
                *parameters(ReflowConfig, skip=("output", "seed", "resolution")),
                *parameters(TrainConfig, only=TRAIN_OPTIONS, overrides=TRAIN_OVERRIDES),
                *parameters(ReflowConfig, only=("resolution", "output", "seed")),
                option("runs_dir", Path, Path("runs"), help="Where to look for the latest run (the default teacher)."),
                option("as_json", bool, False, "--json", help="Print the summary as one JSON object on stdout."),
            ],
        )
    )
)
