"""An exponential moving average of the trainable parameters (``--ema``)."""

from __future__ import annotations

from contextlib import contextmanager

import torch


class EMA:
    """The averages are kept in fp32, on the parameters' own device (create the EMA after
    ``accelerator.prepare`` has moved the model):

        avg <- d * avg + (1 - d) * param,     d_k = min(decay, (1 + k) / (10 + k))

    The warmup d_k keeps short runs from being dominated by the initial weights."""

    def __init__(self, params: dict[str, torch.nn.Parameter], decay: float):
        self.params, self.decay, self.updates = params, decay, 0
        self.avg = {k: p.detach().float().clone() for k, p in params.items()}

    @torch.no_grad()
    def update(self) -> None:
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        self.updates += 1
        # avg <- d * avg + (1 - d) * param
        torch._foreach_lerp_(
            [self.avg[k] for k in self.params], [p.detach().float() for p in self.params.values()], 1 - d
        )

    def load(self, averages: dict[str, torch.Tensor], updates: int) -> None:
        """Restore saved averages (e.g. from a checkpoint), onto the parameters' devices."""
        self.avg = {k: averages[k].float().to(p.device) for k, p in self.params.items()}
        self.updates = updates

    @contextmanager
    def averaged(self):
        """Within the block the live parameters hold the averages; they are restored on leaving, also
        when the block raises."""
        live = {k: p.detach().clone() for k, p in self.params.items()}
        with torch.no_grad():
            for k, p in self.params.items():
                p.copy_(self.avg[k].to(p.dtype))
        try:
            yield
        finally:
            with torch.no_grad():
                for k, p in self.params.items():
                    p.copy_(live[k])
