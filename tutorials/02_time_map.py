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
# # 2. The time map and interpolant alignment
#
# A diffusion model was trained on `z = alpha*x1 + sigma*eps`; a flow-matching model lives on the
# straight path `x_t = t*x1 + (1-t)*x0`. Diff2Flow's first two ingredients say how one is the other:
# which FM time `t` a diffusion timestep `tau` is, and by how much to scale an FM sample before the
# diffusion network sees it.
#
# **Learning goals**
#
# 1. Derive the time map `t = alpha/(alpha+sigma) = sigmoid(lam/2)` and use d2f's `t_of_tau` and its
#    exact inverse `tau_of_t`.
# 2. Know the covered range `[t_min, t_max]`, what happens outside it (the clamp), and why the map is
#    not the naive linear `t = 1 - tau/(N-1)`.
# 3. Understand the scale `c(t) = alpha + sigma` that aligns the two interpolants, and check on **real
#    latents** of a built-in model, against diffusers' own noising, that `c(t) * x_t` is the diffusion
#    sample.
#
# Symbols as in notebook 1 and docs/math.md: **t = 0 is noise, t = 1 is data**; tau = 0 is data,
# tau = N-1 is noise; `x1` data, `x0 = eps` noise.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook hint, not ours

import math

import matplotlib.pyplot as plt
import torch

