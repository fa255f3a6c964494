"""Seconds per training step and peak memory of ``d2f train`` on SD 1.5's (and SD 2.1's) real architecture, on
the CPU: random weights of SD's size (``d2f.world.build.sd_sized``), batch 1, 64 px (``--resolution``).

These are CPU numbers. The memory is that of the real architecture (weights, gradients, AdamW state, caches and
activations), which is what decides whether a configuration fits; the seconds say nothing about a GPU. At 64 px
the activations are small: the memory is nearly all weights and optimizer state (``--resolution 512`` adds SD's
activations, slowly).

    python benchmarks/bench_sd_cpu.py                          # SD 1.5, built into a temporary folder
    python benchmarks/bench_sd_cpu.py --versions sd15,sd21 --steps 3 --warmup 1
    python benchmarks/bench_sd_cpu.py --resolution 512 --rows lora,checkpointing --steps 1

Each row runs in a fresh process (peak RSS, ``ru_maxrss``, only grows) with d2f's own trainer
(``d2f.training.setup.setup`` and ``d2f.training.loop.train_step``, as ``bench_train.py``): set-up (load the
pipeline, encode and cache the data, add the adapter), ``--warmup`` steps, then ``--steps`` timed steps. The full
finetune row is skipped (with a note) when less than ``--full-min-gib`` of memory is available. Prints a markdown
table.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROWS = {  # name: (label, TrainConfig settings on top of the base: LoRA rank 4 on attention and convolutions)
    "lora": ("LoRA rank 4 (cache on)", dict()),
    "no-cache": ("LoRA rank 4, `--no-cache`", dict(cache=False)),
    "checkpointing": ("LoRA rank 4, `--gradient-checkpointing`", dict(gradient_checkpointing=True)),
    "full": ("full finetune (`--lora-rank 0`)", dict(lora_rank=0)),
}


def gib(kib: float) -> float:
    return kib / 2**20


def available_gib() -> float:
    meminfo = dict(line.split(":", 1) for line in Path("/proc/meminfo").read_text().splitlines())
    return gib(int(meminfo["MemAvailable"].split()[0]))


def worker(args) -> None:
    """One row, in this (fresh) process: prints one JSON line."""
    import torch

    from d2f.training import TrainConfig
    from d2f.training.loop import train_step
    from d2f.training.setup import setup

    settings = json.loads(args.worker)
    with tempfile.TemporaryDirectory() as out:
        base = dict(resolution=args.resolution, batch_size=1, lora_rank=4, steps=10**6, warmup_steps=0)
        cfg = TrainConfig(
            model=args.model,
            data=args.data,
            output=os.path.join(out, "run"),
            validate_every=0,
            checkpoint_every=0,
            **{**base, **settings},
        )
        start = time.perf_counter()
        run, _ = setup(cfg)
        setup_seconds = time.perf_counter() - start
        setup_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for step in range(args.warmup):
            train_step(run, step)
        start = time.perf_counter()
        for step in range(args.steps):
            train_step(run, args.warmup + step)
        per_step = (time.perf_counter() - start) / args.steps
    row = {
        "seconds_per_step": per_step,
        "setup_seconds": setup_seconds,
        "setup_peak_gib": gib(setup_peak),
        "peak_gib": gib(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss),
        "trainable": run.num_trainable,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(row))


def run_row(args, model: Path, data: Path, settings: dict) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(settings), "--model", str(model), "--data", str(data)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup), "--resolution", str(args.resolution)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"row {settings} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--versions", default="sd15", help="comma-separated: sd15, sd21")
    parser.add_argument("--rows", default=",".join(ROWS), help=f"comma-separated, of: {', '.join(ROWS)}")
    parser.add_argument("--resolution", type=int, default=64, help="image side in px (a multiple of 64)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--full-min-gib", type=float, default=18, help="skip the full finetune below this")
    parser.add_argument("--workdir", default=None, help="where to build the models (default: a temporary folder)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the rows to this JSON file")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)

    from d2f.world.shapes import make_dataset, write_imagefolder

    work = Path(tempfile.mkdtemp(dir=args.workdir, prefix="bench-sd-"))
    rows = []
    try:
        data = write_imagefolder(make_dataset(8, "target", 3, args.resolution), work / "data")
        for version in args.versions.split(","):
            model = work / version  # built in its own process, so that this one stays small
            subprocess.run(
                [sys.executable, "-m", "d2f.world.build.sd_sized", str(model), "--version", version], check=True
            )
            for label, settings in (ROWS[name] for name in args.rows.split(",")):
                free = available_gib()
                if settings.get("lora_rank") == 0 and free < args.full_min_gib:
                    note = f"skipped: {free:.1f} GiB available, needs {args.full_min_gib:g}"
                    rows.append({"version": version, "config": label, "skipped": note})
                    print(f"  {version} {label}: {note}", flush=True)
                    continue
                row = {"version": version, "config": label, **run_row(args, model, data, settings)}
                rows.append(row)
                done = f"{row['seconds_per_step']:.2f} s/step, {row['peak_gib']:.2f} GiB"
                print(f"  {version} {label}: {done}", flush=True)
            shutil.rmtree(model)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    import torch

    print(
        f"\n{datetime.date.today()}, {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, torch {torch.__version__}, fp32, batch 1, "
        f"{args.resolution} px, LoRA on attention + convolutions; {args.warmup} warm-up step(s), "
        f"then the mean of {args.steps}\n"
    )
    print("| model | configuration | trainable | s / step (CPU) | peak RSS |")
    print("| --- | --- | ---: | ---: | ---: |")
    for row in rows:
        name = {"sd15": "SD 1.5", "sd21": "SD 2.1"}[row["version"]]
        if "skipped" in row:
            print(f"| {name} | {row['config']} | | {row['skipped']} | |")
            continue
        print(
            f"| {name} | {row['config']} | {row['trainable'] / 1e6:.1f}M | {row['seconds_per_step']:.2f} | "
            f"{row['peak_gib']:.2f} GiB |"
        )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps({"settings": vars(args), "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
