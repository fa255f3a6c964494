# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 3. Velocity from predictions, and sampling before finetuning
#
# Notebook 2 put the diffusion network on the FM path: at FM time `t` it is called as
# `o = net(c(t) * x_t, tau(t), cond)`. This notebook reads an FM **velocity** off that output, shows why it is
# the right one, uses it to sample the *untouched* pretrained model as a flow-matching model, and derives what
# finetuning with the FM loss changes relative to finetuning with the diffusion loss.
#
# Symbols (notebook 1, docs/math.md §1): `u = x1 - x0` is the FM velocity and `u_hat` a model's estimate of
# it (code: `velocity`); `v = alpha*eps - sigma*x1` is only ever the v-prediction target.
#
# **Learning goals**
#
# 1. Derive the velocity `u_hat = x1_hat - eps_hat` for epsilon-, v- and sample-prediction models, check it
#    with d2f's `velocity_from_output` / `fm_velocity` on real latents, and see why it is the *optimal* FM
#    velocity (posterior means), on a 2D toy where everything is closed-form.
# 2. See how good an untouched diffusion model already is as an FM velocity predictor, across `t`, for
#    the built-in epsilon prior (`tiny-shapes-eps`, like SD 1.x) and v prior (`tiny-shapes-v`, like SD 2.x).
# 3. Sample with FM Euler before any finetuning, compare it with DDIM at many and at few steps (image
#    grids and an error table), and understand why they agree: the FM ODE *is* the DDIM ODE, and one DDIM
#    step *is* one FM Euler step (checked on the toy, against diffusers' `DDIMScheduler`).
# 4. Derive what the Diff2Flow loss changes relative to the diffusion loss: the same per-sample error,
#    weighted by `1/t^2` (epsilon) or `c(t)^2` (v), under a different time distribution; checked against
#    d2f's own loss functions.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook hint, not ours

import time

import diffusers
import matplotlib.pyplot as plt
import torch
import transformers

from d2f import (
    Schedule,
    bridge_coefficients,
    estimates,
    fm_to_diffusion,
    fm_velocity,
    output_from_velocity,
    t_range,
    velocity_from_output,
)
from d2f.pipeline import generate, load_pipeline, sample_latents
from d2f.sampling import ddim_grid, time_grid

diffusers.utils.logging.disable_progress_bar(), transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()  # no "torchvision not installed" notices
torch.set_printoptions(precision=4, sci_mode=False)
torch.set_num_threads(1)  # predictable on a shared 2-core machine; on your own machine delete this line
EPS_PRIOR, V_PRIOR = "tiny-shapes-eps", "tiny-shapes-v"

import sys
from pathlib import Path

import d2f

# the exercises' grader (tutorials/exercises.py): in this notebook's folder, or in the checkout d2f runs from
TUTORIALS = next(
    p for p in (Path.cwd(), Path(d2f.__file__).resolve().parents[1] / "tutorials") if (p / "exercises.py").is_file()
)
sys.path.insert(0, str(TUTORIALS))
from exercises import grade  # noqa: E402

pipes = {name: load_pipeline(name) for name in (EPS_PRIOR, V_PRIOR)}
sched = Schedule.from_config(dict(pipes[EPS_PRIOR].scheduler.config))
for name, pipe in pipes.items():
    print(
        f"{name}: prediction_type = {pipe.scheduler.config.prediction_type}, "
        f"UNet {sum(p.numel() for p in pipe.unet.parameters()) / 1e6:.2f} M parameters"
    )

# %% [markdown]
# ## 3.1 Deriving the velocity
#
# The FM velocity along the straight path is `u = x1 - x0` (data minus noise). At a diffusion sample
# `z = alpha*x1 + sigma*eps` the network's output `o` gives an estimate of *both* the data and the noise,
# because `z` ties them together (`z = alpha*x1_hat + sigma*eps_hat`):
#
# | prediction_type | data estimate x1_hat | noise estimate eps_hat |
# | --- | --- | --- |
# | `epsilon` (o = eps) | (z - sigma*o) / alpha | o |
# | `v_prediction` (o = v = alpha*eps - sigma*x1) | alpha*z - sigma*o | sigma*z + alpha*o |
# | `sample` (o = x1) | o | (z - alpha*o) / sigma |
#
# and the velocity is their difference:
#
#     u_hat = x1_hat - eps_hat
#
# (The v row: `alpha*z - sigma*v = alpha^2 x1 + alpha sigma eps - sigma alpha eps + sigma^2 x1 = x1`, using
# `alpha^2 + sigma^2 = 1`; likewise for eps.) In FM coordinates, with `x_t = z / c(t)`, the same velocity
# reads `u_hat = (x_t - eps_hat)/t = (x1_hat - x_t)/(1 - t)`: the straight line through the two estimates.
#
# **Your job: the v row.** Write `velocity_from_v(v_hat, z, alpha, sigma)`, the velocity `u_hat` of a
# v-prediction output `v_hat` at the diffusion sample `z`: the two estimates of the v row of the table, then
# their difference (`alpha`, `sigma` are per-sample and broadcast against `z`). The next cell grades it against
# d2f (`grade`, from `tutorials/exercises.py`), and the check cell of this section uses it again on real
# latents. While the stub is unchanged, the notebook says so and grades and uses the reference solution
# (`tutorials/solutions/v_row.py`) instead, so that it runs on: write yours, then re-run the two cells.


# %%
def velocity_from_v(v_hat, z, alpha, sigma):
    """u_hat = x1_hat - eps_hat for a v-prediction output v_hat at z = alpha x1 + sigma eps."""
    # YOUR CODE HERE: x1_hat and eps_hat from the v row of the table, then u_hat
    raise NotImplementedError("your job: the v row of the velocity table")


# %%
velocity_from_v = grade(velocity_from_v)

# %% [markdown]
# **Check yourself** on real latents (the VAE of the eps prior): feed each prediction type its *exact*
# target for a known (data, noise) pair; the velocity must be exactly `data - noise`, the two FM forms must
# agree, and `output_from_velocity` must invert the map.

# %%
from d2f.world.shapes import all_prompts, shape_images

pixels, captions = shape_images(32, "base", seed=3)
vae = pipes[EPS_PRIOR].vae
with torch.no_grad():
    data = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor  # x1, (32, 4, 8, 8)
