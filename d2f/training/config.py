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
}


@dataclass
class TrainConfig:
    """Every setting of a run (the CLI's options, with the same names); the defaults are the demo run."""

    model: str = "tiny-shapes-eps"
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
    lr: float = 1e-3
    lr_scheduler: str = "cosine"
    warmup_steps: int = 50
    steps: int = 1000
    batch_size: int = 32
    grad_accum: int = 1
    max_grad_norm: float = 1.0
    weight_decay: float = 1e-2
    mixed_precision: str = "no"
    gradient_checkpointing: bool = False
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
    overwrite: bool = False
    allow_data_change: bool = False  # --resume even if the data's fingerprint differs from the run's


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
    if cfg.mixed_precision not in MIXED_PRECISION:
        raise UserError(f"unknown --mixed-precision {cfg.mixed_precision!r}; use one of {', '.join(MIXED_PRECISION)}")
    if cfg.lr_scheduler not in LR_SCHEDULERS:
        raise UserError(f"unknown --lr-scheduler {cfg.lr_scheduler!r}; use one of {', '.join(LR_SCHEDULERS)}")
    if cfg.guidance < 0:
        raise UserError(f"--guidance must be >= 0, got {cfg.guidance}")


def default_output(cfg: TrainConfig) -> Path:
    name = f"{Path(cfg.model).name}-{Path(cfg.data).name}-{cfg.objective}".replace("/", "-")
    return Path("runs") / name


def settings_changed(old: dict, new: TrainConfig) -> list[str]:
    """The settings of ``new`` that differ from a run's recorded ``old`` ones and matter for resuming."""
    current = asdict(new)
    return [k for k in current if k not in RESUMABLE_CHANGES and k in old and old[k] != current[k]]
