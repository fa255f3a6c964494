"""What diffusers pipelines hand the Diff2Flow schedulers, read as FM times (``d2f.diffusers_scheduler``).

Three inputs do not come from the scheduler's own grid ``time_grid(K, shift, t_start)`` (docs/math.md §4, §10):

- ``set_timesteps(timesteps=...)`` / ``set_timesteps(sigmas=...)``, which ``pipe(..., timesteps=...)`` reaches
  through diffusers' ``retrieve_timesteps``: custom evaluation points (``custom_grid``);
- the ``timesteps`` of ``add_noise`` (image-to-image, inpainting): the grid point whose FM time the pipeline
  means (``times_of_timesteps``);
- the config of ``from_config`` / ``from_pretrained``: a flow-matching scheduler's config is refused
  (``check_not_flow_config``).

"Timestep" is what the network is told and what the scheduler's ``timesteps`` hold: the diffusion time
tau(t) for the bridge objectives (diff2flow, diffusion), (1 - t)(N - 1) for ``fm``. Nothing here imports
diffusers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

from d2f.core.timemap import t_of_tau
from d2f.errors import UserError
from d2f.parametrizations import NaiveFMModel, Parametrization

# keys only diffusers' FlowMatch* schedulers have (``use_dynamic_shifting``, ``shift_terminal`` and ``time_shift_type``
# are also in DPM-Solver / UniPC / DEIS configs, so they prove nothing)
FLOWMATCH_ONLY_KEYS = (
    "base_shift",
    "max_shift",
    "base_image_seq_len",
    "max_image_seq_len",
    "invert_sigmas",
    "stochastic_sampling",
)
BETA_KEYS = ("beta_start", "beta_end", "beta_schedule", "trained_betas")


def time_of_timestep(model: Parametrization, timesteps) -> torch.Tensor:
    """The FM time t (float64, CPU) a timestep names: the inverse of ``model.network_input``'s timestep.

    bridge (diff2flow, diffusion):   t = t(tau) = sigmoid(lam(tau) / 2)      (§4; tau = N-1 gives t_min)
    fm:                              t = 1 - tau / (N - 1)
    """
    tau = torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu()
    if isinstance(model, NaiveFMModel):
        # t = 1 - tau / (N - 1)
        return 1 - tau / (model.schedule.num_train_timesteps - 1)
    return t_of_tau(model.schedule, tau)


def _decreasing(name: str, values, low: float, high: float, low_open: bool, hint: str) -> torch.Tensor:
    """``values`` as a float64 1-D tensor, checked: non-empty, finite, strictly decreasing, inside the range."""
    try:
        v = torch.as_tensor(values, dtype=torch.float64).detach().cpu()
    except (TypeError, ValueError, RuntimeError) as e:
        raise UserError(f"{name} must be a list of numbers: {e}. {hint}") from None
    shown = [round(x, 6) for x in v.reshape(-1).tolist()][:8]
    bracket = "(" if low_open else "["
    if v.dim() != 1 or len(v) == 0 or not torch.isfinite(v).all():
        raise UserError(f"{name} must be a non-empty 1-D list of finite numbers, got {shown}. {hint}")
    if (v[1:] >= v[:-1]).any():
        raise UserError(f"{name} must be strictly decreasing (noise first, one per network call), got {shown}. {hint}")
    if v.max() > high or v.min() < low or (low_open and v.min() <= low):
        raise UserError(f"{name} must lie in {bracket}{low:g}, {high:g}], got {shown}. {hint}")
    return v


def custom_grid(model: Parametrization, timesteps=None, sigmas=None) -> list[float]:
    """The FM grid [t_0, ..., t_{K-1}, 1] of K custom evaluation points (``set_timesteps(timesteps=...)`` or
    ``set_timesteps(sigmas=...)``), used as given (``shift`` does not apply); t = 1 is appended as the end:

    - ``timesteps``: decreasing timesteps tau_0 > ... > tau_{K-1} in [0, N-1], the unit of the scheduler's own
      ``timesteps`` (what SD users pass, e.g. [999, 749, 499, 249]):  t_k = t(tau_k)  (``time_of_timestep``).
      The bridge cannot name a time below t_min (all of [0, t_min] has tau = N-1), so such a grid starts at
      t(tau_0) >= t_min; to start a diff2flow model at t = 0 pass ``sigmas`` with sigma_0 = 1.
    - ``sigmas``: FM noise levels 1 >= sigma_0 > ... > sigma_{K-1} > 0 in diffusers' FlowMatch orientation
      (x = (1 - sigma) x1 + sigma x0, docs/math.md §1), i.e.  t_k = 1 - sigma_k.  The final sigma = 0 (t = 1) is
      appended, as ``FlowMatchEulerDiscreteScheduler`` does.

    Anything else (both, non-monotone, out of range) is a ``UserError`` that says what to pass."""
    n = model.schedule.num_train_timesteps
    taus = f"[{n - 1}, {3 * n // 4 - 1}, {n // 2 - 1}, {n // 4 - 1}]"
    examples = f"e.g. timesteps={taus} or sigmas=[1.0, 0.75, 0.5, 0.25]"
    if timesteps is not None and sigmas is not None:
        raise UserError(f"pass either timesteps or sigmas to a Diff2Flow scheduler, not both ({examples})")
    if timesteps is not None:
        hint = (
            f"Diff2Flow schedulers read timesteps as diffusion timesteps tau in [0, {n - 1}], {examples}; "
            "for FM times t pass sigmas = 1 - t instead"
        )
        tau = _decreasing("timesteps", timesteps, 0.0, n - 1.0, False, hint)
        ts = time_of_timestep(model, tau).tolist()
        if ts[-1] >= 1.0:  # fm: tau = 0 is t = 1, the end, which is appended
            raise UserError(f"the last timestep must be above 0: timestep 0 is t = 1, the end, appended. {hint}")
    else:
        hint = (
            "Diff2Flow schedulers read sigmas as FM noise levels sigma = 1 - t (diffusers' FlowMatch orientation), "
            f"{examples}; leave out the final 0, it is appended"
        )
        ts = (1 - _decreasing("sigmas", sigmas, 0.0, 1.0, True, hint)).tolist()
    return [float(t) for t in ts] + [1.0]


def times_of_timesteps(
    model: Parametrization, grid_timesteps: torch.Tensor, grid_times: Sequence[float], timesteps, first: int
) -> torch.Tensor:
    """The FM time t (float64, CPU, one per element of ``timesteps``) that ``add_noise`` should noise to.

    Rule: a timestep equal to ``grid_timesteps[k]`` for some k >= ``first`` names the evaluation point
    ``grid_times[k]`` of the first such k. ``first`` is the scheduler's next evaluation (``step_index``) once
    stepping has begun (inpainting re-noises at ``timesteps[i + 1]``), else ``begin_index`` (image-to-image
    noises once, at ``timesteps[begin_index]``), else 0. Several points can share tau = N-1 below t_min (§5)
    and tau = 0 above t_max, so the value alone does not say which; the position does. Any other timestep is
    read through the time map, ``time_of_timestep``."""
    known = torch.as_tensor(grid_timesteps, dtype=torch.float64).detach().cpu().tolist()
    out = []
    for tau in torch.as_tensor(timesteps, dtype=torch.float64).detach().cpu().reshape(-1).tolist():
        k = next((k for k in range(first, len(known)) if known[k] == tau), None)
        out.append(float(grid_times[k]) if k is not None else float(time_of_timestep(model, tau)))
    return torch.tensor(out, dtype=torch.float64)


def check_not_flow_config(config, cls_name: str) -> None:
    """Refuse the config of a flow-matching scheduler (SD3, Flux, SANA, Wan, ...): such a model already predicts
    a velocity on the straight path and needs no bridge; read with diffusion betas (which its config lacks, so
    the defaults would be used) the schedule would be silently wrong. Recognised by a ``_class_name`` starting
    with ``FlowMatch``, a FlowMatch-only key, flow sigmas or ``flow_prediction`` (DPM-Solver / UniPC flow mode),
    or a ``shift`` without any beta key."""
    if not isinstance(config, Mapping):
        return  # not a config dict (diffusers' own, deprecated, handling of a path follows)
    name = str(config.get("_class_name") or "")
    keys = [k for k in FLOWMATCH_ONLY_KEYS if k in config]
    flow = (
        name.startswith("FlowMatch")
        or keys
        or bool(config.get("use_flow_sigmas"))
        or config.get("prediction_type") == "flow_prediction"
        or ("shift" in config and not any(k in config for k in BETA_KEYS))
    )
    if flow:
        what = name or (f"keys {', '.join(keys)}" if keys else "flow sigmas / no betas")
        raise UserError(
            f"this is a flow-matching scheduler's config ({what}): the model is already a flow model and needs no "
            f"Diff2Flow scheduler; keep its own scheduler (FlowMatchEulerDiscreteScheduler for SD3 and Flux). "
            f"{cls_name} is for diffusion models (SD 1.x / 2.x: a DDIM, PNDM or Euler config with betas)"
        )
