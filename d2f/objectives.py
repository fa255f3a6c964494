"""The registry of d2f's training objectives: one name per parametrisation (docs/math.md §8).

    diff2flow  ->  Diff2FlowModel   the diffusion network through the bridge, regressing u = x1 - x0
    fm         ->  NaiveFMModel     the raw output regressing u (the naive baseline), timestep (1 - t)(N - 1)
    fm-raw-t   ->  NaiveFMRawTModel the same at the raw timestep t in [0, 1] (the paper code's naive FM)
    diffusion  ->  DiffusionModel   the model's own eps / v / x1 objective (the diffusion baseline)

and the ablations that take Diff2Flow apart (docs/math.md §9.1; each names what it keeps of Diff2Flow):

    diffusion-fm-t        ->  DiffusionFMTimeModel      diffusion's loss, Diff2Flow's time density
    diff2flow-discrete    ->  Diff2FlowDiscreteModel    Diff2Flow's loss, diffusion's timesteps (the loss-only bridge)
    diff2flow-unweighted  ->  Diff2FlowUnweightedModel  Diff2Flow with its loss weight w(t) divided out
    diff2flow-no-scale    ->  Diff2FlowNoScaleModel     Diff2Flow without the input scaling c(t)

Every objective costs one forward and one backward of the same network on the same batch; only the input
the network sees, its timestep and the target differ. A run's ``objective`` (in ``d2f_run.json``) names
the parametrisation it was trained with, and therefore also how it is sampled (``sampled_objective``: an
ablation with the velocity of another objective samples as that one). A ``reflow`` run (``d2f reflow``)
trained one of the FM objectives on a teacher's coupled pairs; its ``reflow_objective`` names which
(``sampled_objective``).
"""

from __future__ import annotations

from d2f.core.schedule import Schedule
from d2f.errors import UserError
from d2f.parametrizations import (
    Diff2FlowDiscreteModel,
    Diff2FlowModel,
    Diff2FlowNoScaleModel,
    Diff2FlowUnweightedModel,
    DiffusionFMTimeModel,
    DiffusionModel,
    NaiveFMModel,
    NaiveFMRawTModel,
    Parametrization,
)

OBJECTIVES: dict[str, type[Parametrization]] = {
    "diff2flow": Diff2FlowModel,
    "fm": NaiveFMModel,
    "fm-raw-t": NaiveFMRawTModel,
    "diffusion": DiffusionModel,
    "diffusion-fm-t": DiffusionFMTimeModel,
    "diff2flow-discrete": Diff2FlowDiscreteModel,
    "diff2flow-unweighted": Diff2FlowUnweightedModel,
    "diff2flow-no-scale": Diff2FlowNoScaleModel,
}
# the objectives whose loss is the model's native (eps / v / x1) regression on true diffusion samples
DIFFUSION_LOSSES = frozenset(name for name, cls in OBJECTIVES.items() if issubclass(cls, DiffusionModel))


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
    """The objective whose parametrisation samples a run with this ``d2f_run.json`` record: its ``objective``,
    or the one that objective samples as (``Parametrization.samples_as``: ``diffusion-fm-t`` as ``diffusion``,
    ``diff2flow-unweighted`` as ``diff2flow``); for a ``reflow`` run the FM objective its student trained with
    (``reflow_objective``, diff2flow if absent); ``default`` without a record (an untouched model is a
    diffusion model)."""
    record = record or {}
    objective = record.get("objective", default)
    if objective == "reflow":
        objective = record.get("reflow_objective", "diff2flow")
    return OBJECTIVES[check_objective(objective)].samples_as or objective
