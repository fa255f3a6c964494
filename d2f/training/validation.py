"""Validation during training: sample the validation prompts, save a grid, score with the data's evaluator."""

from __future__ import annotations

from contextlib import nullcontext

import torch

from d2f.pipeline import generate, save_grid
from d2f.pipeline.run_folder import SAMPLES_DIR
from d2f.training.faults import kill_point
from d2f.training.holdout import score_samples


def validation_prompts(cfg, data) -> list[str]:
    """``--validation-prompt`` as given, else the built-in world's prompts, else up to 8 training captions."""
    if cfg.validation_prompts:
        return list(cfg.validation_prompts)
    if data.builtin:
        return list(data.builtin.prompts)
    return list(dict.fromkeys(c for c in data.captions if c))[:8] or [""]


@torch.no_grad()
def validate(run, step: int) -> dict | None:
    """Sample the validation prompts with ``d2f.pipeline.generate`` (the objective's own sampler, the EMA
    weights when on), save ``samples/step_XXXXX.png`` and, for built-in data, score ``eval_samples`` images
    with its evaluator; for a user's data with held-out images, score up to ``eval_samples`` samples of the
    held-out captions against them (``fd_heldout``, ``kid_heldout``: ``d2f.training.holdout``); the grids (and
    the built-in scores) also at each of ``validation_steps`` (``step_XXXXX_Ksteps.png``, ``steps_K`` in the
    metrics line). Main process only; returns the metrics at ``sample_steps`` (None without any)."""
    cfg, data = run.cfg, run.data
    n = max(cfg.eval_samples, len(run.prompts)) if data.builtin else len(run.prompts)
    prompts = [run.prompts[k % len(run.prompts)] for k in range(n)]
    images = _sample(run, prompts, cfg.sample_steps)
    grid = save_grid(
        images[: len(run.prompts)],
        run.out / SAMPLES_DIR / f"step_{step:05d}.png",
        ncols=6 if len(run.prompts) == 24 else None,
    )
    kill_point(f"validation:{step}")
    record = {"step": step, "kind": "validation", "grid": str(grid.relative_to(run.out))}
    metrics = None
    if data.builtin:
        metrics = {k: float(v) for k, v in data.builtin.evaluate(images, prompts).items()}
        record.update(metrics)
    elif run.holdout is not None and cfg.eval_samples:
        held_prompts = run.holdout.captions[: cfg.eval_samples]
        metrics = score_samples(run.pipe.vae, run.holdout, _sample(run, held_prompts, cfg.sample_steps))
        record.update(metrics)
    for steps in [k for k in cfg.validation_steps or [] if k != cfg.sample_steps]:  # e.g. reflow: 1, 2 and 4 steps
        more = _sample(run, prompts, steps)
        path = save_grid(
            more[: len(run.prompts)],
            run.out / SAMPLES_DIR / f"step_{step:05d}_{steps}steps.png",
            ncols=6 if len(run.prompts) == 24 else None,
        )
        extra = {"grid": str(path.relative_to(run.out))}
        if data.builtin:
            extra.update({k: float(v) for k, v in data.builtin.evaluate(more, prompts).items()})
        record[f"steps_{steps}"] = extra
    run.log(record)
    run.callback({"event": "validation", **record})
    return metrics


def _sample(run, prompts: list[str], steps: int) -> torch.Tensor:
    """Images of ``prompts`` at ``steps`` sampler steps (the EMA weights when on)."""
    cfg, data = run.cfg, run.data
    run.unet.eval()
    try:
        with run.ema.averaged() if run.ema is not None else nullcontext(), run.acc.autocast():
            return generate(
                run.pipe,
                prompts,
                sampler=run.parametrization.sampler,
                steps=steps,
                guidance=cfg.guidance,
                seed=cfg.seed,
                height=data.resolution,
                width=data.resolution,
                objective=cfg.objective,
            )
    finally:
        run.unet.train()
