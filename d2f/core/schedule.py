"""Diffusion schedules: the alpha/sigma of a discrete-time diffusion model, at fractional timesteps.

A schedule is the table ``abar_i = prod_{k<=i} (1 - beta_k)`` for ``i = 0..N-1`` (diffusers'
``alphas_cumprod``). From it (docs/math.md §1 and §3):

    lam_i      = log(abar_i / (1 - abar_i))           log signal-to-noise ratio, strictly decreasing
    lam(tau)   = piecewise-linear interpolation of lam_i, tau in [0, N-1]
    alpha(tau) = sqrt(sigmoid(lam(tau)))              signal scale
    sigma(tau) = sqrt(sigmoid(-lam(tau)))             noise scale,  alpha^2 + sigma^2 = 1

Interpolating lam (not alpha or beta) keeps alpha^2 + sigma^2 = 1 at every tau and reproduces the
table exactly at integer tau. Tables are float64; results come back in the dtype and on the device
of ``tau`` (half-precision inputs are computed in float64 first, never in half).

Zero terminal SNR (§12) makes abar_{N-1} = 0, so lam_{N-1} = -inf and the last segment cannot be
interpolated in lam. There d2f interpolates the FM time ``t = sigmoid(lam/2)`` linearly instead, from
t_{N-2} down to exactly 0; it is the same curve wherever lam is finite and keeps the time map strictly
monotone and exactly invertible on [N-2, N-1].
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from d2f.core._tensor import as_float64
from d2f.errors import UserError

PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2")

# Public Stable Diffusion scheduler configs (their scheduler_config.json on the hub). SD 2's 512 px base model
# kept SD 1.5's schedule and epsilon target, so the two presets are one config; SD 2's 768 px model predicts v.
_SD_EPSILON = dict(
    beta_schedule="scaled_linear",
    beta_start=0.00085,
    beta_end=0.012,
    num_train_timesteps=1000,
    prediction_type="epsilon",
)
PRESETS = {
    "sd15": _SD_EPSILON,
    "sd2-base": _SD_EPSILON,
    "sd2-v": {**_SD_EPSILON, "prediction_type": "v_prediction"},
}


def check_prediction_type(prediction_type: str) -> str:
    """``UserError`` unless ``prediction_type`` is one of ``PREDICTION_TYPES``."""
    if prediction_type not in PREDICTION_TYPES:
        raise UserError(f"unknown prediction type {prediction_type!r}; use one of {', '.join(PREDICTION_TYPES)}")
    return prediction_type


def make_betas(
    beta_schedule: str, num_train_timesteps: int = 1000, beta_start: float = 0.0001, beta_end: float = 0.02
) -> torch.Tensor:
    """The beta table of a diffusers beta schedule, float64, shape (N,).

    - ``linear``:            beta_i linear from beta_start to beta_end
    - ``scaled_linear``:     sqrt(beta_i) linear from sqrt(beta_start) to sqrt(beta_end) (SD's)
    - ``squaredcos_cap_v2``: Nichol & Dhariwal (2021) cosine, abar(s) = cos^2((s + 0.008)/1.008 * pi/2),
                             beta_i = min(1 - abar((i+1)/N) / abar(i/N), 0.999)
    """
    n = num_train_timesteps
    if beta_schedule == "linear":
        return torch.linspace(beta_start, beta_end, n, dtype=torch.float64)
    if beta_schedule == "scaled_linear":
        return torch.linspace(beta_start**0.5, beta_end**0.5, n, dtype=torch.float64) ** 2
    if beta_schedule == "squaredcos_cap_v2":

        def abar(s: float) -> float:
            return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

        return torch.tensor([min(1 - abar((i + 1) / n) / abar(i / n), 0.999) for i in range(n)], dtype=torch.float64)
    raise UserError(f"unknown beta_schedule {beta_schedule!r}; d2f supports {', '.join(BETA_SCHEDULES)}")


def rescale_zero_terminal_snr(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Lin et al. (2024), "Common Diffusion Noise Schedules and Sample Steps are Flawed", Alg. 1:
    shift and scale alpha so the last step is pure noise while alpha_0 stays put.

        alpha'_i = (alpha_i - alpha_{N-1}) * alpha_0 / (alpha_0 - alpha_{N-1}),   abar' = alpha'^2
    """
    alpha = alphas_cumprod.to(torch.float64).sqrt()
    alpha0, alpha_last = alpha[0], alpha[-1]
    return ((alpha - alpha_last) * alpha0 / (alpha0 - alpha_last)) ** 2


@dataclass(frozen=True, eq=False)
class Schedule:
    """A diffusion schedule: the float64 table ``alphas_cumprod`` (abar_i, shape (N,)) plus the
    prediction type of the model trained on it. Build one with ``from_betas``, ``from_config``,
    ``from_pretrained`` or ``preset``."""

    alphas_cumprod: torch.Tensor
    prediction_type: str = "epsilon"
    beta_schedule: str = "custom"
    zero_terminal_snr: bool = False
    log_snr_table: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self):
        abar = torch.as_tensor(self.alphas_cumprod, dtype=torch.float64).flatten().cpu()
        check_prediction_type(self.prediction_type)
        if abar.numel() < 2 or not torch.all((abar >= 0) & (abar < 1)) or bool(torch.any(abar[:-1] <= 0)):
            raise UserError(
                "alphas_cumprod must have at least 2 entries in (0, 1) (only the last may be 0, for zero terminal SNR)"
            )
        # lam_i = log(abar_i) - log(1 - abar_i); -inf where abar_{N-1} = 0 (zero terminal SNR)
        lam = abar.log() - torch.log1p(-abar)
        step = lam[1:] - lam[:-1]
        if not torch.all(step < 0):
            i = int(torch.nonzero(step >= 0)[0])
            raise UserError(
                f"the schedule is not strictly decreasing in SNR: log-SNR at timestep {i + 1} "
                f"({lam[i + 1].item():.6g}) is not below timestep {i} ({lam[i].item():.6g}); "
                "d2f needs strictly positive betas"
            )
        object.__setattr__(self, "alphas_cumprod", abar)
        object.__setattr__(self, "log_snr_table", lam)

    # --- constructors -------------------------------------------------------------------------
    @classmethod
    def from_betas(
        cls, betas, prediction_type: str = "epsilon", beta_schedule: str = "custom", zero_terminal_snr: bool = False
    ) -> Schedule:
        """abar_i = prod_{k<=i} (1 - beta_k), optionally rescaled to zero terminal SNR."""
        abar = torch.cumprod(1 - torch.as_tensor(betas, dtype=torch.float64), dim=0)
        if zero_terminal_snr:
            abar = rescale_zero_terminal_snr(abar)
        return cls(abar, prediction_type, beta_schedule, zero_terminal_snr)

    @classmethod
    def from_config(
        cls, config: dict, prediction_type: str | None = None, zero_terminal_snr: bool | None = None
    ) -> Schedule:
        """From a diffusers scheduler config dict (``scheduler_config.json``); keys as diffusers
        names them, with diffusers' defaults. ``trained_betas`` wins over ``beta_schedule``."""
        n = int(config.get("num_train_timesteps", 1000))
        if config.get("trained_betas") is not None:
            betas, name = torch.as_tensor(config["trained_betas"], dtype=torch.float64), "trained_betas"
        else:
            name = config.get("beta_schedule", "linear")
            betas = make_betas(name, n, float(config.get("beta_start", 0.0001)), float(config.get("beta_end", 0.02)))
        ztsnr = config.get("rescale_betas_zero_snr", False) if zero_terminal_snr is None else zero_terminal_snr
        return cls.from_betas(betas, prediction_type or config.get("prediction_type", "epsilon"), name, bool(ztsnr))

    @classmethod
    def from_pretrained(cls, folder: str | Path, **overrides) -> Schedule:
        """From a diffusers model folder (``folder/scheduler/scheduler_config.json``) or directly
        from a ``scheduler_config.json`` / scheduler folder."""
        folder = Path(folder)
        for path in (folder / "scheduler" / "scheduler_config.json", folder / "scheduler_config.json", folder):
            if path.is_file():
                try:
                    config = json.loads(path.read_text())
                except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                    raise UserError(f"{path} is not valid JSON ({exc}); restore the model's scheduler config") from None
                if not isinstance(config, dict):
                    raise UserError(f"{path} is not a scheduler config (a JSON object with the schedule's keys)")
                return cls.from_config(config, **overrides)
        raise UserError(
            f"no scheduler config in {folder}: expected {folder}/scheduler/scheduler_config.json "
            "(a diffusers model folder)"
        )

    @classmethod
    def preset(cls, name: str, zero_terminal_snr: bool = False) -> Schedule:
        """A public Stable Diffusion schedule: ``sd15``, ``sd2-base`` or ``sd2-v``."""
        if name not in PRESETS:
            raise UserError(f"unknown preset {name!r}; use one of {', '.join(PRESETS)}")
        return cls.from_config(PRESETS[name], zero_terminal_snr=zero_terminal_snr)

    # --- the schedule at fractional tau ---------------------------------------------------------
    @property
    def num_train_timesteps(self) -> int:
        """N, the number of discrete timesteps; tau lies in [0, N-1]."""
        return self.alphas_cumprod.numel()

    def log_snr(self, tau: torch.Tensor) -> torch.Tensor:
        """lam(tau): the log-SNR, piecewise linear in tau between the table's integers. ``tau`` is
        clamped to [0, N-1]."""
        tau64, dtype = as_float64(tau)
        return self._log_snr64(tau64).to(dtype)

    def alpha(self, tau: torch.Tensor) -> torch.Tensor:
        """alpha(tau) = sqrt(sigmoid(lam(tau))), the signal scale."""
        tau64, dtype = as_float64(tau)
        return torch.sigmoid(self._log_snr64(tau64)).sqrt().to(dtype)

    def sigma(self, tau: torch.Tensor) -> torch.Tensor:
        """sigma(tau) = sqrt(sigmoid(-lam(tau))), the noise scale."""
        tau64, dtype = as_float64(tau)
        return torch.sigmoid(-self._log_snr64(tau64)).sqrt().to(dtype)

    def _log_snr64(self, tau: torch.Tensor) -> torch.Tensor:
        lam_table = self.log_snr_table.to(tau.device)
        tau = tau.clamp(0, self.num_train_timesteps - 1)
        i = tau.floor().clamp(max=self.num_train_timesteps - 2).long()
        w = tau - i
        lo, hi = lam_table[i], lam_table[i + 1]
        # lam(tau) = (1 - w) * lam_i + w * lam_{i+1}
        lam = lo + w * (hi - lo)
        if self.zero_terminal_snr:
            # last segment, lam_{N-1} = -inf: t = sigmoid(lam/2) linear in tau down to 0, lam = 2 logit(t)
            t = torch.sigmoid(lo / 2) * (1 - w)
            lam = torch.where(torch.isinf(hi), 2 * (t.log() - torch.log1p(-t)), lam)
        return lam

    def __repr__(self) -> str:
        return (
            f"Schedule(N={self.num_train_timesteps}, beta_schedule={self.beta_schedule!r}, "
            f"prediction_type={self.prediction_type!r}, zero_terminal_snr={self.zero_terminal_snr})"
        )
