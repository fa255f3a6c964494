"""``examples/diff2flow_in_one_file.py`` is d2f's method written out once more, on one page: it must stay equal
to d2f. Imported as a module, its schedule, time map, scale and velocity match ``d2f.core`` in float64, its loss
matches ``Diff2FlowModel.loss`` and its sampler ``d2f.sampling.sample_euler`` with ``d2f.guidance`` on the built-in
priors' UNets (epsilon and v prediction); it imports no d2f math. The slow test runs it as a script at a short
budget and checks it moves the domain as far as ``d2f train`` does at the same budget."""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import builtin_prior

from d2f.core.schedule import Schedule
from d2f.core.timemap import bridge_coefficients, t_of_tau, tau_of_t
from d2f.core.velocity import fm_velocity
from d2f.guidance import guided
from d2f.parametrizations import Diff2FlowModel, unet_net
from d2f.sampling import sample_euler, time_grid

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "diff2flow_in_one_file.py"
PRIORS = {"epsilon": "tiny-shapes-eps", "v_prediction": "tiny-shapes-v"}


def load_example():
    spec = importlib.util.spec_from_file_location("diff2flow_in_one_file", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ex = load_example()


@pytest.fixture(scope="module", params=list(PRIORS))
def prior(request):
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(builtin_prior(PRIORS[request.param]))
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_it_is_one_short_page_that_imports_no_d2f_math():
    lines = EXAMPLE.read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    modules = set()
    for node in ast.walk(ast.parse(EXAMPLE.read_text())):
        if isinstance(node, ast.Import):
            modules |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            modules.add(node.module)
    d2f = {m for m in modules if m.split(".")[0] == "d2f"}
    assert d2f == {"d2f.pipeline.models", "d2f.world.data"}, d2f  # where the built-in prior and data are
    third_party = {m.split(".")[0] for m in modules} - {"d2f", "__future__", "argparse", "json", "pathlib"}
    assert third_party == {"torch", "diffusers", "peft", "numpy", "PIL"}, third_party


CONFIGS = {
    "sd": dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000),
    "linear": dict(beta_schedule="linear", beta_start=0.0001, beta_end=0.02, num_train_timesteps=500),
    "trained_betas": dict(trained_betas=[0.001 * (k + 1) for k in range(50)], num_train_timesteps=50),
}


@pytest.mark.parametrize("config", CONFIGS.values(), ids=CONFIGS)
def test_schedule_time_map_and_scale_are_d2f_cores(config):
    schedule = Schedule.from_config(config)
    n = schedule.num_train_timesteps
    lam = ex.log_snr_table(config)
    torch.testing.assert_close(lam, schedule.log_snr_table, rtol=0, atol=1e-12)
    tau = torch.tensor([0.0, 0.25, 1.5, 17.3, 0.4 * n + 0.999, n - 1.5, n - 1.0], dtype=torch.float64)
    torch.testing.assert_close(ex.log_snr(lam, tau), schedule.log_snr(tau), rtol=0, atol=1e-12)
    alpha, sigma = ex.alpha_sigma(lam, tau)
    torch.testing.assert_close(alpha, schedule.alpha(tau), rtol=0, atol=1e-14)
    torch.testing.assert_close(sigma, schedule.sigma(tau), rtol=0, atol=1e-14)
    torch.testing.assert_close(ex.t_of_tau(lam, tau), t_of_tau(schedule, tau), rtol=0, atol=1e-14)
    torch.testing.assert_close(ex.tau_of_t(lam, ex.t_of_tau(lam, tau)), tau, rtol=0, atol=1e-9)  # the exact inverse
    t = torch.tensor([0.0, 0.01, 0.2, 0.5, 0.77, 0.99, 1.0], dtype=torch.float64)  # the ends are clamped
    torch.testing.assert_close(ex.tau_of_t(lam, t), tau_of_t(schedule, t), rtol=0, atol=1e-9)
    coef = bridge_coefficients(schedule, t)
    for mine, theirs in zip(ex.bridge(lam, t), (coef.tau, coef.alpha, coef.sigma, coef.scale)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-12)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_velocity_is_d2f_cores_in_float64(prediction_type):
    schedule = Schedule.preset("sd15")
    lam = ex.log_snr_table(CONFIGS["sd"])
    g = torch.Generator().manual_seed(0)
    x_t, o = torch.randn(7, 4, 3, 3, generator=g, dtype=torch.float64), torch.randn(7, 4, 3, 3, generator=g).double()
    t = torch.tensor([0.0, 0.03, 0.2, 0.5, 0.8, 0.97, 1.0], dtype=torch.float64)
    _, alpha, sigma, c = (ex.per_sample(v, x_t) for v in ex.bridge(lam, t))
    mine = ex.velocity(o, c * x_t, alpha, sigma, prediction_type)
    torch.testing.assert_close(mine, fm_velocity(schedule, o, x_t, t, prediction_type), rtol=1e-12, atol=1e-12)


