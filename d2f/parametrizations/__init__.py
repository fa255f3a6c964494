"""One object per parametrisation: how a network's output becomes an FM velocity, and how it is trained.

``base`` holds the paper's four (Diff2Flow, naive FM at two timesteps, diffusion) and what they share;
``ablations`` the variants that take Diff2Flow apart (docs/math.md §9.1). Both are read from here.
"""

from d2f.parametrizations.ablations import (
    Diff2FlowDiscreteModel,
    Diff2FlowNoScaleModel,
    Diff2FlowUnweightedModel,
    DiffusionFMTimeModel,
    loss_weight,
)
from d2f.parametrizations.base import (
    LOSSES,
    T_SAMPLINGS,
    Diff2FlowModel,
    DiffusionModel,
    LossOutput,
    NaiveFMModel,
    NaiveFMRawTModel,
    Net,
    Parametrization,
    check_t_sampling,
    mse,
    pseudo_huber,
    unet_net,
)

__all__ = [
    "Diff2FlowDiscreteModel",
    "Diff2FlowModel",
    "Diff2FlowNoScaleModel",
    "Diff2FlowUnweightedModel",
    "DiffusionFMTimeModel",
    "DiffusionModel",
    "LOSSES",
    "LossOutput",
    "NaiveFMModel",
    "NaiveFMRawTModel",
    "Net",
    "Parametrization",
    "T_SAMPLINGS",
    "check_t_sampling",
    "loss_weight",
    "mse",
    "pseudo_huber",
    "unet_net",
]
