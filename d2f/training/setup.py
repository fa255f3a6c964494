"""Everything a training run needs before its first step, and the state the loop carries.

``setup(cfg)`` checks the settings, starts accelerate, prepares the output folder, loads the base model
(frozen) and the objective's parametrisation, loads the data and builds the caches, adds the adapter and
the optimizer, and resumes from the latest checkpoint when asked. ``Run`` holds the result.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from diffusers import StableDiffusionPipeline
from diffusers.optimization import get_scheduler

from d2f.core.schedule import Schedule
from d2f.errors import UserError
from d2f.objectives import parametrization
from d2f.pipeline.models import check_resolution, hub_file, native_resolution, resolve_model
from d2f.pipeline.run_folder import CHECKPOINTS_DIR, METRICS_FILE
from d2f.training.batches import Batches
from d2f.training.checkpoint import latest, load_checkpoint, restore_rng
from d2f.training.config import TrainConfig, check_config, default_output
from d2f.training.data import BuiltinResolver, load_data
from d2f.training.ema import EMA
from d2f.training.lora import add_lora
from d2f.training.output import prepare_output
from d2f.training.validation import validation_prompts


@dataclass
class Run:
    """The state of one training run, shared by the steps of ``train``."""

    cfg: TrainConfig
    callback: Callable[[dict], None]
    acc: object
    out: Path
    losses: list[float] = field(default_factory=list)
    metrics_before: dict | None = None
    ema: object = None

    def log(self, record: dict) -> None:
        """Append one line to ``metrics.jsonl`` (main process)."""
        if self.acc.is_main_process:
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")


def setup(
    cfg: TrainConfig, callback: Callable[[dict], None] | None = None, builtin: BuiltinResolver | None = None
) -> tuple[Run, int]:
    """Everything before the first step: settings, accelerate, output folder, model, data and caches,
    adapter and optimizer, resume. Returns the run and the step to start from."""
    check_config(cfg)
    run = Run(
        cfg,
        callback or (lambda event: None),
        _accelerator(cfg),
        Path(cfg.output) if cfg.output else default_output(cfg),
    )
    prepare_output(cfg, run.out, run.acc)
    _load_model(run)
    _load_data(run, builtin)
    _build_optimizer(run)
    return run, _resume(run) if cfg.resume else 0


def _accelerator(cfg: TrainConfig):

    if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
        raise UserError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no on a CPU")
    # a second run in the same process (a notebook, the tests) may use other settings; keep the process group
    AcceleratorState._reset_state(reset_partial_state=False)
    # without CUDA, cpu=True: under torchrun / accelerate launch that is what makes accelerate run MULTI_CPU
    # over gloo (and d2f's float64 schedule maths would not run on MPS anyway)
    return Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=not torch.cuda.is_available(),
    )


def on_main(run: Run, work: Callable[[], dict | None]) -> dict | None:
    """``work()`` on the main process while the others wait; its result (None elsewhere)."""
    result = work() if run.acc.is_main_process else None
    run.acc.wait_for_everyone()
    return result


def _load_model(run: Run) -> None:
    """The base model as a pipeline (frozen), its schedule and the objective's parametrisation."""
    cfg = run.cfg
    run.ref = resolve_model(cfg.model)
    folder = Path(run.ref.source) if run.ref.local else hub_file(run.ref, "unet/config.json").parent.parent
    hub_file(run.ref, "vae/config.json")
    run.resolution = cfg.resolution or native_resolution(folder)
    check_resolution(folder, run.resolution)
    try:
        pipe = StableDiffusionPipeline.from_pretrained(
            run.ref.source, safety_checker=None, requires_safety_checker=False
        )
    except (OSError, ValueError) as exc:
        raise UserError(
            f"could not load {cfg.model} as a Stable Diffusion pipeline "
            f"({type(exc).__name__}: {str(exc).splitlines()[0]})"
        ) from None
    if cfg.prediction_type:  # the validation sampler reads the prediction type from the pipeline's scheduler
        pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=cfg.prediction_type)
    pipe.set_progress_bar_config(disable=True)
    run.pipe, run.scheduler_config = pipe, dict(pipe.scheduler.config)
    run.flow = parametrization(cfg.objective, Schedule.from_config(run.scheduler_config), cfg.prediction_type)
    run.unet = pipe.unet
    for module in (pipe.text_encoder, pipe.vae, pipe.unet):
        module.requires_grad_(False)
        module.eval()


def _load_data(run: Run, builtin: BuiltinResolver | None) -> None:
    """The training data, the validation prompts, and the batches (with the VAE / text caches)."""

    cfg, acc, pipe = run.cfg, run.acc, run.pipe
    with acc.main_process_first():  # built-in data is written to its cache folder once
        run.data = load_data(
            cfg.data,
            image_column=cfg.image_column,
            caption_column=cfg.caption_column,
            resolution=run.resolution,
            center_crop=cfg.center_crop,
            max_samples=cfg.max_samples,
            skip_bad_images=cfg.skip_bad_images,
            seed=cfg.seed,
            builtin=builtin,
        )
    run.prompts = validation_prompts(cfg, run.data)
    pipe.text_encoder.to(acc.device)
    pipe.vae.to(acc.device)
    run.batches = Batches(
        run.data,
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        run.flow,
        batch_size=cfg.batch_size,
        caption_dropout=cfg.caption_dropout,
        random_flip=cfg.random_flip,
        t_sampling=cfg.t_sampling,
        seed=cfg.seed,
        cache=cfg.cache,
        device=acc.device,
    )


def _build_optimizer(run: Run) -> None:
    """The adapter (or a full finetune), AdamW, the LR schedule, accelerate's wrapping, then the EMA on the
    prepared parameters' device."""
    cfg, unet = run.cfg, run.unet
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    torch.manual_seed(cfg.seed)  # the adapter's initialisation is part of the run
    params = add_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    if cfg.lora_rank > 0 and weight_dtype != torch.float32:
        for p in unet.parameters():  # frozen base weights in half precision, trainable ones in fp32
            if not p.requires_grad:
                p.data = p.data.to(weight_dtype)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    run.num_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    run.lr_scheduler = get_scheduler(
        "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.steps,
    )
    run.model, run.optimizer = run.acc.prepare(unet, optimizer)
    # after prepare: the trainable parameters now live on the accelerator's device
    run.trainable = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    run.ema = EMA(run.trainable, cfg.ema_decay) if cfg.ema else None


def _resume(run: Run) -> int:
    """Restore the latest checkpoint; returns its step."""
    folder = run.out / CHECKPOINTS_DIR
    path = latest(folder)
    if path is None:
        raise UserError(
            f"no checkpoint in {folder} to resume from; drop --resume (or --overwrite) to start the run again"
        )
    ckpt = load_checkpoint(path)
    with torch.no_grad():
        for name, p in run.trainable.items():
            p.copy_(ckpt["trainable"][name].to(p.device, p.dtype))
    run.optimizer.load_state_dict(ckpt["optimizer"])
    run.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    if run.ema is not None:
        run.ema.load(ckpt["ema"], ckpt["ema_updates"])
    restore_rng(ckpt["rng"])
    run.metrics_before = ckpt.get("metrics_before")
    run.losses = ckpt.get("losses", [])
    step = ckpt["step"]
    if run.acc.is_main_process:  # forget what was logged after the checkpoint
        log = run.out / METRICS_FILE
        if log.is_file():
            keep = [line for line in log.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
            log.write_text("".join(line + "\n" for line in keep))
    run.callback({"event": "resumed", "step": step, "checkpoint": str(path)})
    return step
