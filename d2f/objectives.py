"""The registry of d2f's training objectives: one name per parametrisation (docs/math.md §8).

    diff2flow  ->  Diff2FlowModel   the diffusion network through the bridge, regressing u = x1 - x0
    fm         ->  NaiveFMModel     the raw output regressing u (the naive baseline)
    diffusion  ->  DiffusionModel   the model's own eps / v / x1 objective (the diffusion baseline)

Every objective costs one forward and one backward of the same network on the same batch; only the input
the network sees, its timestep and the target differ. A run's ``objective`` (in ``d2f_run.json``) names
the parametrisation it was trained with, and therefore also how it is sampled.
"""

from __future__ import annotations

from d2f.core.schedule import Schedule
from d2f.errors import UserError
from d2f.parametrizations import Diff2FlowModel, DiffusionModel, NaiveFMModel, Parametrization

OBJECTIVES: dict[str, type[Parametrization]] = {
    "diff2flow": Diff2FlowModel,
    "fm": NaiveFMModel,
    "diffusion": DiffusionModel,
}


def check_objective(name: str) -> str:
    """``name`` if it is an objective; else a ``UserError`` listing them."""
    if name not in OBJECTIVES:
        raise UserError(f"unknown objective {name!r}; use one of {', '.join(OBJECTIVES)}")
    return name


def parametrization(objective: str, schedule: Schedule, prediction_type: str | None = None) -> Parametrization:
    """The parametrisation object of ``objective`` for a model on ``schedule`` (prediction type: the
    schedule's unless given)."""
    return OBJECTIVES[check_objective(objective)](schedule, prediction_type)
