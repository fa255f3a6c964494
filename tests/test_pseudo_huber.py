"""``--loss pseudo-huber`` (2-rectified flow++, Lee et al. 2024): the distance in closed form, its two limits, and
one training step whose update is the gradient of that closed form (float64).

    d(e) = (sqrt(||e||^2 + c^2) - c) / D,   c = 0.00054 D,   e = u_hat - u (D elements)

Near 0 it is ||e||^2 / (2 c D) (relative error at most ||e||^2 / (4 c^2)); far from it, between (||e|| - c) / D
and ||e|| / D.
"""

from __future__ import annotations

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from d2f.core.schedule import Schedule
from d2f.parametrizations import NaiveFMModel, pseudo_huber
from d2f.parametrizations.base import PSEUDO_HUBER_C
from d2f.training.step import training_step

shapes = st.tuples(st.integers(1, 4), st.integers(1, 4), st.integers(1, 6), st.integers(1, 6))


def closed_form(error: torch.Tensor) -> torch.Tensor:
    """d(e) of each sample of ``error`` (B, ...), from the formula, in float64."""
    dim = error[0].numel()
    c = PSEUDO_HUBER_C * dim
    return (torch.sqrt(error.double().pow(2).flatten(1).sum(1) + c**2) - c) / dim


@settings(max_examples=60, deadline=None)
@given(shapes, st.integers(0, 2**31 - 1), st.floats(1e-3, 1e3))
def test_pseudo_huber_from_the_mean_squared_error_is_the_closed_form(shape, seed, scale):
    error = scale * torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    mse = error.pow(2).flatten(1).mean(1)
    got = pseudo_huber(mse, error[0].numel()).double()
    assert torch.allclose(got, closed_form(error), rtol=1e-5, atol=0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 4096), st.floats(0, 1e6))
def test_pseudo_huber_limits_and_monotonicity(dim, squared_norm):
    c = PSEUDO_HUBER_C * dim
    mse = torch.tensor([squared_norm / dim, 2 * squared_norm / dim + 1e-3], dtype=torch.float64)
    d = pseudo_huber(mse, dim).double()
    assert d[0] >= 0 and d[1] > d[0]  # zero at zero error, increasing
    norm = math.sqrt(squared_norm)
    assert (norm - c) / dim - 1e-6 <= d[0] <= norm / dim + 1e-6  # the norm's scale far from 0
    x = squared_norm / c**2
    if x < 1e-2:  # the squared error's scale near 0: sqrt(1 + x) - 1 = x/2 - x^2/8 + ...
        quadratic = squared_norm / (2 * c * dim)
        assert abs(d[0].item() - quadratic) <= quadratic * x / 4 + 1e-9


class Scale(torch.nn.Module):
    """A UNet's call signature on a one-weight network: output = w * z (a naive FM velocity)."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.tensor(0.3))

    def forward(self, z, timestep, encoder_hidden_states=None, return_dict=False):
        return (self.w * z,)


class FixedBatch:
    def __init__(self, data, noise, t):
        self.batch = (data, noise, t, None)

    def get(self, k, process_index=0, num_processes=1):
        return self.batch


def test_a_pseudo_huber_step_follows_the_closed_form_gradient():
    gen = torch.Generator().manual_seed(0)
    data, noise, t = torch.randn(3, 2, 4, 4, generator=gen), torch.randn(3, 2, 4, 4, generator=gen), torch.rand(3)
    net = Scale()
    optimizer = torch.optim.SGD(net.parameters(), lr=1.0)
    flow = NaiveFMModel(Schedule.preset("sd15"))
    per_sample, _ = training_step(
        flow, net, FixedBatch(data, noise, t), optimizer, [net.w], 0, max_grad_norm=0, loss="pseudo-huber"
    )

    w = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
    tt = t.double().view(-1, 1, 1, 1)
    x_t = tt * data.double() + (1 - tt) * noise.double()
    # e = u_hat - (x1 - x0), u_hat = w x_t
    error = w * x_t - (data.double() - noise.double())
    closed_form(error).mean().backward()
    assert math.isclose(net.w.item(), 0.3 - w.grad.item(), rel_tol=1e-5)
    # the logged per-sample loss stays the squared error, whatever the training loss
    assert torch.allclose(per_sample.double(), error.detach().pow(2).flatten(1).mean(1), rtol=1e-5)
    # and the step differs from an MSE step
    mse_net = Scale()
    training_step(flow, mse_net, FixedBatch(data, noise, t), torch.optim.SGD(mse_net.parameters(), lr=1.0),
                  [mse_net.w], 0, max_grad_norm=0)  # fmt: skip
    assert not math.isclose(mse_net.w.item(), net.w.item(), rel_tol=1e-3)
