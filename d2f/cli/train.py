"""``d2f train``: the options, a progress bar and the summary; the work is ``d2f.training.train``.

Every option's default is ``TrainConfig``'s (written once, there). ``--config FILE`` reads options from a
TOML / YAML / JSON file (``d2f.training.config_file``); options on the command line override it.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from d2f.cli.app import app, console, err_console, friendly, print_json, quiet_third_party, require_extra
from d2f.training.config import TrainConfig as C

NOT_SETTINGS = ("as_json", "config", "validation_prompt", "report_to")  # options that are not TrainConfig fields


@app.command("train")
@friendly
def train(
    ctx: typer.Context,
    config: Path | None = typer.Option(None, help="Read options from a .toml, .yaml or .json file first."),
    model: str = typer.Option(
        C.model, help="Built-in model name, diffusers folder, single-file checkpoint (.safetensors) or hub id."
    ),
    model_config: str | None = typer.Option(
        C.model_config,
        help="For a single-file --model: a diffusers folder (or hub id) of the same architecture whose component "
        "configs to use (default: inferred by diffusers, which needs the hub).",
    ),
    allow_pickle: bool = typer.Option(
        C.allow_pickle, "--allow-pickle", help="Load a pickled .ckpt --model (unpickling can run code in the file)."
    ),
    variant: str | None = typer.Option(C.variant, help="Weights variant of the model, e.g. fp16."),
    revision: str | None = typer.Option(C.revision, help="Hub revision (branch, tag or commit) of the model."),
    data: str = typer.Option(
        C.data,
        help="Built-in data (shapes-target, shapes-base), a folder (imagefolder, .txt captions, save_to_disk), "
        "a .parquet/.csv/.jsonl file, or a hub dataset.",
    ),
    objective: str = typer.Option(
        C.objective,
        help="diff2flow, fm (naive flow matching, timestep (1-t)(N-1)), fm-raw-t (naive FM at the raw timestep t, "
        "as the paper code) or diffusion.",
    ),
    prediction_type: str | None = typer.Option(
        C.prediction_type, help="Override the model's prediction type (epsilon, v_prediction, sample)."
    ),
    t_sampling: str = typer.Option(C.t_sampling, help="FM time sampling: uniform or logit-normal."),
    zero_terminal_snr: bool = typer.Option(
        C.zero_terminal_snr, "--zero-terminal-snr", help="Rescale the schedule to zero terminal SNR (v or sample)."
    ),
    output: str | None = typer.Option(C.output, help="Run folder (default runs/<model>-<data>-<objective>)."),
    image_column: str = typer.Option(C.image_column, help="Image column of the data."),
    caption_column: str = typer.Option(C.caption_column, help="Caption column of the data."),
    resolution: int | None = typer.Option(C.resolution, help="Training resolution in px (default: the model's)."),
    center_crop: bool = typer.Option(
        C.center_crop, "--center-crop/--random-crop", help="Centre crop, or a random crop (drawn once per image)."
    ),
    random_flip: bool = typer.Option(C.random_flip, "--random-flip", help="Mirror images at random."),
    max_samples: int | None = typer.Option(C.max_samples, help="Use at most this many images."),
    skip_bad_images: bool = typer.Option(C.skip_bad_images, "--skip-bad-images", help="Skip unreadable images."),
    dataloader_num_workers: int = typer.Option(C.dataloader_num_workers, help="Threads decoding images."),
    lora_rank: int = typer.Option(C.lora_rank, help="LoRA rank; 0 = full finetune of the UNet."),
    lora_alpha: float | None = typer.Option(C.lora_alpha, help="LoRA alpha (default: the rank)."),
    lora_targets: str = typer.Option(C.lora_targets, help="attn or attn+conv."),
    train_text_encoder: bool = typer.Option(
        C.train_text_encoder, "--train-text-encoder", help="A LoRA on the text encoder too (new words in captions)."
    ),
    lr: float = typer.Option(C.lr, help="Peak learning rate (AdamW)."),
    lr_scheduler: str = typer.Option(C.lr_scheduler, help="constant, cosine or linear (after warmup)."),
    warmup_steps: int = typer.Option(C.warmup_steps, help="Linear warmup steps."),
    steps: int = typer.Option(C.steps, help="Optimizer steps (more than a resumed run had: it goes on)."),
    batch_size: int = typer.Option(C.batch_size, help="Batch size per process."),
    grad_accum: int = typer.Option(C.grad_accum, help="Gradient accumulation steps."),
    max_grad_norm: float = typer.Option(C.max_grad_norm, help="Gradient clipping norm (0 = off)."),
    weight_decay: float = typer.Option(C.weight_decay, help="AdamW weight decay."),
    adam_beta1: float = typer.Option(C.adam_beta1, help="AdamW beta1."),
    adam_beta2: float = typer.Option(C.adam_beta2, help="AdamW beta2."),
    noise_offset: float = typer.Option(C.noise_offset, help="Noise offset (diffusion objective only)."),
    mixed_precision: str | None = typer.Option(
        C.mixed_precision, help="no, fp16 (GPU) or bf16 (default: accelerate's setting, else no)."
    ),
    gradient_checkpointing: bool = typer.Option(
        C.gradient_checkpointing, "--gradient-checkpointing", help="Trade compute for memory."
    ),
    cpu: bool = typer.Option(C.cpu, "--cpu", help="Train on the CPU even where a CUDA GPU is (accelerate's cpu)."),
    ema: bool = typer.Option(C.ema, "--ema", help="Keep an EMA of the trainable weights (validated and saved)."),
    ema_decay: float = typer.Option(C.ema_decay, help="EMA decay."),
    caption_dropout: float = typer.Option(C.caption_dropout, help="Probability of an empty caption (guidance)."),
    seed: int = typer.Option(C.seed, help="Seed (set before the adapter is created)."),
    cache: bool = typer.Option(C.cache, "--cache/--no-cache", help="Cache VAE latents and text embeddings."),
    validate_every: int = typer.Option(C.validate_every, help="Validation every N steps (and at 0 and the end)."),
    validation_prompt: list[str] = typer.Option([], "--validation-prompt", help="Prompt of the grids. Repeatable."),
    guidance: float = typer.Option(C.guidance, help="Guidance of the validation samples."),
    sample_steps: int = typer.Option(C.sample_steps, help="Sampler steps of the validation samples."),
    eval_samples: int = typer.Option(C.eval_samples, help="Images scored at each validation (built-in data)."),
    checkpoint_every: int = typer.Option(C.checkpoint_every, help="Checkpoint every N steps (0 = off)."),
    checkpoints_total_limit: int = typer.Option(C.checkpoints_total_limit, help="Keep the newest N (0 = all)."),
    log_every: int = typer.Option(C.log_every, help="A line of metrics.jsonl every N steps."),
    report_to: list[str] = typer.Option([], "--report-to", help="An accelerate tracker (tensorboard, ...)."),
    resume: bool = typer.Option(C.resume, "--resume", help="Continue the run in --output from its latest checkpoint."),
    resume_from: str | None = typer.Option(C.resume_from, help="Continue from this checkpoint folder."),
    overwrite: bool = typer.Option(
        C.overwrite, "--overwrite", help="Replace the run in --output (deleted once the new one is ready to start)."
    ),
    allow_data_change: bool = typer.Option(
        C.allow_data_change, "--allow-data-change", help="With --resume: continue even though the data changed."
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
    from d2f.training.config_file import read_config_file
    from d2f.world.data import builtin_data

    quiet_third_party()  # one progress bar: the training's
    settings = {k: v for k, v in ctx.params.items() if k not in NOT_SETTINGS}
    settings["validation_prompts"] = list(validation_prompt) or None
    settings["report_to"] = list(report_to) or None
    for key, value in (read_config_file(config) if config else {}).items():  # the command line wins
        option = "validation_prompt" if key == "validation_prompts" else key
        source = ctx.get_parameter_source(option)  # typer vendors click: compare by name
        if source is None or source.name != "COMMANDLINE":
            settings[key] = value
    cfg = TrainConfig(**settings)
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
