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
# # 1. Diffusion schedules: betas, alphas_cumprod, alpha and sigma, log-SNR
#
# Diff2Flow ([Schusterbauer et al. 2025, arXiv:2506.02221](https://arxiv.org/abs/2506.02221)) turns a
# pretrained diffusion model into a flow-matching (FM) model. Section 1.0 says what FM is and why one would
# want that; everything Diff2Flow then does is a change of coordinates built from one object, the model's
# **noise schedule**, which the rest of this notebook takes apart.
#
# The whole bridge, with its diagram and tables, is summarised in [the bridge on one page](../docs/bridge.md);
# these notebooks derive and check each piece of it.
#
# **Learning goals**
#
# 0. Know what flow matching learns (the marginal velocity `E[x1 - x0 | x_t]`) and why one would read a
#    diffusion model as an FM model.
# 1. Go from the `betas` of a diffusers scheduler config to `alphas_cumprod`, `alpha`, `sigma` and
#    the log signal-to-noise ratio `lam`, and evaluate them at *fractional* timesteps.
# 2. See that SD 1.x and SD 2.x share one schedule and differ only in what the network predicts
#    (epsilon vs v).
# 3. Understand *zero terminal SNR*: why SD's last timestep is not pure noise, what that leaks (with a
#    measurement on real images), and what rescaling the schedule changes.
#
# **Conventions** (fixed in docs/math.md; used by every d2f docstring):
#
# | symbol | meaning |
# | --- | --- |
# | `x1` (data) | a clean sample (in SD: a VAE latent times the scaling factor) |
# | `x0` or `eps` (noise) | standard Gaussian noise, same shape |
# | `i` in {0..N-1}, `tau` in [0, N-1] | discrete / continuous **diffusion** time: **0 = data, N-1 = noise** |
# | `t` in [0, 1] | **FM** time: **t = 0 is noise, t = 1 is data** (notebook 2) |
# | `z = alpha*x1 + sigma*eps` | a diffusion-noised sample |
# | `x_t = t*x1 + (1-t)*x0` | the straight FM interpolant |
# | `u = x1 - x0`, `u_hat` | the **FM velocity** (noise -> data) and a model's estimate of it |
# | `v = alpha*eps - sigma*x1` | the **v-prediction target** of SD 2.x-style networks: *not* an FM velocity |
#
# Two "velocities" live in this field and must not be confused: `v` is only ever the v-prediction target,
# `u` (code: `velocity`) only ever the FM velocity.
#
# Naming trap: diffusion papers call the data "x0"; in FM (and in d2f) x0 is the *noise*. d2f's code
# says `data` and `noise` where it can.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook hint, not ours

import math

import matplotlib.pyplot as plt
import numpy as np
import torch

import d2f
from d2f import Schedule, t_range
from d2f.core.schedule import PRESETS, make_betas

torch.set_printoptions(precision=6, sci_mode=False)
print("d2f", d2f.__version__, "| torch", torch.__version__)

# %% [markdown]
# ## 1.0 Why: flow matching in one page, and why start from a diffusion model
#
# A **flow-matching model** generates by integrating an ODE `dx/dt = u(x, t)` from Gaussian noise at
# `t = 0` to data at `t = 1` (docs/math.md §2; Lipman et al. 2023, Liu et al. 2022). It is trained by plain
# regression: draw data `x1`, noise `x0` and a time `t`, form the point on the straight line between them,
#
#     x_t = t*x1 + (1-t)*x0,        minimise  E || f(x_t, t) - (x1 - x0) ||^2 .
#
# Each training pair moves at constant speed `x1 - x0`, but many pairs pass through the same `x_t`, so the
# best `f` is their average, the **marginal velocity**
#
#     u(x, t) = E[x1 - x0 | x_t = x]
#
# and integrating *that* field carries the noise distribution exactly onto the data distribution. Sampling
# is a handful of Euler steps along it; the objective has no weighting to tune; and it is what SD3 and Flux
# are trained with.
#
# **Why from a diffusion model?** Most pretrained image models (SD 1.x, 2.x) are *diffusion* models. Diff2Flow
# observes that such a network already estimates this marginal velocity, after three changes of coordinates:
# its time (`t = alpha/(alpha+sigma)`, notebook 2), its input (`z = c(t) x_t`, notebook 2), and its output
# (`u_hat = x1_hat - eps_hat`, notebook 3). So one can finetune it with the FM objective, and sample it as an
# FM model, without training an FM model from scratch. What that changes relative to ordinary diffusion
# finetuning is derived in notebook 3 (section 3.6) and measured in notebook 4.
#
# The picture below makes the marginal velocity concrete on a 2D toy whose data is a mixture of three small
# Gaussian blobs. There `E[x1 - x0 | x_t]` has a closed form: given `x_t`, each blob `k` has a posterior
# weight `r_k`, and within a blob everything is Gaussian.

