"""``d2f train``: the options, a progress bar and the summary; the work is ``d2f.training.train``.

Every option, its default, help and allowed values, is ``TrainConfig``'s field (written once, there; the
typer options are made from it by ``d2f.cli.options``). ``--config FILE`` reads options from a
TOML / YAML / JSON file (``d2f.training.config_file``); options on the command line override it.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from d2f.cli.app import app, console, err_console, friendly, print_json, quiet_third_party, require_extra
from d2f.cli.options import command, option, parameters, plain
from d2f.training.config import TrainConfig, check_config

# the validation scores printed: the built-in evaluator's, else a user's held-out images' (d2f.training.holdout)
SCORES = ("prompt_accuracy", "domain_accuracy", "fd", "fd_heldout", "kid_heldout")


def train(ctx: typer.Context, config: Path | None, as_json: bool, **options):
    """Finetune a diffusion model into a flow-matching model (Diff2Flow) with a LoRA.

    With no options: the demo, tiny-shapes-eps finetuned to the shapes world's target domain in a few minutes.
    """
    require_extra("train", "accelerate", "datasets")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from d2f.training import train as run_training
    from d2f.training.config_file import read_config_file
    from d2f.world.data import builtin_data

    quiet_third_party()  # one progress bar: the training's
    settings = plain(options)
    for key, value in (read_config_file(config) if config else {}).items():  # the command line wins
        source = ctx.get_parameter_source(key)  # typer vendors click: compare by name
        if source is None or source.name != "COMMANDLINE":
            settings[key] = value
    cfg = TrainConfig(**settings)
    check_config(cfg)  # a config file's values too, before the progress bar reads --steps
    objective, steps = cfg.objective, cfg.steps
    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun / accelerate launch only rank 0 reports
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("loss {task.fields[loss]}"),
        TextColumn("{task.fields[speed]} it/s"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
        disable=not main_process,
    ) as bar:
        task = bar.add_task(f"train {objective}", total=steps, loss="-", speed="-")

        def show(event: dict) -> None:
            if event["event"] == "step":
                speed = bar.tasks[task].speed
                bar.update(
                    task, completed=event["step"], loss=f"{event['loss']:.4f}", speed=f"{speed:.1f}" if speed else "-"
                )
            elif not main_process:
                return
            elif event["event"] == "resumed":
                bar.update(task, completed=event["step"])
                bar.console.print(event["message"], highlight=False, markup=False)
            elif event["event"] == "validation":
                scores = ", ".join(f"{k} {event[k]:.3f}" for k in SCORES if k in event)
                bar.console.print(f"step {event['step']}: grid {event['grid']}" + (f" ({scores})" if scores else ""))
            elif "message" in event:  # a notice: a stale lock taken over, skipped images, a damaged checkpoint...
                bar.console.print(f"note: {event['message']}", highlight=False, markup=False, soft_wrap=True)

        summary = run_training(cfg, callback=show, builtin=builtin_data)
    if not main_process:
        return
    if as_json:
        print_json(summary)
        return
    console.print(f"[bold]done[/] in {summary['seconds']:.0f} s, final loss {summary['final_loss']:.4f}")
    console.print(f"run folder: {summary['output_dir']} (weights: {summary['lora_path'] or summary['unet_path']})")
    for label, key in (("before", "metrics_before"), ("after", "metrics_after")):
        if summary.get(key):
            m = summary[key]
            console.print(
                f"{label}: " + ", ".join(f"{name.replace('_', ' ')} {m[name]:.3f}" for name in SCORES if name in m)
            )
    console.print(f"last grid: {summary['grid']}")
    console.print(f"sample it: {summary['sample_command']}")


app.command("train")(
    friendly(
        command(
            train,
            [
                option("config", Path | None, None, help="Read options from a .toml, .yaml or .json file first."),
                *parameters(TrainConfig),
                option("as_json", bool, False, "--json", help="Print the summary as one JSON object on stdout."),
            ],
            context=True,
        )
    )
)
