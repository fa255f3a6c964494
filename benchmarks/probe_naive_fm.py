"""Why does d2f's naive FM get worse with training? A few tiny runs (issue #12), printed as a table.

Each row trains ``--steps`` steps from tiny-shapes-eps on shapes-target (batch 32, cosine LR, seed 0) and
scores FD (n = 48, FM Euler 8 calls, guidance 2, evaluation noise seed 10^6) before and after, with the mean
loss of the first and the last 10 steps. The rows vary only what the question is about: the LoRA targets
(does the adapter reach conv_in / conv_out?), the rank, the LR, a full finetune, and the timestep (fm-raw-t).

    OMP_NUM_THREADS=1 python benchmarks/probe_naive_fm.py --steps 100
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from d2f.pipeline import generate
from d2f.training import TrainConfig
from d2f.training.loop import train_step
from d2f.training.setup import setup
from d2f.world.data import builtin_data
from d2f.world.metrics import fd
from d2f.world.shapes import all_prompts

ROWS = [
    ("diff2flow r64 lr1e-3 (reference)", dict(objective="diff2flow")),
    ("fm r64 lr1e-3 (the default LoRA)", dict(objective="fm")),
    ("fm r64 lr1e-4", dict(objective="fm", lr=1e-4)),
    ("fm r4 lr1e-3", dict(objective="fm", lora_rank=4)),
    ("fm full finetune lr1e-4", dict(objective="fm", lora_rank=0, lr=1e-4)),
    ("fm-raw-t r64 lr1e-3", dict(objective="fm-raw-t")),
]


def score(run, objective: str, n: int) -> float:
    prompts = [all_prompts()[k % 24] for k in range(n)]
    run.unet.eval()
    images = generate(run.pipe, prompts, sampler="euler", steps=8, guidance=2.0, seed=10**6, objective=objective)
    run.unet.train()
    return fd(images, prompts, "target")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--n", type=int, default=48)
    parser.add_argument("--rows", default=None, help="comma-separated row numbers (default: all)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    rows = [ROWS[int(k)] for k in args.rows.split(",")] if args.rows else ROWS
    print("| run | FD before | FD after | loss, first 10 steps | loss, last 10 steps |")
    print("| --- | ---: | ---: | ---: | ---: |", flush=True)
    for label, settings in rows:
        with tempfile.TemporaryDirectory() as out:
            cfg = TrainConfig(output=os.path.join(out, "run"), steps=args.steps, warmup_steps=10, **settings)
            run, _ = setup(cfg, builtin=builtin_data)
            before = score(run, cfg.objective, args.n)
            losses = []
            for step in range(args.steps):
                per_sample, _ = train_step(run, step)
                run.lr_scheduler.step()
                losses.append(float(per_sample.mean()))
            after = score(run, cfg.objective, args.n)
            run.lock.release()
        first, last = sum(losses[:10]) / 10, sum(losses[-10:]) / 10
        print(f"| {label} | {before:.1f} | {after:.1f} | {first:.3f} | {last:.3f} |", flush=True)


if __name__ == "__main__":
    main()
