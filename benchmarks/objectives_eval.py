"""Scoring for ``bench_objectives.py``: one evaluation of a model = n samples, every metric with its interval.

An evaluation is (sampler, network calls, guidance, evaluation seed). Its noise is drawn from the evaluation seed
(``generate``: image i from seed + i), fixed for the whole grid and separate from the training seed, so every
model of the grid is scored on the same noise and the same prompts (prompts cycle through the task's captions).

Metrics (the evaluator of the built-in world, ``d2f/world/evaluator.py``, for every task):

- ``prompt_accuracy``, ``domain_accuracy``: binomial fractions with Wilson 95 % intervals
  (``d2f.world.estimators.wilson_interval``); on ``shapes-novel-colours`` the colour is read off the pixels
  (``d2f.world.novel``); the domain head knows light and dark backgrounds, so on ``shapes-extremes`` it reads
  little;
- ``fd``: Frechet distance of evaluator features to n real images of the task for the same prompts (reference
  seed 0), biased upward at small n, so compared only at equal n; ``kid``: the unbiased KID on the same
  features; both with 95 % intervals value +- 1.96 bootstrap sd (samples and references resampled, ``N_BOOT``
  times; this interval is the sampling noise of one evaluation, not the training-seed spread);
- ``background_luminance``: the mean luminance of the samples' outer ring of pixels, their background
  (``d2f.world.metrics.background_luminance``), with a normal 95 % interval over the samples, and ``reference``:
  the same of the task's real images for the same prompts (how dark or light the data's backgrounds are);
- on ``shapes-extremes`` (``d2f.world.extremes``: "... on black" / "... on white"), ``black_background`` and
  ``white_background``: the same over the samples asked for black and for white, each against its real images
  (0 and 1): "true blacks and whites" as a number. The colour is read off the pixels there too.
"""

from __future__ import annotations

import functools
import importlib
import time
from dataclasses import dataclass

import torch

from d2f.distances import frechet_distance, kid
from d2f.objectives import OBJECTIVES
from d2f.pipeline import generate
from d2f.world.estimators import wilson_interval
from d2f.world.evaluator import load_evaluator
from d2f.world.metrics import background_luminance

N_BOOT = 200


@dataclass(frozen=True)
class Task:
    """A finetuning task: the built-in dataset it trains on, the domain its samples should be in, its prompts.
    A dataset with captions of its own (``module``: ``d2f.world.novel``, ``d2f.world.extremes``) brings its
    prompts, real images and correctness; the others are the shapes world's."""

    data: str
    domain: str
    module: str | None = None

    @property
    def own(self):
        return importlib.import_module(f"d2f.world.{self.module}") if self.module else None

    @property
    def prompts(self) -> list[str]:
        if self.own:
            return self.own.prompts()
        from d2f.world.shapes import all_prompts

        return all_prompts()

    def eval_prompts(self, n: int) -> list[str]:
        return [self.prompts[k % len(self.prompts)] for k in range(n)]

    def references(self, prompts: list[str]) -> torch.Tensor:
        if self.own:
            return self.own.reference_images(prompts, seed=0)
        from d2f.world.metrics import reference_images

        return reference_images(prompts, self.domain, seed=0)

    def correct(self, images: torch.Tensor, prompts: list[str]) -> list[bool]:
        if self.own:
            return self.own.correct(images, prompts, load_evaluator())
        from d2f.world.shapes import parse_prompt

        pred = load_evaluator().predict(images)
        return [(s, c) == parse_prompt(p) for s, c, p in zip(pred["shape"], pred["colour"], prompts)]


TASKS = {
    "shapes-target": Task("shapes-target", "target"),  # a style shift: same content, outline on dark
    "shapes-novel-colours": Task("shapes-novel-colours", "base", "novel"),  # new content: colours never drawn
    "shapes-base": Task("shapes-base", "base"),  # the priors' own domain (the resolution block: at another size)
    "shapes-extremes": Task("shapes-extremes", "base", "extremes"),  # on pure black or white, as the caption asks
}


def natural_sampler(objective: str) -> str:
    """The sampler an objective's model is meant for (its parametrisation's ``sampler``): DDIM for the
    diffusion losses (diffusion, diffusion-fm-t), FM Euler for the FM ones."""
    return OBJECTIVES[objective].sampler


def other_sampler(objective: str) -> str:
    return "euler" if natural_sampler(objective) == "ddim" else "ddim"


@functools.lru_cache(maxsize=8)
def reference_features(task_name: str, n: int) -> torch.Tensor:
    task = TASKS[task_name]
    return load_evaluator().embed(task.references(task.eval_prompts(n)))