# %%
# data: x1 ~ sum_k w_k N(mu_k, s^2 I) in 2D; noise x0 ~ N(0, I)
MU = torch.tensor([[-2.0, 1.0], [2.0, 1.0], [0.0, -2.0]], dtype=torch.float64)
W_K = torch.tensor([0.3, 0.3, 0.4], dtype=torch.float64)
S_K = 0.3


def marginal_velocity(x: torch.Tensor, t: float) -> torch.Tensor:
    """u(x, t) = E[x1 - x0 | x_t = x] for the mixture, float64; x is (B, 2)."""
    # given blob k:  x_t ~ N(t mu_k, var_t I),  var_t = t^2 s^2 + (1-t)^2
    var_t = t**2 * S_K**2 + (1 - t) ** 2
    d = x[:, None, :] - t * MU[None]  # (B, K, 2): x - t mu_k
    # r_k proportional to w_k N(x; t mu_k, var_t I)   (same var_t for all k: the normaliser cancels)
    r = torch.softmax(W_K.log() - (d**2).sum(-1) / (2 * var_t), dim=1)
    # E[x1 | x_t, k] = mu_k + (t s^2 / var_t) d,   E[x0 | x_t, k] = ((1-t) / var_t) d
    u_k = MU[None] + (t * S_K**2 - (1 - t)) / var_t * d
    return (r[..., None] * u_k).sum(1)


def sample_data(n: int, gen: torch.Generator) -> torch.Tensor:
    k = torch.multinomial(W_K, n, replacement=True, generator=gen)
    return MU[k] + S_K * torch.randn(n, 2, generator=gen, dtype=torch.float64)


from d2f.sampling import sample_euler, time_grid

gen = torch.Generator().manual_seed(0)
pairs_x0, pairs_x1 = torch.randn(40, 2, generator=gen, dtype=torch.float64), sample_data(40, gen)
starts = torch.randn(40, 2, generator=gen, dtype=torch.float64)
path = [starts]
sample_euler(marginal_velocity, starts, time_grid(200), callback=lambda st: path.append(st["x"]))
path = torch.stack(path)  # (201, 40, 2): the marginal ODE from 40 noise points

fig, ax = plt.subplots(1, 2, figsize=(10, 4.4), sharex=True, sharey=True)
for k in range(40):
    ax[0].plot([pairs_x0[k, 0], pairs_x1[k, 0]], [pairs_x0[k, 1], pairs_x1[k, 1]], color="C0", lw=0.7, alpha=0.6)
    ax[1].plot(path[:, k, 0], path[:, k, 1], color="C1", lw=0.9)
ax[0].scatter(*pairs_x0.T, s=8, color="k", label="noise x0 (t = 0)")
ax[0].scatter(*pairs_x1.T, s=8, color="C3", label="data x1 (t = 1)")
ax[0].plot([], [], color="C0", label="training pairs: x_t = t x1 + (1-t) x0")
ax[1].scatter(*path[0].T, s=8, color="k", label="start: noise")
ax[1].scatter(*path[-1].T, s=8, color="C3", label="end: generated")
ax[1].plot([], [], color="C1", label="dx/dt = E[x1 - x0 | x_t]")
ax[0].set(title="what FM trains on: straight, crossing lines", xlabel="x[0]", ylabel="x[1]")
ax[1].set(title="what it learns: the marginal flow (curved, never crossing)", xlabel="x[0]")
for axis in ax:
    axis.legend(fontsize=7, loc="lower left")
    axis.set_aspect("equal")
fig.tight_layout()

