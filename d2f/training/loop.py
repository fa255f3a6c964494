"""The training loop of ``d2f train`` (settings, helpers and the module doc: ``d2f/train.py``).

``Trainer(cfg).run()``: set up (model, data, caches, adapter, optimizer, accelerate), resume if asked,
validate at step 0, train, checkpoint, validate, save the weights and the run record.
"""

from __future__ import annotations

import json
import shutil
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from d2f.errors import UserError
from d2f.train import (RUN_FILES, T_BINS, TIME_CONVENTION, EMA, TrainConfig, batch_indices, default_output, now,
                       settings_changed, step_generator, write_json_atomic)


class Diverged(UserError):
    """The loss became NaN or infinite: the run stops and keeps its last checkpoint."""


class Trainer:
    def __init__(self, cfg: TrainConfig, callback=None):
        self.cfg, self.callback = cfg, callback or (lambda event: None)

    # ------------------------------------------------------------------------------ set-up
    def run(self) -> dict:
        start = self.setup()
        self._write_run_record(status="running")
        self.started = now()
        if start == 0:
            self.metrics_before = self._validate(0)
        return self._loop(start)

    def setup(self) -> int:
        """Everything before the first step (output folder, model, data, caches, adapter, optimizer,
        accelerate, resume); returns the step to start from."""
        from accelerate import Accelerator

        cfg = self.cfg
        if cfg.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise UserError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no on a CPU")
        from accelerate.state import AcceleratorState

        # a second run in the same process (a notebook, the tests) may use other settings; keep the process group
        AcceleratorState._reset_state(reset_partial_state=False)
        # without CUDA, cpu=True: under torchrun / accelerate launch that is what makes accelerate run MULTI_CPU
        # over gloo (and d2f's float64 schedule maths would not run on MPS anyway)
        self.acc = Accelerator(mixed_precision=cfg.mixed_precision, gradient_accumulation_steps=cfg.grad_accum,
                               cpu=not torch.cuda.is_available())
        self.out = Path(cfg.output) if cfg.output else default_output(cfg)
        self._prepare_output()
        self._load_model()
        self._load_data()
        self._load_pipeline()
        self._build_caches()
        self._build_training()
        return self._maybe_resume()

    def _prepare_output(self):
        cfg, out = self.cfg, self.out
        has_run = (out / RUN_FILES["run"]).is_file()
        if cfg.resume:
            if not has_run:
                raise UserError(f"nothing to resume in {out}: no {RUN_FILES['run']} there; drop --resume to start a run")
            old = json.loads((out / RUN_FILES["run"]).read_text()).get("settings", {})
            changed = settings_changed(old, cfg)
            if changed:
                diff = ", ".join(f"{k}: {old[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
                raise UserError(f"--resume needs the settings of the run in {out}; these differ: {diff}")
            return
        if out.exists() and any(out.iterdir()):
            if not has_run:  # never delete a folder d2f did not write
                raise UserError(f"{out} exists and is not a d2f run folder (no {RUN_FILES['run']}); choose an empty "
                                "or new --output")
            if not cfg.overwrite:
                raise UserError(f"{out} already holds a run; pass --resume to continue it, --overwrite to start "
                                "again, or --output DIR for a new folder")
            if self.acc.is_main_process:
                shutil.rmtree(out)
        self.acc.wait_for_everyone()

    def _load_model(self):
        from d2f.models import check_resolution, hub_file, native_resolution, resolve_model

        cfg = self.cfg
        self.ref = resolve_model(cfg.model)
        folder = Path(self.ref.source) if self.ref.local else hub_file(self.ref, "unet/config.json").parent.parent
        hub_file(self.ref, "vae/config.json")
        self.resolution = cfg.resolution or native_resolution(folder)
        check_resolution(folder, self.resolution)

    def _load_pipeline(self):
        from diffusers import StableDiffusionPipeline

        from d2f.schedule import Schedule

        cfg = self.cfg
        try:
            pipe = StableDiffusionPipeline.from_pretrained(self.ref.source, safety_checker=None,
                                                           requires_safety_checker=False)
        except (OSError, ValueError) as exc:
            raise UserError(f"could not load {cfg.model} as a Stable Diffusion pipeline "
                            f"({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
        if cfg.prediction_type:  # the sampler reads the prediction type from the pipeline's scheduler
            pipe.scheduler = type(pipe.scheduler).from_config(pipe.scheduler.config, prediction_type=cfg.prediction_type)
        pipe.set_progress_bar_config(disable=True)
        self.pipe, self.scheduler_config = pipe, dict(pipe.scheduler.config)
        self.schedule = Schedule.from_config(self.scheduler_config, prediction_type=cfg.prediction_type)
        self.prediction_type = self.schedule.prediction_type
        if cfg.objective == "diff2flow":
            from d2f.velocity import check_bridge

            check_bridge(self.schedule, self.prediction_type)
        self.tokenizer, self.text_encoder, self.vae, self.unet = pipe.tokenizer, pipe.text_encoder, pipe.vae, pipe.unet
        for module in (self.text_encoder, self.vae, self.unet):
            module.requires_grad_(False)
            module.eval()
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        self.latent_shape = (self.unet.config.in_channels, self.resolution // down, self.resolution // down)

    def _load_data(self):
        from d2f.data import load_data

        cfg = self.cfg
        with self.acc.main_process_first():  # the built-in data is written to its cache folder once
            self.data = load_data(cfg.data, image_column=cfg.image_column, caption_column=cfg.caption_column,
                                  resolution=self.resolution, center_crop=cfg.center_crop,
                                  max_samples=cfg.max_samples, skip_bad_images=cfg.skip_bad_images, seed=cfg.seed)
        if cfg.validation_prompts:
            self.prompts = list(cfg.validation_prompts)
        elif self.data.builtin_domain:
            from d2f.world.shapes import all_prompts

            self.prompts = all_prompts()
        else:
            self.prompts = list(dict.fromkeys(c for c in self.data.captions if c))[:8] or [""]

    # ------------------------------------------------------------------------------ caches
    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Text encoder hidden states (B, L, D), as the SD pipeline computes them."""
        ids = self.tokenizer(captions, padding="max_length", max_length=self.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(self.acc.device)
        return self.text_encoder(ids)[0].float()

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior (mean, std) of images in [-1, 1], float32."""
        dist = self.vae.encode(pixels.to(self.acc.device, self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def _build_caches(self):
        cfg = self.cfg
        self.text_encoder.to(self.acc.device)
        self.vae.to(self.acc.device)
        self.captions = sorted(set(self.data.captions) | {""})
        self.caption_index = torch.tensor([self.captions.index(c) for c in self.data.captions])
        self.empty = self.captions.index("")
        self.text_cache = self.encode_text(self.captions) if cfg.cache else None
        self.latent_cache = None
        if cfg.cache:
            moments = {False: ([], []), True: ([], [])}
            for start in range(0, len(self.data), 64):
                pixels = self.data.pixels(range(start, min(start + 64, len(self.data))))
                for flip in (False, True) if cfg.random_flip else (False,):
                    mean, std = self.encode_images(pixels.flip(-1) if flip else pixels)
                    moments[flip][0].append(mean)
                    moments[flip][1].append(std)
            self.latent_cache = {flip: (torch.cat(m), torch.cat(s)) for flip, (m, s) in moments.items() if m}

    def batch(self, micro_step: int):
        """(data x1, noise x0, time, cond) of one micro step on this process; all draws from the
        micro step's own generator, in a fixed order, whether the caches are on or off."""
        cfg = self.cfg
        from d2f.objectives import sample_time

        gen = step_generator(cfg.seed, micro_step, self.acc.process_index)
        idx = batch_indices(len(self.data), cfg.batch_size, micro_step, self.acc.process_index,
                            self.acc.num_processes, cfg.seed)
        b = len(idx)
        flips = torch.rand(b, generator=gen) < 0.5
        if not cfg.random_flip:
            flips = torch.zeros_like(flips)
        drop = torch.rand(b, generator=gen) < cfg.caption_dropout
        which = torch.where(drop, torch.tensor(self.empty), self.caption_index[idx])
        posterior = torch.randn((b, *self.latent_shape), generator=gen)
        noise = torch.randn((b, *self.latent_shape), generator=gen)
        time = sample_time(cfg.objective, b, self.schedule, cfg.t_sampling, gen)
        if self.latent_cache is not None:
            mean = torch.stack([self.latent_cache[bool(f)][0][k] for k, f in zip(idx, flips)])
            std = torch.stack([self.latent_cache[bool(f)][1][k] for k, f in zip(idx, flips)])
            cond = self.text_cache[which]
        else:
            pixels = self.data.pixels(idx)
            pixels = torch.where(flips[:, None, None, None], pixels.flip(-1), pixels)
            mean, std = self.encode_images(pixels)
            cond = self.encode_text([self.captions[k] for k in which])
        dev = self.acc.device
        scaling = self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        # x1 = (mu + s * n - shift) * scaling_factor: a posterior sample, scaled to unit variance
        data = (mean.cpu() + std.cpu() * posterior - shift) * scaling
        return data.to(dev), noise.to(dev), time.to(dev), cond.to(dev)

    # ------------------------------------------------------------------------------ training set-up
    def _build_training(self):
        from diffusers.optimization import get_scheduler

        from d2f.lora import add_lora

        cfg = self.cfg
        weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
        torch.manual_seed(cfg.seed)  # the adapter's initialisation is part of the run
        params = add_lora(self.unet, cfg.lora_rank, cfg.lora_alpha, cfg.lora_targets)
        if cfg.lora_rank > 0 and weight_dtype != torch.float32:
            for p in self.unet.parameters():  # frozen base weights in half precision, trainable ones in fp32
                if not p.requires_grad:
                    p.data = p.data.to(weight_dtype)
        if cfg.gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.unet.train()
        self.trainable = {n: p for n, p in self.unet.named_parameters() if p.requires_grad}
        self.num_trainable = sum(p.numel() for p in params)
        self.optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.lr_scheduler = get_scheduler(cfg.lr_scheduler if cfg.lr_scheduler != "constant" else "constant_with_warmup",
                                          self.optimizer, num_warmup_steps=cfg.warmup_steps,
                                          num_training_steps=cfg.steps)
        self.ema = EMA(self.trainable, cfg.ema_decay) if cfg.ema else None
        self.model, self.optimizer = self.acc.prepare(self.unet, self.optimizer)
        self.metrics_before = self.metrics_after = None
        self.losses: list[float] = []

    def _maybe_resume(self) -> int:
        from d2f.checkpoint import latest, load_checkpoint, restore_rng

        if not self.cfg.resume:
            return 0
        path = latest(self.out / RUN_FILES["checkpoints"])
        if path is None:
            raise UserError(f"no checkpoint in {self.out / RUN_FILES['checkpoints']} to resume from; drop --resume "
                            "(or --overwrite) to start the run again")
        ckpt = load_checkpoint(path)
        with torch.no_grad():
            for name, p in self.trainable.items():
                p.copy_(ckpt["trainable"][name].to(p.dtype))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
        if self.ema is not None:
            self.ema.avg = {k: ckpt["ema"][k].float() for k in self.trainable}
            self.ema.updates = ckpt["ema_updates"]
        restore_rng(ckpt["rng"])
        self.metrics_before = ckpt.get("metrics_before")
        self.losses = ckpt.get("losses", [])
        step = ckpt["step"]
        if self.acc.is_main_process:  # forget what was logged after the checkpoint
            log = self.out / RUN_FILES["metrics"]
            if log.is_file():
                keep = [l for l in log.read_text().splitlines() if l.strip() and json.loads(l)["step"] <= step]
                log.write_text("".join(l + "\n" for l in keep))
        self.callback({"event": "resumed", "step": step, "checkpoint": str(path)})
        return step

    # ------------------------------------------------------------------------------ the loop
    def train_step(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step (``grad_accum`` micro steps) on every process; returns the per-sample losses
        and FM times of all processes' samples (CPU). Stops the run if a loss is NaN or infinite."""
        from d2f.objectives import get_objective

        cfg, acc = self.cfg, self.acc
        objective = get_objective(cfg.objective)

        def net(z, timestep, cond):
            return self.model(z, timestep, encoder_hidden_states=cond, return_dict=False)[0]

        losses, times = [], []
        for micro in range(cfg.grad_accum):
            data, noise, time, cond = self.batch(step * cfg.grad_accum + micro)
            with acc.accumulate(self.model):
                out = objective(net, data, noise, time, cond, self.schedule, self.prediction_type)
                per_sample = acc.gather(out.per_sample.detach()).float().cpu()
                if not torch.isfinite(per_sample).all():
                    self._diverged(step)
                acc.backward(out.loss)
                if acc.sync_gradients and cfg.max_grad_norm > 0:
                    acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            losses.append(per_sample)
            times.append(acc.gather(out.t.detach()).float().cpu())
        return torch.cat(losses), torch.cat(times)

    def _loop(self, start: int) -> dict:
        cfg = self.cfg
        bin_sum, bin_count = torch.zeros(T_BINS), torch.zeros(T_BINS)
        window, last_log = [], now()
        for step in range(start, cfg.steps):
            per_sample, t_all = self.train_step(step)
            # the loss in t-bins: bin b holds t in [b/T_BINS, (b+1)/T_BINS)
            bins = (t_all * T_BINS).long().clamp(0, T_BINS - 1)
            bin_sum.index_add_(0, bins, per_sample)
            bin_count.index_add_(0, bins, torch.ones_like(per_sample))
            window.append(per_sample.mean().item())
            lr = self.lr_scheduler.get_last_lr()[0]  # the learning rate this step used
            self.lr_scheduler.step()
            if self.ema is not None:
                self.ema.update()
            done = step + 1
            loss = window[-1]
            self.losses.append(loss)
            self.callback({"event": "step", "step": done, "steps": cfg.steps, "loss": loss, "lr": lr})
            if done % cfg.log_every == 0 or done == cfg.steps:
                self._log({"step": done, "kind": "train", "loss": sum(window) / len(window),
                           "lr": lr, "seconds": round(now() - self.started, 3),
                           "steps_per_second": round(len(window) / max(now() - last_log, 1e-9), 3),
                           "loss_t_bins": [round((s / c).item(), 6) if c > 0 else None
                                           for s, c in zip(bin_sum, bin_count)]})
                bin_sum.zero_(), bin_count.zero_()
                window, last_log = [], now()
            if cfg.validate_every and done % cfg.validate_every == 0 and done < cfg.steps:
                self._validate(done)
            if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.steps):
                self._checkpoint(done)
        return self._finish()

    def _diverged(self, step: int):
        from d2f.checkpoint import latest

        last = latest(self.out / RUN_FILES["checkpoints"])
        kept = f"the last checkpoint is {last}" if last else "no checkpoint was written yet"
        self._write_run_record(status="diverged")
        raise Diverged(f"the loss became NaN or infinite at step {step + 1} (lr {self.lr_scheduler.get_last_lr()[0]:.3g}); "
                       f"{kept}; lower --lr, or use --mixed-precision no")

    def _log(self, record: dict):
        if self.acc.is_main_process:
            with open(self.out / RUN_FILES["metrics"], "a") as f:
                f.write(json.dumps(record) + "\n")

    def _checkpoint(self, step: int):
        from d2f.checkpoint import save_checkpoint

        if self.acc.is_main_process:
            save_checkpoint(self.out / RUN_FILES["checkpoints"], step, self.trainable, self.optimizer,
                            self.lr_scheduler, ema=self.ema.avg if self.ema else None,
                            extra={"ema_updates": self.ema.updates if self.ema else 0,
                                   "metrics_before": self.metrics_before, "losses": self.losses},
                            keep=self.cfg.checkpoints_total_limit or None)
        self.acc.wait_for_everyone()

    @torch.no_grad()
    def _validate(self, step: int) -> dict | None:
        """Sample the validation prompts with ``d2f.pipeline.generate`` (the objective's sampler, EMA weights
        when on), save the grid and, on the built-in world, score the images with the world's evaluator:
        prompt accuracy, domain accuracy (read as the training data's domain) and FD against it."""
        from d2f.objectives import SAMPLERS
        from d2f.pipeline import generate, save_grid

        cfg, metrics = self.cfg, None
        if self.acc.is_main_process:
            n = max(cfg.eval_samples, len(self.prompts)) if self.data.builtin_domain else len(self.prompts)
            prompts = [self.prompts[k % len(self.prompts)] for k in range(n)]
            if self.ema is not None:
                self.ema.swap()
            self.unet.eval()
            with self.acc.autocast():
                images = generate(self.pipe, prompts, sampler=SAMPLERS[cfg.objective], steps=cfg.sample_steps,
                                  guidance=cfg.guidance, seed=cfg.seed, height=self.resolution,
                                  width=self.resolution, objective=cfg.objective)
            self.unet.train()
            if self.ema is not None:
                self.ema.swap()
            grid = save_grid(images[:len(self.prompts)], self.out / RUN_FILES["samples"] / f"step_{step:05d}.png",
                             ncols=6 if len(self.prompts) == 24 else None)
            record = {"step": step, "kind": "validation", "grid": str(grid.relative_to(self.out))}
            if self.data.builtin_domain:
                from d2f.world.metrics import evaluate

                metrics = {k: float(v) for k, v in evaluate(images, prompts, self.data.builtin_domain).items()}
                record.update(metrics)
            self._log(record)
            self.callback({"event": "validation", **record})
        self.acc.wait_for_everyone()
        return metrics

    # ------------------------------------------------------------------------------ the end
    def _finish(self) -> dict:
        from d2f.lora import save_weights

        cfg = self.cfg
        self.metrics_after = self._validate(cfg.steps)
        path = None
        if self.acc.is_main_process:
            if self.ema is not None:
                self.ema.swap()
            path = save_weights(self.acc.unwrap_model(self.model), self.out, cfg.lora_rank)
            if self.ema is not None:
                self.ema.swap()
        self.acc.wait_for_everyone()
        seconds = round(now() - self.started, 2)
        final = sum(self.losses[-10:]) / max(1, len(self.losses[-10:])) if self.losses else None
        summary = {"output_dir": str(self.out), "lora_path": str(self.out / RUN_FILES["lora"]) if cfg.lora_rank else None,
                   "unet_path": str(path) if cfg.lora_rank == 0 else None, "steps": cfg.steps,
                   "final_loss": final, "seconds": seconds, "grid": str(self.out / RUN_FILES["samples"] / f"step_{cfg.steps:05d}.png"),
                   "metrics_before": self.metrics_before, "metrics_after": self.metrics_after,
                   "sample_command": f"d2f sample --lora {self.out}"}
        self._write_run_record(status="finished", summary=summary)
        return summary

    def _write_run_record(self, status: str, summary: dict | None = None):
        from d2f.objectives import SAMPLERS
        from d2f.timemap import t_range

        if not self.acc.is_main_process:
            return
        cfg = self.cfg
        self.out.mkdir(parents=True, exist_ok=True)
        t_min, t_max = t_range(self.schedule)
        record = {
            "base_model": cfg.model, "base_model_source": self.ref.source, "prediction_type": self.prediction_type,
            "objective": cfg.objective, "sampler": SAMPLERS[cfg.objective], "resolution": self.resolution,
            "weights": RUN_FILES["lora"] if cfg.lora_rank else RUN_FILES["unet"],
            "lora": {"rank": cfg.lora_rank, "alpha": cfg.lora_alpha or cfg.lora_rank, "targets": cfg.lora_targets}
            if cfg.lora_rank else None,
            "time_convention": TIME_CONVENTION,
            "fm_timestep": "(1 - t) * (N - 1) on the unscaled x_t" if cfg.objective == "fm" else None,
            "seed": cfg.seed, "status": status, "settings": asdict(cfg),
            "schedule": {"num_train_timesteps": self.schedule.num_train_timesteps,
                         "beta_schedule": self.schedule.beta_schedule,
                         "zero_terminal_snr": self.schedule.zero_terminal_snr, "t_min": t_min, "t_max": t_max,
                         "scheduler_config": {k: v for k, v in self.scheduler_config.items() if not k.startswith("_")}},
            "data": {"name": self.data.name, "location": self.data.location, "num_images": len(self.data),
                     "skipped_images": self.data.num_skipped, "image_column": self.data.image_column,
                     "caption_column": self.data.caption_column, "domain": self.data.builtin_domain},
            "validation_prompts": self.prompts, "trainable_parameters": self.num_trainable,
            "num_processes": self.acc.num_processes, "device": str(self.acc.device), "versions": versions(),
        }
        if summary:
            record["summary"] = summary
        write_json_atomic(self.out / RUN_FILES["run"], json.loads(json.dumps(record, default=str)))


def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("d2f", "torch", "diffusers", "transformers", "peft", "accelerate", "datasets", "safetensors"):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = "not installed"
    return out
