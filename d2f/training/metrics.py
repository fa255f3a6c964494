"""``metrics.jsonl``: the "train" lines, and rewinding the file when a run resumes.

A train line averages the steps since the previous line: their mean loss, and their per-sample losses
summed in ``T_BINS`` bins of FM time t. That window is part of the run's state: a checkpoint taken between
two lines carries it (``TrainWindow.state``), so a resumed run writes the lines the uninterrupted run wrote,
``TIMING`` fields aside (``seconds`` counts the training time of all attempts; ``steps_per_second`` only
the steps this process ran).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

T_BINS = 10  # the loss is also logged in 10 bins of FM time t: [0, 0.1), ..., [0.9, 1]
TIMING = ("seconds", "steps_per_second")


class TrainWindow:
    """The steps since the last train line: their losses and the t-bin sums (fp32, on the CPU)."""

    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.losses: list[float] = []
        self.bin_sum, self.bin_count = torch.zeros(T_BINS), torch.zeros(T_BINS)
        self.start_clock()

    def start_clock(self) -> None:
        """steps_per_second counts the steps from here (not a validation or a resume before them)."""
        self.timed_steps, self.since = 0, time.perf_counter()

    def add(self, per_sample: torch.Tensor, t: torch.Tensor) -> float:
        """Add one step's per-sample losses at FM times ``t``; returns the step's mean loss."""
        # bin b holds t in [b/T_BINS, (b+1)/T_BINS)
        bins = (t * T_BINS).long().clamp(0, T_BINS - 1)
        self.bin_sum.index_add_(0, bins, per_sample)
        self.bin_count.index_add_(0, bins, torch.ones_like(per_sample))
        loss = per_sample.mean().item()
        self.losses.append(loss)
        self.timed_steps += 1
        return loss

    def line(self, step: int, lr: float, seconds: float) -> dict:
        """The train line of ``step`` (and a new, empty window)."""
        now = time.perf_counter()
        record = {
            "step": step,
            "kind": "train",
            "loss": sum(self.losses) / len(self.losses),
            "lr": lr,
            "seconds": round(seconds, 3),
            "steps_per_second": round(self.timed_steps / max(now - self.since, 1e-9), 3),
            "loss_t_bins": [round((s / c).item(), 6) if c > 0 else None for s, c in zip(self.bin_sum, self.bin_count)],
        }
        self.reset()
        return record

    def state(self) -> dict:
        """JSON for a checkpoint (floats round-trip exactly through JSON)."""
        return {"losses": self.losses, "bin_sum": self.bin_sum.tolist(), "bin_count": self.bin_count.tolist()}

    def load(self, state: dict) -> None:
        self.losses = list(state["losses"])
        self.bin_sum, self.bin_count = torch.tensor(state["bin_sum"]), torch.tensor(state["bin_count"])
        self.start_clock()


def rewind_metrics(path: Path, keep: int | None, step: int) -> tuple[int, int]:
    """Cut ``metrics.jsonl`` back to what it held when a checkpoint was written: its first ``keep`` lines
    (or, for a checkpoint that did not count them, the lines up to ``step``). Lines that are not JSON, as a
    kill leaves a half-written last line, are dropped. Rewritten atomically; returns (lines kept, lines
    that were not JSON)."""
    if not path.is_file():
        return 0, 0
    kept, torn = [], 0
    for number, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            torn += 1
            continue
        if (number < keep) if keep is not None else (record.get("step", 0) <= step):
            kept.append(line)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return len(kept), torn