# %% [markdown]
# The training lines cross; an ODE's trajectories cannot, so the marginal flow bends: it first heads for
# the data's mean, then commits to a blob. That curvature is what makes few-step sampling imperfect.
#
# **Check yourself.** Integrating the marginal velocity from fresh noise must reproduce the data: the same
# blob weights (each within 0.03 of `w_k`) and points within a few `s` of their blob's centre.

# %%
x_gen = sample_euler(marginal_velocity, torch.randn(4000, 2, generator=gen, dtype=torch.float64), time_grid(200))
dist = torch.cdist(x_gen, MU)  # (4000, K)
blob = dist.argmin(1)
share = torch.bincount(blob, minlength=3).double() / len(x_gen)
print("blob shares", [round(v, 3) for v in share.tolist()], " target", W_K.tolist())
print(f"distance to own blob centre: median {dist.min(1).values.median():.3f} (s = {S_K}; sqrt(2 ln 2) s = 0.353)")
assert (share - W_K).abs().max() < 0.03
assert dist.min(1).values.median() < 0.45 and dist.min(1).values.max() < 5 * S_K

# %% [markdown]
# ## 1.1 From betas to alphas_cumprod
#
# A discrete diffusion model adds a little Gaussian noise at each of N steps; step `k` keeps a fraction
# `1 - beta_k` of the variance. After steps `0..i` the surviving signal variance is
#
#     abar_i = prod_{k<=i} (1 - beta_k)          (diffusers: alphas_cumprod)
#
# and the noised sample is `z_i = sqrt(abar_i) * x1 + sqrt(1 - abar_i) * eps`.
#
# diffusers knows three beta schedules. Stable Diffusion uses `scaled_linear`: `sqrt(beta)` linear
# from `sqrt(0.00085)` to `sqrt(0.012)`, N = 1000. `d2f.core.schedule.make_betas` builds the same tables:

# %%
N = 1000
betas = {
    "scaled_linear (SD)": make_betas("scaled_linear", N, 0.00085, 0.012),
    "linear (DDPM)": make_betas("linear", N, 0.0001, 0.02),
    "squaredcos_cap_v2 (cosine)": make_betas("squaredcos_cap_v2", N),
}
abar = {name: torch.cumprod(1 - b, dim=0) for name, b in betas.items()}

fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
for name in betas:
    ax[0].plot(betas[name], label=name)
    ax[1].plot(abar[name], label=name)
ax[0].set(xlabel="timestep i", ylabel="beta_i", title="betas", yscale="log")
ax[0].legend(fontsize=8)
ax[1].set(xlabel="timestep i", ylabel="abar_i", title="alphas_cumprod: signal variance left")
ax[1].legend()
fig.tight_layout()

# %% [markdown]
# `Schedule` holds the table `abar` in float64 (plus the prediction type). The SD 1.5 preset is the
# scheduler config published with the model:

# %%
sd15 = Schedule.preset("sd15")
print(sd15)
print("config:", PRESETS["sd15"])
print("abar_0 =", float(sd15.alphas_cumprod[0]), "  abar_{N-1} =", float(sd15.alphas_cumprod[-1]))

# %% [markdown]
# **Check yourself.** d2f's table must be exactly `cumprod(1 - beta)` and must agree with diffusers' own
# scheduler for the same config (diffusers computes in float32, hence the tolerance).

# %%
from diffusers import DDPMScheduler

assert torch.equal(sd15.alphas_cumprod, abar["scaled_linear (SD)"])
ddpm = DDPMScheduler(**{k: v for k, v in PRESETS["sd15"].items()})
gap = (ddpm.alphas_cumprod.double() - sd15.alphas_cumprod).abs().max().item()
print(f"max |diffusers - d2f| over all 1000 timesteps: {gap:.2e}")
assert gap < 1e-6

# %% [markdown]
# ## 1.2 alpha and sigma, at any (fractional) tau
#
#     alpha = sqrt(abar)    (signal scale)        sigma = sqrt(1 - abar)    (noise scale)
#     z = alpha * x1 + sigma * eps,    alpha^2 + sigma^2 = 1
#
# Notebook 2 will need the schedule *between* integer timesteps: an FM time `t` maps to a fractional
# `tau` such as 353.89. d2f interpolates the **log-SNR** `lam` (section 1.3; docs/math.md §3) linearly in
# tau and derives alpha and sigma from it: `alpha^2 + sigma^2 = 1` holds at every tau and the table is
# reproduced exactly at integers. (That alone is no reason to prefer `lam`: interpolating `abar` linearly
# would keep both properties too. The reason comes in 1.3.)