noise = torch.randn(data.shape, generator=torch.Generator().manual_seed(0))  # x0
B = len(data)
t_min, t_max = t_range(sched)
t = t_min + (t_max - t_min) * torch.rand(B, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
coef = bridge_coefficients(sched, t)
view = lambda s: s.float().view(B, 1, 1, 1)  # noqa: E731  per-sample scalars over (B, 4, 8, 8)
alpha, sigma, t4 = view(coef.alpha), view(coef.sigma), view(t)
x_t = t4 * data + (1 - t4) * noise
z = alpha * data + sigma * noise

ideal = {"epsilon": noise, "v_prediction": alpha * noise - sigma * data, "sample": data}
for ptype, o in ideal.items():
    # u_hat = x1_hat - eps_hat
    u_hat = velocity_from_output(o, z, coef.alpha, coef.sigma, ptype)
    x1_hat, eps_hat = estimates(o, z, coef.alpha, coef.sigma, ptype)
    err = (u_hat - (data - noise)).abs().max().item()
    # u_hat = (x_t - eps_hat) / t = (x1_hat - x_t) / (1 - t)
    forms = max(
        ((x_t - eps_hat) / t4 - u_hat).abs().max().item(), ((x1_hat - x_t) / (1 - t4) - u_hat).abs().max().item()
    )
    back = (output_from_velocity(u_hat, z, coef.alpha, coef.sigma, ptype) - o).abs().max().item()
    print(f"{ptype:13s} |u_hat - (x1 - x0)| = {err:.1e}   FM forms {forms:.1e}   inverse {back:.1e}")
    assert err < 1e-4 and forms < 1e-3 and back < 1e-4, ptype
    if ptype == "v_prediction":  # your v row (the exercise above) agrees with the library's on real latents
        assert (velocity_from_v(o, z, alpha, sigma) - u_hat).abs().max() < 1e-4

# %% [markdown]
# The `forms` error is the largest because `(x_t - eps_hat)/t` divides by `t` (down to 0.064) in float32.
# `fm_velocity(schedule, o, x_t, t)` is the whole bridge in one call: it clamps `t`, forms `z = c(t) x_t`
# itself and converts the output.

# %% [markdown]
# ## 3.2 Why `x1_hat - eps_hat` is the right velocity: posterior means, on a 2D toy
#
# Section 3.1 showed that the conversion is *consistent* (exact targets give exactly `x1 - x0`). It is also
# *optimal*, and this is what makes the bridge more than an assertion (docs/math.md §7):
#
# 1. A network trained to optimality on its diffusion loss outputs the **posterior mean** of its target:
#    `E[eps | z]` for an epsilon model, `E[v | z]` for a v model (the minimiser of a squared error is the
#    conditional mean).
# 2. Each row of the table in 3.1 is *affine* in `o`, with coefficients that depend only on `z` and `t`, so the
#    estimates are posterior means too: `x1_hat = E[x1 | z]`, `eps_hat = E[eps | z]`. (v row:
#    `alpha*z - sigma*v = x1` exactly, so `alpha*z - sigma*E[v | z] = E[x1 | z]`.)
# 3. With `x0 = eps`, `z = c(t) x_t` is an invertible rescaling of `x_t`: conditioning on `z` *is*
#    conditioning on `x_t`. Hence
#
#        u_hat = E[x1 | x_t] - E[x0 | x_t] = E[x1 - x0 | x_t],
#
#    exactly the marginal velocity that FM's regression learns (notebook 1, section 1.0).
#
# An optimal diffusion model therefore *is* an optimal FM model on the covered range; the bridge only
# re-expresses what the network already estimates. On real networks we cannot see "optimal", but on the 2D
# mixture of notebook 1 both sides are closed-form. Its optimal epsilon network is, per blob `k`, a Gaussian
# posterior mean, weighted by the blob's posterior probability `r_k(z)`:
#
#     E[eps | z] = sum_k r_k(z) * sigma (z - alpha mu_k) / (alpha^2 s^2 + sigma^2),
#     r_k(z) proportional to w_k N(z; alpha mu_k, (alpha^2 s^2 + sigma^2) I)

# %%
from d2f.core.timemap import scale
from d2f.parametrizations import Diff2FlowModel, DiffusionModel
from d2f.sampling import sample_ddim, sample_euler, sample_heun

# the mixture of notebook 1: x1 ~ sum_k w_k N(mu_k, s^2 I) in 2D
MU = torch.tensor([[-2.0, 1.0], [2.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
W_K = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
S_K = 0.3


def eps_net(z: torch.Tensor, tau: torch.Tensor, cond=None) -> torch.Tensor:
    """The optimal epsilon "network" of the mixture: E[eps | z] at diffusion time tau, float64, z (B, 2)."""
    alpha = sched.alpha(tau.double()).view(-1, 1, 1)
    sigma = sched.sigma(tau.double()).view(-1, 1, 1)
    var = alpha**2 * S_K**2 + sigma**2  # given blob k:  z ~ N(alpha mu_k, var I)
    d = z.double()[:, None, :] - alpha * MU[None]  # (B, K, 2): z - alpha mu_k
    r = torch.softmax(W_K.log() - (d**2).sum(-1) / (2 * var[..., 0]), dim=1)  # r_k(z)
    # E[eps | z, k] = sigma (z - alpha mu_k) / var
    return (r[..., None] * sigma * d / var).sum(1)


def v_net(z: torch.Tensor, tau: torch.Tensor, cond=None) -> torch.Tensor:
    """The optimal v-prediction network of the same data: E[v | z] = alpha E[eps | z] - sigma E[x1 | z]."""
    alpha, sigma = sched.alpha(tau.double()).view(-1, 1), sched.sigma(tau.double()).view(-1, 1)
    eps = eps_net(z, tau)
    return alpha * eps - sigma * (z - sigma * eps) / alpha  # v = alpha eps - sigma x1


def marginal_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """The FM side, straight from notebook 1: u(x, t) = E[x1 - x0 | x_t = x], float64."""
    var_t = t**2 * S_K**2 + (1 - t) ** 2
    d = x[:, None, :] - t * MU[None]
    r = torch.softmax(W_K.log() - (d**2).sum(-1) / (2 * var_t), dim=1)
    return (r[..., None] * (MU[None] + (t * S_K**2 - (1 - t)) / var_t * d)).sum(1)


toy_flow = {
    "epsilon": (Diff2FlowModel(sched, "epsilon"), eps_net),
    "v_prediction": (Diff2FlowModel(sched, "v_prediction"), v_net),
}
x_toy = 2 * torch.randn(500, 2, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
print("max |u_hat (bridge of the optimal diffusion net) - E[x1 - x0 | x_t] (closed form)|")
gaps = {}
for t_k in (t_min, 0.2, 0.5, 0.8, t_max, 0.02, 0.995):
    row = []
    for flow, net in toy_flow.values():
        # u_hat = x1_hat - eps_hat at z = c(t) x_t, tau(t)  (Diff2FlowModel.velocity: one network call)
        row.append((flow.velocity(net, x_toy, t_k, None) - marginal_velocity(x_toy, t_k)).abs().max().item())
    gaps[t_k] = row
    where = "covered" if t_min <= t_k <= t_max else "CLAMPED"
    print(f"  t = {t_k:.4f} ({where:7s})  epsilon net {row[0]:.1e}   v net {row[1]:.1e}")

# %% [markdown]
# **Check yourself.** On the covered range the bridged optimal diffusion network reproduces the optimal FM
# velocity to float64 rounding, for both prediction types. Outside it (the clamped ends, notebook 2) it does
# not: there the network is told `t_eff` while `x_t` carries signal fraction `t`, so an *untouched* diffusion
# model is not FM-optimal at the ends; a Diff2Flow finetune, which trains on all of [0, 1], learns them.

# %%
for t_k, row in gaps.items():
    if t_min <= t_k <= t_max:
        assert max(row) < 1e-9, (t_k, row)
    else:
        assert min(row) > 1e-3, (t_k, row)  # the clamp is visible, not hidden
print("ok: u_hat = E[x1 - x0 | x_t] exactly on [t_min, t_max]; not at the clamped ends")

# %% [markdown]
# ### DDIM and FM Euler on the plane
#
# Now sample the toy as both samplers do on the real priors (section 3.4): start from Gaussian noise taken as
# the diffusion sample `z` at `tau = N-1`, i.e. the FM state `x = z / c(t_min)` at `t_min`, and integrate to
# `t = 1` with 6 steps: FM Euler uniform in `t` (`time_grid`), DDIM on its own trailing grid (`ddim_grid`).
# The thin grey curves are the exact ODE (Heun, 400 steps).
#
# **Predict first.** With 6 steps, which sampler ends closer to the exact end points on this toy, FM Euler
# (uniform in `t`) or DDIM (uniform in `tau`, which by notebook 2 crowds its steps near the data end)? The
# cell after the plot prints the errors.

# %%
flow, net = toy_flow["epsilon"]
velocity_fn = lambda x, t: flow.velocity(net, x, t, None)  # noqa: E731
z0 = torch.randn(16, 2, generator=torch.Generator().manual_seed(11), dtype=torch.float64)
x_start = z0 / float(scale(sched, torch.tensor(t_min, dtype=torch.float64)))  # FM state at t_min


def trajectory(sampler, ts):
    """The states x_k at the grid times (len(ts), B, 2) and the grid, for any d2f sampler."""
    states = [x_start]
    sampler(velocity_fn, x_start, ts, callback=lambda st: states.append(st["x"]))
    return torch.stack(states), torch.as_tensor(ts, dtype=torch.float64)


K_TOY = 6
exact, ts_exact = trajectory(sample_heun, time_grid(400, t_start=t_min))
euler, ts_euler = trajectory(sample_euler, time_grid(K_TOY, t_start=t_min))
ddim_, ts_ddim = trajectory(sample_ddim, ddim_grid(sched, K_TOY))
blobs = torch.cat(
    [
        MU[k] + S_K * torch.randn(150, 2, generator=torch.Generator().manual_seed(k), dtype=torch.float64)
        for k in range(3)
    ]
)


def to_z(states, ts):
    """Diffusion coordinates z = c(t) x of FM states (what DDIM and the network work in)."""
    return states * scale(sched, ts).view(-1, 1, 1)


fig, ax = plt.subplots(1, 2, figsize=(11, 4.8))
for axis, f, name in (
    (ax[0], lambda s, ts: s, "FM coordinates x = z / c(t)"),
    (ax[1], to_z, "diffusion coordinates z = c(t) x"),
):
    axis.scatter(*blobs.T, s=3, color="0.8", label="data x1")
    for b in range(len(x_start)):
        e, fe, fd = f(exact, ts_exact)[:, b], f(euler, ts_euler)[:, b], f(ddim_, ts_ddim)[:, b]
        axis.plot(e[:, 0], e[:, 1], color="0.4", lw=0.8, label="exact ODE" if b == 0 else None)
        axis.plot(
            fe[:, 0], fe[:, 1], "o-", color="C0", ms=3, lw=1, label=f"FM Euler, {K_TOY} steps" if b == 0 else None
        )
        axis.plot(fd[:, 0], fd[:, 1], "s--", color="C1", ms=3, lw=1, label=f"DDIM, {K_TOY} steps" if b == 0 else None)
    axis.scatter(*f(exact, ts_exact)[0].T, s=12, color="k", zorder=3, label="start (tau = N-1)")
    axis.set(title=name, xlabel="first coordinate", ylabel="second coordinate", aspect="equal")
    axis.legend(fontsize=7, loc="lower left")
fig.tight_layout()

# %% [markdown]
# Left, in FM coordinates: the exact trajectories are curved (straight at first, towards the data's mean,
# then bending into a blob); each sampler replaces them by straight chords between its grid points, and the
# error it makes is the gap between chord and curve. FM Euler spreads its chords evenly in `t`; DDIM's are
# short near the data end and long near the noise end. Right, the same states in DDIM's own coordinates
# `z = c(t) x`: the variance-preserving path first swells (c grows from `c(t_min)`, just above 1 in notebook
# 2's table, to `sqrt 2` at `t = 1/2`), then contracts onto the data, so there the trajectories hook outward.
# Same ODE, same states, only the coordinates differ.

# %%
end_exact = exact[-1]


def end_error(sampler, ts):
    """Mean distance of the end points to the exact ones."""
    return (sampler(velocity_fn, x_start, ts) - end_exact).norm(dim=1).mean().item()


err_toy = {
    (name, k): end_error(sampler, ddim_grid(sched, k) if name == "DDIM" else time_grid(k, t_start=t_min))
    for name, sampler in (("FM Euler", sample_euler), ("DDIM", sample_ddim))
    for k in (K_TOY, 8 * K_TOY)
}
for (name, k), e in err_toy.items():
    print(f"{name:8s} {k:3d} steps: mean end-point error {e:.4f}")

# %% [markdown]
# **Check yourself.** Both samplers are first-order solvers of the same ODE: with 8 times the steps the error
# must fall by well over 4x (for a first-order method it falls about 8x), and at 6 steps it must already be a
# fraction of the distance travelled. A wrong bridge (a sign, a scale, a clamp) leaves an O(1) gap instead.

# %%
travel = (end_exact - x_start).norm(dim=1).mean().item()
for name in ("FM Euler", "DDIM"):
    coarse, fine = err_toy[(name, K_TOY)], err_toy[(name, 8 * K_TOY)]
    assert coarse < 0.25 * travel and fine < coarse / 4, (name, coarse, fine, travel)
print(f"ok (mean distance travelled {travel:.2f})")

# %% [markdown]
# ### One DDIM step is one FM Euler step
#
# DDIM (eta = 0) re-noises its two estimates at the next timestep: `z' = alpha' x1_hat + sigma' eps_hat`.
# Divide by `c' = alpha' + sigma'` and use `x = t x1_hat + (1 - t) eps_hat` (3.1):
#
#     x' = t' x1_hat + (1 - t') eps_hat = x + (t' - t) (x1_hat - eps_hat) = x + (t' - t) u_hat,
#
# an FM Euler step from `t` to `t'`. So DDIM is FM Euler on DDIM's grid, and the samplers differ only in where
# they place their steps (docs/math.md §10). Behind it is that the two ODEs are one (docs/math.md §11). DDIM's
# ODE, with `s = sigma/alpha` and `xbar = z/alpha`, is `d xbar / ds = eps_hat` (along a fixed pair,
# `xbar = x1 + s eps`). Change variables, one step at a time:
#
#     x = z / (alpha + sigma) = [alpha / (alpha + sigma)] * (z / alpha) = t * xbar
#     s = sigma / alpha = (1 - t) / t = 1/t - 1,    so   ds/dt = -1/t^2
#     dx/dt = xbar + t * (d xbar / ds) * (ds/dt) = x/t + t * eps_hat * (-1/t^2) = (x - eps_hat)/t = u_hat
#
# (product rule, then chain rule; the last equality is the FM form of 3.1). The check below takes DDIM steps
# three ways, in float64: by hand in diffusion coordinates, with diffusers' own `DDIMScheduler.step`, and as an
# FM Euler step of d2f's `Diff2FlowModel.velocity`; and a fourth way, yours.
#
# **Your job: one DDIM step as an FM Euler step.** Write `ddim_step_as_fm_euler(z, eps_hat, alpha, sigma,
# alpha_next, sigma_next)`: from the diffusion sample `z` at (alpha, sigma) and an epsilon prediction, go to FM
# coordinates (`c = alpha + sigma`, `x = z / c`, `t = alpha / c`), form `u_hat = x1_hat - eps_hat`, take the
# Euler step to `t'`, and come back to the diffusion sample `z'` with `c'`. The next cell grades it against
# the DDIM update and diffusers' `DDIMScheduler.step` on SD's schedule (reference solution:
# `tutorials/solutions/ddim_step.py`); the check cell after it uses it on the toy.


# %%
def ddim_step_as_fm_euler(z, eps_hat, alpha, sigma, alpha_next, sigma_next):
    """z' at (alpha_next, sigma_next) from z at (alpha, sigma), by one FM Euler step."""
    # YOUR CODE HERE: x and t from z, u_hat, the Euler step x', then z' = c' x'
    raise NotImplementedError("your job: one DDIM step written as an FM Euler step")


# %%
ddim_step_as_fm_euler = grade(ddim_step_as_fm_euler)

# %%
from diffusers import DDIMScheduler

from d2f.core.schedule import PRESETS

K_CHECK = 10  # evenly spaced trailing timesteps 999, 899, ..., 99: diffusers lands exactly on the next one
ddim_sched = DDIMScheduler(**PRESETS["sd15"], timestep_spacing="trailing", set_alpha_to_one=True, clip_sample=False)
ddim_sched.set_timesteps(K_CHECK)
grid = ddim_grid(sched, K_CHECK)  # FM times of 999, 899, ..., 99, then t = 1
assert torch.equal(
    torch.as_tensor(ddim_sched.timesteps).double(), torch.tensor([float(tau) for tau in range(999, 0, -100)]).double()
)
z = z0.clone()
worst_hand, worst_diffusers, worst_yours = 0.0, 0.0, 0.0
for k, tau_k in enumerate(ddim_sched.timesteps):
    tau = torch.full((len(z),), float(tau_k), dtype=torch.float64)
    t_k, t_next = float(grid[k]), float(grid[k + 1])
    # DDIM by hand: x1_hat = (z - sigma eps_hat) / alpha,  z' = alpha' x1_hat + sigma' eps_hat
    eps_hat = eps_net(z, tau)
    a, s = float(sched.alpha(tau[0])), float(sched.sigma(tau[0]))
    a2, s2 = (1.0, 0.0) if k == K_CHECK - 1 else (float(sched.alpha(tau[0] - 100)), float(sched.sigma(tau[0] - 100)))
    z_hand = a2 * (z - s * eps_hat) / a + s2 * eps_hat
    z_diffusers = ddim_sched.step(eps_hat, int(tau_k), z).prev_sample
    # FM Euler: x = z / c,  x' = x + (t' - t) u_hat(x, t),  back with c' = alpha' + sigma'
    x = z / (a + s)
    x_euler = x + (t_next - t_k) * flow.velocity(eps_net, x, t_k, None)
    worst_hand = max(worst_hand, (x_euler - z_hand / (a2 + s2)).abs().max().item())
    worst_diffusers = max(worst_diffusers, (z_diffusers - z_hand).abs().max().item())
    worst_yours = max(worst_yours, (ddim_step_as_fm_euler(z, eps_hat, a, s, a2, s2) - z_hand).abs().max().item())
    z = z_hand
print(f"{K_CHECK} DDIM steps: max |FM Euler step - DDIM step by hand| = {worst_hand:.1e} (float64)")
print(f"{'':12s}max |diffusers DDIMScheduler.step - by hand| = {worst_diffusers:.1e} (abar in float32 there)")
print(f"{'':12s}max |your ddim_step_as_fm_euler - by hand| = {worst_yours:.1e}")
assert worst_hand < 1e-12 and worst_diffusers < 1e-5 and worst_yours < 1e-10
assert (z - sample_ddim(velocity_fn, x_start, grid)).abs().max() < 1e-10  # and d2f's sample_ddim is that chain
print("ok: one DDIM step = one FM Euler step on DDIM's grid")

# %% [markdown]
# ## 3.3 How good is an untouched diffusion model as a velocity predictor?
#
# Now use the real networks. For the same data, noise and captions, call each prior at
# `(c(t) x_t, tau(t))` for a sweep of `t`, convert with `fm_velocity`, and measure the relative error
# `||u_hat - (x1 - x0)||^2 / ||x1 - x0||^2`. For contrast, also the reading a *naive* FM finetune starts
# from: the raw output of the unscaled `x_t` at the linear timestep `(1 - t)(N - 1)` taken as the velocity.


# %%
def text_states(pipe, prompts):
    with torch.no_grad():
        return pipe.encode_prompt(prompts, "cpu", 1, False)[0]


@torch.no_grad()
def velocity_errors(pipe, ts):
    """Relative squared error of the bridged velocity and of the naive reading, per t (same noise)."""
    sched_p = Schedule.from_config(dict(pipe.scheduler.config))
    cond, target = text_states(pipe, captions), data - noise
    rel = lambda u: ((u - target) ** 2).sum().item() / (target**2).sum().item()  # noqa: E731
    bridged, naive = [], []
    for tk in ts:
        tb = torch.full((B,), float(tk), dtype=torch.float64)
        xk = float(tk) * data + (1 - float(tk)) * noise
        zk, tau = fm_to_diffusion(sched_p, xk, tb)  # z = c(t) x_t at tau(t)
        o = pipe.unet(zk, tau, encoder_hidden_states=cond).sample
        bridged.append(rel(fm_velocity(sched_p, o, xk, tb)))  # u_hat = x1_hat - eps_hat
        o_naive = pipe.unet(xk, (1 - tb.float()) * (sched_p.num_train_timesteps - 1), encoder_hidden_states=cond).sample
        naive.append(rel(o_naive))
    return bridged, naive


ts_sweep = torch.linspace(0.02, 0.98, 25, dtype=torch.float64)
errors = {name: velocity_errors(pipe, ts_sweep) for name, pipe in pipes.items()}

fig, ax = plt.subplots(figsize=(7, 3.6))
for name, (bridged, naive) in errors.items():
    ax.plot(ts_sweep, bridged, "o-", ms=3, label=f"{name}: Diff2Flow bridge")
    ax.plot(ts_sweep, naive, "x--", ms=4, label=f"{name}: raw output as velocity (naive FM)")
for lo, hi in ((0, t_min), (t_max, 1)):
    ax.axvspan(lo, hi, color="grey", alpha=0.3)
ax.set(
    xlabel="FM time t (0 = noise, 1 = data)",
    ylabel="relative squared error",
    yscale="log",
    title="velocity error of the untouched priors",
)
ax.legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# Read the plot: through the bridge, both priors predict the FM velocity well in the middle of the path.
# The relative error grows towards both ends, because `u = x1 - x0` needs *both* estimates: near the noise
# end the data is hard to guess, near the data end the noise is (it is a small part of `x_t`). The epsilon
# prior is worse at the noise end: it estimates the data as `(z - sigma*eps_hat)/alpha`, which multiplies
# its noise error by `sigma/alpha` (about 15 at `tau = N-1`); the v prior has no such division. The raw
# output read as a velocity is wrong by a factor of order one or more at every `t`: a naive FM finetune has
# to relearn the network's output, while Diff2Flow starts from a model that is already right (notebook 4
# measures what this buys).
#
# **Check yourself.** The bridged velocity beats the naive reading at every `t`, by a wide margin on
# average.

# %%
for name, (bridged, naive) in errors.items():
    b, n = torch.tensor(bridged), torch.tensor(naive)
    print(f"{name}: mean relative error, bridge {b.mean():.3f}  vs  naive {n.mean():.3f}")
    assert bool((b < n).all()) and b.mean() < 0.5 * n.mean() and b.mean() < 0.5, name

# %% [markdown]
# **Check yourself, guidance.** Classifier-free guidance mixes the conditional and unconditional outputs,
# `o = o_u + w (o_c - o_u)`, as every diffusers pipeline does on the raw output. `u_hat` is affine in `o`, so
# guiding the output equals guiding the velocity: `u_hat(o) = u_u + w (u_c - u_u)`. That is why a diffusers
# pipeline can sample a Diff2Flow model unchanged (notebook 5).

# %%
with torch.no_grad():
    pipe = pipes[V_PRIOR]
    sched_v = Schedule.from_config(dict(pipe.scheduler.config))
    zk, tau = fm_to_diffusion(sched_v, x_t, t)
    o_c = pipe.unet(zk, tau, encoder_hidden_states=text_states(pipe, captions)).sample
    o_u = pipe.unet(zk, tau, encoder_hidden_states=text_states(pipe, [""] * B)).sample
w = 7.5
u_of = lambda o: fm_velocity(sched_v, o, x_t, t)  # noqa: E731
gap = (u_of(o_u + w * (o_c - o_u)) - (u_of(o_u) + w * (u_of(o_c) - u_of(o_u)))).abs().max().item()
print(f"max |u_hat(guided o) - guided u_hat| = {gap:.1e}")
assert gap < 1e-3

# %% [markdown]
# ## 3.4 Sampling the untouched prior as a flow-matching model
#
# FM Euler integrates `dx/dt = u_hat(x, t)` from noise (`t = 0`) to data (`t = 1`), one network call per
# step (docs/math.md §10):
#
#     x <- x + (t_{k+1} - t_k) * u_hat(x, t_k)        on a uniform grid 0 = t_0 < ... < t_K = 1
#
# **Why this works without training:** section 3.2. With `u_hat` from 3.1 the FM ODE is the diffusion model's
# probability-flow ODE, the one DDIM discretises, and one DDIM step is one FM Euler step on DDIM's grid
# (uniform in tau, trailing spacing) instead of a grid uniform in t. The samplers differ only in where they
# put their steps.
#
# Where to start: a model finetuned with Diff2Flow has learned all of `t` in [0, 1] and starts at `t = 0` from
# pure noise. An *untouched* diffusion model only knows the covered range, so d2f starts it at `t_min`, with
# the Gaussian noise taken as the diffusion sample at `tau = N-1` (FM state `x = z / c(t_min)`), exactly where
# DDIM starts. `d2f.pipeline.generate` runs either sampler on a loaded pipeline: same prompts, same per-image
# noise.

# %%
prompts = [
    "a red circle",
    "a blue square",
    "a green triangle",
    "a yellow cross",
    "a purple circle",
    "a red square",
    "a blue triangle",
    "a green cross",
]
settings = [("euler", 25), ("ddim", 25), ("euler", 8), ("ddim", 8), ("euler", 4), ("ddim", 4)]
start = time.perf_counter()
grids = {
    name: {(s, k): generate(pipe, prompts, sampler=s, steps=k, guidance=7.5, seed=0) for s, k in settings}
    for name, pipe in pipes.items()
}
print(f"{len(settings) * len(pipes) * len(prompts)} images in {time.perf_counter() - start:.1f} s")


# %%
def show_grid(rows: dict, title: str):
    fig, ax = plt.subplots(len(rows), len(prompts), figsize=(1.1 * len(prompts), 1.15 * len(rows)), squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for k, img in enumerate(images):
            ax[r, k].imshow(img.permute(1, 2, 0).numpy())
            ax[r, k].set_xticks([]), ax[r, k].set_yticks([])
            if r == 0:
                ax[r, k].set_title(prompts[k][2:], fontsize=7)
        ax[r, 0].set_ylabel(label, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()


for name in pipes:
    show_grid({f"{s} {k}": grids[name][(s, k)] for s, k in settings}, f"{name}, untouched, guidance 7.5")

# %% [markdown]
# At 25 steps the two samplers give nearly the same images from the same noise; at 4 steps both degrade,
# differently, because they place their few steps differently. The evaluator of the built-in world scores what was
# drawn: prompt accuracy is the fraction of images whose shape and colour match the prompt (chance 1/24). On 48 images
# an accuracy is uncertain (the cell's last line prints the interval of an accuracy of 0.5), so each comes with its
# 95% Wilson interval (`d2f.world.estimators.wilson_interval`): two accuracies whose intervals overlap widely (say
# 0.56 and 0.44) are not evidence that one sampler is better.

# %%
from d2f.world.estimators import wilson_interval
from d2f.world.metrics import prompt_accuracy

acc_prompts = [all_prompts()[k % 24] for k in range(48)]
rows = []
for name, pipe in pipes.items():
    for sampler in ("euler", "ddim"):
        for steps in (25, 4):
            images = generate(pipe, acc_prompts, sampler=sampler, steps=steps, guidance=7.5, seed=100)
            rows.append((name, sampler, steps, prompt_accuracy(images, acc_prompts)))
n_acc = len(acc_prompts)
print(f"{'prior':16s} {'sampler':8s} {'steps':>5s}  prompt accuracy ({n_acc} images) and its 95% Wilson interval")
for name, sampler, steps, acc in rows:
    lo, hi = wilson_interval(round(acc * n_acc), n_acc)
    print(f"{name:16s} {sampler:8s} {steps:5d}  {acc:.2f}  [{lo:.2f}, {hi:.2f}]")
lo, hi = wilson_interval(n_acc // 2, n_acc)
print(f"(an accuracy of 0.50 on {n_acc} images: [{lo:.2f}, {hi:.2f}])")

# %% [markdown]
# **Check yourself.** With 25 steps, zero-shot FM Euler draws the prompted shape and colour far above
# chance (1/24) on both priors, as DDIM does: the untouched diffusion model *is* a usable FM model. The bar
# is on the interval's *lower* end: at 25 steps it must exceed 0.6, for both samplers and both priors.

# %%
for name, sampler, steps, acc in rows:
    if steps == 25:
        lo, hi = wilson_interval(round(acc * n_acc), n_acc)
        assert lo > 0.6, (name, sampler, acc, lo)
print("ok")

# %% [markdown]
# ## 3.5 One ODE, two discretisations: the error table
#
# To compare the samplers as ODE solvers, start both at the **same point** of the covered range (as
# `generate` does for an untouched model): a diffusion sample `z` at `tau = N-1`, which in FM coordinates is
# `x = z / c(t_min)` at `t_min`. DDIM steps from `tau = N-1` on its own grid; FM Euler steps uniformly in `t`
# from `t_min` to 1. Here the grids and the start are passed explicitly. The reference end point and the
# error are those of the sampling benchmark (`benchmarks/bench_sampling.py`): the reference is FM Heun with
# 500 steps (999 network calls; second order, so its own error is far below every entry), the error the RMS
# latent distance to it per image, averaged over the images (the data has unit spread). The benchmark uses 48
# prompts, this notebook 4 (to stay within a few CPU minutes), so the numbers are comparable, not identical.
#
# **Predict first.** At 4 network calls, which is closer to the reference, FM Euler or DDIM? And by how much
# does the error shrink from 32 to 64 calls, if both are first-order methods?

# %%
ref_prompts = prompts[:4]  # 4 images: the 999-call reference is the cost of this section
z_start = torch.randn((len(ref_prompts), 4, 8, 8), generator=torch.Generator().manual_seed(42))
c_min = float(bridge_coefficients(sched, torch.tensor(t_min, dtype=torch.float64)).scale)
budgets = (2, 4, 8, 16, 32, 64)
REF_STEPS = 500  # FM Heun: 2 * 500 - 1 = 999 network calls, as in benchmarks/bench_sampling.py


def end_point(pipe, sampler, steps):
    """All start from the FM state x = z / c(t_min) at t_min (= tau N-1); only the grids differ."""
    ts = ddim_grid(sched, steps) if sampler == "ddim" else time_grid(steps, t_start=t_min)
    assert abs(float(ts[0]) - t_min) < 1e-9
    return sample_latents(pipe, ref_prompts, sampler, steps, 7.5, noise=z_start / c_min, ts=ts)


def rms(x, ref):
    """RMS latent distance per image, averaged over the images (benchmarks/bench_sampling.py)."""
    return (x - ref).flatten(1).pow(2).mean(1).sqrt().mean().item()


start = time.perf_counter()
table = {}
for name, pipe in pipes.items():
    ref = end_point(pipe, "heun", REF_STEPS)
    table[name] = {s: [rms(end_point(pipe, s, k), ref) for k in budgets] for s in ("euler", "ddim")}
print(f"computed in {time.perf_counter() - start:.1f} s\n")
print(f"RMS latent error against FM Heun-{REF_STEPS}   network calls: {budgets}")
for name in table:
    for s in ("euler", "ddim"):
        print(f"  {name:16s} {s:6s} " + " ".join(f"{e:6.3f}" for e in table[name][s]))
    print(
        f"  {name:16s} error ratio 32 -> 64 calls: "
        + "  ".join(f"{s} {table[name][s][-2] / table[name][s][-1]:.2f}" for s in ("euler", "ddim"))
    )

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
for axis, name in zip(ax, table):
    for s, marker in (("euler", "o-"), ("ddim", "s--")):
        axis.loglog(budgets, table[name][s], marker, label="FM Euler (uniform in t)" if s == "euler" else "DDIM")
    axis.loglog(
        budgets,
        [table[name]["euler"][0] * budgets[0] / k for k in budgets],
        ":",
        color="grey",
        label="slope -1 (first order)",
    )
    axis.set(title=name, xlabel="network calls")
    axis.set_xticks(budgets, [str(k) for k in budgets]), axis.minorticks_off()
    axis.legend(fontsize=8)
ax[0].set(ylabel=f"RMS latent error vs FM Heun-{REF_STEPS}")
fig.tight_layout()

# %% [markdown]
# **Check yourself.** Both discretisations converge to the reference end point, at first order: the error
# falls at every doubling of the budget, from 32 to 64 calls by a factor between 1.4 and 3 (2 for an ideal
# first-order method), and at 64 calls it is below 0.15 (docs/math.md §11: the test of the whole bridge,
# here on trained networks).

# %%
for name in table:
    for s in ("euler", "ddim"):
        e = table[name][s]
        assert all(b < a for a, b in zip(e, e[1:])), (name, s, e)
        assert 1.4 < e[-2] / e[-1] < 3 and e[-1] < 0.15, (name, s, e)
print("ok: same ODE, same limit, first order")

# %% [markdown]
# Which sampler wins at few steps depends on where the ODE bends: DDIM spends its steps uniformly in `tau`,
# Euler uniformly in `t`. The table above is the honest answer for these priors and these 4 prompts;
# `d2f sample --compare` and `benchmarks/bench_sampling.py` measure it on 48 prompts and with Heun.
#
# ## 3.6 What the Diff2Flow loss changes relative to diffusion finetuning
#
# Notebook 4 finetunes with three objectives. Two of them, Diff2Flow and the model's own diffusion loss, look
# different (a velocity target `x1 - x0` at uniform `t` versus an `eps` or `v` target at uniform timestep `i`),
# yet they are closely related. Inside the covered range (`t_eff = t`), write
# `d_eps = eps_hat - eps` and `d_x = x1_hat - x1`. The estimates and the truth lie on the same point of the
# path (3.1):
#
#     x_t = t x1_hat + (1-t) eps_hat = t x1 + (1-t) eps     =>     t d_x + (1-t) d_eps = 0
#
# and therefore, for every prediction type (docs/math.md §9),
#
#     u_hat - u = d_x - d_eps = -d_eps / t = d_x / (1 - t).
#
# * **epsilon** (`d_eps = o - eps`):  `||u_hat - u||^2 = ||o - eps||^2 / t^2`. The Diff2Flow loss *is* the epsilon
#   loss, weighted by `1/t^2 = (1 + sigma/alpha)^2`: about 1 near the data, 4 at `t = 1/2`, 244 at `t_min`.
# * **v-prediction** (`o` estimates `v = alpha eps - sigma x1`): from `z = alpha x1 + sigma eps` and
#   `alpha^2 + sigma^2 = 1`, `d_x = alpha z - sigma o - x1 = -sigma (o - v)` and
#   `d_eps = sigma z + alpha o - eps = alpha (o - v)`, so `u_hat - u = -(alpha + sigma)(o - v) = -c (o - v)`:
#   the v loss weighted by `c(t)^2`, between 1 and 2.
#
# This one identity explains what notebook 4 sees: the two objectives share their minimiser (the posterior
# means of 3.2), so Diff2Flow finetuning *tracks* diffusion finetuning; its loss values are larger (the weight is
# at least 1); and what actually differs is (1) the **time weighting**, (2) the **time distribution**
# (uniform `t` is not uniform `i`), (3) the **uncovered ends** `t < t_min`, `t > t_max`, which only Diff2Flow
# trains, and (4) a model that **samples as FM** from `t = 0`.
#
# **Check yourself, the identity** in float64 with d2f's conversions: perturb the exact outputs of 3.1 and
# compare the velocity error with the output error.

# %%
d64, n64 = data.double(), noise.double()
a64, s64, t64 = coef.alpha.view(B, 1, 1, 1), coef.sigma.view(B, 1, 1, 1), t.view(B, 1, 1, 1)
z64 = a64 * d64 + s64 * n64  # z = alpha x1 + sigma eps
delta = 0.3 * torch.randn(d64.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
targets64 = {"epsilon": n64, "v_prediction": a64 * n64 - s64 * d64}  # eps, v = alpha eps - sigma x1
for ptype, predicted_lhs in (
    ("epsilon", lambda o: -(o - targets64["epsilon"]) / t64),  # u_hat - u = -(o - eps) / t
    ("v_prediction", lambda o: -(a64 + s64) * (o - targets64["v_prediction"])),  # u_hat - u = -c (o - v)
):
    o = targets64[ptype] + delta
    lhs = velocity_from_output(o, z64, coef.alpha, coef.sigma, ptype) - (d64 - n64)  # u_hat - u
    gap = (lhs - predicted_lhs(o)).abs().max().item()
    print(f"{ptype:13s} max |(u_hat - u) - identity| = {gap:.1e}")
    assert gap < 1e-10, ptype

# %% [markdown]
# **Check yourself, against the real losses.** The identity must hold for d2f's own training losses,
# `Diff2FlowModel.loss` and `DiffusionModel.loss`, on any network. Take a toy network (a fixed smooth function
# of `z` and the timestep, nothing trained), the real latents of 3.1, and integer timesteps `i` from 0 to 999;
# give Diff2Flow the FM times `t = t(i)`, so that both losses see the same `z = alpha_i x1 + sigma_i eps`. Per
# sample, the Diff2Flow loss must be the diffusion loss times `1/t^2` (epsilon) or `c^2` (v). The losses run
# in float32, hence the tolerance.

# %%
from d2f import t_of_tau


def toy_net(z, timestep, cond):
    """Any network will do: a fixed smooth function of its input and of the (fractional) timestep."""
    tt = timestep.float().view(-1, 1, 1, 1)
    return 0.5 * torch.tanh(z) + 0.3 * torch.sin(tt / 150) * z.flip(1) + 0.1 * torch.cos(tt / 70)


N = sched.num_train_timesteps
i_steps = torch.linspace(0, N - 1, B).round()  # integer timesteps 0 .. 999
t_i = t_of_tau(sched, i_steps.double())  # their FM times, inside [t_min, t_max]
c_i = scale(sched, t_i)
ratios = {}
for ptype in ("epsilon", "v_prediction"):
    d2f_loss = Diff2FlowModel(sched, ptype).loss(toy_net, data, noise, t_i.float(), None).per_sample
    diffusion_loss = DiffusionModel(sched, ptype).loss(toy_net, data, noise, i_steps, None).per_sample
    weight = 1 / t_i**2 if ptype == "epsilon" else c_i**2
    ratios[ptype] = (d2f_loss.double() / diffusion_loss.double()).numpy()
    rel = (
        ((d2f_loss.double() - weight * diffusion_loss.double()) / (weight * diffusion_loss.double())).abs().max().item()
    )
    print(f"{ptype:13s} max relative |L_d2f - w(t) L_diffusion| / (w L_diffusion) = {rel:.1e}")
    assert rel < 1e-4, (ptype, rel)

# %% [markdown]
# **The time distribution.** Diffusion finetuning draws `i` uniformly: 10 % of its samples at `i < 100`, 0.1 %
# at `i = 999`. Diff2Flow draws `t` uniformly on [0, 1] and calls the network at `tau(t)`, clamped outside
# the covered range.
#
# **Predict first.** What fraction of Diff2Flow's uniform-`t` draws land at diffusion timesteps `tau < 100`?
# And what fraction sits exactly at `tau = 999`, the clamp at the noise end? (Notebook 2's numbers are enough.)

# %%
flow_eps = Diff2FlowModel(sched, "epsilon")
t_draws = flow_eps.sample_time(200_000, generator=torch.Generator().manual_seed(0)).double()
tau_draws = bridge_coefficients(sched, t_draws).tau
t_100 = float(t_of_tau(sched, torch.tensor(100.0, dtype=torch.float64)))
frac_low, frac_end = (tau_draws < 100).double().mean().item(), (tau_draws == N - 1).double().mean().item()
print(
    f"uniform t:  tau < 100 for {frac_low:.1%} of draws (exactly 1 - t(100) = {1 - t_100:.1%});"
    f"  clamped to tau = 999 for {frac_end:.1%} (t_min = {t_min:.1%})"
)
print("uniform i:  i < 100 for 10.0%,  i = 999 for 0.1%")
w_draws = 1 / bridge_coefficients(sched, t_draws).t_eff ** 2
print(
    f"mean epsilon weight E[1/t_eff^2] under uniform t: {w_draws.mean():.1f}  "
    f"(share of the total weight from t < 0.2: {(w_draws * (t_draws < 0.2)).sum() / w_draws.sum():.0%})"
)

# the figure of this section: the loss weights (left, from the cell before) and where each objective trains
t_plot = torch.linspace(t_min, t_max, 300, dtype=torch.float64)
fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
ax[0].plot(t_plot, 1 / t_plot**2, color="C0", label="1/t^2 (epsilon)")
ax[0].plot(t_plot, scale(sched, t_plot) ** 2, color="C1", label="c(t)^2 (v-prediction)")
ax[0].plot(t_i, ratios["epsilon"], "o", color="C0", ms=3, label="Diff2FlowModel.loss / DiffusionModel.loss, eps")
ax[0].plot(t_i, ratios["v_prediction"], "s", color="C1", ms=3, label="the same, v")
ax[0].set(
    xlabel="FM time t (0 = noise, 1 = data)", ylabel="loss weight w(t)", yscale="log", title="per-sample loss ratio"
)
ax[0].legend(fontsize=7)
ax[1].hist(tau_draws.numpy(), bins=100, range=(0, N - 1), density=True, alpha=0.7, label="Diff2Flow: tau(t), t uniform")
ax[1].axhline(1 / N, color="C1", label="diffusion: i uniform")
ax[1].set(xlabel="diffusion timestep tau", ylabel="density", yscale="log", title="where the network is trained")
ax[1].legend(fontsize=7)
fig.tight_layout()

# %% [markdown]
# **Check yourself.** The sampled fractions agree with the closed forms `1 - t(100)` and `t_min` (within
# 0.005, about four standard errors of 200,000 draws).

# %%
assert abs(frac_low - (1 - t_100)) < 0.005 and abs(frac_end - t_min) < 0.005, (frac_low, frac_end)
print("ok")

# %% [markdown]
# About a quarter of Diff2Flow's samples fall on the first tenth of the diffusion chain (nearly clean inputs,
# where the weight is close to 1), about 6 % on the single clamped timestep 999, where an epsilon model's
# weight is about 244: an epsilon model finetuned with Diff2Flow spends much of its gradient on the noise end,
# where an error in `eps_hat` is amplified into the data estimate. For a v model the weight stays within
# [1, 2] and the difference is mostly the time distribution and the ends. Notebook 4 measures what this does
# to a real finetune.
#
# ## Summary
#
# * `u_hat = x1_hat - eps_hat`, with both estimates read off the network output through `z`; exact for all
#   three prediction types, and affine in the output, so guidance carries over unchanged.
# * The estimates are posterior means, so `u_hat = E[x1 - x0 | x_t]`: an optimal diffusion model is an optimal
#   FM model on the covered range (checked to float64 rounding on a 2D mixture), but not at the clamped ends.
# * An untouched diffusion model, called through the bridge, is already a good FM velocity predictor; its
#   raw output is not.
# * One DDIM step is one FM Euler step on DDIM's grid (checked against diffusers' `DDIMScheduler.step`); the
#   FM ODE is the DDIM ODE (`x = t xbar`, `s = 1/t - 1`). FM Euler samples the untouched prior zero-shot, both
#   converge at first order to the sampling benchmark's FM Heun-500 reference, and at few steps they are two
#   discretisations with different errors. Accuracies on 48 images carry wide intervals (section 3.4).
# * The Diff2Flow loss is the diffusion loss weighted by `1/t^2` (epsilon) or `c(t)^2` (v), under a different
#   time distribution (uniform `t`: a quarter of the draws at `tau < 100`, 6 % clamped at `tau = 999`) and
#   including the uncovered ends: same minimiser, different emphasis.
#
# **Next:** notebook 4 (`04_finetuning.ipynb`) finetunes the prior into a new domain with the Diff2Flow
# objective, and compares it with naive FM and plain diffusion finetuning on the same data, seed and budget.
