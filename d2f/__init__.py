"""d2f: turn a pretrained diffusion model into a flow-matching model (Diff2Flow) and finetune it.

The layers, bottom to top (docs/math.md is the reference for every equation):

- ``d2f.core``: the math: ``Schedule``, the time map and alignment, the velocity from a network output
- ``d2f.parametrizations``: one object per parametrisation (Diff2Flow, naive FM, diffusion), velocity + loss
- ``d2f.objectives`` (their registry), ``d2f.sampling`` (FM Euler / Heun, DDIM), ``d2f.guidance``,
  ``d2f.diffusers_scheduler`` (``Diff2FlowEulerScheduler`` for plain diffusers pipelines)
- ``d2f.pipeline`` (models, run folders, generating images) and ``d2f.training`` (``d2f train``)
- ``d2f.cli``: the ``d2f`` command; ``d2f.world``: the built-in data, priors and evaluator

``Diff2FlowEulerScheduler`` (it imports diffusers) and ``diff2flow_loss`` (``d2f.dropin``, the loss for diffusers'
training scripts) are imported lazily so that ``import d2f`` stays light and keeps to its layer.
"""

from d2f.core.schedule import PREDICTION_TYPES, PRESETS, Schedule
from d2f.core.timemap import (
    BridgeCoefficients,
    bridge_coefficients,
    clamp_t,
    diffusion_to_fm,
    fm_to_diffusion,
    is_clamped,
    scale,
    t_of_tau,
    t_range,
    tau_of_t,
)
from d2f.core.velocity import (
    check_bridge,
    estimates,
    fm_velocity,
    from_flowmatch,
    output_from_velocity,
    to_flowmatch,
    velocity_from_output,
)
from d2f.errors import UserError

__version__ = "0.1.0"

__all__ = [
    "PREDICTION_TYPES",
    "PRESETS",
    "BridgeCoefficients",
    "Schedule",
    "UserError",
    "bridge_coefficients",
    "check_bridge",
    "clamp_t",
    "diffusion_to_fm",
    "estimates",
    "fm_to_diffusion",
    "fm_velocity",
    "from_flowmatch",
    "is_clamped",
    "output_from_velocity",
    "scale",
    "t_of_tau",
    "t_range",
    "tau_of_t",
    "to_flowmatch",
    "velocity_from_output",
    "Diff2FlowEulerScheduler",
    "Diff2FlowHeunScheduler",
    "diff2flow_loss",
]


def __getattr__(name):
    if name in ("Diff2FlowEulerScheduler", "Diff2FlowHeunScheduler"):
        from d2f import diffusers_scheduler  # imports diffusers

        return getattr(diffusers_scheduler, name)
    if name == "diff2flow_loss":
        from d2f import dropin

        return dropin.diff2flow_loss
    raise AttributeError(f"module 'd2f' has no attribute {name!r}")