from d2f import (
    Schedule,
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

torch.set_printoptions(precision=5, sci_mode=False)

import sys
from pathlib import Path

import d2f

# the exercises' grader (tutorials/exercises.py): in this notebook's folder, or in the checkout d2f runs from
TUTORIALS = next(
    p for p in (Path.cwd(), Path(d2f.__file__).resolve().parents[1] / "tutorials") if (p / "exercises.py").is_file()
)
sys.path.insert(0, str(TUTORIALS))
from exercises import grade  # noqa: E402

sched = Schedule.preset("sd15")
N = sched.num_train_timesteps
print(sched)

# %% [markdown]
# ## 2.1 Deriving the time map
#
# Take a diffusion sample and divide it by `alpha + sigma`:
#
#     z / (alpha + sigma) = alpha/(alpha+sigma) * x1 + sigma/(alpha+sigma) * eps
#                         =          t          * x1 +        (1 - t)    * eps
#
# The two weights add up to 1, so the result is exactly a point of the straight FM path, at
#
#     t(tau) = alpha / (alpha + sigma) = 1 / (1 + sigma/alpha) = sigmoid(lam(tau) / 2)
#
# using `alpha/sigma = exp(lam/2)` from notebook 1. Because `lam` is strictly decreasing, so is `t(tau)`,
# and the inverse is explicit: `lam = 2*logit(t)`, then `tau` is where the piecewise-linear `lam(tau)`
# takes that value, one linear solve on one segment. This is why notebook 1 interpolates `lam` (not `abar`)
# between timesteps: `t` is a function of `lam` alone, so the inverse needs no iteration and is exact.
# `d2f.t_of_tau` and `d2f.tau_of_t` are the two directions.

# %%
taus = torch.tensor([0.0, 100.0, 353.89, 500.0, 750.0, 999.0], dtype=torch.float64)
t = t_of_tau(sched, taus)
alpha, sigma = sched.alpha(taus), sched.sigma(taus)
for row in zip(taus.tolist(), t.tolist(), (alpha / (alpha + sigma)).tolist()):
    print("tau = {:7.2f}   t(tau) = {:.6f}   alpha/(alpha+sigma) = {:.6f}".format(*row))

# %% [markdown]
# **Your job: the inverse map.** Write `tau_from_t(lam_table, t)`, the timestep `tau(t)` for FM times `t` of
# the covered range, from the log-SNR at the integer timesteps (`lam_table[i] = lam(i)`, strictly decreasing):
# the log-SNR that `t` asks for, the segment `[i, i + 1]` of the table that contains it (`torch.searchsorted`
# finds it in an increasing table: search `-lam_table`), and the linear solve on that segment. The next cell
# grades it against `d2f.tau_of_t`, and the check cell below uses it again. While the stub is unchanged, the
# notebook grades and uses the reference solution (`tutorials/solutions/inverse_time_map.py`) instead.


# %%
def tau_from_t(lam_table, t):
    """tau(t) for FM times t in [t_min, t_max] (float64), from lam_table[i] = lam(i), i = 0..N-1."""
    # YOUR CODE HERE: lam from t, the segment i, then tau = i + (the fraction of the segment)
    raise NotImplementedError("your job: the inverse time map")


# %%
lam_table = sched.log_snr(torch.arange(N, dtype=torch.float64))  # lam(i) at the integer timesteps
tau_from_t = grade(tau_from_t)

# %% [markdown]
# **Check yourself.** Both formulas of `t(tau)` agree; `t` decreases strictly; the two directions invert
# each other to float64 precision at random fractional points, and your `tau_from_t` is the library's.

# %%
g = torch.Generator().manual_seed(0)
rand_tau = torch.rand(20_000, generator=g, dtype=torch.float64) * (N - 1)
t_rand = t_of_tau(sched, rand_tau)
a, s = sched.alpha(rand_tau), sched.sigma(rand_tau)
assert torch.allclose(t_rand, a / (a + s), rtol=0, atol=1e-12)
assert torch.allclose(t_rand, torch.sigmoid(sched.log_snr(rand_tau) / 2), rtol=0, atol=1e-12)

tau_grid = torch.linspace(0, N - 1, 50_001, dtype=torch.float64)
assert bool((t_of_tau(sched, tau_grid).diff() < 0).all()), "t(tau) must be strictly decreasing"

t_min, t_max = t_range(sched)
assert (tau_of_t(sched, t_rand) - rand_tau).abs().max() < 1e-8  # tau -> t -> tau
rand_t = t_min + torch.rand(20_000, generator=g, dtype=torch.float64) * (t_max - t_min)
assert (t_of_tau(sched, tau_of_t(sched, rand_t)) - rand_t).abs().max() < 1e-12  # t -> tau -> t
assert (tau_from_t(lam_table, t_rand) - rand_tau).abs().max() < 1e-8  # yours: tau -> t -> tau
print("ok: t = alpha/(alpha+sigma) = sigmoid(lam/2), strictly decreasing, exact inverse both ways")

# %% [markdown]
# ## 2.2 Not the linear map
#
# A tempting shortcut is `t = 1 - tau/(N-1)`: the "naive FM" baseline of notebook 4 feeds the network that
# timestep. The true map is far from linear: the middle of FM time, `t = 0.5`, is where signal and noise
# are equally strong (`alpha = sigma`).
#
# **Predict first.** Which diffusion timestep is `t = 0.5` for SD? The naive map says 499.5. Is the true
# one larger or smaller, and by roughly how much? (Hint: notebook 1's plot of alpha and sigma.) The cell
# prints the answer under the plot.

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 3.6))
ax[0].plot(tau_grid[::100], t_of_tau(sched, tau_grid[::100]), label="t(tau) = alpha/(alpha+sigma)")
ax[0].plot([0, N - 1], [1, 0], "--", label="naive  t = 1 - tau/(N-1)")
for y, lab in ((t_min, "t_min, t_max: the covered range"), (t_max, None)):
    ax[0].axhline(y, color="grey", lw=0.8, ls=":", label=lab)
ax[0].set(xlabel="diffusion time tau (0 = data)", ylabel="FM time t (1 = data)", title="the time map")
ax[0].legend()
t_fine = torch.linspace(t_min, t_max, 400, dtype=torch.float64)
ax[1].plot(t_fine, tau_of_t(sched, t_fine), label="tau(t)  (d2f)")
ax[1].plot([0, 1], [N - 1, 0], "--", label="naive  tau = (1-t)(N-1)")
ax[1].set(xlabel="FM time t", ylabel="diffusion timestep tau", title="the inverse: which timestep to call")
ax[1].legend()
fig.tight_layout()

