"""One object per parametrisation: how a network's output becomes an FM velocity, and how it is trained.

As in k-diffusion's ``external.py`` model wrappers (and minRF's ``RF``), each class keeps its velocity (what
the samplers integrate) and its loss (what training minimises) side by side, so the two cannot drift apart.
The objectives, the samplers, the pipeline and the diffusers scheduler all go through these classes.

``net(z, timestep, cond) -> o`` is any callable returning the raw network output (``unet_net`` adapts a
diffusers UNet); ``timestep`` is a float tensor (B,), fractional timesteps allowed.

=====================  ================================  ==================================  ===========
class                  the network sees (z, timestep)     velocity from the output o          loss target
=====================  ================================  ==================================  ===========
``Diff2FlowModel``     (c(t) x_t, tau(t))                 x1_hat(o) - eps_hat(o)              u = x1 - x0
``NaiveFMModel``       (x_t, (1 - t)(N - 1))              o                                   u = x1 - x0
``NaiveFMRawTModel``   (x_t, t)                           o                                   u = x1 - x0
``DiffusionModel``     as Diff2FlowModel                  as Diff2FlowModel                   eps, v or x1
=====================  ================================  ==================================  ===========

(docs/math.md §6-§8), and four ablations that split Diff2Flow from diffusion finetuning into its parts
(``d2f.parametrizations.ablations``, re-exported here; docs/math.md §9.1): ``DiffusionFMTimeModel`` (diffusion's
loss at Diff2Flow's time density), ``Diff2FlowDiscreteModel`` (Diff2Flow's loss at diffusion's discrete
timesteps: the loss-only bridge of SimpleTuner and OneTrainer), ``Diff2FlowUnweightedModel`` (Diff2Flow with its
loss weight divided out) and ``Diff2FlowNoScaleModel`` (Diff2Flow without the input scaling c(t)).

Conventions: **t = 0 is noise, t = 1 is data**; t outside the covered range [t_min, t_max] is clamped for tau,
c, alpha and sigma alike (§5). Whatever precision the network runs in, the bridge, the targets and the loss are
computed in float32 or better (§13).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from d2f.core._tensor import at_least_float32, per_sample
from d2f.core.schedule import Schedule, check_prediction_type
from d2f.core.timemap import bridge_coefficients, t_of_tau, t_range
from d2f.core.velocity import check_bridge, fm_velocity
from d2f.errors import UserError

Net = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
T_SAMPLINGS = ("uniform", "logit-normal", "near-noise", "u-shaped")
U_SHAPE_A = 4.0  # the U-shaped density's a, as 2-rectified flow++ (Lee et al. 2024)
LOSSES = ("mse", "pseudo-huber")
PSEUDO_HUBER_C = 0.00054  # the pseudo-Huber c per data dimension: c = 0.00054 D, as 2-rectified flow++'s code


def unet_net(unet, dtype: torch.dtype | None = None) -> Net:
    """``net(z, timestep, cond)`` for a diffusers ``UNet2DConditionModel`` (``cond`` = the text encoder's hidden
    states): the fractional timestep is passed as a float (not rounded); z is cast to ``dtype`` if given (for
    sampling a half-precision UNet; training leaves the cast to autocast)."""

    def net(z: torch.Tensor, timestep: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        return unet(z if dtype is None else z.to(dtype), timestep, encoder_hidden_states=cond, return_dict=False)[0]

    return net


@dataclass
class LossOutput:
    """``loss``: scalar, differentiable; ``per_sample``: (B,) mean squared error of each sample;
    ``t``: (B,) FM time of each sample (for the loss logged in bins of t)."""

    loss: torch.Tensor
    per_sample: torch.Tensor
    t: torch.Tensor


def mse(prediction: torch.Tensor, target: torch.Tensor, t: torch.Tensor) -> LossOutput:
    """Per-sample ||prediction - target||^2 averaged over the C*H*W elements, then over the batch (float32)."""
    per_sample_loss = (prediction.float() - target.float()).pow(2).flatten(1).mean(1)
    return LossOutput(per_sample_loss.mean(), per_sample_loss, t)


def pseudo_huber(per_sample_mse: torch.Tensor, dim: int) -> torch.Tensor:
    """The pseudo-Huber distance of each sample, from its mean squared error over ``dim`` = D elements (B,):

        d = (sqrt(||u_hat - u||^2 + c^2) - c) / D,   ||u_hat - u||^2 = D * mse,   c = 0.00054 D

    (2-rectified flow++, Lee et al. 2024, arXiv 2405.20320, its code's ``huber`` loss; the pseudo-Huber metric is
    iCT's, Song & Dhariwal 2023). Near 0 it is the squared error / (2 c D); far from it, the error's norm / D: an
    outlier sample's gradient is bounded, where the squared error's grows with the error."""
    c = PSEUDO_HUBER_C * dim
    mse = per_sample_mse.to(at_least_float32(per_sample_mse.dtype))
    # (sqrt(D mse + c^2) - c) / D = mse / (sqrt(D mse + c^2) + c): the same, without the cancellation near 0
    return mse / (torch.sqrt(dim * mse + c**2) + c)


def check_t_sampling(t_sampling: str) -> str:
    if t_sampling not in T_SAMPLINGS:
        raise UserError(f"unknown t sampling {t_sampling!r}; use one of {', '.join(T_SAMPLINGS)}")
    return t_sampling


def _batch_times(t, x: torch.Tensor) -> torch.Tensor:
    """t (a float, a scalar tensor or (B,)) as a float64 tensor (B,) on the CPU (the schedule's device)."""
    t = torch.as_tensor(t, dtype=torch.float64).cpu()
    return t.expand(x.shape[0]) if t.dim() == 0 else t


class Parametrization:
    """The shared skeleton of the FM parametrisations; subclasses say what the network sees
    (``network_input``) and how its output reads as a velocity (``velocity_from_output``).

    ``name``: the objective that trains it; ``sampler``: how a model trained with it is sampled by default;
    ``t_start``: the FM time where its sampling starts; ``samples_as``: the objective whose parametrisation
    samples a model trained with this one, where that is another one with the same velocity ("" = this one;
    ``d2f.objectives.sampled_objective``)."""

    name = ""
    sampler = "euler"
    samples_as = ""

    def __init__(self, schedule: Schedule, prediction_type: str | None = None):
        self.schedule = schedule
        self.prediction_type = check_prediction_type(prediction_type or schedule.prediction_type)

    @property
    def t_start(self) -> float:
        """FM models were trained on all of [0, 1]: sampling starts at pure noise, t = 0 (§10)."""
        return 0.0

    def network_input(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        """(z, timestep): what the network is called on at the FM state x_t (B, ...) and time t."""
        raise NotImplementedError

    def velocity_from_output(self, output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        """The FM velocity u_hat (B, ...) at (x_t, t) from the raw (possibly guided) network output."""
        raise NotImplementedError

    def velocity(self, net: Net, x_t: torch.Tensor, t, cond) -> torch.Tensor:
        """u_hat(x_t, t) = velocity_from_output(net(network_input(x_t, t), cond)): one network call."""
        z, timestep = self.network_input(x_t, t)
        return self.velocity_from_output(net(z, timestep, cond), x_t, t)

    def sample_time(
        self, batch_size: int, t_sampling: str = "uniform", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The ``time`` argument of ``loss`` for a batch: FM time t (B,), float32, on the CPU.

        ``uniform``: t ~ U[0, 1]; ``logit-normal``: t = sigmoid(n), n ~ N(0, 1) (Esser et al. 2024);
        ``near-noise``: density 2 (1 - t), more weight near t = 0, where a one-step sampler evaluates (reflow);
        ``u-shaped``: density proportional to cosh(a (t - 1/2)), a = 4, more weight at both ends, where a reflow's loss
        is largest (2-rectified flow++, Lee et al. 2024: their e^(a t) + e^(a (1 - t)), the same density)."""
        if check_t_sampling(t_sampling) == "uniform":
            # t ~ U[0, 1]
            return torch.rand(batch_size, generator=generator)
        if t_sampling == "near-noise":
            # t = 1 - sqrt(u), u ~ U[0, 1]:  P(t <= s) = 1 - (1 - s)^2, density 2 (1 - t)
            return 1 - torch.sqrt(torch.rand(batch_size, generator=generator))
        if t_sampling == "u-shaped":
            # P(t <= s) = (sinh(a (s - 1/2)) + sinh(a/2)) / (2 sinh(a/2)), inverted:
            # t = 1/2 + asinh((2u - 1) sinh(a/2)) / a,  u ~ U[0, 1]
            u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
            half = torch.sinh(torch.tensor(U_SHAPE_A / 2, dtype=torch.float64))
            return (0.5 + torch.asinh((2 * u - 1) * half) / U_SHAPE_A).float()
        # t = sigmoid(n),  n ~ N(0, 1)
        return torch.sigmoid(torch.randn(batch_size, generator=generator))

    def loss(self, net: Net, data: torch.Tensor, noise: torch.Tensor, time: torch.Tensor, cond) -> LossOutput:
        """Flow matching on the straight path (§8): one forward of ``net`` on the batch.

        ``data`` x1 and ``noise`` x0 are (B, C, H, W); ``time`` is the FM time t (B,) from ``sample_time``.

            x_t = t x1 + (1 - t) x0,    loss = mean || u_hat(x_t, t) - (x1 - x0) ||^2
        """
        t = time.to(torch.float32)
        data, noise = data.float(), noise.float()
        tt = per_sample(t, data)
        # x_t = t x1 + (1 - t) x0
        x_t = tt * data + (1 - tt) * noise
        # u = x1 - x0
        return mse(self.velocity(net, x_t, t, cond), data - noise, t)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.schedule!r}, prediction_type={self.prediction_type!r})"


class Diff2FlowModel(Parametrization):
    """A diffusion network read as an FM model through the Diff2Flow bridge (§6-§7):

    z = c(t) x_t,   o = net(z, tau(t), cond),   u_hat = x1_hat(o, z) - eps_hat(o, z)
    """

    name = "diff2flow"

    def __init__(self, schedule: Schedule, prediction_type: str | None = None):
        super().__init__(schedule, prediction_type)
        check_bridge(schedule, self.prediction_type)

    def network_input(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        coef = bridge_coefficients(self.schedule, _batch_times(t, x_t))
        dtype = at_least_float32(x_t.dtype)
        # z = c(t) x_t,  timestep = tau(t) (fractional, never rounded)
        z = per_sample(coef.scale, x_t).to(dtype) * x_t.to(dtype)
        return z, coef.tau.to(x_t.device, dtype)

    def velocity_from_output(self, output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        # u_hat = x1_hat - eps_hat at z = c(t) x_t
        return fm_velocity(
            self.schedule, output.to(at_least_float32(output.dtype)), x_t, _batch_times(t, x_t), self.prediction_type
        )


class NaiveFMModel(Parametrization):
    """Naive flow matching (the baseline, §8): the raw output is the velocity, on the unscaled x_t, at the
    timestep that t maps to linearly, (1 - t)(N - 1): t = 1 (data) is timestep 0, t = 0 (noise) is N - 1.
    The paper's code passes the raw t in [0, 1) instead; mapping t onto the timestep range the network
    was trained on is the fairer baseline, and the one every d2f benchmark reports. No prediction type."""

    name = "fm"

    def network_input(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = at_least_float32(x_t.dtype)
        # timestep = (1 - t)(N - 1)
        timestep = (1 - _batch_times(t, x_t)) * (self.schedule.num_train_timesteps - 1)
        return x_t.to(dtype), timestep.to(x_t.device, dtype)

    def velocity_from_output(self, output: torch.Tensor, x_t: torch.Tensor, t) -> torch.Tensor:
        # u_hat = o
        return output.to(at_least_float32(output.dtype))


class NaiveFMRawTModel(NaiveFMModel):
    """Naive flow matching as the paper's code runs it (objective ``fm-raw-t``): the network's timestep is
    the raw FM time t in [0, 1] itself, so pure noise (t = 0) is timestep 0, the one the pretrained
    embedding associates with clean images, and the whole path is squeezed into the first timestep
    interval (docs/math.md §8). Everything else is ``NaiveFMModel``. A baseline, kept to show what the
    timestep choice alone is worth."""

    name = "fm-raw-t"

    def network_input(self, x_t: torch.Tensor, t) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = at_least_float32(x_t.dtype)
        # timestep = t (the paper code's raw FM time)
        return x_t.to(dtype), _batch_times(t, x_t).to(x_t.device, dtype)


class DiffusionModel(Diff2FlowModel):
    """The model's own diffusion objective (the baseline that finetunes as diffusion, §8). It samples through
    the bridge like ``Diff2FlowModel`` (its FM ODE is its DDIM ODE, §11), from t_min, where DDIM starts: it
    never saw t < t_min. Its loss is the native one, against eps, v = alpha eps - sigma x1, or x1."""

    name = "diffusion"
    sampler = "ddim"

    @property
    def t_start(self) -> float:
        """t_min = t(N - 1): a diffusion model knows only the covered range (§10)."""
        return t_range(self.schedule)[0]

    def sample_time(
        self, batch_size: int, t_sampling: str = "uniform", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """The integer timestep i ~ U{0..N-1} (B,), as floats (``t_sampling`` does not apply)."""
        return torch.randint(0, self.schedule.num_train_timesteps, (batch_size,), generator=generator).float()

    def loss(self, net: Net, data: torch.Tensor, noise: torch.Tensor, time: torch.Tensor, cond) -> LossOutput:
        """``time`` is the timestep i (B,). With z = alpha_i x1 + sigma_i eps, the target is eps,
        v = alpha_i eps - sigma_i x1, or x1, by prediction type. The returned ``t`` is t(i), for logging."""
        i = time.to(torch.float64).round()
        alpha, sigma = self.schedule.alpha(i), self.schedule.sigma(i)
        # t(i) = alpha_i / (alpha_i + sigma_i)
        return self._native_loss(net, data, noise, alpha, sigma, i, cond, t_of_tau(self.schedule, i).float())

    def _native_loss(self, net: Net, data, noise, alpha, sigma, timestep, cond, t_log) -> LossOutput:
        """The native loss at the diffusion sample z = alpha x1 + sigma eps (alpha, sigma, timestep: (B,))."""
        alpha, sigma = alpha.float(), sigma.float()
        data, noise = data.float(), noise.float()
        a, s = per_sample(alpha, data), per_sample(sigma, data)
        # z = alpha x1 + sigma eps
        z = a * data + s * noise
        o = net(z, timestep.float().to(data.device), cond)
        if self.prediction_type == "epsilon":
            target = noise
        elif self.prediction_type == "v_prediction":
            # v = alpha eps - sigma x1
            target = a * noise - s * data
        else:
            target = data
        return mse(o, target, t_log)
