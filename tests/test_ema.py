"""The EMA of the trainable weights (``d2f.training.ema``): its maths, and that it lives on the parameters'
device. ``meta`` stands in for a GPU: a tensor there has no data, and torch refuses any op mixing it with a
CPU tensor, so a test on it proves the EMA never creates or mixes tensors on another device, without one."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from d2f.training.ema import EMA


class DevicesSeen(TorchDispatchMode):
    """Records the device of every tensor that any torch op inside the block reads or returns."""

    def __init__(self):
        super().__init__()
        self.seen: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        leaves = tree_flatten((args, kwargs or {}, out))[0]
        self.seen |= {t.device.type for t in leaves if isinstance(t, torch.Tensor)}
        return out


def test_ema_update_average_and_restore():
    p = torch.nn.Parameter(torch.zeros(3))
    ema = EMA({"w": p}, decay=0.5)
    with torch.no_grad():
        p.fill_(1.0)
    ema.update()  # d_0 = min(0.5, 1/10) = 0.1: avg = 0.1 * 0 + 0.9 * 1
    torch.testing.assert_close(ema.avg["w"], torch.full((3,), 0.9))
    with ema.averaged():
        torch.testing.assert_close(p.detach(), torch.full((3,), 0.9))
    torch.testing.assert_close(p.detach(), torch.ones(3))  # the live weights are back


def test_ema_lives_on_the_parameters_device():
    params = {
        "a": torch.nn.Parameter(torch.randn(4, 2, device="meta")),
        "b": torch.nn.Parameter(torch.randn(3, device="meta", dtype=torch.bfloat16)),
    }
    ema = EMA(params, decay=0.99)
    assert {v.device.type for v in ema.avg.values()} == {"meta"}
    assert {v.dtype for v in ema.avg.values()} == {torch.float32}  # fp32 averages of bf16 weights
    with DevicesSeen() as mode:
        ema.update()
        ema.update()
        with ema.averaged():
            pass
    assert mode.seen == {"meta"} and ema.updates == 2
    # averages from a checkpoint (read on the CPU) move to the parameters' device
    ema.load({"a": torch.ones(4, 2), "b": torch.ones(3, dtype=torch.bfloat16)}, updates=7)
    assert {v.device.type for v in ema.avg.values()} == {"meta"} and ema.updates == 7
    with DevicesSeen() as mode:
        ema.update()
    assert mode.seen == {"meta"}