tau_half = float(tau_of_t(sched, torch.tensor(0.5, dtype=torch.float64)))
print(f"t = 0.5 is tau = {tau_half:.2f}; the naive map would call the network at tau = {(1 - 0.5) * (N - 1):.1f}")
assert abs(float(sched.alpha(torch.tensor(tau_half))) - float(sched.sigma(torch.tensor(tau_half)))) < 1e-12

# %% [markdown]
# ## 2.3 The covered range and the clamp
#
# The schedule only reaches `t` between `t_min = t(N-1)` and `t_max = t(0)`. For SD:

# %%
print(f"t_min = t(N-1) = {t_min:.4f}      t_max = t(0) = {t_max:.4f}")

# %% [markdown]
# An FM sampler starts at `t = 0` (pure noise) and ends at `t = 1` (data); both ends lie outside. There
# is no timestep whose input is *pure* noise (notebook 1: SD's last step keeps 6.8 % of the signal), nor
# one whose input is perfectly clean. d2f **clamps** (docs/math.md §5): for `t` outside the range it
# uses `t_eff = clip(t, t_min, t_max)` for tau, alpha, sigma and the scale alike, so the bridge is finite
# on all of [0, 1]. `bridge_coefficients` returns all of them from one lookup:

# %%
ts = torch.tensor([0.0, 0.03, t_min, 0.5, t_max, 0.99, 1.0], dtype=torch.float64)
coef = bridge_coefficients(sched, ts)
print(f"{'t':>7} {'clamped':>8} {'t_eff':>7} {'tau':>8} {'alpha':>7} {'sigma':>7} {'c':>7}")
for k in range(len(ts)):
    print(
        f"{ts[k]:7.4f} {str(bool(is_clamped(sched, ts[k]))):>8} {coef.t_eff[k]:7.4f} {coef.tau[k]:8.2f} "
        f"{coef.alpha[k]:7.4f} {coef.sigma[k]:7.4f} {coef.scale[k]:7.4f}"
    )

# %% [markdown]
# **Check yourself.** Outside the range everything equals its value at the nearest end; inside, nothing
# is clamped.

# %%
assert torch.equal(clamp_t(sched, ts), coef.t_eff)
assert float(coef.tau[0]) == N - 1 and float(coef.tau[-1]) == 0.0
for key in ("tau", "alpha", "sigma", "scale"):
    assert getattr(coef, key)[0] == getattr(coef, key)[1] == getattr(coef, key)[2], (
        key
    )  # t = 0, 0.03 and t_min share one timestep
    assert torch.isclose(getattr(coef, key)[-1], getattr(coef, key)[-2]) and torch.isclose(
        getattr(coef, key)[-1], getattr(coef, key)[-3]
    ), key
assert is_clamped(sched, ts).tolist() == [True, True, False, False, False, True, True]
print("ok")
# the clamped share of a uniform time grid: t_min at the noise end, 1 - t_max at the data end
print(f"clamped: {t_min + (1 - t_max):.1%} of [0, 1] ({t_min:.1%} at the noise end, {1 - t_max:.1%} at the data end)")

