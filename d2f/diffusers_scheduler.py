"""Diff2Flow samplers as diffusers schedulers: sample a Diff2Flow model with a plain diffusers pipeline.

    from diffusers import StableDiffusionPipeline
    from d2f import Diff2FlowEulerScheduler

    pipe = StableDiffusionPipeline.from_pretrained(base_model)
    pipe.load_lora_weights("runs/my-run")                      # a d2f train run folder
    pipe.scheduler = Diff2FlowEulerScheduler.from_config(pipe.scheduler.config)
    images = pipe(prompts, num_inference_steps=25, guidance_scale=7.5).images

How the pipeline's loop maps onto FM Euler (docs/math.md §6, §7 and §10). The pipeline keeps one
state ``latents``; here it is the FM sample x_t, so it starts as pure noise (``init_noise_sigma = 1``; see
the class doc for a ``diffusion`` model) and ends as data (t = 1), which the pipeline decodes as it is.
For the k-th evaluation point t_k of the grid ``time_grid(K, shift, t_start)``:

    timesteps[k]                = tau(t_k)              fractional diffusion timestep (float)
    scale_model_input(x, tau_k) = c(t_k) x              the aligned sample z the network sees
    step(o, tau_k, x)           = x + (t_{k+1} - t_k) u,   u = x1_hat(o, z) - eps_hat(o, z)

Guidance is the pipeline's own (on the raw output, which is equivalent, §7). t is clamped to the
covered range for tau, c, alpha and sigma (§5), so several grid points near t = 0 can share
tau = N-1: the scheduler therefore follows its own step counter, never a lookup of ``timestep``.

With ``objective="fm"`` (a naive-FM finetune) the network sees the unscaled x at tau = (1 - t)(N - 1)
and its output is the velocity. ``prediction_type``, the betas and ``rescale_betas_zero_snr`` are read
from the config exactly as the model's own scheduler declares them. ``Diff2FlowHeunScheduler`` is the
Heun variant (``order = 2``, 2K - 1 network calls, the last step Euler), laid out like diffusers'
``HeunDiscreteScheduler``: timesteps t_0, t_1, t_1, t_2, t_2, ..., t_{K-1}, t_{K-1}.

Image-to-image and inpainting (``StableDiffusionImg2ImgPipeline``, ``StableDiffusionInpaintPipeline``): for
strength s the pipeline skips the first k = K - int(s K) steps, keeps ``timesteps[k * order:]``, calls
``set_begin_index(k * order)`` and starts from ``add_noise(data, noise, timesteps[k * order])``, the FM
interpolant at t_k (the pipeline state is x, never z):

    add_noise(x1, x0, tau(t_k)) = t_k x1 + (1 - t_k) x0

so strength 1 (t_0 = 0) starts from the noise itself, as text-to-image does. Custom ``timesteps=`` (diffusion
timesteps tau) and ``sigmas=`` (FM noise levels 1 - t) are read by ``d2f.diffusers_inputs.custom_grid``; the
config of a flow-matching scheduler (SD3, Flux) is refused: such a model needs no bridge.
"""

from __future__ import annotations

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.schedulers.scheduling_utils import KarrasDiffusionSchedulers, SchedulerMixin, SchedulerOutput

from d2f.core._tensor import at_least_float32, per_sample
from d2f.core.schedule import Schedule
from d2f.core.timemap import scale
from d2f.diffusers_inputs import check_not_flow_config, custom_grid, times_of_timesteps
from d2f.errors import UserError
from d2f.objectives import check_objective, parametrization
from d2f.sampling import time_grid


