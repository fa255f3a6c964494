"""Every setting of a ``d2f train`` run, checked before anything is loaded.

``TrainConfig`` has the CLI's options under the same names (``--lora-rank`` is ``lora_rank``); its defaults
are the demo run, ``tiny-shapes-eps`` finetuned to ``shapes-target`` with Diff2Flow and a LoRA. How those
defaults were measured is in ``benchmarks/results/train_defaults.md``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

from d2f.errors import UserError

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "cosine", "linear")
# settings that may differ when a run is resumed: they change when and what is logged, not what is learned
RESUMABLE_CHANGES = {
    "validate_every",
    "checkpoint_every",
    "checkpoints_total_limit",
    "log_every",
    "resume",
    "overwrite",
    "output",
    "eval_samples",
    "allow_data_change",
    "report_to",
    "dataloader_num_workers",
    "resume_from",
    "allow_pickle",  # how the base model may be read, not which model it is
    "cpu",  # where it runs, not what it learns (a run started on a CPU may go on on a GPU, as without the flag)
    "steps",  # may grow: the LR schedule is re-planned for the new total (see ``check_resume_steps``)
}


@dataclass
class TrainConfig:
    """Every setting of a run (the CLI's options, with the same names); the defaults are the demo run."""

    model: str = "tiny-shapes-eps"
    model_config: str | None = None  # a single-file --model's diffusers config: a diffusers folder or hub id
    allow_pickle: bool = False  # let a pickled single file (.ckpt) be loaded: unpickling can run its code
    data: str = "shapes-target"
    objective: str = "diff2flow"
    prediction_type: str | None = None  # None: the model's scheduler config
    zero_terminal_snr: bool = False  # rescale the schedule to zero terminal SNR (v or sample prediction)
    t_sampling: str = "uniform"
    output: str | None = None  # None: runs/<model>-<data>-<objective>
    image_column: str = "image"
    caption_column: str = "text"
    resolution: int | None = None  # None: the model's native resolution
    center_crop: bool = True
    random_flip: bool = False
    max_samples: int | None = None
    skip_bad_images: bool = False
    lora_rank: int = 64
    lora_alpha: float | None = None  # None: = rank
    lora_targets: str = "attn+conv"
    train_text_encoder: bool = False  # a LoRA on the text encoder too (d2f.training.lora)
    lr: float = 1e-3
    lr_scheduler: str = "cosine"
    warmup_steps: int = 50
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    noise_offset: float = 0.0  # diffusion objective only (see check_config)
    mixed_precision: str | None = None  # None: accelerate's (accelerate launch / config), else "no"
    gradient_checkpointing: bool = False
    cpu: bool = False  # train on the CPU even where CUDA is (there, and only there, --resume is bit-identical)
    ema: bool = False
    ema_decay: float = 0.999
    caption_dropout: float = 0.1
    seed: int = 0
    cache: bool = True
    validate_every: int = 500
    validation_prompts: list[str] | None = None
    sample_steps: int = 25
    guidance: float = 2.0
    eval_samples: int = 48
    checkpoint_every: int = 500
    checkpoints_total_limit: int = 2
    log_every: int = 10
    resume: bool = False
    resume_from: str | None = None  # a checkpoint folder (checkpoints/step_XXXXX) to resume from; implies resume
    overwrite: bool = False
    allow_data_change: bool = False  # --resume even if the data's fingerprint differs from the run's
    variant: str | None = None  # weights variant of the model (e.g. fp16), passed to from_pretrained
    revision: str | None = None  # hub revision of the model
    dataloader_num_workers: int = 0  # threads decoding images (building the cache, or every step with --no-cache)
    report_to: list[str] | None = None  # accelerate trackers: tensorboard, wandb, ... (d2f.training.trackers)
    validation_steps: list[int] | None = None  # more sampler steps to draw validation grids at (reflow: 2, 4)
    init_weights: str | None = None  # a run's LoRA file or unet/ folder the trained weights start from


def check_config(cfg: TrainConfig) -> None:
    """``UserError`` for every setting that cannot work, before anything is loaded."""
    from d2f.core.schedule import check_prediction_type
    from d2f.objectives import check_objective
    from d2f.parametrizations import check_t_sampling
    from d2f.training.lora import check_lora_settings

    check_objective(cfg.objective)
    check_t_sampling(cfg.t_sampling)
    if cfg.prediction_type is not None:
        check_prediction_type(cfg.prediction_type)
    check_lora_settings(cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
    for name in ("steps", "batch_size", "grad_accum", "sample_steps", "log_every"):
        if getattr(cfg, name) < 1:
            raise UserError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(cfg, name)}")
    for name in ("warmup_steps", "validate_every", "checkpoint_every", "checkpoints_total_limit", "eval_samples"):
        if getattr(cfg, name) < 0:
            raise UserError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not cfg.lr > 0 or not math.isfinite(cfg.lr):
        raise UserError(f"--lr must be a positive number, got {cfg.lr}")
    if not 0 <= cfg.caption_dropout <= 1:
        raise UserError(f"--caption-dropout must lie in [0, 1], got {cfg.caption_dropout}")
    if not 0 <= cfg.ema_decay < 1:
        raise UserError(f"--ema-decay must lie in [0, 1), got {cfg.ema_decay}")
    if not (0 <= cfg.adam_beta1 < 1 and 0 <= cfg.adam_beta2 < 1):
        raise UserError(f"--adam-beta1/2 must lie in [0, 1), got {cfg.adam_beta1}, {cfg.adam_beta2}")
    if cfg.weight_decay < 0 or cfg.dataloader_num_workers < 0:
        raise UserError("--weight-decay and --dataloader-num-workers must be >= 0")
    if cfg.noise_offset < 0:
        raise UserError(f"--noise-offset must be >= 0, got {cfg.noise_offset}")
    if cfg.noise_offset and cfg.objective != "diffusion":
        raise UserError(
            "--noise-offset is for the diffusion objective: it fixes that diffusion training never sees pure "
            "noise. The FM objectives train on all of t in [0, 1], t = 0 being pure noise, so there is nothing to fix"
        )
    if cfg.report_to:
        from d2f.training.trackers import check_report_to

        check_report_to(cfg.report_to)
    if cfg.mixed_precision is not None and cfg.mixed_precision not in MIXED_PRECISION:
        raise UserError(f"unknown --mixed-precision {cfg.mixed_precision!r}; use one of {', '.join(MIXED_PRECISION)}")
    if cfg.lr_scheduler not in LR_SCHEDULERS:
        raise UserError(f"unknown --lr-scheduler {cfg.lr_scheduler!r}; use one of {', '.join(LR_SCHEDULERS)}")
    if cfg.guidance < 0:
        raise UserError(f"--guidance must be >= 0, got {cfg.guidance}")
    if any(k < 1 for k in cfg.validation_steps or []):
        raise UserError(f"validation steps must be at least 1, got {cfg.validation_steps}")
    if cfg.train_text_encoder and cfg.lora_rank == 0:
        raise UserError(
            "--train-text-encoder adds a LoRA to the text encoder: it needs a LoRA run (--lora-rank > 0), "
            "not a full finetune of the UNet"
        )


def default_output(cfg: TrainConfig) -> Path:
    model = Path(cfg.model)
    model_name = model.stem if model.suffix.lower() in (".safetensors", ".ckpt") else model.name
    name = f"{model_name}-{Path(cfg.data).name}-{cfg.objective}".replace("/", "-")
    return Path("runs") / name


def settings_changed(old: dict, new: TrainConfig) -> list[str]:
    """The settings of ``new`` that differ from a run's recorded ``old`` ones and matter for resuming."""
    current = asdict(new)
    return [k for k in current if k not in RESUMABLE_CHANGES and k in old and old[k] != current[k]]