# %% [markdown]
# How much of FM time is clamped? `t_min + (1 - t_max)` of a uniform time grid: the last line above prints
# the share at each end. Near `t = 0` the
# clamp treats pure noise as if a fraction `t_min` of data were mixed in: a small, known mismatch that finetuning with
# the Diff2Flow objective (which draws `t` uniformly on [0, 1]) teaches the model to absorb.
#
# ## 2.4 The scale c(t): aligning the two interpolants
#
# Read the derivation of 2.1 backwards: an FM sample at time `t` becomes the diffusion sample by
# multiplying with
#
#     c(t) = alpha(tau(t)) + sigma(tau(t))          z = c(t) * x_t,   the network is called as net(z, tau(t))
#
# Why is a scale needed at all? The diffusion input always has `alpha^2 + sigma^2 = 1`: unit variance
# for unit-variance data. The straight path does not: for independent unit-variance `x1` and `x0`,
# `Var(x_t) = t^2 + (1-t)^2`, only 0.5 at `t = 0.5`. Inside the covered range `c` undoes exactly that,
#
#     c(t)^2 * (t^2 + (1-t)^2) = (alpha+sigma)^2 * (alpha^2 + sigma^2) / (alpha+sigma)^2 = 1,
#
# so `c(t) = 1/sqrt(t^2 + (1-t)^2)`, between 1 and `sqrt(2)` (at `t = 1/2`, where `abar = 1/2`).

# %%
t01 = torch.linspace(0, 1, 1001, dtype=torch.float64)
inside = ~is_clamped(sched, t01)
c = scale(sched, t01)
assert torch.allclose(c[inside], 1 / (t01[inside] ** 2 + (1 - t01[inside]) ** 2).sqrt(), rtol=0, atol=1e-12)
assert bool(((c >= 1) & (c <= math.sqrt(2) + 1e-12)).all())
print(f"c(t) = 1/sqrt(t^2+(1-t)^2) on the covered range; max c = {c.max():.6f} (sqrt 2 = {math.sqrt(2):.6f})")

# %% [markdown]
# ## 2.5 On real latents of a built-in model
#
# Now the same identities on the data the model actually sees. d2f ships two tiny Stable-Diffusion-format
# priors; their VAE turns a 32 px image into a 4x8x8 latent. Like SD, the latent is multiplied by the
# VAE's `scaling_factor` (chosen so that scaled latents have roughly unit variance; SD's 0.18215 is the
# same rule for SD's VAE). That scaled latent is `x1`.

# %%
from pathlib import Path

import numpy as np
from diffusers import AutoencoderKL

import d2f
from d2f.world.shapes import caption, draw, make_specs

prior = Path(d2f.__file__).parent / "assets" / "tiny-shapes-eps"
vae = AutoencoderKL.from_pretrained(prior, subfolder="vae").eval()
print("scaling_factor =", vae.config.scaling_factor)

specs = make_specs(64, "base", seed=7)
pixels = torch.from_numpy(np.stack([np.asarray(draw(s)) for s in specs])).permute(0, 3, 1, 2).float() / 127.5 - 1
with torch.no_grad():
    x1 = vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor  # data, (64, 4, 8, 8)
    recon = vae.decode(x1[:8] / vae.config.scaling_factor).sample
print("data x1:", tuple(x1.shape), f"mean {x1.mean():.3f}  std {x1.std():.3f}")


# %%
def show(rows: list[torch.Tensor], labels: list[str], titles: list[str] | None = None, size: float = 1.15):
    """A grid of images (each row a tensor (n, 3, H, W) in [-1, 1])."""
    fig, ax = plt.subplots(len(rows), len(rows[0]), figsize=(size * len(rows[0]), size * len(rows)), squeeze=False)
    for r, row in enumerate(rows):
        for k, img in enumerate(row):
            ax[r, k].imshow(((img.permute(1, 2, 0) + 1) / 2).clamp(0, 1).numpy())
            ax[r, k].set_xticks([]), ax[r, k].set_yticks([])
            if titles and r == 0:
                ax[r, k].set_title(titles[k], fontsize=8)
        ax[r, 0].set_ylabel(labels[r], fontsize=8)
    fig.tight_layout()


show([pixels[:8], recon], ["image", "VAE recon"], [caption(s.shape, s.colour) for s in specs[:8]])

# %% [markdown]
# **Check yourself, the central identity.** Draw noise, pick FM times inside the range, build the straight
# path `x_t = t*x1 + (1-t)*x0`, and push it through `fm_to_diffusion` (which returns `z = c(t)*x_t` and
# `tau(t)`). It must equal the diffusion sample `alpha*x1 + sigma*eps` at that tau, for the same noise.

