"""Every setting of a ``d2f train`` run, checked before anything is loaded.

``TrainConfig`` has the CLI's options under the same names (``--lora-rank`` is ``lora_rank``); its defaults
are the demo run, ``tiny-shapes-eps`` finetuned to ``shapes-target`` with Diff2Flow and a LoRA. How those
defaults were measured is in ``benchmarks/results/train_defaults.md``. Three settings default to "auto" (None):
``train_text_encoder``, ``lr`` and ``t_sampling`` are decided from the data before the first step
(``d2f.training.auto``: the demo's values, or the new-content recipe when the captions hold words the model's text
encoder never learnt) and recorded.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from d2f.errors import UserError
from d2f.settings import MAX_COUNT, MAX_GUIDANCE, MAX_SEED, MAX_SIDE, check_fits, check_settings, setting

MIXED_PRECISION = ("no", "fp16", "bf16")
LR_SCHEDULERS = ("constant", "cosine", "linear")
MAX_BATCH = 2**16
MAX_SAMPLE_STEPS = 10_000
MAX_EVAL = 100_000
MAX_LORA_ALPHA = 1e6  # alpha / rank scales the LoRA's update; beyond this it only overflows
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


def _objectives() -> tuple[str, ...]:
    from d2f.objectives import OBJECTIVES

    return tuple(OBJECTIVES)


def _t_samplings() -> tuple[str, ...]:
    from d2f.parametrizations import T_SAMPLINGS

    return T_SAMPLINGS


def _losses() -> tuple[str, ...]:
    from d2f.parametrizations import LOSSES

    return LOSSES


def _lora_targets() -> tuple[str, ...]:
    from d2f.training.lora import TARGETS

    return tuple(TARGETS)


PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")  # d2f.core.schedule's, without importing torch


@dataclass
class TrainConfig:
    """Every setting of a run: the CLI's options (``--lora-rank`` is ``lora_rank``), their help and bounds,
    declared once (``d2f.settings``); the defaults are the demo run."""

    model: str = setting(
        "tiny-shapes-eps", "Built-in model name, diffusers folder, single-file checkpoint (.safetensors) or hub id."
    )
    model_config: str | None = setting(
        None,
        "For a single-file --model: a diffusers folder (or hub id) of the same architecture whose component "
        "configs to use (default: inferred by diffusers, which needs the hub).",
    )
    allow_pickle: bool = setting(False, "Load a pickled .ckpt --model (unpickling can run code in the file).")
    data: str = setting(
        "shapes-target",
        "Built-in data (shapes-target, shapes-base), a folder (imagefolder, .txt captions, save_to_disk), "
        "a .parquet/.csv/.jsonl file, or a hub dataset.",
    )
    objective: str = setting(
        "diff2flow",
        "The training objective (d2f.objectives): diff2flow; fm, naive flow matching at the timestep (1-t)(N-1); "
        "fm-raw-t, naive FM at the raw timestep t (as the paper's code); diffusion, the model's own; the rest take "
        "Diff2Flow apart (docs/math.md §9.1).",
        choices=_objectives,
    )
    prediction_type: str | None = setting(
        None, "Override the model's prediction type (default: its scheduler config's).", choices=PREDICTION_TYPES
    )
    zero_terminal_snr: bool = setting(False, "Rescale the schedule to zero terminal SNR (v or sample).")
    # None = auto (d2f.training.auto): logit-normal for new content, else uniform
    t_sampling: str | None = setting(
        None,
        "FM time density: uniform; logit-normal (more steps at mid t); near-noise (density 2(1 - t)); u-shaped "
        "(more steps at both ends). Default: auto (logit-normal for captions with new words, else uniform).",
        choices=_t_samplings,
    )
    loss: str = setting(
        "mse",
        "mse, the objective's squared error; pseudo-huber, sqrt(||error||^2 + c^2) - c per sample "
        "(2-rectified flow++).",
        choices=_losses,
    )
    output: str | None = setting(None, "Run folder (default runs/<model>-<data>-<objective>).")
    image_column: str = setting("image", "Image column of the data.")
    caption_column: str = setting("text", "Caption column of the data.")
    resolution: int | None = setting(None, "Training resolution in px (default: the model's).", low=1, high=MAX_SIDE)
    center_crop: bool = setting(
        True, "Centre crop, or a random crop (drawn once per image).", flag="--center-crop/--random-crop"
    )
    random_flip: bool = setting(False, "Mirror images at random.")
    max_samples: int | None = setting(None, "Use at most this many images.", low=1)
    skip_bad_images: bool = setting(False, "Skip unreadable images.")
    dataloader_num_workers: int = setting(0, "Threads decoding images.", low=0, high=256)
    lora_rank: int = setting(64, "LoRA rank; 0 = full finetune of the UNet.", low=0, high=4096)
    lora_alpha: float | None = setting(None, "LoRA alpha (default: the rank).", above=0, high=MAX_LORA_ALPHA)
    lora_targets: str = setting("attn+conv", "Which UNet layers get a LoRA.", choices=_lora_targets)
    train_conv_io: bool = setting(
        False, "Also train the UNet's conv_in and conv_out fully, as the Diff2Flow paper's LoRA does."
    )
    # None = auto (d2f.training.auto): on when the captions hold words the text encoder never learnt
    train_text_encoder: bool | None = setting(
        None,
        "A LoRA on the text encoder too. Default: auto (on when the captions hold words the model's text encoder "
        "never learnt).",
        flag="--train-text-encoder/--no-train-text-encoder",
    )
    # None = auto (d2f.training.auto): 3e-3 for new content, else 1e-3
    lr: float | None = setting(
        None, "Peak learning rate (AdamW). Default: auto (3e-3 for captions with new words, else 1e-3).", above=0
    )
    lr_scheduler: str = setting("cosine", "Learning rate after warmup.", choices=LR_SCHEDULERS)
    warmup_steps: int = setting(50, "Linear warmup steps.", low=0, high=MAX_COUNT)
    steps: int = setting(1000, "Optimizer steps (more than a resumed run had: it goes on).", low=1, high=MAX_COUNT)
    batch_size: int = setting(32, "Batch size per process.", low=1, high=MAX_BATCH)
    grad_accum: int = setting(1, "Gradient accumulation steps.", low=1, high=MAX_COUNT)
    max_grad_norm: float = setting(1.0, "Gradient clipping norm (0 = no clipping).", low=0)
    weight_decay: float = setting(1e-2, "AdamW weight decay.", low=0)
    adam_beta1: float = setting(0.9, "AdamW beta1, in [0, 1).", low=0, below=1)
    adam_beta2: float = setting(0.999, "AdamW beta2, in [0, 1).", low=0, below=1)
    noise_offset: float = setting(0.0, "Noise offset (diffusion objective only).", low=0, high=10)
    mixed_precision: str | None = setting(
        None, "Mixed precision: fp16 (GPU) or bf16 (default: accelerate's setting, else no).", choices=MIXED_PRECISION
    )
    gradient_checkpointing: bool = setting(False, "Trade compute for memory.")
    # train on the CPU even where CUDA is (there, and only there, --resume is bit-identical)
    cpu: bool = setting(False, "Train on the CPU even where a CUDA GPU is (accelerate's cpu).")
    ema: bool = setting(False, "Keep an EMA of the trainable weights (validated and saved).")
    ema_decay: float = setting(0.999, "EMA decay, in [0, 1).", low=0, below=1)
    caption_dropout: float = setting(0.1, "Probability of an empty caption (for guidance).", low=0, high=1)
    seed: int = setting(0, "Seed (set before the adapter is created).", low=0, high=MAX_SEED)
    cache: bool = setting(True, "Cache VAE latents and text embeddings.", flag="--cache/--no-cache")
    validate_every: int = setting(
        500, "Validation every N steps (and at 0 and the end; 0 = only those).", low=0, high=MAX_COUNT
    )
    validation_prompts: list[str] | None = setting(None, "Prompt of the grids. Repeatable.", flag="--validation-prompt")
    sample_steps: int = setting(25, "Sampler steps of the validation samples.", low=1, high=MAX_SAMPLE_STEPS)
    guidance: float = setting(2.0, "Guidance of the validation samples.", low=0, high=MAX_GUIDANCE)
    eval_samples: int = setting(
        48,
        "Images scored at each validation (built-in data; a user's: at most the held-out ones).",
        low=0,
        high=MAX_EVAL,
    )
    # a user's images held out from training: the samples' FD / KID to them at each validation (d2f.training.holdout)
    holdout: int = setting(
        64,
        "A user's images held out from training, to score samples against (at most a tenth; 0 = none).",
        low=0,
        high=MAX_COUNT,
    )
    checkpoint_every: int = setting(500, "Checkpoint every N steps (0 = off).", low=0, high=MAX_COUNT)
    checkpoints_total_limit: int = setting(2, "Keep the newest N checkpoints (0 = all).", low=0, high=MAX_COUNT)
    log_every: int = setting(10, "A line of metrics.jsonl every N steps.", low=1, high=MAX_COUNT)
    resume: bool = setting(False, "Continue the run in --output from its latest checkpoint.")
    # a checkpoint folder (checkpoints/step_XXXXX) to resume from; implies resume
    resume_from: str | None = setting(None, "Continue from this checkpoint folder.")
    overwrite: bool = setting(
        False, "Replace the run in --output (deleted only once the new one has made its first step)."
    )
    allow_data_change: bool = setting(False, "With --resume: continue even though the data changed.")
    variant: str | None = setting(None, "Weights variant of the model, e.g. fp16.")
    revision: str | None = setting(None, "Hub revision (branch, tag or commit) of the model.")
    report_to: list[str] | None = setting(None, "An accelerate tracker (tensorboard, ...). Repeatable.")
    # more sampler steps to draw validation grids at (reflow: 2, 4)
    validation_steps: list[int] | None = setting(None, "", low=1, high=MAX_SAMPLE_STEPS, cli=False)
    # a run's LoRA file or unet/ folder the trained weights start from
    init_weights: str | None = setting(None, "", cli=False)


def check_config(cfg: TrainConfig) -> None:
    """``UserError`` for every setting that cannot work, before anything is loaded: each setting's type and
    range as declared (``d2f.settings``), then the settings that must agree with each other."""
    check_settings(cfg)
    if cfg.resolution is not None:
        check_fits(cfg.batch_size, cfg.resolution, cfg.resolution, "--resolution or --batch-size")
    from d2f.objectives import DIFFUSION_LOSSES

    if cfg.noise_offset and cfg.objective not in DIFFUSION_LOSSES:
        raise UserError(
            "--noise-offset is for the diffusion objective: it fixes that diffusion training never sees pure "
            "noise. The FM objectives train on all of t in [0, 1], t = 0 being pure noise, so there is nothing to fix"
        )
    if cfg.report_to:
        from d2f.training.trackers import check_report_to

        check_report_to(cfg.report_to)
    if cfg.train_conv_io and cfg.lora_rank == 0:
        raise UserError("--train-conv-io adds conv_in and conv_out to a LoRA run; a full finetune trains them already")
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
    """The settings of ``new`` that differ from a run's recorded ``old`` ones and matter for resuming. An "auto"
    setting left at auto (None) takes the recorded decision (``d2f.training.auto``), so it never differs."""
    from d2f.training.auto import AUTOMATIC

    current = asdict(new)
    return [
        k
        for k in current
        if k not in RESUMABLE_CHANGES
        and k in old
        and old[k] != current[k]
        and not (k in AUTOMATIC and current[k] is None)
    ]