def test_loss_is_diff2flows_on_the_priors_unets(prior):
    """The same batch (t inside and outside the covered range) through both losses, on the prior's UNet."""
    config = dict(prior.scheduler.config)
    model = Diff2FlowModel(Schedule.from_config(config))
    g = torch.Generator().manual_seed(1)
    x1, x0 = torch.randn(4, 4, 8, 8, generator=g), torch.randn(4, 4, 8, 8, generator=g)
    t = torch.tensor([0.0, 0.3, 0.71, 0.99])
    cond = ex.text_states(prior, ["a red circle", "a blue square", "", "a green cross"]).detach()
    with torch.no_grad():
        theirs = model.loss(unet_net(prior.unet), x1, x0, t, cond).loss
        mine = ex.diff2flow_loss(
            ex.unet_net(prior.unet), ex.log_snr_table(config), model.prediction_type, x1, x0, t, cond
        )
    assert mine.dtype == torch.float32
    torch.testing.assert_close(mine, theirs, rtol=1e-6, atol=0)


def test_sampler_is_d2f_euler_with_guidance(prior):
    config = dict(prior.scheduler.config)
    model = Diff2FlowModel(Schedule.from_config(config))
    prompts = ["a red circle", "a yellow triangle"]
    with torch.no_grad():
        cond, uncond = ex.text_states(prior, prompts), ex.text_states(prior, ["", ""])
    x0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    net = guided(unet_net(prior.unet), uncond, 3.0)
    theirs = sample_euler(lambda x, t: model.velocity(net, x, t, cond), x0, time_grid(4))
    mine = ex.sample(ex.unet_net(prior.unet), ex.log_snr_table(config), model.prediction_type, x0, cond, uncond, 4, 3.0)
    torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-5)


def test_loss_in_float64_is_diff2flows_velocity(prior):
    """In float64 (a float64 copy of the UNet) the loss is ||Diff2FlowModel.velocity - (x1 - x0)||^2 to round-off
    (``Diff2FlowModel.loss`` itself computes in float32, checked above)."""
    unet = copy.deepcopy(prior.unet).double()
    config = dict(prior.scheduler.config)
    model = Diff2FlowModel(Schedule.from_config(config))
    g = torch.Generator().manual_seed(3)
    x1, x0 = torch.randn(3, 4, 8, 8, generator=g).double(), torch.randn(3, 4, 8, 8, generator=g).double()
    t = torch.tensor([0.02, 0.45, 0.98], dtype=torch.float64)
    with torch.no_grad():
        cond = ex.text_states(prior, ["a red circle", "", "a purple cross"]).double()
        x_t = t.reshape(-1, 1, 1, 1) * x1 + (1 - t.reshape(-1, 1, 1, 1)) * x0
        theirs = (model.velocity(unet_net(unet), x_t, t, cond) - (x1 - x0)).pow(2).flatten(1).mean(1).mean()
        mine = ex.diff2flow_loss(ex.unet_net(unet), ex.log_snr_table(config), model.prediction_type, x1, x0, t, cond)
    assert mine.dtype == torch.float64
    torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=0)


@pytest.mark.slow
def test_running_it_moves_the_domain_as_d2f_train_does(tmp_path):
    """The script (run as a script) and ``d2f train`` at the same short budget; the script's LoRA, loaded into a plain
    diffusers pipeline and sampled with ``Diff2FlowEulerScheduler`` as d2f validates (48 samples, 25 steps, guidance
    2, noise seeds 0..47), moves the domain as far as the demo does."""
    from diffusers import StableDiffusionPipeline

    from d2f import Diff2FlowEulerScheduler
    from d2f.world.metrics import evaluate
    from d2f.world.shapes import all_prompts

    steps, env = "200", {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    script = subprocess.run(
        [sys.executable, str(EXAMPLE), "--steps", steps, "--output", str(tmp_path / "one")],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    assert script.returncode == 0, script.stderr[-2000:]
    assert f"step {steps}/{steps}" in script.stdout and (tmp_path / "one" / "samples.png").is_file()
    demo = subprocess.run(
        [sys.executable, "-m", "d2f", "train", "--steps", steps, "--output", str(tmp_path / "demo"),
         "--validate-every", "0", "--checkpoint-every", "0"],
        capture_output=True, text=True, env=env, timeout=1800,
    )  # fmt: skip
    assert demo.returncode == 0, demo.stderr[-2000:]
    summary = json.loads((tmp_path / "demo" / "d2f_run.json").read_text())["summary"]

    pipe = StableDiffusionPipeline.from_pretrained(builtin_prior("tiny-shapes-eps"))
    pipe.load_lora_weights(tmp_path / "one")
    pipe.scheduler = Diff2FlowEulerScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    prompts = [all_prompts()[k % 24] for k in range(48)]
    generators = [torch.Generator().manual_seed(k) for k in range(48)]
    images = pipe(prompts, num_inference_steps=25, guidance_scale=2.0, generator=generators, output_type="pt").images
    scores = evaluate(images.float().clamp(0, 1), prompts, "target")
    before, after = summary["metrics_before"]["domain_accuracy"], summary["metrics_after"]["domain_accuracy"]
    mine = scores["domain_accuracy"]
    print(f"domain accuracy: prior {before:.2f}, d2f train {after:.2f}, the one-file script {mine:.2f}")
    prompts_after = summary["metrics_after"]["prompt_accuracy"]
    print(f"prompt accuracy: d2f train {prompts_after:.2f}, the one-file script {scores['prompt_accuracy']:.2f}")
    assert before <= 0.2 and after >= 0.8  # the demo itself moved the domain at this budget
    assert mine >= after - 0.1
