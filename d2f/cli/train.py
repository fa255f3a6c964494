"""``d2f train``: the options, a progress bar and the summary; the work is ``d2f.training.train``."""

from __future__ import annotations

import os

import typer

from d2f.cli.app import app, console, err_console, friendly, print_json, quiet_third_party, require_extra


@app.command("train")
@friendly
def train(
    model: str = typer.Option("tiny-shapes-eps", help="Built-in model name, diffusers folder or hub id."),
    data: str = typer.Option(
        "shapes-target",
        help="Built-in data (shapes-target, shapes-base), an imagefolder with metadata.jsonl, or a hub dataset name.",
    ),
    objective: str = typer.Option("diff2flow", help="diff2flow, fm (naive flow matching) or diffusion."),
    prediction_type: str | None = typer.Option(
        None, help="Override the model's prediction type (epsilon, v_prediction, sample)."
    ),
    t_sampling: str = typer.Option("uniform", help="FM time sampling: uniform or logit-normal."),
    zero_terminal_snr: bool = typer.Option(
        False, "--zero-terminal-snr", help="Rescale the schedule to zero terminal SNR (v or sample prediction)."
    ),
    output: str | None = typer.Option(None, help="Run folder (default runs/<model>-<data>-<objective>)."),
    image_column: str = typer.Option("image", help="Image column of the data."),
    caption_column: str = typer.Option("text", help="Caption column of the data."),
    resolution: int | None = typer.Option(None, help="Training resolution in px (default: the model's)."),
    center_crop: bool = typer.Option(
        True, "--center-crop/--random-crop", help="Centre crop, or a random crop (drawn once per image)."
    ),
    random_flip: bool = typer.Option(False, "--random-flip", help="Mirror images at random."),
    max_samples: int | None = typer.Option(None, help="Use at most this many images."),
    skip_bad_images: bool = typer.Option(False, "--skip-bad-images", help="Skip unreadable images (and count them)."),
    lora_rank: int = typer.Option(64, help="LoRA rank; 0 = full finetune of the UNet."),
    lora_alpha: float | None = typer.Option(None, help="LoRA alpha (default: the rank)."),
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
    validate_every: int = typer.Option(
        500, help="Validation grid every N steps (and at 0 and the end; 0 = only those)."
    ),
    validation_prompt: list[str] = typer.Option([], "--validation-prompt", help="Prompt of the grids. Repeatable."),
    guidance: float = typer.Option(2.0, help="Guidance of the validation samples."),
    sample_steps: int = typer.Option(25, help="Sampler steps of the validation samples."),
    checkpoint_every: int = typer.Option(500, help="Checkpoint every N steps (0 = off)."),
    checkpoints_total_limit: int = typer.Option(2, help="Keep the newest N checkpoints (0 = all)."),
    log_every: int = typer.Option(10, help="A line of metrics.jsonl every N steps (loss averaged over them)."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --output from its latest checkpoint."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the run in --output (deleted once the new one is ready to start)."
    ),
    allow_data_change: bool = typer.Option(
        False, "--allow-data-change", help="With --resume: continue even though the data changed."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as one JSON object on stdout."),
):
    """Finetune a diffusion model into a flow-matching model (Diff2Flow) with a LoRA.

    With no options: the demo, tiny-shapes-eps finetuned to the shapes world's target domain in a few minutes.
    """
    require_extra("train", "accelerate", "datasets")
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from d2f.training import TrainConfig
    from d2f.training import train as run_training
    from d2f.world.data import builtin_data

    quiet_third_party()  # one progress bar: the training's

    cfg = TrainConfig(
        model=model,
        data=data,
        objective=objective,
        prediction_type=prediction_type,
        t_sampling=t_sampling,
        zero_terminal_snr=zero_terminal_snr,
        output=output,
        image_column=image_column,
        caption_column=caption_column,
        resolution=resolution,
        center_crop=center_crop,
        random_flip=random_flip,
        max_samples=max_samples,
        skip_bad_images=skip_bad_images,
        lora_rank=lora_rank,
        lora_alpha=lora_alpha,
        lora_targets=lora_targets,
        lr=lr,
        lr_scheduler=lr_scheduler,
        warmup_steps=warmup_steps,
        steps=steps,
        batch_size=batch_size,
        grad_accum=grad_accum,
        max_grad_norm=max_grad_norm,
        mixed_precision=mixed_precision,
        gradient_checkpointing=gradient_checkpointing,
        ema=ema,
        ema_decay=ema_decay,
        caption_dropout=caption_dropout,
        seed=seed,
        cache=cache,
        validate_every=validate_every,
        validation_prompts=list(validation_prompt) or None,
        guidance=guidance,
        sample_steps=sample_steps,
        checkpoint_every=checkpoint_every,
        checkpoints_total_limit=checkpoints_total_limit,
        log_every=log_every,
        resume=resume,
        overwrite=overwrite,
        allow_data_change=allow_data_change,
    )
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
                scores = ", ".join(
                    f"{k} {event[k]:.3f}" for k in ("prompt_accuracy", "domain_accuracy", "fd") if k in event
                )
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
                f"{label}: prompt accuracy {m['prompt_accuracy']:.3f}, domain accuracy "
                f"{m['domain_accuracy']:.3f}, FD {m['fd']:.2f}"
            )
    console.print(f"last grid: {summary['grid']}")
    console.print(f"sample it: {summary['sample_command']}")
