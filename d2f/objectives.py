"""The registry of d2f's training objectives: one name per parametrisation (docs/math.md §8).

    diff2flow  ->  Diff2FlowModel   the diffusion network through the bridge, regressing u = x1 - x0
    fm         ->  NaiveFMModel     the raw output regressing u (the naive baseline), timestep (1 - t)(N - 1)
    fm-raw-t   ->  NaiveFMRawTModel the same at the raw timestep t in [0, 1] (the paper code's naive FM)
    diffusion  ->  DiffusionModel   the model's own eps / v / x1 objective (the diffusion baseline)

Every objective costs one forward and one backward of the same network on the same batch; only the input
the network sees, its timestep and the target differ. A run's ``objective`` (in ``d2f_run.json``) names
the parametrisation it was trained with, and therefore also how it is sampled. A ``reflow`` run (``d2f reflow``)
trained one of the FM objectives on a teacher's coupled pairs; its ``reflow_objective`` names which
(``sampled_objective``).
"""

from __future__ import annotations

from d2f.core.schedule import Schedule
from d2f.errors import UserError
from d2f.parametrizations import Diff2FlowModel, DiffusionModel, NaiveFMModel, NaiveFMRawTModel, Parametrization

OBJECTIVES: dict[str, type[Parametrization]] = {
    "diff2flow": Diff2FlowModel,
    "fm": NaiveFMModel,
    "fm-raw-t": NaiveFMRawTModel,
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


def sampled_objective(record: dict | None, default: str = "diffusion") -> str:
    """The objective whose parametrisation samples a run with this ``d2f_run.json`` record: its ``objective``;
    for a ``reflow`` run the FM objective its student trained with (``reflow_objective``, diff2flow if absent);
    ``default`` without a record (an untouched model is a diffusion model)."""
    record = record or {}
    objective = record.get("objective", default)
    if objective == "reflow":
        return check_objective(record.get("reflow_objective", "diff2flow"))
    return check_objective(objective)
