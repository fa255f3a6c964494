"""The run record that ``d2f train`` writes as ``d2f_run.json`` (the schema: ``d2f.pipeline.run_folder``)."""

from __future__ import annotations

from dataclasses import asdict

from d2f.core.timemap import t_range
from d2f.pipeline.models import resolve_model
from d2f.pipeline.run_folder import LORA_FILE, TIME_CONVENTION, UNET_DIR, write_run_record
from d2f.versions import versions

PACKAGES = ("d2f", "torch", "diffusers", "transformers", "peft", "accelerate", "datasets", "safetensors")


def write_record(run, status: str, summary: dict | None = None) -> None:
    """Write ``d2f_run.json`` for the run state ``run`` (``d2f.training.loop.Run``); main process only."""
    cfg, parametrization, data = run.cfg, run.parametrization, run.data
    t_min, t_max = t_range(parametrization.schedule)
    record = {
        "base_model": cfg.model,
        "base_model_source": run.ref.source,
        "model_config": model_config_source(cfg.model_config),
        "prediction_type": parametrization.prediction_type,
        "objective": cfg.objective,
        "sampler": parametrization.sampler,
        "guidance": cfg.guidance,
        "sample_steps": cfg.sample_steps,
        "resolution": data.resolution,
        "mixed_precision": run.acc.mixed_precision,  # the effective one (accelerate's when not given)
        "weights": LORA_FILE if cfg.lora_rank else UNET_DIR,
        "lora": {
            "rank": cfg.lora_rank,
            "alpha": cfg.lora_alpha or cfg.lora_rank,
            "targets": cfg.lora_targets,
            "text_encoder": cfg.train_text_encoder,
        }
        if cfg.lora_rank
        else None,
        "time_convention": TIME_CONVENTION,
        "fm_timestep": {"fm": "(1 - t) * (N - 1) on the unscaled x_t", "fm-raw-t": "t on the unscaled x_t"}.get(
            cfg.objective
        ),
        "seed": cfg.seed,
        "status": status,
        "settings": {**asdict(cfg), **(run.source.settings if run.source else {})},
        "automatic": run.automatic,  # the settings left at "auto" and why each got its value (d2f.training.auto)
        "schedule": {
            "num_train_timesteps": parametrization.schedule.num_train_timesteps,
            "beta_schedule": parametrization.schedule.beta_schedule,
            "zero_terminal_snr": parametrization.schedule.zero_terminal_snr,
            "t_min": t_min,
            "t_max": t_max,
            "scheduler_config": {k: v for k, v in run.scheduler_config.items() if not k.startswith("_")},
        },
        "data": {
            "name": data.name,
            "location": data.location,
            "num_images": len(data),  # trained on; "held_out" more were kept apart (d2f.training.holdout)
            "held_out": len(run.holdout.data) if run.holdout else 0,
            "skipped_images": data.num_skipped,
            "image_column": data.image_column,
            "caption_column": data.caption_column,
            "domain": data.builtin.domain if data.builtin else None,
            "fingerprint": data.fingerprint,  # what --resume checks (d2f.training.data)
            "vae_psnr": run.vae_psnr,  # how well the VAE reconstructs them (d2f.training.vae_check)
        },
        "validation_prompts": run.prompts,
        "trainable_parameters": run.num_trainable,
        "num_processes": run.acc.num_processes,
        "device": str(run.acc.device),
        "versions": versions(PACKAGES),
    }
    if run.source is not None:  # a caller's batches (d2f.reflow): its own keys
        record.update(run.source.record)
    if summary:
        record["summary"] = summary
    write_run_record(run.out, record)


def model_config_source(model_config: str | None) -> str | None:
    """``--model-config`` as sampling finds it again from anywhere: a folder's absolute path, else the hub id."""
    return None if model_config is None else resolve_model(model_config).source