@functools.lru_cache(maxsize=8)
def reference_background(task_name: str, n: int) -> float:
    """The mean background luminance of the task's n real reference images."""
    task = TASKS[task_name]
    return float(background_luminance(task.references(task.eval_prompts(n))).mean())


def _mean_interval(values: torch.Tensor) -> dict:
    """The mean with its normal 95 % interval, mean +- 1.96 sd / sqrt(n)."""
    mean, half = float(values.mean()), 1.96 * float(values.std()) / len(values) ** 0.5
    return {"value": mean, "low": mean - half, "high": mean + half}


def _fraction(hits: list[bool]) -> dict:
    k, n = sum(hits), len(hits)
    low, high = wilson_interval(k, n)
    return {"value": k / n, "low": low, "high": high, "k": k, "n": n}


def _with_interval(statistic, feats: torch.Tensor, ref: torch.Tensor) -> dict:
    """value +- 1.96 x the bootstrap standard deviation. Not the percentile interval: resampling with
    replacement duplicates rows, which inflates a Frechet distance (its percentile interval can miss the
    estimate itself at small n); the spread of the bootstrap values is still the estimate's sampling noise."""
    gen = torch.Generator().manual_seed(0)
    boot = []
    for _ in range(N_BOOT):
        a = feats[torch.randint(0, len(feats), (len(feats),), generator=gen)]
        b = ref[torch.randint(0, len(ref), (len(ref),), generator=gen)]
        boot.append(statistic(a, b))
    value, sd = statistic(feats, ref), float(torch.tensor(boot, dtype=torch.float64).std())
    return {"value": value, "low": value - 1.96 * sd, "high": value + 1.96 * sd, "boot_sd": sd}


def score(images: torch.Tensor, task_name: str, prompts: list[str]) -> dict:
    """Every metric of ``images`` (one per prompt) with its 95 % interval."""
    task = TASKS[task_name]
    evaluator = load_evaluator()
    feats = evaluator.embed(images)
    ref = reference_features(task_name, len(prompts))
    domain = evaluator.predict(images)["domain"]
    return {
        "prompt_accuracy": _fraction(task.correct(images, prompts)),
        "domain_accuracy": _fraction([d == task.domain for d in domain]),
        "fd": _with_interval(frechet_distance, feats, ref),
        "kid": _with_interval(kid, feats, ref),
        "background_luminance": _mean_interval(background_luminance(images))
        | {"reference": reference_background(task_name, len(prompts))},
        **(_extremes(images, prompts) if task_name == "shapes-extremes" else {}),
    }


def _extremes(images: torch.Tensor, prompts: list[str]) -> dict:
    """The background luminance of the samples asked for black and of those asked for white, each with its
    interval and the real images' (``d2f.world.extremes``): how near 0 and 1 the model gets."""
    from d2f.world.extremes import asked_background, reference_images

    luminance, white = background_luminance(images), asked_background(prompts) == 1
    real = background_luminance(reference_images(prompts, seed=0))
    return {
        f"{name}_background": _mean_interval(luminance[mask]) | {"reference": float(real[mask].mean())}
        for name, mask in (("black", ~white), ("white", white))
        if mask.sum() > 1
    }


@dataclass(frozen=True)
class Eval:
    """One way of scoring a model: sampler, network calls (= steps: one call per step for Euler and DDIM;
    guidance runs conditional and unconditional in one batched call), guidance, evaluation seed."""

    sampler: str
    calls: int
    guidance: float
    eval_seed: int

    @property
    def name(self) -> str:
        return f"{self.sampler}-{self.calls}-w{self.guidance:g}-e{self.eval_seed}"


@torch.no_grad()
def evaluate(pipe, unet, objective: str, task_name: str, ev: Eval, n: int, resolution: int = 32) -> dict:
    """Sample n images of the task's prompts as ``ev`` says, with the model's ``objective`` parametrisation,
    and ``score`` them; adds ``seconds`` (sampling + scoring)."""
    start = time.perf_counter()
    prompts = TASKS[task_name].eval_prompts(n)
    was_training = unet.training
    unet.eval()
    try:
        images = generate(
            pipe,
            prompts,
            sampler=ev.sampler,
            steps=ev.calls,
            guidance=ev.guidance,
            seed=ev.eval_seed,
            height=resolution,
            width=resolution,
            objective=objective,
            batch_size=256,
        )
    finally:
        unet.train(was_training)
    out = score(images, task_name, prompts)
    out["seconds"] = round(time.perf_counter() - start, 2)
    return out
