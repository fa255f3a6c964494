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
# `o = net(c(t) * x_t, tau(t), cond)`. This notebook reads an FM **velocity** off that output and uses
# it to sample the *untouched* pretrained model as a flow-matching model.
#
# **Learning goals**
#
# 1. Derive the velocity `v_hat = x1_hat - eps_hat` for epsilon-, v- and sample-prediction models and
#    check it with d2f's `velocity_from_output` / `fm_velocity` on real latents.
# 2. See how good an untouched diffusion model already is as an FM velocity predictor, across `t`, for
#    the built-in epsilon prior (`tiny-shapes-eps`, like SD 1.x) and v prior (`tiny-shapes-v`, like SD 2.x).
# 3. Sample with FM Euler before any finetuning, compare it with DDIM at many and at few steps (image
#    grids and an error table), and understand why they agree: the FM ODE *is* the DDIM ODE.

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
#     v_hat = x1_hat - eps_hat
#
# (The v row: `alpha*z - sigma*v = alpha^2 x1 + alpha sigma eps - sigma alpha eps + sigma^2 x1 = x1`, using
# `alpha^2 + sigma^2 = 1`; likewise for eps.) In FM coordinates, with `x_t = z / c(t)`, the same velocity
# reads `v_hat = (x_t - eps_hat)/t = (x1_hat - x_t)/(1 - t)`: the straight line through the two estimates.
#
# **Check yourself** on real latents (the VAE of the eps prior): feed each prediction type its *exact*
# target for a known (data, noise) pair; the velocity must be exactly `data - noise`, the two FM forms must
# agree, and `output_from_velocity` must invert the map.

# %%
from d2f.world.priors import shape_images
from d2f.world.shapes import all_prompts

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
    v = velocity_from_output(o, z, coef.alpha, coef.sigma, ptype)
    x1_hat, eps_hat = estimates(o, z, coef.alpha, coef.sigma, ptype)
    err = (v - (data - noise)).abs().max().item()
    forms = max(((x_t - eps_hat) / t4 - v).abs().max().item(), ((x1_hat - x_t) / (1 - t4) - v).abs().max().item())
    back = (output_from_velocity(v, z, coef.alpha, coef.sigma, ptype) - o).abs().max().item()
    print(f"{ptype:13s} |v_hat - (x1 - x0)| = {err:.1e}   FM forms {forms:.1e}   inverse {back:.1e}")
    assert err < 1e-4 and forms < 1e-3 and back < 1e-4, ptype

# %% [markdown]
# The `forms` error is the largest because `(x_t - eps_hat)/t` divides by `t` (down to 0.064) in float32.
# `fm_velocity(schedule, o, x_t, t)` is the whole bridge in one call: it clamps `t`, forms `z = c(t) x_t`
# itself and converts the output.
#
# ## 3.2 How good is an untouched diffusion model as a velocity predictor?
#
# Now use the real networks. For the same data, noise and captions, call each prior at
# `(c(t) x_t, tau(t))` for a sweep of `t`, convert with `fm_velocity`, and measure the relative error
# `||v_hat - (x1 - x0)||^2 / ||x1 - x0||^2`. For contrast, also the reading a *naive* FM finetune starts
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
    rel = lambda v: ((v - target) ** 2).sum().item() / (target**2).sum().item()  # noqa: E731
    bridged, naive = [], []
    for tk in ts:
        tb = torch.full((B,), float(tk), dtype=torch.float64)
        xk = float(tk) * data + (1 - float(tk)) * noise
        zk, tau = fm_to_diffusion(sched_p, xk, tb)  # z = c(t) x_t at tau(t)
        o = pipe.unet(zk, tau, encoder_hidden_states=cond).sample
        bridged.append(rel(fm_velocity(sched_p, o, xk, tb)))  # v_hat = x1_hat - eps_hat
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
# The relative error grows towards both ends, because `v = x1 - x0` needs *both* estimates: near the noise
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
# `o = o_u + w (o_c - o_u)`, as every diffusers pipeline does on the raw output. `v_hat` is affine in `o`, so
# guiding the output equals guiding the velocity: `v(o) = v_u + w (v_c - v_u)`. That is why a diffusers
# pipeline can sample a Diff2Flow model unchanged (notebook 5).

