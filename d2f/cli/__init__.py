"""The ``d2f`` command line: thin wrappers that parse options and call the library.

Every command turns a ``UserError`` into one line on stderr and exit code 2 (no traceback).
"""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from d2f.errors import UserError

app = typer.Typer(
    name="d2f",
    help="Turn a pretrained diffusion model into a flow-matching model (Diff2Flow) and finetune it.\n\n"
         "Conventions: FM time t = 0 is noise, t = 1 is data; diffusion time tau runs 0..N-1 (data to noise).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
err_console = Console(stderr=True)


def friendly(command):
    """Bad input -> one line on stderr, exit code 2."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2)
    return wrapper


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


@app.command("inspect-schedule")
@friendly
def inspect_schedule(
    preset: Optional[str] = typer.Option(None, help="A public SD schedule: sd15, sd2-base or sd2-v (default sd15)."),
    model: Optional[str] = typer.Option(None, help="A built-in model name, diffusers model folder or hub id: read "
                                                   "its scheduler/scheduler_config.json."),
    zero_terminal_snr: bool = typer.Option(False, "--zero-terminal-snr", help="Rescale to zero terminal SNR."),
    rows: int = typer.Option(11, help="Number of evenly spaced taus in the table."),
    tau: List[float] = typer.Option([], "--tau", help="Add a row at this (fractional) tau. Repeatable."),
    t: List[float] = typer.Option([], "--t", help="Add a row at this FM time t, with the tau it maps to. Repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    plot: Optional[Path] = typer.Option(None, help="Write a figure of the schedules and the time map to this PNG."),
):
    """Show a diffusion schedule, its alpha/sigma, and the map to flow-matching time.

    Example: d2f inspect-schedule --preset sd15 --t 0 --t 0.5 --tau 354.5 --plot schedule.png
    """
    from d2f.inspect_schedule import plot_schedule, schedule_report
    from d2f.schedule import Schedule

    if preset and model:
        raise UserError("give either --preset or --model, not both")
    if model:
        from d2f.models import hub_file, resolve_model

        ref = resolve_model(model)
        config_path = hub_file(ref, "scheduler/scheduler_config.json")
        schedule = Schedule.from_pretrained(config_path, zero_terminal_snr=zero_terminal_snr or None)
        source = ref.name
    else:
        schedule = Schedule.preset(preset or "sd15", zero_terminal_snr=zero_terminal_snr)
        source = preset or "sd15"
    report = schedule_report(schedule, rows, tau, t)
    if plot:
        plot_schedule(schedule, plot, title=f"{source}: {schedule!r}")
    if as_json:
        print_json(report)
        return
    table = Table(title=f"{source}: prediction_type={report['prediction_type']}, N={report['num_train_timesteps']}, "
                        f"covered t in [{report['t_min']:.4f}, {report['t_max']:.4f}], "
                        f"max scale {report['scale_max']:.5f} at tau {report['scale_max_tau']:.2f}")
    for column in ("tau", "t", "alpha", "sigma", "scale c", "log-SNR", "clamped"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        table.add_row(f"{row['tau']:.3f}", f"{row['t']:.5f}", f"{row['alpha']:.5f}", f"{row['sigma']:.5f}",
                      f"{row['scale']:.5f}", f"{row['log_snr']:.4f}", "yes" if row["clamped"] else "")
    console.print(table)
    if plot:
        console.print(f"plot written to {plot}")


@app.command("models")
@friendly
def models(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")):
    """List the built-in models and where they lie."""
    from d2f.models import builtin_models

    rows = builtin_models()
    if as_json:
        print_json(rows)
        return
    table = Table(title="built-in models")
    for column in ("name", "prediction_type", "resolution", "path", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["prediction_type"], str(row["resolution"]), row["path"], row["description"])
    console.print(table)


@app.command("train")
@friendly
def train(
    model: str = typer.Option("tiny-shapes-eps", help="Built-in model name, diffusers folder or hub id."),
    data: str = typer.Option("shapes-target", help="Built-in data (shapes-target, shapes-base), an imagefolder "
                                                   "with metadata.jsonl, or a hub dataset name."),
    objective: str = typer.Option("diff2flow", help="diff2flow, fm (naive flow matching) or diffusion."),
    prediction_type: Optional[str] = typer.Option(None, help="Override the model's prediction type "
                                                             "(epsilon, v_prediction, sample)."),
    t_sampling: str = typer.Option("uniform", help="FM time sampling: uniform or logit-normal."),
    output: Optional[str] = typer.Option(None, help="Run folder (default runs/<model>-<data>-<objective>)."),
    image_column: str = typer.Option("image", help="Image column of the data."),
    caption_column: str = typer.Option("text", help="Caption column of the data."),
    resolution: Optional[int] = typer.Option(None, help="Training resolution in px (default: the model's)."),
    center_crop: bool = typer.Option(True, "--center-crop/--random-crop", help="Centre crop, or a random crop "
                                                                                 "(drawn once per image)."),
    random_flip: bool = typer.Option(False, "--random-flip", help="Mirror images at random."),
    max_samples: Optional[int] = typer.Option(None, help="Use at most this many images."),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="Skip unreadable images (and count them)."),
    lora_rank: int = typer.Option(64, help="LoRA rank; 0 = full finetune of the UNet."),
    lora_alpha: Optional[float] = typer.Option(None, help="LoRA alpha (default: the rank)."),
    lora_targets: str = typer.Option("attn+conv", help="attn or attn+conv."),
    lr: float = typer.Option(1e-3, help="Peak learning rate (AdamW)."),
    lr_scheduler: str = typer.Option("cosine", help="constant, cosine or linear (after warmup)."),
    warmup_steps: int = typer.Option(50, help="Linear warmup steps."),
    steps: int = typer.Option(1000, help="Optimizer steps."),
    batch_size: int = typer.Option(32, help="Batch size per process."),
    grad_accum: int = typer.Option(1, help="Gradient accumulation steps."),
    max_grad_norm: float = typer.Option(1.0, help="Gradient clipping norm (0 = off)."),
    mixed_precision: str = typer.Option("no", help="no, fp16 (GPU) or bf16."),
    gradient_checkpointing: bool = typer.Option(False, "--gradient-checkpointing", help="Trade compute for memory."),
    ema: bool = typer.Option(False, "--ema", help="Keep an EMA of the trainable weights (validated and saved)."),
    ema_decay: float = typer.Option(0.999, help="EMA decay."),
    caption_dropout: float = typer.Option(0.1, help="Probability of an empty caption (for guidance)."),
    seed: int = typer.Option(0, help="Seed (set before the adapter is created)."),
    cache: bool = typer.Option(True, "--cache/--no-cache", help="Cache VAE latents and text embeddings."),
    validate_every: int = typer.Option(500, help="Validation grid every N steps (and at 0 and the end; 0 = only those)."),
    validation_prompt: List[str] = typer.Option([], "--validation-prompt", help="Prompt of the grids. Repeatable."),
    guidance: float = typer.Option(2.0, help="Guidance of the validation samples."),
    sample_steps: int = typer.Option(25, help="Sampler steps of the validation samples."),
    checkpoint_every: int = typer.Option(500, help="Checkpoint every N steps (0 = off)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its latest checkpoint."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Delete an existing run in --output first."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
):
    """Finetune a diffusion model into a flow-matching model (Diff2Flow) with a LoRA.

    With no options: the demo, tiny-shapes-eps finetuned to the shapes world's target domain in a few minutes.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    import datasets
    from diffusers.utils import logging as diffusers_logging

    from d2f.train import TrainConfig
    from d2f.train import train as run_training

    from transformers.utils import logging as transformers_logging

    diffusers_logging.disable_progress_bar()  # one progress bar: the training's
    transformers_logging.disable_progress_bar()
    datasets.disable_progress_bars()

    cfg = TrainConfig(model=model, data=data, objective=objective, prediction_type=prediction_type,
                      t_sampling=t_sampling, output=output, image_column=image_column, caption_column=caption_column,
                      resolution=resolution, center_crop=center_crop, random_flip=random_flip, max_samples=max_samples,
                      skip_bad_images=skip_bad_images, lora_rank=lora_rank, lora_alpha=lora_alpha,
                      lora_targets=lora_targets, lr=lr, lr_scheduler=lr_scheduler, warmup_steps=warmup_steps,
                      steps=steps, batch_size=batch_size, grad_accum=grad_accum, max_grad_norm=max_grad_norm,
                      mixed_precision=mixed_precision, gradient_checkpointing=gradient_checkpointing, ema=ema,
                      ema_decay=ema_decay, caption_dropout=caption_dropout, seed=seed, cache=cache,
                      validate_every=validate_every, validation_prompts=list(validation_prompt) or None,
                      guidance=guidance, sample_steps=sample_steps, checkpoint_every=checkpoint_every,
                      resume=resume, overwrite=overwrite)
    import os

    main_process = os.environ.get("RANK", "0") == "0"  # under torchrun / accelerate launch only rank 0 reports
    with Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                  TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} it/s"),
                  TimeElapsedColumn(), TimeRemainingColumn(), console=err_console, transient=True,
                  disable=not main_process) as bar:
        task = bar.add_task(f"train {objective}", total=steps, loss="-", speed="-")

        def show(event: dict) -> None:
            if event["event"] == "step":
                speed = bar.tasks[task].speed
                bar.update(task, completed=event["step"], loss=f"{event['loss']:.4f}",
                           speed=f"{speed:.1f}" if speed else "-")
            elif not main_process:
                return
            elif event["event"] == "resumed":
                bar.update(task, completed=event["step"])
                bar.console.print(f"resumed from {event['checkpoint']}")
            elif event["event"] == "validation":
                scores = ", ".join(f"{k} {event[k]:.3f}" for k in ("prompt_accuracy", "domain_accuracy", "fd")
                                   if k in event)
                bar.console.print(f"step {event['step']}: grid {event['grid']}" + (f" ({scores})" if scores else ""))

        summary = run_training(cfg, callback=show)
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
            console.print(f"{label}: prompt accuracy {m['prompt_accuracy']:.3f}, domain accuracy "
                          f"{m['domain_accuracy']:.3f}, FD {m['fd']:.2f}")
    console.print(f"last grid: {summary['grid']}")
    console.print(f"sample it: {summary['sample_command']}")


