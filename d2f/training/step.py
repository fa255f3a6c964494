"""One optimizer step of ``d2f train``, end to end, on one page: what ``train`` does at every step.

    for each of grad_accum micro steps:
        x1, x0, t, cond = batches.get(k)        a VAE posterior sample of the data (scaled), noise ~ N(0, I),
                                                FM time t (the timestep i for diffusion), the text embedding
        loss = parametrization.loss(...)        x_t = t x1 + (1 - t) x0, one UNet call, || u_hat - (x1 - x0) ||^2
        backward                                (loss / grad_accum)
    clip the gradient norm, AdamW step, zero the gradients

The maths lives in ``d2f.parametrizations`` (the bridge, the targets, the loss) and the draws in
``d2f.training.batches``; this file only puts them in order. Around it, ``d2f.training.loop`` adds what a run
needs besides (the LR schedule, the EMA, logging, validation, checkpoints, stopping a diverged run).

``device`` does the four things that depend on where the step runs: ``accumulate`` (a context per micro step;
``sync_gradients`` is true in the last one), ``backward``, ``clip_grad_norm_`` and ``gather`` (the other
processes' values). ``OneProcess`` is plain PyTorch on one process; ``train`` passes its
``accelerate.Accelerator``, which has the same methods and adds DDP, mixed precision and loss scaling.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

from d2f.parametrizations import Parametrization, pseudo_huber, unet_net


class NonFiniteLoss(Exception):
    """A micro step's loss is NaN or infinite; raised before its backward, so the weights are still finite."""


class OneProcess:
    """The step's ``device`` without accelerate: one process, full precision, ``grad_accum`` micro steps."""

    process_index, num_processes = 0, 1

    def __init__(self, grad_accum: int = 1):
        self.grad_accum, self.micro_steps, self.sync_gradients = grad_accum, 0, True

    @contextmanager
    def accumulate(self, *models):
        self.micro_steps += 1
        self.sync_gradients = self.micro_steps % self.grad_accum == 0  # the step's last micro step
        yield

    def backward(self, loss: torch.Tensor) -> None:
        # the step's gradient is the mean over its micro steps
        (loss / self.grad_accum).backward()

    def clip_grad_norm_(self, parameters, max_norm: float):
        return torch.nn.utils.clip_grad_norm_(parameters, max_norm)

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor


def training_step(
    parametrization: Parametrization,
    unet,
    batches,
    optimizer: torch.optim.Optimizer,
    trainable: list[torch.Tensor],
    step: int,
    *,
    grad_accum: int = 1,
    max_grad_norm: float = 1.0,
    text_encoder=None,
    device=None,
    loss: str = "mse",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Optimizer step ``step`` (0-based) of a run: ``grad_accum`` micro steps of ``batches`` (``Batches`` or
    any object with its ``get``), then one update of the ``trainable`` parameters by ``optimizer``.

    ``unet`` is called as ``unet(z, timestep, encoder_hidden_states=cond)``; with ``text_encoder``
    (``--train-text-encoder``) ``cond`` holds token ids, embedded here with gradients. ``device``: see the
    module doc (default ``OneProcess(grad_accum)``). ``loss``: ``mse``, the objective's own, or ``pseudo-huber``
    of each sample's squared error (``d2f.parametrizations.pseudo_huber``). Returns the per-sample losses (the
    objective's squared errors, whatever ``loss``) and FM times t (B * grad_accum * processes,) of every process's
    samples, on the CPU; raises ``NonFiniteLoss`` (weights untouched) if a loss is NaN or infinite."""
    device = device or OneProcess(grad_accum)
    net = unet_net(unet)
    models = (unet,) if text_encoder is None else (unet, text_encoder)
    losses, times = [], []
    for micro in range(grad_accum):
        # x1 (B, C, h, w) data latents, x0 (B, C, h, w) noise, t (B,), cond: the micro step's own draws
        data, noise, t, cond = batches.get(step * grad_accum + micro, device.process_index, device.num_processes)
        with device.accumulate(*models):
            if text_encoder is not None:  # cond holds token ids: the text encoder is trained too
                # each distinct caption once (a class dataset's batch repeats a few captions): the same states and,
                # through the gather's backward, the same gradient (each row's summed over its repeats)
                distinct, row = torch.unique(cond, dim=0, return_inverse=True)
                cond = text_encoder(distinct)[0][row]
            # x_t = t x1 + (1 - t) x0,  loss = mean || u_hat(x_t, t) - (x1 - x0) ||^2  (diffusion: its native loss)
            out = parametrization.loss(net, data, noise, t, cond)
            per_sample = device.gather(out.per_sample.detach()).float().cpu()
            if not torch.isfinite(per_sample).all():  # every process sees the gathered losses: all stop
                raise NonFiniteLoss(step)
            # d = (sqrt(D mse + c^2) - c) / D per sample (2-rectified flow++), else the objective's mean
            objective = out.loss if loss == "mse" else pseudo_huber(out.per_sample, data[0].numel()).mean()
            device.backward(objective)
            if device.sync_gradients:  # the last micro step: update the weights
                if max_grad_norm > 0:
                    device.clip_grad_norm_(trainable, max_grad_norm)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
        losses.append(per_sample)
        times.append(device.gather(out.t.detach()).float().cpu())
    return torch.cat(losses), torch.cat(times)