# %%
taus = torch.tensor([0.0, 1.0, 250.0, 353.89, 500.0, 750.0, 998.5, 999.0], dtype=torch.float64)
alpha, sigma = sd15.alpha(taus), sd15.sigma(taus)
print(f"{'tau':>8} {'alpha':>9} {'sigma':>9} {'alpha^2+sigma^2':>16}")
for row in zip(taus.tolist(), alpha.tolist(), sigma.tolist(), (alpha**2 + sigma**2).tolist()):
    print("{:8.2f} {:9.6f} {:9.6f} {:16.12f}".format(*row))

# %% [markdown]
# **Check yourself.** At integer tau, alpha^2 is the table entry; at random fractional tau,
# alpha^2 + sigma^2 = 1 and both lie strictly inside (0, 1).

# %%
ints = torch.arange(N, dtype=torch.float64)
assert torch.allclose(sd15.alpha(ints) ** 2, sd15.alphas_cumprod, rtol=0, atol=1e-12)

rand_tau = torch.rand(10_000, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * (N - 1)
a, s = sd15.alpha(rand_tau), sd15.sigma(rand_tau)
assert torch.allclose(a**2 + s**2, torch.ones_like(a), atol=1e-12)
assert bool(((a > 0) & (a < 1) & (s > 0) & (s < 1)).all())
print("ok: table reproduced at integers; alpha^2 + sigma^2 = 1 at 10,000 random fractional taus")

# %% [markdown]
# ## 1.3 The log signal-to-noise ratio
#
#     lam = log(abar / (1 - abar)) = 2 * log(alpha / sigma)
#
# `lam` is the natural coordinate of a diffusion schedule: every Gaussian schedule with the same `lam`
# curve is the same model up to a rescaling of `z`. It must be **strictly decreasing** in tau (more noise
# at every step), otherwise the time map of notebook 2 would not be invertible. d2f defines, for
# fractional tau,
#
#     lam(tau) = piecewise-linear interpolation of lam_i in tau
#     alpha(tau) = sqrt(sigmoid(lam(tau)))      sigma(tau) = sqrt(sigmoid(-lam(tau)))
#
# **Why interpolate `lam` and not `abar`?** Notebook 2 shows that the FM time of a timestep depends on
# `lam` alone: `t = alpha/(alpha+sigma) = sigmoid(lam/2)`. So with `lam` piecewise linear in tau, the
# inverse map `t -> tau` is closed-form and exact: `lam = 2*logit(t)`, then one linear solve on the segment
# that contains it (docs/math.md §3-§4). With `abar` interpolated one would first have to convert
# `t -> abar = t^2/(t^2 + (1-t)^2)`, a detour through the quantity `t` does not depend on directly.

# %%
lam_table = sd15.log_snr_table
print(f"lam_0 = {lam_table[0]:.3f}   lam_{{N-1}} = {lam_table[-1]:.3f}")

fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
tau_fine = torch.linspace(0, N - 1, 2001, dtype=torch.float64)
ax[0].plot(tau_fine, sd15.alpha(tau_fine), label="alpha (signal)")
ax[0].plot(tau_fine, sd15.sigma(tau_fine), label="sigma (noise)")
ax[0].axhline(1 / math.sqrt(2), ls=":", color="k", lw=0.8)
ax[0].set(xlabel="diffusion time tau (0 = data)", ylabel="scale", title="SD: alpha and sigma (dotted: 1/sqrt 2)")
ax[0].legend()
for name in abar:
    a_ = abar[name].clamp(max=1 - 1e-12)
    ax[1].plot((a_ / (1 - a_)).log(), label=name)
ax[1].set(xlabel="timestep i", ylabel="lam = log(abar / (1 - abar))", title="log-SNR of the three beta schedules")
ax[1].legend()
fig.tight_layout()

# %% [markdown]
# **Check yourself.** `lam` is strictly decreasing, equals `log(abar/(1-abar))` at integers, is linear
# between them (the midpoint is the mean of its neighbours), and `alpha/sigma = exp(lam/2)`.

# %%
assert bool((lam_table[1:] < lam_table[:-1]).all())
assert torch.allclose(sd15.log_snr(ints), (sd15.alphas_cumprod / (1 - sd15.alphas_cumprod)).log(), atol=1e-10)
mid = sd15.log_snr(torch.tensor(123.5, dtype=torch.float64))
assert abs(float(mid) - float(lam_table[123] + lam_table[124]) / 2) < 1e-12
assert torch.allclose(sd15.alpha(rand_tau) / sd15.sigma(rand_tau), (sd15.log_snr(rand_tau) / 2).exp(), rtol=1e-10)
print("ok: lam strictly decreasing, exact at integers, linear in between, alpha/sigma = exp(lam/2)")

# %% [markdown]
# ## 1.4 SD 1.x vs SD 2.x: one schedule, two prediction types
#
# The public configs of SD 1.5, SD 2 base (512 px) and SD 2.1 (768 px) use the *same* betas. What
# differs is the network's target:
#
# | preset | models | `prediction_type` | the network predicts |
# | --- | --- | --- | --- |
# | `sd15` | SD 1.x | `epsilon` | the noise `eps` |
# | `sd2-base` | SD 2 / 2.1 base, 512 px | `epsilon` | the noise `eps` |
# | `sd2-v` | SD 2 / 2.1, 768 px | `v_prediction` | `v = alpha*eps - sigma*x1` |
#
# The schedule alone therefore does not say how to read the network: notebook 3 turns each prediction
# type into an FM velocity.

# %%
presets = {name: Schedule.preset(name) for name in PRESETS}
for name, sched in presets.items():
    print(f"{name:9s} prediction_type={sched.prediction_type:13s} abar_N-1={float(sched.alphas_cumprod[-1]):.6f}")
assert all(torch.equal(sched.alphas_cumprod, sd15.alphas_cumprod) for sched in presets.values())
assert [s.prediction_type for s in presets.values()] == ["epsilon", "epsilon", "v_prediction"]

# %% [markdown]
# ## 1.5 Zero terminal SNR, and why it matters
#
# SD's last timestep keeps `abar_{N-1} = 0.0047`, i.e. `alpha_{N-1} = 0.068`: the training input at
# tau = N-1 still contains 6.8 % of the image. Per pixel that is invisible (SNR 0.0047), but averaged
# over the whole image the noise shrinks like `1/sqrt(D)` while the signal does not. So the *mean* of
# `z` (the image's overall brightness) survives: the network learns to read it at tau = N-1, yet at
# sampling time it starts from true noise, whose mean is zero. Lin et al. (2024), "Common Diffusion Noise
# Schedules and Sample Steps are Flawed", show this is why SD cannot make very dark or very bright
# images.
#
# We can measure the leak on real images of d2f's built-in world: 32 px shapes on a light background
# (the *base* domain) or a dark one (the *target* domain). Noise them to tau = N-1 and try to tell the
# two apart from **the mean of z alone**.
#
# **Predict first.** The per-pixel SNR at tau = N-1 is 0.0047 (signal std 0.068 against noise std 0.998).
# A classifier that only looks at the sign of the image mean of `z`: what accuracy do you expect, 50 %
# (chance), 75 %, or 99 %? Write your guess down, then run the next two cells.

# %%
from d2f.world.shapes import draw, make_specs


def images(domain: str, n: int, seed: int) -> torch.Tensor:
    """n shapes images of a domain as a float64 tensor (n, 3, 32, 32) in [-1, 1] (SD's pixel range)."""
    arrays = [np.asarray(draw(spec), dtype=np.float64) for spec in make_specs(n, domain, seed)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) / 127.5 - 1


light, dark = images("base", 256, seed=1), images("target", 256, seed=1)
fig, ax = plt.subplots(1, 8, figsize=(10, 1.5))
for k, img in enumerate(torch.cat([light[:4], dark[:4]])):
    ax[k].imshow(((img.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
    ax[k].axis("off")
fig.suptitle("base domain (light) and target domain (dark)", y=1.05)
print("D =", light[0].numel(), "elements per image")


# %%
def leak_accuracy(schedule: Schedule, tau: float, seed: int = 0) -> float:
    """Noise both sets to tau; classify 'light' when mean(z) > 0; return the accuracy."""
    g = torch.Generator().manual_seed(seed)
    tau_ = torch.tensor(float(tau), dtype=torch.float64)
    alpha, sigma = schedule.alpha(tau_), schedule.sigma(tau_)
    z_light = alpha * light + sigma * torch.randn(light.shape, generator=g, dtype=torch.float64)
    z_dark = alpha * dark + sigma * torch.randn(dark.shape, generator=g, dtype=torch.float64)
    correct = (z_light.mean(dim=(1, 2, 3)) > 0).sum() + (z_dark.mean(dim=(1, 2, 3)) <= 0).sum()
    return float(correct) / (len(light) + len(dark))


from d2f.world.estimators import wilson_interval

n_leak = len(light) + len(dark)
acc_sd = leak_accuracy(sd15, N - 1)
lo_sd, hi_sd = wilson_interval(round(acc_sd * n_leak), n_leak)
print(f"SD schedule, tau = N-1: mean(z) tells light from dark for {acc_sd:.1%} of {n_leak} images")
print(f"  95% Wilson interval [{lo_sd:.1%}, {hi_sd:.1%}]")
# the noise left in the mean over D elements: sigma / sqrt(D)
noise_of_mean = float(sd15.sigma(torch.tensor(N - 1.0))) / math.sqrt(light[0].numel())
print(f"  noise std of the image mean: sigma_(N-1) / sqrt(D) = {noise_of_mean:.3f}")

# %% [markdown]
# The per-pixel SNR at tau = N-1 is 0.0047, yet a one-number classifier is nearly perfect: the image mean
# averages the noise over D = 3072 elements (its std drops to `sigma/sqrt(D)`, printed above) while the signal
# difference between the domains stays. The fix of
# Lin et al. (docs/math.md §12) rescales alpha so that the last step is pure noise while the
# first step stays put:
#
#     alpha'_i = (alpha_i - alpha_{N-1}) * alpha_0 / (alpha_0 - alpha_{N-1}),     abar' = alpha'^2
#
# Then `alpha'_{N-1} = 0`, `lam_{N-1} = -inf`, and nothing leaks:

# %%
zt = Schedule.preset("sd2-v", zero_terminal_snr=True)
print(zt)
ends = zt.alpha(torch.tensor([0.0, N - 1.0], dtype=torch.float64))
print(f"alpha'_0 = {ends[0]:.6f} (SD: {sd15.alpha(torch.tensor(0.0)):.6f})   alpha'_(N-1) = {ends[1]:.6f}")
acc_zt = leak_accuracy(zt, N - 1)
lo_zt, hi_zt = wilson_interval(round(acc_zt * n_leak), n_leak)
print(f"zero terminal SNR, tau = N-1: {acc_zt:.1%}, 95% interval [{lo_zt:.1%}, {hi_zt:.1%}] (chance is 50%)")

# %% [markdown]
# **Check yourself.** The leak is real on SD's schedule and gone with zero terminal SNR; the rescaled
# table keeps alpha_0, ends at exactly 0, and matches diffusers' `rescale_betas_zero_snr=True`.

# %%
assert lo_sd > 0.9, (acc_sd, lo_sd)  # far above chance, with its interval
assert lo_zt < 0.5 < hi_zt, (acc_zt, lo_zt, hi_zt)  # chance lies inside the interval
assert torch.isclose(zt.alphas_cumprod[0], sd15.alphas_cumprod[0], atol=1e-15)
assert float(zt.alphas_cumprod[-1]) == 0.0 and float(zt.log_snr(torch.tensor(N - 1.0))) == -math.inf
ddpm_zt = DDPMScheduler(**PRESETS["sd2-v"], rescale_betas_zero_snr=True)
assert torch.allclose(ddpm_zt.alphas_cumprod.double(), zt.alphas_cumprod, atol=1e-6)
print("ok")

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
ax[0].plot(tau_fine, sd15.alpha(tau_fine), label="SD")
ax[0].plot(tau_fine, zt.alpha(tau_fine), "--", label="zero terminal SNR")
ax[0].set(
    xlabel="diffusion time tau",
    ylabel="alpha",
    title="alpha (signal scale), last 200 steps",
    xlim=(800, 999),
    ylim=(0, 0.3),
)
ax[0].legend()
ax[1].plot(tau_fine, sd15.log_snr(tau_fine), label="SD")
lam_zt = zt.log_snr(tau_fine)
ax[1].plot(tau_fine[lam_zt.isfinite()], lam_zt[lam_zt.isfinite()], "--", label="zero terminal SNR (-> -inf)")
ax[1].set(xlabel="diffusion time tau", ylabel="lam", title="log-SNR")
ax[1].legend()
fig.tight_layout()

# %% [markdown]
# Zero terminal SNR is not free:
#
# * The network was trained on the *original* schedule. Rescaling changes alpha and sigma at every
#   step, so it is a choice for **finetuning**, not for sampling an untouched model.
# * An **epsilon** model cannot be used at the noise end: it reads the data as
#   `x1_hat = (z - sigma*o) / alpha`, and alpha = 0 there. d2f refuses the combination with a clear
#   error rather than dividing by zero; **v-prediction** (`x1_hat = alpha*z - sigma*o`) is fine. That
#   is why the option is meant for v models such as SD 2.1.

# %%
from d2f import UserError, check_bridge

check_bridge(zt, "v_prediction")  # fine
try:
    check_bridge(zt, "epsilon")
    raise AssertionError("an epsilon model on a zero-terminal-SNR schedule must be refused")
except UserError as err:
    print("UserError:", err)

# %% [markdown]
# ## 1.6 The whole schedule in one figure
#
# `d2f inspect-schedule --preset sd15 --plot schedule.png` draws the figure below (the library function
# is `d2f.schedule_report.plot_schedule`). Its right-hand panels preview notebook 2: the FM time `t`
# that each tau corresponds to, and the scale `c`. The grey bands are FM times that no diffusion
# timestep reaches; the numbers come from `schedule_report`, the JSON of `--json`.

# %%
import tempfile
from pathlib import Path

from IPython.display import Image, display

from d2f.schedule_report import plot_schedule, schedule_report

png = plot_schedule(sd15, Path(tempfile.mkdtemp()) / "sd15.png", title="SD 1.5 schedule (d2f inspect-schedule)")
display(Image(filename=str(png), width=760))
report = schedule_report(sd15)
print({k: report[k] for k in ("prediction_type", "t_min", "t_max", "scale_max", "scale_max_tau")})

# %% [markdown]
# **Check yourself.** The covered FM range of SD is [0.0640, 0.9717] (docs/math.md §4), and it
# reaches t = 0 only with zero terminal SNR.

# %%
t_min, t_max = t_range(sd15)
assert abs(t_min - 0.0640) < 5e-5 and abs(t_max - 0.9717) < 5e-5, (t_min, t_max)
assert t_range(zt)[0] == 0.0
print(f"SD: t in [{t_min:.4f}, {t_max:.4f}];  zero terminal SNR: t in [{t_range(zt)[0]:.4f}, {t_range(zt)[1]:.4f}]")

# %% [markdown]
# ## Summary
#
# * Flow matching learns the marginal velocity `E[x1 - x0 | x_t]` by regression on straight lines; its ODE
#   carries noise to data along curved trajectories. Diff2Flow reads a pretrained diffusion model as such a
#   model (arXiv:2506.02221).
# * A schedule is the table `abar_i = prod (1 - beta_k)`; `alpha = sqrt(abar)`, `sigma = sqrt(1 - abar)`,
#   `lam = log(abar/(1-abar))`. d2f interpolates `lam` linearly for fractional tau: that keeps
#   `alpha^2 + sigma^2 = 1` (as interpolating `abar` would), and, the real reason, makes the FM time
#   `t = sigmoid(lam/2)` exactly invertible in closed form.
# * SD 1.x and 2.x share the scaled-linear schedule; they differ in `prediction_type` (epsilon vs v).
# * SD's last step is not pure noise (`alpha_{N-1} = 0.068`); the image mean leaks through it, which we
#   measured on real images. Zero terminal SNR removes the leak, changes the schedule the network was
#   trained on, and works only with v-prediction.
#
# **Next:** notebook 2 (`02_time_map.ipynb`) turns the diffusion time tau into the FM time t and shows that
# a diffusion sample *is* a rescaled point on the straight FM path, on real latents of a built-in model.
