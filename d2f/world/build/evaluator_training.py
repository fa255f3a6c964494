"""Training the built-in world's evaluator (``d2f.world.evaluator``) on fresh generator images.

A new batch of both domains is drawn every step (the CNN never sees an image twice), with mild blur,
noise and colour jitter (``augment``) so that it also reads generated samples, which are blurrier than
the generator's drawings. ``python -m d2f.world.build.evaluator_training --output DIR`` runs ``main``.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from d2f.versions import versions
from d2f.world.augment import augment
from d2f.world.evaluator import RESOLUTION, Evaluator, as_batch, clear_cache
from d2f.world.shapes import DOMAINS, draw, make_specs, random_spec


def _batch(specs, resolution: int = RESOLUTION) -> torch.Tensor:
    return as_batch([draw(s, resolution) for s in specs])


def _labels(specs, model: Evaluator) -> dict[str, torch.Tensor]:
    cfg = model.config
    return {
        "shape": torch.tensor([cfg["shapes"].index(s.shape) for s in specs]),
        "colour": torch.tensor([cfg["colours"].index(s.colour) for s in specs]),
        "domain": torch.tensor([cfg["domains"].index(s.domain) for s in specs]),
    }


@torch.no_grad()
def held_out_accuracy(
    model: Evaluator,
    num_per_domain: int = 500,
    seed: int = 10_000,
    resolution: int = RESOLUTION,
    augmented: bool = False,
) -> dict[str, float]:
    """Per-head accuracy on fresh generator images of both domains (seed ``seed``), drawn at
    ``resolution``; with ``augmented`` they first get the training corruptions (a robustness check)."""
    specs = [s for d in DOMAINS for s in make_specs(num_per_domain, d, seed)]
    x = _batch(specs, resolution)
    if augmented:
        x = augment(x, torch.Generator().manual_seed(seed))
    pred = model.predict(x)
    truth = {
        "shape": [s.shape for s in specs],
        "colour": [s.colour for s in specs],
        "domain": [s.domain for s in specs],
    }
    return {k: float(np.mean([p == t for p, t in zip(pred[k], truth[k])])) for k in truth}


def train_evaluator(
    out_dir: str | Path,
    steps: int = 800,
    seed: int = 0,
    batch_size: int = 64,
    lr: float = 3e-3,
    eval_per_domain: int = 500,
    log=print,
) -> dict:
    """Train an evaluator from scratch on fresh generator images and save it to ``out_dir``:
    ``model.safetensors``, ``config.json`` and ``d2f_build.json`` (recipe, seed, versions, final loss,
    held-out accuracy per head on seed ``10_000 + seed``). Returns the build record.

    Each step draws ``batch_size`` new images (half base, half target), augments them and takes one
    AdamW step on the sum of the three cross-entropies; the learning rate decays linearly to 0."""
    if steps < 1 or batch_size < 2:
        raise ValueError(f"need steps >= 1 and batch_size >= 2, got steps={steps}, batch_size={batch_size}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(f"evaluator-train-{seed}")
    model = Evaluator()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1 - k / steps)
    start, ema = time.time(), None
    for step in range(1, steps + 1):
        specs = [random_spec(rng, DOMAINS[k % 2]) for k in range(batch_size)]
        logits = model(augment(_batch(specs), gen))
        labels = _labels(specs, model)
        loss = sum(F.cross_entropy(logits[k], labels[k]) for k in labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        ema = loss.item() if ema is None else 0.95 * ema + 0.05 * loss.item()
        if log and (step % 100 == 0 or step == steps):
            log(f"step {step}/{steps}  loss {ema:.4f}  {time.time() - start:.0f}s")
    model.eval()
    accuracy = held_out_accuracy(model, eval_per_domain, seed=10_000 + seed)
    accuracy_aug = held_out_accuracy(model, eval_per_domain, seed=10_000 + seed, augmented=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, out_dir / "model.safetensors")
    (out_dir / "config.json").write_text(json.dumps(model.config, indent=2) + "\n")
    record = {
        "what": "d2f shapes-world evaluator (shape, colour, domain heads + features for fd)",
        "command": f"python -m d2f.world.build.evaluator_training --output DIR --steps {steps} --seed {seed} "
        f"--batch-size {batch_size}",
        "recipe": {
            "steps": steps,
            "seed": seed,
            "batch_size": batch_size,
            "lr": lr,
            "optimizer": "AdamW(weight_decay=1e-4), linear decay to 0",
            "data": "fresh generator images every step, half base half target, 32 px",
            "augment": "blur sigma U(0,1) on half, contrast/gain/offset jitter, noise std U(0,0.04)",
        },
        "final_loss_ema": round(ema, 5),
        "held_out": {
            "seed": 10_000 + seed,
            "images_per_domain": eval_per_domain,
            "accuracy": accuracy,
            "accuracy_augmented": accuracy_aug,
        },
        "train_seconds": round(time.time() - start, 1),
        "versions": versions(("d2f", "torch", "numpy", "pillow", "safetensors")),
    }
    (out_dir / "d2f_build.json").write_text(json.dumps(record, indent=2) + "\n")
    clear_cache()  # a reload of this folder must see the new weights
    return record


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Train the shapes-world evaluator and save it to a folder.")
    p.add_argument("--output", required=True, help="folder to write model.safetensors, config.json, d2f_build.json")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch-size", type=int, default=64)
    args = p.parse_args(argv)
    torch.set_num_threads(min(2, torch.get_num_threads()))
    record = train_evaluator(args.output, args.steps, args.seed, args.batch_size)
    print(json.dumps({k: record[k] for k in ("final_loss_ema", "held_out", "train_seconds")}, indent=2))


if __name__ == "__main__":
    main()