@app.command("sample")
@friendly
def sample(
    model: Optional[str] = typer.Option(None, help="Built-in model name, diffusers folder or hub id (default: the "
                                                   "latest run's base model, else tiny-shapes-eps)."),
    lora: Optional[str] = typer.Option(None, help="A run folder of `d2f train` or a LoRA .safetensors file."),
    prompt: List[str] = typer.Option([], "--prompt", help="A prompt. Repeatable. Default on built-in models: the "
                                                          "world's 24 prompts."),
    prompts_file: Optional[Path] = typer.Option(None, help="A text file with one prompt per line."),
    num_images: Optional[int] = typer.Option(None, help="How many images (prompts are cycled; default one per prompt)."),
    steps: int = typer.Option(25, help="Sampler steps (Heun uses 2*steps-1 network calls)."),
    sampler: Optional[str] = typer.Option(None, help="euler | heun | ddim (default: the run's, else euler)."),
    guidance: float = typer.Option(7.5, help="Classifier-free guidance scale (1 = none)."),
    seed: int = typer.Option(0, help="Image i uses noise from seed + i."),
    height: Optional[int] = typer.Option(None, help="Image height in px (default: the model's)."),
    width: Optional[int] = typer.Option(None, help="Image width in px (default: the model's)."),
    shift: float = typer.Option(1.0, help="Time shift of the FM grid (1 = uniform; >1 = more steps near noise)."),
    output: Optional[Path] = typer.Option(None, help="Write one grid image here (default samples/grid.png unless "
                                                     "--output-dir is given)."),
    output_dir: Optional[Path] = typer.Option(None, help="Also write every image as its own PNG here."),
    compare: bool = typer.Option(False, "--compare", help="One grid, a row per sampler (euler, heun, ddim), same "
                                                         "seeds and prompts."),
    evaluate: bool = typer.Option(False, "--evaluate", help="Score with the built-in world's evaluator."),
    domain: Optional[str] = typer.Option(None, help="Domain for --evaluate: base or target (default: the run's data)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where to look for the latest run."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
):
    """Sample a model (optionally with a LoRA) with FM Euler, FM Heun or DDIM.

    Example: d2f sample --model tiny-shapes-eps --prompt "a red circle" --num-images 8 --compare
    """
    from d2f.sample import SampleSettings, read_prompts_file, sample_images

    prompts = list(prompt) + (read_prompts_file(prompts_file) if prompts_file else [])
    settings = SampleSettings(model=model, lora=lora, prompts=prompts, num_images=num_images, steps=steps,
                              sampler=sampler, guidance=guidance, seed=seed, height=height, width=width,
                              shift=shift, compare=compare)
    log = None if as_json else (lambda line: err_console.print(line, highlight=False))
    result = sample_images(settings, output=output, output_dir=output_dir, evaluate=evaluate, domain=domain,
                           runs_dir=runs_dir, progress=not as_json, log=log)
    if as_json:
        print_json(result)
        return
    where = result["images"][0] if output else f"{output_dir}/ ({len(result['images'])} images)"
    console.print(f"{len(result['settings']['prompts'])} images per sampler "
                  f"({', '.join(result['settings']['samplers'])}, {steps} steps) in {result['seconds']:.1f} s -> {where}")
    if evaluate:
        metrics = result["metrics"] if compare else {result["settings"]["samplers"][0]: result["metrics"]}
        for name, m in metrics.items():
            console.print(f"{name}: prompt accuracy {m['prompt_accuracy']:.3f}, domain accuracy "
                          f"({result['domain']}) {m['domain_accuracy']:.3f}, FD {m['fd']:.2f}")