# %%
with torch.no_grad():
    pipe = pipes[V_PRIOR]
    sched_v = Schedule.from_config(dict(pipe.scheduler.config))
    zk, tau = fm_to_diffusion(sched_v, x_t, t)
    o_c = pipe.unet(zk, tau, encoder_hidden_states=text_states(pipe, captions)).sample
    o_u = pipe.unet(zk, tau, encoder_hidden_states=text_states(pipe, [""] * B)).sample
w = 7.5
v_of = lambda o: fm_velocity(sched_v, o, x_t, t)  # noqa: E731
gap = (v_of(o_u + w * (o_c - o_u)) - (v_of(o_u) + w * (v_of(o_c) - v_of(o_u)))).abs().max().item()
print(f"max |v(guided o) - guided v| = {gap:.1e}")
assert gap < 1e-3

# %% [markdown]
# ## 3.3 Sampling the untouched prior as a flow-matching model
#
# FM Euler integrates `dx/dt = v_hat(x, t)` from noise (`t = 0`) to data (`t = 1`), one network call per
# step (docs/math.md §10):
#
#     x <- x + (t_{k+1} - t_k) * v_hat(x, t_k)        on a uniform grid 0 = t_0 < ... < t_K = 1
#
# **Why this works without training** (docs/math.md §11): with `v_hat` from 3.1, the FM ODE is the
# diffusion model's probability-flow ODE, the one DDIM discretises. DDIM steps `d(z/alpha)/ds = eps_hat` with
# `s = sigma/alpha`; put `xbar = z/alpha`, then `x = t xbar` and `s = (1-t)/t`, and
# `dx/dt = xbar + t eps_hat ds/dt = (x - eps_hat)/t = v_hat`. One ODE, two coordinate systems. DDIM's
# update even *is* an FM Euler step, placed on DDIM's grid (uniform in tau, trailing spacing) instead of
# uniform in t: see `d2f.sampling.sample_ddim`. The samplers differ only in where they put their steps.
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
# differently, because they place their few steps differently.
# The evaluator of the built-in world scores what was drawn: prompt accuracy is the fraction of images whose
# shape and colour match the prompt (chance 1/24).

# %%
from d2f.world.metrics import prompt_accuracy

acc_prompts = [all_prompts()[k % 24] for k in range(48)]
rows = []
for name, pipe in pipes.items():
    for sampler in ("euler", "ddim"):
        for steps in (25, 4):
            images = generate(pipe, acc_prompts, sampler=sampler, steps=steps, guidance=7.5, seed=100)
            rows.append((name, sampler, steps, prompt_accuracy(images, acc_prompts)))
print(f"{'prior':16s} {'sampler':8s} {'steps':>5s}  prompt accuracy (48 images)")
for row in rows:
    print("{:16s} {:8s} {:5d}  {:.2f}".format(*row))

# %% [markdown]
# **Check yourself.** With 25 steps, zero-shot FM Euler draws the prompted shape and colour far above
# chance (1/24) on both priors, as DDIM does: the untouched diffusion model *is* a usable FM model.

# %%
for name, sampler, steps, acc in rows:
    if steps == 25:
        assert acc >= 0.5, (name, sampler, acc)
print("ok")

# %% [markdown]
# ## 3.4 One ODE, two discretisations: the error table
#
# To compare the samplers as ODE solvers, start both at the **same point** of the covered range (as
# `generate` does for an untouched model): a diffusion sample `z` at `tau = N-1`, which in FM coordinates is
# `x = z / c(t_min)` at `t_min`. DDIM steps from `tau = N-1` on its own grid; FM Euler steps uniformly in `t`
# from `t_min` to 1. Here the grids and the start are passed explicitly. The reference end point
# is DDIM with 200 steps. The error is the RMS distance to it in latent space (the data has unit spread).