class Diff2FlowEulerScheduler(SchedulerMixin, ConfigMixin):
    """FM Euler on a uniform (or shifted) grid from t = 0 to t = 1, through the Diff2Flow bridge.

    Config: the usual diffusers schedule keys (``num_train_timesteps``, ``beta_start``, ``beta_end``,
    ``beta_schedule``, ``trained_betas``, ``prediction_type``, ``rescale_betas_zero_snr``), plus
    ``objective`` ("diff2flow" or "diffusion": through the bridge; "fm": raw output is the velocity) and
    ``shift`` (``d2f.sampling.time_grid``; 1 = uniform). The grid starts at t = 0 (``init_noise_sigma = 1``)
    for diff2flow and fm models, at t_min (``init_noise_sigma = 1 / c(t_min)``: the noise is z at tau = N-1) for
    an untouched ``diffusion`` model, as ``Parametrization.t_start`` says."""

    _compatibles = [e.name for e in KarrasDiffusionSchedulers]
    order = 1

    @register_to_config
    def __init__(
        self,
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        beta_schedule: str = "linear",
        trained_betas=None,
        prediction_type: str = "epsilon",
        rescale_betas_zero_snr: bool = False,
        objective: str = "diff2flow",
        shift: float = 1.0,
    ):
        self.schedule = Schedule.from_config(
            dict(
                num_train_timesteps=num_train_timesteps,
                beta_start=beta_start,
                beta_end=beta_end,
                beta_schedule=beta_schedule,
                trained_betas=trained_betas,
                prediction_type=prediction_type,
                rescale_betas_zero_snr=rescale_betas_zero_snr,
            )
        )
        self.model = parametrization(check_objective(objective), self.schedule)
        self.num_inference_steps: int | None = None
        self._step_index: int | None = None
        self._begin_index: int | None = None
        self.set_timesteps(50)

    @classmethod
    def from_config(cls, config=None, return_unused_kwargs=False, **kwargs):
        """diffusers' ``from_config`` (``from_pretrained`` goes through it too), refusing the config of a
        flow-matching scheduler (``d2f.diffusers_inputs.check_not_flow_config``)."""
        check_not_flow_config(config, cls.__name__)
        return super().from_config(config, return_unused_kwargs=return_unused_kwargs, **kwargs)

    # --- the grid ---------------------------------------------------------------------------------
    def _eval_points(self, grid: list[float]) -> list[tuple[float, float]]:
        """(t, t_next) of each network evaluation: one per Euler step."""
        return list(zip(grid[:-1], grid[1:]))

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps=None,
        sigmas=None,
    ):
        """The grid and the pipeline's ``timesteps``: tau(t) (fractional, float32) at every network evaluation,
        or (1 - t)(N - 1) for ``objective="fm"``.

        The grid is ``time_grid(K, shift, t_start)``, or given: ``timesteps`` = decreasing diffusion timesteps
        tau_k (t_k = t(tau_k)) or ``sigmas`` = decreasing FM noise levels (t_k = 1 - sigma_k), then t = 1
        (``d2f.diffusers_inputs.custom_grid``). The pipeline's noise times ``init_noise_sigma`` is the FM state at
        t_0: the noise itself at t_0 = 0, else the noise read as z at tau(t_0) (where DDIM starts), x = z / c(t_0),
        as in ``d2f.pipeline.sample_latents``."""
        if timesteps is None and sigmas is None:
            if num_inference_steps is None or num_inference_steps < 1:
                raise UserError(f"num_inference_steps must be at least 1, got {num_inference_steps}")
            grid = [float(t) for t in time_grid(num_inference_steps, float(self.config.shift), self.model.t_start)]
        else:
            grid = custom_grid(self.model, timesteps, sigmas)
            if num_inference_steps not in (None, len(grid) - 1):
                raise UserError(f"num_inference_steps={num_inference_steps} but {len(grid) - 1} custom points given")
        self.num_inference_steps = len(grid) - 1
        self.grid = grid
        t0 = grid[0]
        # x = noise at t_0 = 0; else x = z / c(t_0) with z = noise at tau(t_0)
        self.init_noise_sigma = 1.0 if t0 == 0 else 1.0 / float(scale(self.schedule, torch.tensor(t0).double()))
        self.points = self._eval_points(self.grid)
        ts = torch.tensor([t for t, _ in self.points], dtype=torch.float64)
        _, timesteps = self.model.network_input(torch.zeros(len(ts), 1, dtype=torch.float64), ts)
        self.timesteps = timesteps.to(device=device, dtype=torch.float32)
        self._step_index, self._begin_index = None, None

    @property
    def step_index(self) -> int | None:
        """The index of the next network evaluation (None before the first call)."""
        return self._step_index

    @property
    def begin_index(self) -> int | None:
        return self._begin_index

    def set_begin_index(self, begin_index: int = 0) -> None:
        """Start at evaluation ``begin_index`` (what image-to-image pipelines call): the first state is then
        the FM state at t = ``points[begin_index]``'s time, which ``add_noise`` builds."""
        self._begin_index = begin_index

    def add_noise(self, original_samples: torch.Tensor, noise: torch.Tensor, timesteps) -> torch.Tensor:
        """The FM state at the grid point that ``timesteps`` name (image-to-image start, inpainting blend):

            x_t = t x1 + (1 - t) x0,      x1 = ``original_samples`` (the VAE latents), x0 = ``noise``

        the straight interpolant, exactly as training draws it (§2), never z; t is the time of the evaluation
        point with that timestep, the first at or after the next step (``step_index``, else ``begin_index``,
        else 0), for several points below t_min share tau = N-1 (``d2f.diffusers_inputs.times_of_timesteps``).
        For an untouched ``diffusion`` model at t = t_min this is the exact FM state of DDIM's start
        z = alpha_{N-1} x1 + sigma_{N-1} x0 (divided by c), not text-to-image's noise / c(t_min)."""
        first = self._step_index if self._step_index is not None else (self._begin_index or 0)
        t = times_of_timesteps(self.model, self.timesteps, [p[0] for p in self.points], timesteps, first)
        dtype = at_least_float32(original_samples.dtype)
        x1, x0 = original_samples.to(dtype), noise.to(device=original_samples.device, dtype=dtype)
        tt = per_sample(t.to(dtype), x1)
        # x_t = t x1 + (1 - t) x0
        return (tt * x1 + (1 - tt) * x0).to(original_samples.dtype)

    def _current(self) -> tuple[float, float]:
        if self._step_index is None:
            self._step_index = self._begin_index or 0
        if self._step_index >= len(self.points):
            raise ValueError("step called more times than set_timesteps allows; call set_timesteps again")
        return self.points[self._step_index]

    def __len__(self) -> int:
        return self.config.num_train_timesteps

    # --- the bridge -------------------------------------------------------------------------------
    def scale_model_input(self, sample: torch.Tensor, timestep=None) -> torch.Tensor:
        """What the network sees at the current point: z = c(t) x (diff2flow, diffusion); x (fm)."""
        t, _ = self._current()
        z, _ = self.model.network_input(sample, t)
        return z.to(sample.dtype)

    def velocity(self, model_output: torch.Tensor, sample: torch.Tensor, t: float) -> torch.Tensor:
        """u at (x, t) from the raw (already guided) output (``Parametrization.velocity_from_output``)."""
        return self.model.velocity_from_output(model_output, sample.float(), t)

    def step(
        self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True, **kwargs
    ) -> SchedulerOutput | tuple:
        """One FM Euler step:  x <- x + (t_{k+1} - t_k) u(x, t_k).  Returns the next pipeline state x."""
        t, t_next = self._current()
        u = self.velocity(model_output, sample, t)
        # x_{k+1} = x_k + (t_{k+1} - t_k) u
        prev_sample = (sample.float() + (t_next - t) * u).to(sample.dtype)
        self._step_index += 1
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)


