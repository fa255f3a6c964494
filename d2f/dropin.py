"""The Diff2Flow loss as a drop-in for diffusers' training scripts (``train_text_to_image_lora.py`` and its kin).

Those scripts draw an integer timestep, noise the latents with ``noise_scheduler.add_noise`` and regress the UNet's
output on the noise (or v) with an MSE. ``diff2flow_loss`` replaces that block, given the same ``noise_scheduler``
(for its schedule and prediction type), the VAE latents and the noise::

    loss = diff2flow_loss(
        noise_scheduler,
        lambda z, tau: unet(z, tau, encoder_hidden_states, return_dict=False)[0],
        latents,
        noise,
    )

It draws the FM time as Diff2Flow does (``Diff2FlowModel.sample_time``: t ~ U[0, 1], or logit-normal), and computes
``Diff2FlowModel.loss`` (docs/math.md §8): x_t = t x1 + (1 - t) x0, the network sees z = c(t) x_t at the fractional
timestep tau(t) (t clamped to the covered range [t_min, t_max] for tau, c, alpha and sigma, §5), its output becomes
the FM velocity u_hat = x1_hat - eps_hat (§7), and the loss is mean ||u_hat - (x1 - x0)||^2, in float32 or better
(§13). The trained model samples with ``d2f.Diff2FlowEulerScheduler``. docs/dropin-loss.md shows the diff against
the script's training step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from d2f.core.schedule import Schedule
from d2f.parametrizations import Diff2FlowModel

ModelPredFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def scheduler_model(noise_scheduler, prediction_type: str | None = None) -> Diff2FlowModel:
    """The ``Diff2FlowModel`` of a diffusers scheduler (or its config dict): its betas, ``rescale_betas_zero_snr``
    and ``prediction_type`` (read at each call, so ``register_to_config(prediction_type=...)`` is honoured), or
    ``prediction_type`` if given. ``UserError`` for what the bridge cannot do (e.g. an epsilon model on a
    zero-terminal-SNR schedule)."""
    config = noise_scheduler if isinstance(noise_scheduler, dict) else noise_scheduler.config
    return Diff2FlowModel(Schedule.from_config(dict(config)), prediction_type)


def diff2flow_loss(
    noise_scheduler,
    model_pred_fn: ModelPredFn,
    latents: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor | None = None,
    *,
    t_sampling: str = "uniform",
    generator: torch.Generator | None = None,
    prediction_type: str | None = None,
) -> torch.Tensor:
    """The Diff2Flow loss of one batch: a differentiable float32 scalar, whatever the UNet's precision; it takes the
    place of ``F.mse_loss(model_pred.float(), target.float())`` in the diffusion scripts.

    ``noise_scheduler``: the script's scheduler (``DDPMScheduler.from_pretrained(model, subfolder="scheduler")``)
    or its config dict. ``model_pred_fn(z, tau) -> model_pred``: one call of the network on the aligned sample z
    (B, C, H, W) at the fractional timesteps tau (B,), float32, never rounded; cast z to the UNet's dtype inside
    if the UNet runs in half precision without autocast. ``latents`` x1 (VAE latents times ``scaling_factor``) and
    ``noise`` x0: (B, C, H, W). ``t``: FM times (B,) in [0, 1] (t = 0 noise, t = 1 data); drawn here by
    ``t_sampling`` (``uniform``, ``logit-normal`` or ``near-noise``) from ``generator`` when not given.
    """
    model = scheduler_model(noise_scheduler, prediction_type)
    if t is None:
        t = model.sample_time(latents.shape[0], t_sampling, generator)
    net = lambda z, tau, cond: model_pred_fn(z, tau)  # the text condition lives in model_pred_fn
    return model.loss(net, latents, noise, t, None).loss
