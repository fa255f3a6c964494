"""``d2f train``: finetune an SD-format diffusion model with the Diff2Flow objective (or a baseline).

One loop for all three objectives (``d2f.objectives``); only the parametrisation's loss changes. A step is
``d2f.training.step`` (batch, noise, t, the parametrisation's loss, backward, clip, AdamW), then here the LR
schedule and the EMA.

``train`` reads top to bottom: set up (output folder and its lock, model, data, adapter, optimizer,
accelerate), resume if asked, validate at step 0, then the loop with logging, validation and checkpoints,
then save. A run killed at any point (even by SIGKILL, inside a checkpoint write) and resumed ends with the
weights and ``metrics.jsonl`` of the uninterrupted run (bit-identical on a CPU; timing fields aside):
``tests/test_train_crash.py`` kills real runs to check it.

Precision: ``--mixed-precision fp16|bf16`` runs the UNet under autocast (accelerate), with the frozen base
weights in that dtype and the trainable parameters, the optimizer, the EMA, the bridge and the loss in
fp32. Several processes (``accelerate launch`` or ``torchrun``) each draw their own batch of
``--batch-size``; gradients are averaged (DDP), so the effective batch is batch x processes x grad-accum.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path

import torch

from d2f.errors import UserError
from d2f.pipeline.run_folder import CHECKPOINTS_DIR, LORA_FILE, SAMPLES_DIR
from d2f.training.batches import BatchSource
from d2f.training.checkpoint import latest, non_finite, save_checkpoint
from d2f.training.config import TrainConfig, default_output
from d2f.training.data import BuiltinResolver
from d2f.training.faults import kill_point
from d2f.training.lora import save_weights
from d2f.training.output import (
    discard_overwritten,
    finished_summary,
    kept_names,
    restore_overwritten,
    with_resume_from,
)
from d2f.training.record import write_record
from d2f.training.setup import Run, on_main, print_notices, setup
from d2f.training.step import NonFiniteLoss, training_step
from d2f.training.validation import validate


class Diverged(UserError):
    """The loss (or, at a checkpoint, the weights) became NaN or infinite: the run stops; its latest
    checkpoint is the last finite one."""


def train(
    cfg: TrainConfig,
    callback: Callable[[dict], None] | None = None,
    builtin: BuiltinResolver | None = None,
    source: BatchSource | None = None,
) -> dict:
    """Run (or resume) a training run; returns the summary (also written to ``d2f_run.json``).

    ``callback(event)`` receives progress events ("step", "validation", "resumed") and notices (events with
    a ``message``: a stale lock taken over, a damaged checkpoint skipped, images skipped, ...; printed on
    stderr when no callback is given). ``builtin`` resolves built-in data names
    (``d2f.world.data.builtin_data``: the CLI passes it). ``source`` brings batches instead of the data's
    images, with its own settings and record keys (``d2f.training.batches.BatchSource``: ``d2f.reflow``'s pairs)."""
    callback = callback or print_notices
    cfg = with_resume_from(cfg)
    finished = finished_summary(cfg, Path(cfg.output) if cfg.output else default_output(cfg), source)
    if finished is not None:  # --resume of a run that already finished: nothing to do
        callback({"event": "finished", "message": f"the run in {finished['output_dir']} already finished"})
        return finished
    run, start = setup(cfg, callback, builtin, source)
    with run.lock:  # the output folder is this run's until it ends, fails or is interrupted
        try:
            return _train(run, start)
        except BaseException:
            _restore_old_run(run)
            raise


def _train(run: Run, start: int) -> dict:
    """The run from ``start``: the record, validation at step 0, the steps, then ``_finish``."""
    cfg = run.cfg
    if run.acc.is_main_process:
        write_record(run, status="running")
    run.started = time.perf_counter()
    if start == 0:
        run.metrics_before = on_main(run, lambda: validate(run, 0))

    run.window.start_clock()
    for step in range(start, cfg.steps):
        per_sample, t = train_step(run, step)
        if step == start:  # this run made a step: the old run it overwrites (--overwrite) can go
            on_main(run, lambda: discard_overwritten(run.out))
            run.overwritten = False
        lr = run.lr_scheduler.get_last_lr()[0]  # the learning rate this step used
        run.lr_scheduler.step()
        if run.ema is not None:
            run.ema.update()
        loss = run.window.add(per_sample, t)  # also sums the loss in bins of t
        run.losses.append(loss)
        done = step + 1
        run.callback({"event": "step", "step": done, "steps": cfg.steps, "loss": loss, "lr": lr})
        if done % cfg.log_every == 0 or done == cfg.steps:
            run.log(run.window.line(done, lr, run.elapsed()))
        if cfg.validate_every and done % cfg.validate_every == 0 and done < cfg.steps:
            on_main(run, lambda step=done: validate(run, step))
        if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            _checkpoint(run, done)
        kill_point(f"step:{done}")
    return _finish(run)


def _restore_old_run(run: Run) -> None:
    """The new run failed before its first step: put the run it was to overwrite back (main process)."""
    if run.overwritten and run.acc.is_main_process:
        restore_overwritten(run.out, kept_names(run.source))
        run.notice("overwrite_undone", f"the new run failed before its first step: {run.out} holds the old run again")


def train_step(run: Run, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step of the run on every process (``d2f.training.step``, through accelerate); returns the
    per-sample losses and FM times of all processes' samples (CPU). Stops the run if a loss is NaN or infinite."""
    cfg = run.cfg
    try:
        return training_step(
            run.parametrization,
            run.prepared_unet,
            run.batches,
            run.optimizer,
            list(run.trainable.values()),
            step,
            grad_accum=cfg.grad_accum,
            max_grad_norm=cfg.max_grad_norm,
            text_encoder=run.prepared_text_encoder,
            device=run.acc,
            loss=cfg.loss,
        )
    except NonFiniteLoss:
        _diverged(run, step)


def _diverged(run: Run, step: int, what: str = "the loss", note: str = ""):
    """Record the run as diverged and stop it with an error that names the last finite checkpoint."""
    last = latest(run.out / CHECKPOINTS_DIR)  # never a non-finite one: ``_checkpoint`` refuses to write those
    kept = f"the last finite checkpoint is {last}" if last else "no checkpoint was written yet"
    if run.acc.is_main_process:
        write_record(run, status="diverged")
    raise Diverged(
        f"{what} became NaN or infinite at step {step + 1} (lr {run.lr_scheduler.get_last_lr()[0]:.3g}); "
        f"{note}{kept}; lower --lr, or use --mixed-precision no"
    )


def _checkpoint(run: Run, step: int) -> None:
    """Save a checkpoint, unless the weights (or the EMA, or the step's loss) are not finite: a diverged
    run keeps its last finite checkpoint as its latest, the one ``--resume`` and the error name."""
    bad = non_finite(run.trainable) + non_finite(run.ema.avg if run.ema else {})
    if bad or not math.isfinite(run.losses[-1]):
        name = f"the trainable weights ({bad[0]}{', ...' if len(bad) > 1 else ''})" if bad else "the loss"
        _diverged(run, step - 1, name, note="its checkpoint was not written; ")

    def save():
        save_checkpoint(
            run.out / CHECKPOINTS_DIR,
            step,
            run.trainable,
            run.optimizer,
            run.lr_scheduler,
            ema=run.ema.avg if run.ema else None,
            extra={
                "ema_updates": run.ema.updates if run.ema else 0,
                "metrics_before": run.metrics_before,
                "losses": run.losses,
                "window": run.window.state(),  # the steps since the last train line, and where metrics.jsonl ends
                "metrics_lines": run.metrics_lines,
                "seconds": run.elapsed(),
            },
            keep=run.cfg.checkpoints_total_limit or None,
            extra_files=_save_lora if run.cfg.lora_rank else None,
        )

    def _save_lora(folder):  # every checkpoint is also a LoRA that ``pipe.load_lora_weights(folder)`` loads
        with run.ema.averaged() if run.ema is not None else nullcontext():
            save_weights(_unet(run), folder, run.cfg.lora_rank, _text_encoder(run), run.cfg.train_conv_io)

    on_main(run, save)


def _unet(run: Run):
    return run.acc.unwrap_model(run.prepared_unet)


def _text_encoder(run: Run):
    """The text encoder whose LoRA is saved with the UNet's (--train-text-encoder), else None."""
    return run.acc.unwrap_model(run.prepared_text_encoder) if run.prepared_text_encoder is not None else None


def _finish(run: Run) -> dict:
    """Validate at the last step, save the weights (the EMA's when on) and the finished run record."""
    cfg = run.cfg
    metrics_after = on_main(run, lambda: validate(run, cfg.steps))

    def save():
        with run.ema.averaged() if run.ema is not None else nullcontext():
            return save_weights(_unet(run), run.out, cfg.lora_rank, _text_encoder(run), cfg.train_conv_io)

    path = on_main(run, save)
    kill_point("finish:weights")
    final = sum(run.losses[-10:]) / max(1, len(run.losses[-10:])) if run.losses else None
    summary = {
        "output_dir": str(run.out),
        "lora_path": str(run.out / LORA_FILE) if cfg.lora_rank else None,
        "unet_path": str(path) if cfg.lora_rank == 0 else None,
        "steps": cfg.steps,
        "final_loss": final,
        "seconds": round(run.elapsed(), 2),
        "grid": str(run.out / SAMPLES_DIR / f"step_{cfg.steps:05d}.png"),
        "metrics_before": run.metrics_before,
        "metrics_after": metrics_after,
        "sample_command": f"d2f sample --lora {run.out}",
    }
    if run.acc.is_main_process:
        write_record(run, status="finished", summary=summary)
    run.acc.end_training()  # closes the --report-to trackers
    return summary