class Diff2FlowHeunScheduler(Diff2FlowEulerScheduler):
    """FM Heun (``d2f.sampling.sample_heun``) as a diffusers scheduler: ``order = 2``; K steps take
    2K - 1 network evaluations, at t_0, t_1, t_1, ..., t_{K-1}, t_{K-1} (predictor and corrector share a
    time), and the last step is Euler.

        predictor at t_k:   x_euler = x_k + h u_k                    (returned, the pipeline evaluates it)
        corrector at t_k+1: x_{k+1} = x_k + h (u_k + u(x_euler)) / 2
    """

    order = 2

    def _eval_points(self, grid: list[float]) -> list[tuple[float, float]]:
        steps = list(zip(grid[:-1], grid[1:]))
        points = [steps[0]]
        for k in range(1, len(steps)):
            # corrector of step k-1 is evaluated at t_k (its "next" is unused), then the predictor of step k
            points += [(grid[k], grid[k]), steps[k]]
        return points

    def set_timesteps(
        self,
        num_inference_steps: int | None = None,
        device: str | torch.device | None = None,
        timesteps=None,
        sigmas=None,
    ):
        super().set_timesteps(num_inference_steps, device, timesteps, sigmas)
        self._saved: tuple[torch.Tensor, torch.Tensor, float] | None = None

    @property
    def state_in_first_order(self) -> bool:
        return self._saved is None

    def step(
        self, model_output: torch.Tensor, timestep, sample: torch.Tensor, return_dict: bool = True, **kwargs
    ) -> SchedulerOutput | tuple:
        t, t_next = self._current()
        u = self.velocity(model_output, sample, t)
        if self._saved is None:
            h = t_next - t
            # x_euler = x_k + h u_k
            prev_sample = sample.float() + h * u
            if self._step_index != len(self.points) - 1:  # the last step stays Euler
                self._saved = (sample.float(), u, h)
        else:
            x, u_first, h = self._saved
            # x_{k+1} = x_k + h (u_k + u(x_euler, t_{k+1})) / 2
            prev_sample = x + h * (u_first + u) / 2
            self._saved = None
        self._step_index += 1
        prev_sample = prev_sample.to(sample.dtype)
        return SchedulerOutput(prev_sample=prev_sample) if return_dict else (prev_sample,)
