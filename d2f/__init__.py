"""d2f: turn a pretrained diffusion model into a flow-matching model (Diff2Flow) and finetune it.

The math core (no diffusers): ``Schedule`` (schedule.py), the time map and alignment (timemap.py), the
velocity from a network output (velocity.py). ``Diff2FlowEulerScheduler`` (a diffusers scheduler) is
imported lazily so that ``import d2f`` stays light.
"""

from d2f.errors import UserError
from d2f.schedule import PREDICTION_TYPES, PRESETS, Schedule
from d2f.timemap import (bridge_coefficients, clamp_t, diffusion_to_fm, fm_to_diffusion, is_clamped, scale,
                         t_of_tau, t_range, tau_of_t)
from d2f.velocity import (check_bridge, estimates, fm_velocity, from_flowmatch, output_from_velocity,
                          to_flowmatch, velocity_from_output)

__version__ = "0.1.0"

__all__ = [
    "PREDICTION_TYPES", "PRESETS", "Schedule", "UserError", "bridge_coefficients", "check_bridge", "clamp_t",
    "diffusion_to_fm", "estimates", "fm_to_diffusion", "fm_velocity", "from_flowmatch", "is_clamped",
    "output_from_velocity", "scale", "t_of_tau", "t_range", "tau_of_t", "to_flowmatch", "velocity_from_output",
    "Diff2FlowEulerScheduler",
]


def __getattr__(name):
    if name in ("Diff2FlowEulerScheduler", "Diff2FlowHeunScheduler"):
        from d2f import scheduler  # imports diffusers

        return getattr(scheduler, name)
    raise AttributeError(f"module 'd2f' has no attribute {name!r}")
