"""The base model of a training run: loaded once (frozen), with the run's changes to its schedule."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from d2f.core.schedule import Schedule
from d2f.core.velocity import check_bridge
from d2f.errors import UserError
from d2f.objectives import parametrization
from d2f.pipeline.loading import load_base_pipeline
from d2f.pipeline.models import check_resolution, hub_file, native_resolution, resolve_model
from d2f.training.config import TrainConfig


def load_model(run) -> None:
    """The base model as a pipeline (frozen), its schedule and the objective's parametrisation."""
    cfg = run.cfg
    run.ref = resolve_model(cfg.model)
    load = (cfg.model, torch.float32, cfg.variant, cfg.revision, cfg.model_config, cfg.allow_pickle)
    if run.ref.single_file:  # no config files to read first: the loaded pipeline's configs are the model's
        # float32 whatever is stored (a text encoder saved in fp16 would otherwise train in fp16)
        pipe = source = load_base_pipeline(*load)
        scheduler_config = dict(pipe.scheduler.config)
    else:  # the configs are checked before the (slower) load
        source = Path(run.ref.source) if run.ref.local else hub_file(run.ref, "unet/config.json").parent.parent
        hub_file(run.ref, "vae/config.json")
        scheduler_config = _read_config(cfg, hub_file(run.ref, "scheduler/scheduler_config.json"))
    run.resolution = cfg.resolution or native_resolution(source)
    check_resolution(source, run.resolution)
    overrides = _scheduler_overrides(cfg, scheduler_config)
    if not run.ref.single_file:
        pipe = load_base_pipeline(*load)
    if overrides:  # the validation sampler reads the prediction type and the schedule from this config
        pipe.scheduler = type(pipe.scheduler).from_config({**pipe.scheduler.config, **overrides})
    pipe.set_progress_bar_config(disable=True)
    run.pipe, run.scheduler_config = pipe, dict(pipe.scheduler.config)
    schedule = Schedule.from_config(run.scheduler_config)
    run.parametrization = parametrization(cfg.objective, schedule, cfg.prediction_type)
    run.unet = pipe.unet
    for module in (pipe.text_encoder, pipe.vae, pipe.unet):
        module.requires_grad_(False)
        module.eval()


def _read_config(cfg: TrainConfig, config_file: Path) -> dict:
    try:
        return json.loads(config_file.read_text())
    except ValueError as exc:
        raise UserError(
            f"cannot read {config_file} ({type(exc).__name__}); is {cfg.model} a diffusers model?"
        ) from None


def _scheduler_overrides(cfg: TrainConfig, scheduler_config: dict) -> dict:
    """What the run changes in the model's scheduler config, checked on the config (for a folder or hub id:
    before the model is loaded): an unsupported beta schedule, or zero terminal SNR on an epsilon model
    (undefined at the noise end: ``check_bridge``), is a ``UserError`` here. ``rescale_betas_zero_snr`` is the
    key diffusers' schedulers and d2f's ``Schedule.from_config`` read."""
    overrides = {"prediction_type": cfg.prediction_type} if cfg.prediction_type else {}
    if cfg.zero_terminal_snr:
        overrides["rescale_betas_zero_snr"] = True
    schedule = Schedule.from_config({**scheduler_config, **overrides})
    check_bridge(schedule, schedule.prediction_type)
    return overrides