# %%
ref_prompts = prompts
z_start = torch.randn((len(ref_prompts), 4, 8, 8), generator=torch.Generator().manual_seed(42))
c_min = float(bridge_coefficients(sched, torch.tensor(t_min, dtype=torch.float64)).scale)
budgets = (2, 4, 8, 16, 32, 64)


def end_point(pipe, sampler, steps):
    """Both start from the FM state x = z / c(t_min) at t_min (= tau N-1); only the grids differ."""
    ts = ddim_grid(sched, steps) if sampler == "ddim" else time_grid(steps, t_start=t_min)
    assert abs(float(ts[0]) - t_min) < 1e-9
    return sample_latents(pipe, ref_prompts, sampler, steps, 7.5, noise=z_start / c_min, ts=ts)


start = time.perf_counter()
table = {}
for name, pipe in pipes.items():
    ref = end_point(pipe, "ddim", 200)
    rms = lambda x, ref=ref: ((x - ref) ** 2).mean().sqrt().item()  # noqa: E731
    table[name] = {s: [rms(end_point(pipe, s, k)) for k in budgets] for s in ("euler", "ddim")}
    table[name]["euler 200"] = rms(end_point(pipe, "euler", 200))
print(f"computed in {time.perf_counter() - start:.1f} s\n")
print(f"RMS latent error against DDIM-200   network calls: {budgets}")
for name in table:
    for s in ("euler", "ddim"):
        print(f"  {name:16s} {s:6s} " + " ".join(f"{e:6.3f}" for e in table[name][s]))
    print(f"  {name:16s} FM Euler with 200 steps vs DDIM-200: {table[name]['euler 200']:.4f}")

# %%
fig, ax = plt.subplots(1, 2, figsize=(10, 3.4), sharey=True)
for axis, name in zip(ax, table):
    for s, marker in (("euler", "o-"), ("ddim", "s--")):
        axis.loglog(budgets, table[name][s], marker, label="FM Euler (uniform in t)" if s == "euler" else "DDIM")
    axis.set(title=name, xlabel="network calls")
    axis.set_xticks(budgets, [str(k) for k in budgets]), axis.minorticks_off()
    axis.legend()
ax[0].set(ylabel="RMS error vs DDIM-200")
fig.tight_layout()

# %% [markdown]
# **Check yourself.** Both discretisations converge to the same end point: the error falls as the budget
# grows, and with 200 steps FM Euler lands on DDIM's 200-step end point (docs/math.md §11: the test of the whole
# bridge, here on trained networks).

# %%
for name in table:
    for s in ("euler", "ddim"):
        e = table[name][s]
        assert e[-1] < 0.5 * e[0], (name, s, e)
    assert table[name]["euler 200"] < 0.05, (name, table[name]["euler 200"])
print("ok: same ODE, same limit")

# %% [markdown]
# Which sampler wins at few steps depends on where the ODE bends: DDIM spends its steps uniformly in `tau`,
# Euler uniformly in `t`. The table above is the honest answer for these priors; `d2f sample --compare` and
# the sampling benchmark of the README measure it on more budgets and with Heun.
#
# ## Summary
#
# * `v_hat = x1_hat - eps_hat`, with both estimates read off the network output through `z`; exact for all
#   three prediction types, and affine in the output, so guidance carries over unchanged.
# * An untouched diffusion model, called through the bridge, is already a good FM velocity predictor; its
#   raw output is not.
# * FM Euler samples the untouched prior (zero-shot); it integrates the same ODE as DDIM, so both converge
#   to the same images; at few steps they are two different discretisations with different errors.
#
# **Next:** notebook 4 (`04_finetuning.ipynb`) finetunes the prior into a new domain with the Diff2Flow
# objective, and compares it with naive FM and plain diffusion finetuning on the same data, seed and budget.
