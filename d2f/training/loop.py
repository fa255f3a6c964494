"""``d2f train``: finetune an SD-format diffusion model with the Diff2Flow objective (or a baseline).

One loop for all three objectives (``d2f.objectives``); only the parametrisation's loss changes. A step:

    x1, x0, time, cond = batches.get(k)            a VAE posterior sample, noise, t (or i), text embedding
    loss = flow.loss(unet, x1, x0, time, cond)     one UNet forward (d2f.parametrizations)
    backward, clip, AdamW, LR schedule, EMA

``train`` reads top to bottom: set up (output folder, model, data, adapter, optimizer, accelerate),
resume if asked, validate at step 0, then the loop with logging, validation and checkpoints, then save.

Precision: ``--mixed-precision fp16|bf16`` runs the UNet under autocast (accelerate), with the frozen base
weights in that dtype and the trainable parameters, the optimizer, the EMA, the bridge and the loss in
fp32. Several processes (``accelerate launch`` or ``torchrun``) each draw their own batch of
``--batch-size``; gradients are averaged (DDP), so the effective batch is batch x processes x grad-accum.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import nullcontext

import torch

from d2f.errors import UserError
from d2f.parametrizations import unet_net
from d2f.pipeline.run_folder import CHECKPOINTS_DIR, LORA_FILE, SAMPLES_DIR
from d2f.training.checkpoint import latest, save_checkpoint
from d2f.training.config import TrainConfig
from d2f.training.data import BuiltinResolver
from d2f.training.lora import save_weights
from d2f.training.record import write_record
from d2f.training.setup import Run, on_main, setup
from d2f.training.validation import validate

T_BINS = 10  # the loss is also logged in 10 bins of FM time t: [0, 0.1), ..., [0.9, 1]


class Diverged(UserError):
    """The loss became NaN or infinite: the run stops and keeps its last checkpoint."""


def train(
    cfg: TrainConfig, callback: Callable[[dict], None] | None = None, builtin: BuiltinResolver | None = None
) -> dict:
    """Run (or resume) a training run; returns the summary (also written to ``d2f_run.json``).

    ``callback(event)`` receives progress events ("step", "validation", "resumed"); ``builtin`` resolves
    built-in data names (``d2f.world.data.builtin_data``: the CLI passes it)."""
    run, start = setup(cfg, callback, builtin)
    if run.acc.is_main_process:
        write_record(run, status="running")
    run.started = time.perf_counter()
    if start == 0:
        run.metrics_before = on_main(run, lambda: validate(run, 0))

    bin_sum, bin_count = torch.zeros(T_BINS), torch.zeros(T_BINS)
    window, last_log = [], time.perf_counter()
    for step in range(start, cfg.steps):
        per_sample, t = train_step(run, step)
        lr = run.lr_scheduler.get_last_lr()[0]  # the learning rate this step used
        run.lr_scheduler.step()
        if run.ema is not None:
            run.ema.update()
        # the loss in t-bins: bin b holds t in [b/T_BINS, (b+1)/T_BINS)
        bins = (t * T_BINS).long().clamp(0, T_BINS - 1)
        bin_sum.index_add_(0, bins, per_sample)
        bin_count.index_add_(0, bins, torch.ones_like(per_sample))
        loss = per_sample.mean().item()
        window.append(loss)
        run.losses.append(loss)
        done = step + 1
        run.callback({"event": "step", "step": done, "steps": cfg.steps, "loss": loss, "lr": lr})
        if done % cfg.log_every == 0 or done == cfg.steps:
            now = time.perf_counter()
            run.log(
                {
                    "step": done,
                    "kind": "train",
                    "loss": sum(window) / len(window),
                    "lr": lr,
                    "seconds": round(now - run.started, 3),
                    "steps_per_second": round(len(window) / max(now - last_log, 1e-9), 3),
                    "loss_t_bins": [round((s / c).item(), 6) if c > 0 else None for s, c in zip(bin_sum, bin_count)],
                }
            )
            bin_sum.zero_(), bin_count.zero_()
            window, last_log = [], now
        if cfg.validate_every and done % cfg.validate_every == 0 and done < cfg.steps:
            on_main(run, lambda step=done: validate(run, step))
        if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
            _checkpoint(run, done)
    return _finish(run)


def train_step(run: Run, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step (``grad_accum`` micro steps) on every process; returns the per-sample losses and
    FM times of all processes' samples (CPU). Stops the run if a loss is NaN or infinite."""
    cfg, acc = run.cfg, run.acc
    net = unet_net(run.model)
    losses, times = [], []
    for micro in range(cfg.grad_accum):
        data, noise, t, cond = run.batches.get(step * cfg.grad_accum + micro, acc.process_index, acc.num_processes)
        with acc.accumulate(run.model):
            out = run.flow.loss(net, data, noise, t, cond)
            per_sample = acc.gather(out.per_sample.detach()).float().cpu()
            if not torch.isfinite(per_sample).all():
                _diverged(run, step)
            acc.backward(out.loss)
            if acc.sync_gradients and cfg.max_grad_norm > 0:
                acc.clip_grad_norm_(run.model.parameters(), cfg.max_grad_norm)
            run.optimizer.step()
            run.optimizer.zero_grad(set_to_none=True)
        losses.append(per_sample)
        times.append(acc.gather(out.t.detach()).float().cpu())
    return torch.cat(losses), torch.cat(times)


def _diverged(run: Run, step: int):

    last = latest(run.out / CHECKPOINTS_DIR)
    kept = f"the last checkpoint is {last}" if last else "no checkpoint was written yet"
    if run.acc.is_main_process:
        write_record(run, status="diverged")
    raise Diverged(
        f"the loss became NaN or infinite at step {step + 1} (lr {run.lr_scheduler.get_last_lr()[0]:.3g}); "
        f"{kept}; lower --lr, or use --mixed-precision no"
    )


def _checkpoint(run: Run, step: int) -> None:

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
            },
            keep=run.cfg.checkpoints_total_limit or None,
        )

    on_main(run, save)


def _finish(run: Run) -> dict:
    """Validate at the last step, save the weights (the EMA's when on) and the finished run record."""
    cfg = run.cfg
    metrics_after = on_main(run, lambda: validate(run, cfg.steps))

    def save():
        with run.ema.averaged() if run.ema is not None else nullcontext():
            return save_weights(run.acc.unwrap_model(run.model), run.out, cfg.lora_rank)

    path = on_main(run, save)
    final = sum(run.losses[-10:]) / max(1, len(run.losses[-10:])) if run.losses else None
    summary = {
        "output_dir": str(run.out),
        "lora_path": str(run.out / LORA_FILE) if cfg.lora_rank else None,
        "unet_path": str(path) if cfg.lora_rank == 0 else None,
        "steps": cfg.steps,
        "final_loss": final,
        "seconds": round(time.perf_counter() - run.started, 2),
        "grid": str(run.out / SAMPLES_DIR / f"step_{cfg.steps:05d}.png"),
        "metrics_before": run.metrics_before,
        "metrics_after": metrics_after,
        "sample_command": f"d2f sample --lora {run.out}",
    }
    if run.acc.is_main_process:
        write_record(run, status="finished", summary=summary)
    return summary
