"""Seconds per training step of ``d2f train``: the three objectives, caching, the text encoder's LoRA, bf16 and
gradient checkpointing.

The paper's claim is that Diff2Flow costs what diffusion finetuning costs: one forward and one backward of
the same network, plus per-sample scalars. This measures it with d2f's own trainer (``d2f.training.loop``:
the same set-up and the same ``train_step`` as ``d2f train``) on the same model, data, batch and seed, and
reports every configuration as a ratio to the diffusion objective. Each row: a few warm-up steps, then the
median of ``--repeats`` timings of ``--steps`` steps, the rows interleaved (one round times every row in turn).

    python benchmarks/bench_train.py                       # built-in tiny-shapes-eps, batch 32, LoRA (the demo)
    python benchmarks/bench_train.py --model PATH --batch-size 8 --steps 10

Prints a markdown table (and ``--json`` writes the rows). Run it on an otherwise idle machine: with other
processes on the same cores the numbers mean little (and on 2 cores, set OMP_NUM_THREADS to the free ones).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time

import torch

from d2f.training import TrainConfig
from d2f.training.loop import train_step
from d2f.training.setup import setup
from d2f.world.data import builtin_data

ROWS = [  # (label, settings on top of the base configuration)
    ("diffusion (baseline)", dict(objective="diffusion")),
    ("diff2flow", dict(objective="diff2flow")),
    ("fm (naive)", dict(objective="fm")),
    ("diff2flow, --no-cache", dict(objective="diff2flow", cache=False)),
    ("diff2flow, --train-text-encoder", dict(objective="diff2flow", train_text_encoder=True)),
    ("diff2flow, bf16", dict(objective="diff2flow", mixed_precision="bf16")),
    ("diff2flow, gradient checkpointing", dict(objective="diff2flow", gradient_checkpointing=True)),
]


def seconds_per_step(configs: list[dict], steps: int, repeats: int, warmup: int) -> list[list[float]]:
    """Seconds per step of each configuration in each round. All runs are set up first and timed in interleaved rounds
    (round r times ``steps`` steps of every configuration in turn), so that a slow start of the process or a
    drifting clock falls on every configuration alike, not on whichever is measured first."""
    with tempfile.TemporaryDirectory() as out:
        runs = []
        for k, settings in enumerate(configs):
            cfg = TrainConfig(output=os.path.join(out, f"run{k}"), steps=10**6, warmup_steps=0, **settings)
            run, _ = setup(cfg, builtin=builtin_data)
            for step in range(warmup):
                train_step(run, step)
            runs.append(run)
        timings = [[] for _ in runs]
        for r in range(repeats):
            for run, times in zip(runs, timings):
                start = time.perf_counter()
                for step in range(steps):
                    train_step(run, warmup + r * steps + step)
                times.append((time.perf_counter() - start) / steps)
        return timings


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny-shapes-eps")
    parser.add_argument("--data", default="shapes-target")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lora-rank", type=int, default=TrainConfig.lora_rank)
    parser.add_argument("--lora-targets", default=TrainConfig.lora_targets)
    parser.add_argument("--steps", type=int, default=20, help="steps per timing")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--json", dest="json_path", default=None, help="also write the rows to this JSON file")
    args = parser.parse_args(argv)

    base = dict(
        model=args.model,
        data=args.data,
        batch_size=args.batch_size,
        lora_rank=args.lora_rank,
        lora_targets=args.lora_targets,
    )
    timings = seconds_per_step([{**base, **extra} for _, extra in ROWS], args.steps, args.repeats, args.warmup)
    rows = []
    for (label, _), times in zip(ROWS, timings):
        # ratio to diffusion within each round (paired: the same minute of the machine), then over rounds
        ratios = [t / b for t, b in zip(times, timings[0])]
        rows.append(dict(config=label, seconds_per_step=statistics.median(times), rounds=times))
        rows[-1].update(ratio_to_diffusion=statistics.median(ratios), ratio_min=min(ratios), ratio_max=max(ratios))
    print(
        f"\n{args.model} on {args.data}, batch {args.batch_size}, LoRA rank {args.lora_rank} ({args.lora_targets}), "
        f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
        f"median of {args.repeats} interleaved rounds of {args.steps} steps\n"
    )
    print("| configuration | s / step | ratio to diffusion | ratio, range over rounds |")
    print("| --- | ---: | ---: | --- |")
    for row in rows:
        print(
            f"| {row['config']} | {row['seconds_per_step']:.4f} | {row['ratio_to_diffusion']:.2f} | "
            f"{row['ratio_min']:.2f} - {row['ratio_max']:.2f} |"
        )
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump({"settings": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
