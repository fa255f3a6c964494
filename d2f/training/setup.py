"""Everything a training run needs before its first step, and the state the loop carries.

``setup(cfg)`` does the cheap checks first (the settings, the output folder's writability, accelerate, the
folder's lock, what the folder holds), then the long work (the base model, frozen, with the objective's
parametrisation, the data and its caches, the adapter and the optimizer), and only then changes the
folder: ``--overwrite`` sets the old run aside (``d2f.training.output``: ``train`` deletes it after the first
step), leftovers of a killed run go, ``--resume`` restores the latest checkpoint. ``Run`` holds the result:
every field it has is declared in it.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import broadcast_object_list
from diffusers.optimization import get_scheduler

from d2f.errors import UserError
from d2f.files import check_writable_dir
from d2f.parametrizations import Parametrization
from d2f.pipeline.models import ModelRef
from d2f.pipeline.run_folder import METRICS_FILE
from d2f.training import trackers
from d2f.training.auto import resolve_automatic
from d2f.training.batches import Batches, BatchSource
from d2f.training.caption_check import check_caption_lengths
from d2f.training.config import TrainConfig, check_config, default_output
from d2f.training.data import BuiltinResolver, ImageCaptionData, load_run_data
from d2f.training.ema import EMA
from d2f.training.holdout import HeldOut, split_holdout
from d2f.training.lock import RunLock, take_lock
from d2f.training.lora import TEXT_PREFIX, add_lora, add_text_lora
from d2f.training.metrics import TrainWindow
from d2f.training.model import load_model
from d2f.training.output import check_output, claim_output, kept_names, restore_overwritten
from d2f.training.resume import check_data, resume
from d2f.training.start_weights import load_start_weights
from d2f.training.vae_check import check_vae
from d2f.training.validation import validation_prompts

if TYPE_CHECKING:  # types only: the classes come with the loaded model
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel


def print_notices(event: dict) -> None:
    """The callback when none is given: what a caller should know (events with a ``message``) on stderr."""
    if "message" in event:
        print(f"d2f train: {event['message']}", file=sys.stderr)


@dataclass
class Run:
    """The state of one training run, shared by the steps of ``train``: every field is declared here, and
    each is set once by the part of ``setup`` named in its group (the loop's state changes as it trains)."""

    # the run and its folder (``setup``)
    cfg: TrainConfig
    callback: Callable[[dict], None]
    acc: Accelerator  # accelerate: the processes, the device, mixed precision
    out: Path  # the output (run) folder
    lock: RunLock = field(default_factory=RunLock)  # the folder's lock, held until the run ends
    previous: dict | None = None  # the run record found in the folder, when resuming
    overwritten: bool = False  # the old run is set aside (--overwrite) until this run's first step
    source: BatchSource | None = None  # batches from elsewhere than the images (``train(source=)``, reflow)
    # the base model (``d2f.training.model.load_model``), frozen
    ref: ModelRef | None = None  # where --model was resolved to (a folder, a hub id, a single file)
    resolution: int = 0  # the training resolution in pixels
    pipe: StableDiffusionPipeline | None = None  # the base pipeline: tokenizer, text encoder, VAE, UNet, scheduler
    scheduler_config: dict = field(default_factory=dict)  # with the run's changes (prediction type, zero SNR)
    parametrization: Parametrization | None = None  # the objective's (d2f.objectives): its loss and sampler
    unet: UNet2DConditionModel | None = None  # pipe.unet, the module itself (the adapter is added to it)
    # the data (``_load_data``)
    data: ImageCaptionData | None = None  # the images and captions (for reflow, their captions only)
    prompts: list[str] = field(default_factory=list)  # the validation prompts
    batches: Batches | None = None  # what ``batches.get(micro_step, rank, world)`` draws for a step
    vae_psnr: float | None = None  # how well the VAE reconstructs the data (d2f.training.vae_check)
    holdout: HeldOut | None = None  # a user's images kept out of training, scored against (d2f.training.holdout)
    automatic: dict = field(default_factory=dict)  # the "auto" settings decided for the data (d2f.training.auto)
    # what is trained and how (``_build_optimizer``)
    trainable: dict[str, torch.nn.Parameter] = field(default_factory=dict)  # by name (text encoder's prefixed)
    num_trainable: int = 0  # their number of elements
    optimizer: torch.optim.Optimizer | None = None  # AdamW, as accelerate prepared it
    lr_scheduler: torch.optim.lr_scheduler.LRScheduler | None = None
    prepared_unet: torch.nn.Module | None = None  # the UNet as accelerate prepared it (DDP, autocast): the step's
    prepared_text_encoder: torch.nn.Module | None = None  # likewise, with --train-text-encoder only
    ema: EMA | None = None  # with --ema
    # the loop's state (restored from a checkpoint by ``d2f.training.resume``)
    losses: list[float] = field(default_factory=list)  # the mean loss of every step so far
    window: TrainWindow = field(default_factory=TrainWindow)  # the steps since the last train line
    metrics_lines: int = 0  # lines in metrics.jsonl: a checkpoint records how far to rewind it
    metrics_before: dict | None = None  # the step-0 validation's metrics
    seconds_before: float = 0.0  # training time of earlier attempts (a resumed run)
    started: float = field(default_factory=time.perf_counter)

    def log(self, record: dict) -> None:
        """Append one line to ``metrics.jsonl`` (main process), and send it to the ``--report-to`` trackers."""
        if self.acc.is_main_process:
            with open(self.out / METRICS_FILE, "a") as f:
                f.write(json.dumps(record) + "\n")
            self.metrics_lines += 1
            trackers.log(self.acc, record, self.out)

    def notice(self, event: str, message: str, **fields) -> None:
        """Tell the caller something it should know (the CLI prints ``message``); main process only."""
        if self.acc.is_main_process:
            self.callback({"event": event, "message": message, **fields})

    def elapsed(self) -> float:
        """Seconds of training, earlier attempts of a resumed run included."""
        return self.seconds_before + time.perf_counter() - self.started


def setup(
    cfg: TrainConfig,
    callback: Callable[[dict], None] | None = None,
    builtin: BuiltinResolver | None = None,
    source: BatchSource | None = None,
) -> tuple[Run, int]:
    """Everything before the first step (see the module doc). Returns the run, holding the output folder's
    lock (release it with ``run.lock``), and the step to start from. If anything fails, the lock is released
    and the folder is as it was. ``source``: batches instead of the images (``train``)."""
    check_config(cfg)
    out = Path(cfg.output) if cfg.output else default_output(cfg)
    check_writable_dir(out, "--output")  # a file, a path under a file, a read-only folder: before anything
    created = not out.exists()
    run = Run(cfg, callback or print_notices, _accelerator(cfg, out), out, source=source)
    run.lock = _take_lock(run)  # first: a live run in the folder is the one error a second process gets
    try:
        run.previous = check_output(cfg, out, source)
        load_model(run)
        _load_data(run, builtin)
        if cfg.resume:
            check_data(run)
        _build_optimizer(run)
        cfg = run.cfg  # with the "auto" settings decided (_load_data)
        claimed = on_main(run, lambda: claim_output(cfg, out, source))  # only now is the old run set aside
        removed, run.overwritten = claimed if claimed else ([], cfg.overwrite and not cfg.resume)
        if removed:
            run.notice("leftovers_removed", f"removed what a killed run left half-written: {', '.join(removed)}")
        start = resume(run) if cfg.resume else 0
        if start > cfg.steps:
            raise UserError(f"the run in {out} is at step {start}, past --steps {cfg.steps}; give more steps")
        if source is None:  # a source's batches (reflow's pairs: latents) never pass through the VAE
            run.vae_psnr = on_main(run, lambda: check_vae(run))  # informative: once nothing else can fail
        if run.acc.is_main_process:
            trackers.start(run.acc, out.name, asdict(cfg))
        return run, start
    except BaseException:
        if run.overwritten and run.acc.is_main_process:
            restore_overwritten(out, kept_names(source))
        run.lock.release()
        if created and run.acc.is_main_process and out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        raise


def _accelerator(cfg: TrainConfig, out: Path):
    # a second run in the same process (a notebook, the tests) may use other settings; keep the process group
    AcceleratorState._reset_state(reset_partial_state=False)
    # without CUDA (or with --cpu), cpu=True: under torchrun / accelerate launch that is what makes accelerate run
    # MULTI_CPU over gloo (and d2f's float64 schedule maths would not run on MPS anyway). mixed_precision None
    # takes accelerate's own setting (``accelerate launch --mixed_precision``, ``accelerate config``), else "no".
    on_cpu = cfg.cpu or not torch.cuda.is_available()
    acc = Accelerator(
        mixed_precision=cfg.mixed_precision,
        gradient_accumulation_steps=cfg.grad_accum,
        cpu=on_cpu,
        log_with=cfg.report_to or None,
        project_dir=str(out),
    )
    if acc.mixed_precision == "fp16" and on_cpu:
        raise UserError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no on a CPU")
    return acc


def on_main(run: Run, work: Callable[[], dict | None]) -> dict | None:
    """``work()`` on the main process while the others wait; its result (None elsewhere)."""
    result = work() if run.acc.is_main_process else None
    run.acc.wait_for_everyone()
    return result


def _take_lock(run: Run) -> RunLock:
    """The output folder's lock, taken by the main process; the others get a no-op lock, and every process
    raises the main process's error (one d2f train per folder, ``d2f.training.lock``)."""
    lock, error = RunLock(), None
    if run.acc.is_main_process:
        try:
            lock, stale = take_lock(run.out)
            if stale is not None:
                who = f"pid {stale.get('pid', '?')} on host {stale.get('host', '?')}"
                run.notice("lock_taken_over", f"took over the lock of a run that is gone ({who}: killed or crashed)")
        except UserError as exc:
            error = str(exc)
    error = broadcast_object_list([error])[0]
    if error:
        raise UserError(error)
    return lock


def _load_data(run: Run, builtin: BuiltinResolver | None) -> None:
    """The training data, the validation prompts, and the batches (with the VAE / text caches)."""
    cfg, acc, pipe = run.cfg, run.acc, run.pipe
    with acc.main_process_first():  # built-in data is written to its cache folder once
        run.data = load_run_data(cfg, run.resolution, builtin)
    # built-in data has its evaluator; a run recorded before --holdout existed resumes on all its images
    holdout = cfg.holdout if run.previous is None or "holdout" in run.previous.get("settings", {}) else 0
    if not run.data.builtin and run.source is None and holdout:
        run.data, run.holdout = split_holdout(run.data, holdout)
    if run.data.num_skipped:
        names = ", ".join(run.data.skipped[:3]) + (", ..." if run.data.num_skipped > 3 else "")
        run.notice(
            "skipped_images",
            f"skipped {run.data.num_skipped} unreadable image(s) of {cfg.data}: {names}",
            count=run.data.num_skipped,
            files=run.data.skipped[:10],
        )
    check_caption_lengths(run)
    run.automatic = resolve_automatic(run)  # the "auto" settings, now that the captions are known
    cfg = run.cfg
    run.prompts = validation_prompts(cfg, run.data)
    pipe.text_encoder.to(acc.device)
    pipe.vae.to(acc.device)
    if run.source is not None:  # the caller's batches (d2f.reflow: coupled pairs)
        run.batches = run.source.make(run)
        return
    run.batches = Batches(
        run.data,
        pipe.vae,
        pipe.text_encoder,
        pipe.tokenizer,
        run.parametrization,
        batch_size=cfg.batch_size,
        caption_dropout=cfg.caption_dropout,
        random_flip=cfg.random_flip,
        t_sampling=cfg.t_sampling,
        seed=cfg.seed,
        cache=cfg.cache,
        device=acc.device,
        noise_offset=cfg.noise_offset,
        workers=cfg.dataloader_num_workers,
        text_trainable=cfg.train_text_encoder,
    )


def _build_optimizer(run: Run) -> None:
    """The adapter (or a full finetune), AdamW, the LR schedule, accelerate's wrapping, then the EMA on the
    prepared parameters' device. With --train-text-encoder, the text encoder's LoRA joins the same optimizer
    (its weights named ``text_encoder.<name>`` among the run's trainable ones)."""
    cfg, unet, text_encoder = run.cfg, run.unet, run.pipe.text_encoder
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[run.acc.mixed_precision]
    torch.manual_seed(cfg.seed)  # the adapter's initialisation is part of the run
    params = add_lora(unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets, cfg.train_conv_io)
    if cfg.train_text_encoder:
        params += add_text_lora(text_encoder, cfg.lora_rank, cfg.lora_alpha)
    if cfg.init_weights:  # reflow: the student starts as its teacher
        load_start_weights(unet, cfg.init_weights, cfg.lora_rank)
    if cfg.lora_rank > 0 and weight_dtype != torch.float32:
        for p in unet.parameters():  # frozen base weights in half precision, trainable ones in fp32
            if not p.requires_grad:
                p.data = p.data.to(weight_dtype)
    if cfg.gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    unet.train()
    run.num_trainable = sum(p.numel() for p in params)
    optimizer = torch.optim.AdamW(
        params, lr=cfg.lr, betas=(cfg.adam_beta1, cfg.adam_beta2), weight_decay=cfg.weight_decay
    )
    run.lr_scheduler = get_scheduler(
        "constant_with_warmup" if cfg.lr_scheduler == "constant" else cfg.lr_scheduler,
        optimizer,
        num_warmup_steps=cfg.warmup_steps,
        num_training_steps=cfg.steps,
    )
    if cfg.train_text_encoder:
        run.prepared_unet, run.prepared_text_encoder, run.optimizer = run.acc.prepare(unet, text_encoder, optimizer)
    else:
        run.prepared_unet, run.optimizer = run.acc.prepare(unet, optimizer)
    # after prepare: the trainable parameters now live on the accelerator's device
    run.trainable = {n: p for n, p in unet.named_parameters() if p.requires_grad}
    if cfg.train_text_encoder:
        run.trainable.update({TEXT_PREFIX + n: p for n, p in text_encoder.named_parameters() if p.requires_grad})
    run.ema = EMA(run.trainable, cfg.ema_decay) if cfg.ema else None
