"""Finetune the built-in prior on "your own images" it never saw, and measure that it learnt their content.

    python benchmarks/own_images.py                    # ~6 min on 2 cores: data, classifier, d2f train, scoring
    python benchmarks/own_images.py --steps 3000       # 3x the budget (~16 min): own_images_3000.md / .png
    python benchmarks/own_images.py --lr 3e-3 --t-sampling logit-normal --name new_content  # docs/own-images.md
    python benchmarks/own_images.py --run runs/digits  # score a run that exists (no training)

1. Writes the held-out digits dataset (``d2f.world.digits``: digits 0-9 in fonts no part of the built-in world
   saw) as an imagefolder, the layout of a user's folder.
2. Trains the digit classifier on fresh images of the same generator and reports its accuracy on held-out
   real images (the ceiling: a sample can only be read as well as a real image is).
3. Runs ``d2f train --data FOLDER --output RUN --train-text-encoder`` with every other option at its default
   but those given (``--steps``, ``--lr``, ``--t-sampling``), unless ``--run`` names a finished run; ``--lr`` and
   ``--t-sampling`` default to 1e-3 and uniform, the values these tables were measured with before ``d2f train``
   chose them by itself (``d2f.training.auto``; its plain command: ``benchmarks/own_images_auto.py``). The text
   encoder is trained too: the prior's was trained on the shapes world's few words and maps "a digit 0" ...
   "a digit 9" to nearly the same states, so a UNet-only LoRA learns the digits' look but cannot tell them
   apart (measured: ``own_images.md``).
4. Samples the prior before and the run after, 10 images per prompt ``"a digit k"`` from the same noise with
   each model's default sampler, and reads them with the classifier: digit accuracy with a 95% Wilson interval
   (chance is 0.10). Writes the table to ``benchmarks/results/own_images[_NAME].md`` and the before/after grid
   to ``docs/own_images[_NAME].png``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def sample(model: str | None, lora: str | None, prompts: list[str], seed: int, device=None) -> torch.Tensor:
    """Images in [0, 1] (on the CPU) from the model (or run) with ``d2f sample``'s defaults: the run's sampler and
    guidance; the pipeline on ``device`` (default: the CPU)."""
    from d2f.pipeline.generate import generate
    from d2f.pipeline.loading import load_pipeline

    pipe = load_pipeline(model, lora, device=device)
    run = pipe.d2f_run or {}
    sampler = run.get("sampler", "ddim")  # an untouched prior samples like a diffusion model
    return generate(pipe, prompts, sampler=sampler, steps=25, guidance=run.get("guidance", 2.0), seed=seed)


def grid(rows: dict[str, torch.Tensor], path: Path, labels=tuple("0123456789"), cell: int = 64) -> Path:
    """One labelled row per model: its first ``len(labels)`` samples, one per class (digits 0-9 by default)."""
    from PIL import Image, ImageDraw

    label_w, per_row = 90, len(labels)
    out = Image.new("RGB", (label_w + per_row * cell, (len(rows) + 1) * cell // 1), "white")
    pen = ImageDraw.Draw(out)
    for col, label in enumerate(labels):
        pen.text((label_w + col * cell + 4, cell // 2 - 6), str(label), fill="black")
    for r, (name, images) in enumerate(rows.items(), start=1):
        pen.text((4, r * cell + cell // 2 - 6), name, fill="black")
        for col in range(per_row):
            pixels = (images[col].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            out.paste(Image.fromarray(pixels).resize((cell, cell), Image.NEAREST), (label_w + col * cell, r * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    out.save(path)
    return path


def main(argv=None) -> None:
    from d2f.world import digits
    from d2f.world.estimators import wilson_interval

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/own-images", help="folder for the dataset and the run")
    p.add_argument("--run", help="score this finished run instead of training one")
    p.add_argument("--model", default="tiny-shapes-eps")
    p.add_argument(
        "--unet-only", dest="train_text_encoder", action="store_false", help="train without --train-text-encoder"
    )
    p.add_argument("--steps", type=int, help="training steps (default: d2f train's, 1000)")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3, d2f train's style default)")
    p.add_argument("--t-sampling", default="uniform", help="t sampling (default uniform, d2f train's style default)")
    p.add_argument("--name", help="suffix of the results and grid files (default: _STEPS with --steps, else none)")
    p.add_argument("--per-digit", type=int, default=10, help="samples per prompt")
    p.add_argument("--seed", type=int, default=1000, help="sampling noise")
    p.add_argument("--results", help="default: benchmarks/results/own_images[_STEPS].md")
    p.add_argument("--grid", help="default: docs/own_images[_STEPS].png")
    args = p.parse_args(argv)
    suffix = f"_{args.name}" if args.name else f"_{args.steps}" if args.steps else ""  # defaults: the plain names
    args.results = args.results or str(ROOT / "benchmarks" / "results" / f"own_images{suffix}.md")
    args.grid = args.grid or str(ROOT / "docs" / f"own_images{suffix}.png")
    work, start = Path(args.work), time.time()
    options = {"--steps": args.steps, "--lr": args.lr, "--t-sampling": args.t_sampling}
    style = {"--lr": 1e-3, "--t-sampling": "uniform"}  # the tables' "defaults": always passed, named when changed
    changed = [str(x) for flag, value in options.items() if value and value != style.get(flag) for x in (flag, value)]

    data = work / "digits"
    if not (data / "metadata.jsonl").is_file():
        digits.write_digits(data, num_images=1000, seed=0)
    classifier = digits.train_classifier(log=print)
    real, labels = digits.make_digits(500, seed=2000)
    ceiling = digits.digit_accuracy(classifier, digits.as_tensor(real), [digits.caption(d) for d in labels])
    print(f"classifier on held-out real digits: {ceiling[0]}/{ceiling[1]}")

    run, train_seconds = args.run, None
    if run is None:
        run = str(work / "run")
        command = [sys.executable, "-m", "d2f", "train", "--model", args.model, "--data", str(data), "--output", run]
        command += ["--train-text-encoder"] if args.train_text_encoder else ["--no-train-text-encoder"]
        command += [str(x) for flag, value in options.items() if value for x in (flag, value)]
        t = time.time()
        subprocess.run(command, check=True)
        train_seconds = time.time() - t

    prompts = [digits.caption(d) for _ in range(args.per_digit) for d in digits.DIGITS]
    rows, table = {}, []
    for name, (model, lora) in {"before": (args.model, None), "after": (None, run)}.items():
        images = sample(model, lora, prompts, args.seed)
        correct, n = digits.digit_accuracy(classifier, images, prompts)
        low, high = wilson_interval(correct, n)
        rows[name] = images
        table.append(dict(model=name, correct=correct, n=n, accuracy=correct / n, low=low, high=high))
        print(f"{name}: digit accuracy {correct}/{n} = {correct / n:.2f} [{low:.2f}, {high:.2f}]")
    grid(rows, Path(args.grid))
    record = json.loads((Path(run) / "d2f_run.json").read_text())
    lines = [
        "# Finetuning the built-in prior on images it never saw (`benchmarks/own_images.py`)",
        "",
        f"Data: `d2f.world.digits`, 1000 images (digits 0-9 in STIX / Computer Modern fonts, light on dark, "
        f'captions "a digit 3"). Model: `{args.model}`, run `{record.get("objective")}` with `d2f train`\'s defaults '
        + (f"but `{' '.join(changed)}` " if changed else "")  # e.g. `--lr 0.003 --t-sampling logit-normal`
        + f"({record['settings']['steps']} steps, LoRA rank {record['lora']['rank']}, guidance {record['guidance']})"
        + (" and `--train-text-encoder`" if record["lora"].get("text_encoder") else ", the UNet only")
        + ". "
        f"VAE PSNR on the data: {record['data']['vae_psnr']:.1f} dB.",
        "",
        f"Classifier (a small CNN trained on fresh images of the generator): {ceiling[0]}/{ceiling[1]} "
        f"= {ceiling[0] / ceiling[1]:.3f} on held-out real digits. Chance: 0.10.",
        "",
        "| model | digit accuracy | 95% interval | n |",
        "| --- | ---: | --- | ---: |",
        *[f"| {r['model']} | {r['accuracy']:.2f} | [{r['low']:.2f}, {r['high']:.2f}] | {r['n']} |" for r in table],
        "",
        f"Sampling: each model's own sampler (DDIM for the untouched prior, the run's for the finetune), 25 steps, "
        f"guidance as the run's, noise seed {args.seed}, "
        f"{args.per_digit} images per digit. Training time: "
        + (f"{train_seconds:.0f} s" if train_seconds else "not measured here (an existing run)")
        + f"; whole script {time.time() - start:.0f} s, 2 CPU cores.",
    ]
    Path(args.results).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