# %%
B = x1.shape[0]
noise = torch.randn(x1.shape, generator=torch.Generator().manual_seed(1))
t_b = t_min + torch.rand(B, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * (t_max - t_min)
t_ = t_b.float().view(B, 1, 1, 1)
x_t = t_ * x1 + (1 - t_) * noise  # the FM interpolant

z, tau_b = fm_to_diffusion(sched, x_t, t_b)  # z = c(t) x_t, at tau(t)
alpha_b, sigma_b = sched.alpha(tau_b).view(B, 1, 1, 1), sched.sigma(tau_b).view(B, 1, 1, 1)
z_diffusion = alpha_b * x1 + sigma_b * noise  # the diffusion sample at tau(t)
err = (z - z_diffusion).abs().max().item()
print(f"max |c(t) x_t - (alpha x1 + sigma eps)| = {err:.2e}   (float32 latents, |z| up to {z.abs().max():.1f})")
assert err < 1e-5

x_back, t_back = diffusion_to_fm(sched, z, tau_b)  # and back: x_t = z/(alpha+sigma), t = t(tau)
assert (x_back - x_t).abs().max() < 1e-5 and (t_back.double() - t_b).abs().max() < 1e-6
print("ok, and diffusion_to_fm inverts it")

# %% [markdown]
# **Check yourself, against diffusers.** The priors were trained with diffusers'
# `DDPMScheduler.add_noise(x1, eps, i)`. At every integer timestep `i` that sample must be `c(t)*x_t` with
# `t = t(i)`, with d2f computing nothing but the time map and the scale.

# %%
from diffusers import DDPMScheduler

ddpm = DDPMScheduler.from_pretrained(prior, subfolder="scheduler")
assert torch.equal(Schedule.from_pretrained(prior).alphas_cumprod, sched.alphas_cumprod)  # the prior uses SD's schedule
steps = torch.linspace(0, N - 1, B).round().long()  # 64 timesteps from 0 to 999
z_ddpm = ddpm.add_noise(x1, noise, steps)
t_i = t_of_tau(sched, steps.double())
x_t_i = t_i.float().view(B, 1, 1, 1) * x1 + (1 - t_i.float().view(B, 1, 1, 1)) * noise
z_fm, tau_i = fm_to_diffusion(sched, x_t_i, t_i)
err = (z_fm - z_ddpm).abs().max().item()
print(
    f"max |c(t) x_t - DDPMScheduler.add_noise| over timesteps 0..999: {err:.2e};"
    f" recovered timesteps off by at most {(tau_i.double() - steps).abs().max():.1e}"
)
assert err < 1e-5 and (tau_i.double() - steps).abs().max() < 1e-6

# %% [markdown]
# ## 2.6 What the network would see without the scale
#
# Measure the spread (standard deviation) of the network input along the path on these latents. A diffusion
# input `alpha*x1 + sigma*eps` always has a spread between that of the noise (1) and that of the data (the
# `std` printed in section 2.5, below 1 here: the scaling factor normalises latents of both domains together,
# and these are base-domain images only). In general
# `Var(c(t) x_t) = (t^2 Var(x1) + (1-t)^2) / (t^2 + (1-t)^2)`, a weighted mean of the two. The raw FM sample
# `x_t` instead dips to about `1/sqrt(2)` of it in the middle of the path: a mismatch that the naive-FM
# baseline of notebook 4 has to learn away, and that Diff2Flow removes by construction. The grey bands are
# the clamped ends.

# %%
t_line = torch.linspace(0, 1, 41, dtype=torch.float64)
std_fm, std_scaled = [], []
for tk in t_line:
    xk = float(tk) * x1 + (1 - float(tk)) * noise
    std_fm.append(xk.std().item())
    std_scaled.append(fm_to_diffusion(sched, xk, tk.expand(B))[0].std().item())

fig, ax = plt.subplots(1, 2, figsize=(10, 3.4))
ax[0].plot(t01, c, label="c(t) = alpha + sigma")
ax[0].plot(t01, 1 / (t01**2 + (1 - t01) ** 2).sqrt(), ":", label="1 / sqrt(t^2 + (1-t)^2)")
ax[1].plot(t_line, std_fm, "o-", ms=3, label="x_t  (raw FM sample)")
ax[1].plot(t_line, std_scaled, "o-", ms=3, label="c(t) x_t  (what the network sees)")
for axis in ax:
    for lo, hi in ((0, t_min), (t_max, 1)):
        axis.axvspan(lo, hi, color="grey", alpha=0.3)
    axis.set(xlabel="FM time t (0 = noise, 1 = data)")
    axis.legend()
ax[0].set(title="the scale c(t)", ylabel="c(t)")
ax[1].set(title="std of the network input, real latents", ylabel="standard deviation", ylim=(0.6, 1.2))
fig.tight_layout()

inside_line = ~is_clamped(sched, t_line)
spread = torch.tensor(std_scaled)[inside_line]
lo, hi = sorted((1.0, x1.std().item()))  # the spreads of the noise and of the data
print(
    f"std of c(t) x_t on the covered range: {spread.min():.3f} .. {spread.max():.3f} "
    f"(noise 1, data {x1.std():.3f});  of the raw x_t: down to {min(std_fm):.3f}"
)
assert bool(((spread > lo - 0.03) & (spread < hi + 0.03)).all())
assert min(std_fm) < 0.85 * lo

# %% [markdown]
# Finally, look at one image along both paths. Each column decodes a latent through the VAE: the top row
# is the raw FM sample `x_t`, the bottom row the diffusion sample `c(t)*x_t = alpha*x1 + sigma*eps` at
# `tau(t)`. Same image, same noise, only the scale differs (visible as shifted colours in the middle of the path).
# Decoding a noisy latent is not meaningful as a picture, but it shows where along the path the image emerges.

# %%
t_show = torch.tensor([0.0, t_min, 0.2, 0.35, 0.5, 0.65, 0.8, t_max, 1.0], dtype=torch.float64)
one, eps1 = x1[:1].expand(len(t_show), -1, -1, -1), noise[:1].expand(len(t_show), -1, -1, -1)
x_path = t_show.float().view(-1, 1, 1, 1) * one + (1 - t_show.float().view(-1, 1, 1, 1)) * eps1
z_path, tau_path = fm_to_diffusion(sched, x_path, t_show)
with torch.no_grad():
    dec_x = vae.decode(x_path / vae.config.scaling_factor).sample
    dec_z = vae.decode(z_path / vae.config.scaling_factor).sample
show(
    [dec_x, dec_z], ["x_t", "c(t) x_t"], [f"t={a:.2f}\ntau={b:.0f}" for a, b in zip(t_show.tolist(), tau_path.tolist())]
)

# %% [markdown]
# ## Summary
#
# * Dividing a diffusion sample by `alpha + sigma` lands on the straight FM path at
#   `t = alpha/(alpha+sigma) = sigmoid(lam/2)`; `t_of_tau` and `tau_of_t` are exact inverses, and the map
#   is far from the naive linear one (`t = 0.5` is `tau = 353.9` for SD).
# * The schedule covers only `[t_min, t_max] = [0.0640, 0.9717]`; outside, d2f clamps tau, alpha, sigma and
#   c together, so everything stays finite from `t = 0` to `t = 1`.
# * `z = c(t) * x_t` with `c = alpha + sigma = 1/sqrt(t^2+(1-t)^2)`: on real latents of a built-in prior this
#   equals diffusers' own `add_noise` to float32 precision, and it keeps the network's input at the unit
#   spread it was trained on.
#
# **Next:** notebook 3 (`03_velocity_and_sampling.ipynb`) reads an FM velocity off the network's epsilon or
# v prediction and samples the *untouched* prior as a flow-matching model.
