"""What limits the own-images finetune: ``d2f train`` variants on the held-out digits, each scored like own_images.py.

    python benchmarks/own_images_sweep.py                        # every variant at once: meant for one GPU
    python benchmarks/own_images_sweep.py te te-3k --parallel 1  # some of them, one after another (a 2-core CPU)

``benchmarks/own_images.py`` measures one command. This sweep asks what limits the finetune and what lifts it,
by changing one thing at a time (``VARIANTS``; ``te-lr3e-3-logitnormal`` is what ``d2f train`` now picks by itself
for new words, ``d2f.training.auto``):

- the budget (``--steps``) and the optimiser's step (``--lr``, ``--batch-size``, ``--max-grad-norm``,
  ``--t-sampling``), with ``--train-text-encoder`` as docs/own-images.md's command has it;
- the words: ``known`` captions name each digit with words the prior's text encoder learnt (``"a red circle"``
  for 0, ..., ``"a purple square"`` for 9), so the same images with captions the prior already tells apart.
  The gap between a ``known`` row and its ``digit`` twin is what the prior's small vocabulary costs.

Every variant trains in its own process (``OMP_NUM_THREADS=2`` each unless set) from the same data, seed and
prior (``-seed1``: training seed 1), and is scored from the same noise: 10 samples per digit, each model's default
sampler and guidance, read by the digit classifier (``d2f.world.digits``), accuracy with a 95% Wilson interval;
chance is 0.10. Records are appended to
``benchmarks/results/own_images_sweep.jsonl`` (one line per variant, with the device) and the table is rewritten
in ``own_images_sweep.md``. One training seed per row: treat differences under ~0.15 as noise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "own_images_sweep"
TE = ["--train-text-encoder"]
# d2f train's defaults when this sweep ran, passed first (a variant's own options come later and win): since then
# d2f train chooses these by itself for new words (d2f.training.auto), which would change every "digit" row
BEFORE_AUTO = ["--no-train-text-encoder", "--lr", "1e-3", "--t-sampling", "uniform"]
VARIANTS = {  # name: (captions, d2f train options beyond --data / --output)
    "te": ("digit", TE),
    "unet": ("digit", []),
    "te-lr3e-3": ("digit", [*TE, "--lr", "3e-3"]),
    "te-lr1e-2": ("digit", [*TE, "--lr", "1e-2"]),
    "te-noclip": ("digit", [*TE, "--max-grad-norm", "0"]),
    "te-lr3e-3-noclip": ("digit", [*TE, "--lr", "3e-3", "--max-grad-norm", "0"]),
    "te-logitnormal": ("digit", [*TE, "--t-sampling", "logit-normal"]),
    "te-lr3e-3-logitnormal": ("digit", [*TE, "--lr", "3e-3", "--t-sampling", "logit-normal"]),
    "te-lr3e-3-logitnormal-seed1": ("digit", [*TE, "--lr", "3e-3", "--t-sampling", "logit-normal", "--seed", "1"]),
    "te-b16-2k": ("digit", [*TE, "--batch-size", "16", "--steps", "2000"]),
    "te-b16-2k-lr3e-3": ("digit", [*TE, "--batch-size", "16", "--steps", "2000", "--lr", "3e-3"]),
    "te-lr3e-3-2k": ("digit", [*TE, "--lr", "3e-3", "--steps", "2000"]),
    "te-3k": ("digit", [*TE, "--steps", "3000"]),
    "known-unet": ("known", []),
    "known-unet-lr3e-3": ("known", ["--lr", "3e-3"]),
    "known-unet-3k": ("known", ["--steps", "3000"]),
}
COLOURS = ("red", "green", "blue", "yellow", "purple")
KNOWN = [f"a {colour} {shape}" for shape in ("circle", "square") for colour in COLOURS]  # digit k -> KNOWN[k]


def write_data(folder: Path, captions: str) -> Path:
    """The own-images digits (``write_digits``, seed 0); ``known`` rewrites each caption to KNOWN[digit]."""
    from d2f.world.digits import write_digits

    if not (folder / "metadata.jsonl").is_file():
        write_digits(folder, num_images=1000, seed=0)
        if captions == "known":
            rows = [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]
            text = "".join(json.dumps({**r, "text": KNOWN[int(r["text"].split()[-1])]}) + "\n" for r in rows)
            (folder / "metadata.jsonl").write_text(text)
    return folder


def score(classifier, run: Path, captions: str, seed: int = 1000) -> tuple[int, int]:
    """(correct, n) over 10 samples per digit from the run, sampled as own_images.py does, on a GPU if any."""
    from own_images import sample

    from d2f.world.digits import DIGITS, caption

    truth = [d for _ in range(10) for d in DIGITS]
    prompts = [caption(d) if captions == "digit" else KNOWN[int(d)] for d in truth]
    images = sample(None, str(run), prompts, seed, device="cuda" if torch.cuda.is_available() else None)
    return sum(p == t for p, t in zip(classifier.predict(images), truth)), len(truth)


def report(records: list[dict]) -> str:
    from d2f.world.estimators import wilson_interval

    lines = [
        "# What limits the own-images finetune (`benchmarks/own_images_sweep.py`)",
        "",
        "The digits of `own_images.py` (1000 images), `tiny-shapes-eps`, Diff2Flow, every `d2f train` option at its",
        "default except those listed (defaults: 1000 steps, batch 32, lr 1e-3, clipping at norm 1, uniform t).",
        "`digit` captions are the dataset's (\"a digit 3\"); `known` captions name the digit with words the prior's",
        'text encoder learnt ("a red circle" for 0). 10 samples per digit from the same noise, digit classifier,',
        "95% Wilson interval; chance 0.10. One training seed per row.",
        "",
        "| variant | captions | options | digit accuracy [95%] | final loss | device |",
        "| --- | --- | --- | --- | ---: | --- |",
    ]
    for r in records:
        low, high = wilson_interval(r["correct"], r["n"])
        options = f"`{' '.join(r['options'])}`" if r["options"] else "(none: a UNet LoRA)"
        loss = "failed" if r["failed"] else "not kept" if r["final_loss"] is None else f"{r['final_loss']:.3g}"
        lines.append(
            f"| {r['variant']} | {r['captions']} | {options} | {r['correct'] / r['n']:.2f} [{low:.2f}, {high:.2f}] "
            f"| {loss} | {r['device']} |"
        )
    notes = sorted({r["note"] for r in records if r.get("note")})
    return "\n".join(lines + ([""] + [f"Note: {n}." for n in notes] if notes else [])) + "\n"


def write_report(results: Path = RESULTS) -> str:
    """Rewrite ``<results>.md`` from ``<results>.jsonl`` (a variant run again on the same device: its newest record)."""
    latest = {}
    for line in results.with_suffix(".jsonl").read_text().splitlines():
        record = json.loads(line)
        latest[record["variant"], record["device"]] = record
    order = {name: k for k, name in enumerate(VARIANTS)}
    text = report(sorted(latest.values(), key=lambda r: order.get(r["variant"], 99)))
    results.with_suffix(".md").write_text(text)
    return text


def main(argv=None) -> None:
    from d2f.world import digits

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("variants", nargs="*", help=f"default: all of {', '.join(VARIANTS)}")
    p.add_argument("--work", default="runs/own-images-sweep")
    p.add_argument("--parallel", type=int, help="training processes at a time (default: all on a GPU, 1 on a CPU)")
    p.add_argument("--steps", type=int, help="every variant's steps instead of its own: a smoke run")
    p.add_argument("--results", default=str(RESULTS), help="JSONL and .md path stem")
    args = p.parse_args(argv)
    parallel = args.parallel or (len(VARIANTS) if torch.cuda.is_available() else 1)
    results = Path(args.results)
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        p.error(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    work, names = Path(args.work), args.variants or list(VARIANTS)
    data = {c: write_data(work / f"data-{c}", c) for c in ("digit", "known")}
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    waiting, running, started = list(names), {}, {}
    classifier = digits.train_classifier()
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    while waiting or running:
        while waiting and len(running) < parallel:
            name = waiting.pop(0)
            captions, options = VARIANTS[name]
            run = work / f"run-{name}"
            command = [sys.executable, "-m", "d2f", "train", "--data", str(data[captions]), "--output", str(run)]
            log = open(work / f"{name}.log", "w")
            options = [*options, *(["--steps", str(args.steps)] if args.steps else [])]  # the last --steps wins
            argv = [*command, "--overwrite", *BEFORE_AUTO, *options]
            running[name] = subprocess.Popen(argv, stdout=log, stderr=log, env=env)
            started[name] = options
        for name, proc in list(running.items()):
            if proc.poll() is None:
                continue
            del running[name]
            captions, options = VARIANTS[name][0], started[name]
            run = work / f"run-{name}"
            ok = proc.returncode == 0
            correct, n = score(classifier, run, captions) if ok else (0, 1)
            summary = json.loads((run / "d2f_run.json").read_text())["summary"] if ok else {}
            record = dict(variant=name, captions=captions, options=options, correct=correct, n=n, failed=not ok)
            record.update(final_loss=summary.get("final_loss"), train_seconds=summary.get("seconds"))
            record.update(device=device, date=time.strftime("%Y-%m-%d"))
            print(json.dumps(record), flush=True)
            with open(results.with_suffix(".jsonl"), "a") as out:
                out.write(json.dumps(record) + "\n")
        time.sleep(1)
    print(write_report(results))


if __name__ == "__main__":
    main()
