"""Metrics of the built-in shapes world, read by the evaluator (``evaluator.py``).

Shared by the CLI, tests, tutorials and benchmarks. ``images`` is always either a float tensor
(B, 3, H, W) in [0, 1] (any H = W; resized to 32 px inside) or a list of PIL images, and
``prompts[k]`` is the caption image k was generated from ("a red circle", see ``shapes.caption``).

- ``prompt_accuracy`` in [0, 1], higher is better: the fraction of images whose predicted shape AND
  colour both match their prompt. Chance is 1/24 ~ 0.04; generator images score >= 0.99.
- ``domain_accuracy`` in [0, 1]: the fraction classified as ``domain`` ("base": filled on light,
  "target": outline on dark). It measures how far a finetune moved a model into the target domain:
  base generator images score 1.0 on "base" and 0.0 on "target"; a finetune into the target
  domain should move a base prior's samples from ~0 towards 1.
- ``fd`` in [0, inf), lower is better: the Frechet distance between Gaussians fitted to evaluator
  features (64-d) of the images and of real generator images drawn for the same prompts and domain,
  the FID of this world. It sees quality (blur, artefacts, wrong sizes) as well as content.
- ``background_luminance`` in [0, 1], per image: the mean luminance of its outer ring of pixels, where the world
  draws no shape (its background: light, 215-245 of 255, in "base"; dark, 10-40, in "target"). How dark or light
  a model's backgrounds come out, against the data's (issue #24's "true blacks and whites").

How many samples: both accuracies are binomial fractions, standard error sqrt(p(1-p)/n), so at
n = 64 a true 0.9 reads 0.9 +- 0.04 and n = 256 halves that. The FD is biased upward at small n
(estimated covariances are noisy), so **compare FDs only at the same n**, and against the real-vs-real
floor at that n: the floor falls like 1/n (pure estimation bias) while real differences stay put, so the n
needed grows as the difference to resolve shrinks. ``fd_floor_table`` measures the floor and a few real
differences (``python -m d2f.world.metrics``); ``benchmarks/results/fd_floor.md`` has the shipped evaluator's.
"""

from __future__ import annotations

import torch

from d2f.distances import frechet_distance, kid
from d2f.world.evaluator import Evaluator, as_batch, load_evaluator
from d2f.world.shapes import DOMAINS, draw, make_specs, parse_prompt


def _parse(prompts: list[str], n: int) -> list[tuple[str, str]]:
    if isinstance(prompts, str):
        raise ValueError("prompts must be a list of captions (one per image), not a single string")
    if len(prompts) != n:
        raise ValueError(f"got {n} images but {len(prompts)} prompts; give one prompt per image")
    parsed = []
    for p in prompts:
        sc = parse_prompt(p)
        if sc is None:
            raise ValueError(
                f"prompt {p!r} is not a caption of the shapes world; "
                f"captions look like 'a red circle' (see d2f.world.shapes.all_prompts())"
            )
        parsed.append(sc)
    return parsed


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"unknown domain {domain!r}; expected one of {', '.join(DOMAINS)}")


# the ring's width in pixels per 32 px of side: a shape keeps 0.06 of the side (1.9 px at 32) from every edge
# (shapes.random_spec: centre margin = half-extent + 0.06), so the outer 2 px hold background alone
BORDER_PER_32 = 2
# ITU-R BT.601 luma weights of R, G, B
LUMA = (0.299, 0.587, 0.114)


def background_luminance(images) -> torch.Tensor:
    """(B,) float64: each image's mean luminance Y = 0.299 R + 0.587 G + 0.114 B over its outer ring of
    ``BORDER_PER_32 * side / 32`` pixels (at least 1), in [0, 1]."""
    x = images if isinstance(images, torch.Tensor) else as_batch(images)
    x = x.double()
    ring = max(1, round(BORDER_PER_32 * x.shape[-1] / 32))
    # Y = sum_c w_c x_c
    y = sum(w * x[:, c] for c, w in enumerate(LUMA))
    inner = torch.zeros_like(y, dtype=torch.bool)
    inner[:, ring:-ring, ring:-ring] = True
    return y.masked_fill(inner, 0).flatten(1).sum(1) / (~inner[0]).sum()


def prompt_accuracy(images, prompts: list[str], evaluator: Evaluator | None = None) -> float:
    """Fraction of images whose predicted shape and colour both match ``prompts[k]``; in [0, 1]."""
    x = as_batch(images)
    wanted = _parse(prompts, len(x))
    pred = (evaluator or load_evaluator()).predict(x)
    hits = [(s, c) == w for s, c, w in zip(pred["shape"], pred["colour"], wanted)]
    return sum(hits) / len(hits)


def domain_accuracy(images, domain: str, evaluator: Evaluator | None = None) -> float:
    """Fraction of images classified as ``domain`` ("base" or "target"); in [0, 1]."""
    _check_domain(domain)
    pred = (evaluator or load_evaluator()).predict(as_batch(images))["domain"]
    return sum(d == domain for d in pred) / len(pred)


def reference_images(prompts: list[str], domain: str, seed: int = 0, resolution: int = 32) -> torch.Tensor:
    """Real generator images for ``prompts`` in ``domain``: (len(prompts), 3, res, res) in [0, 1]."""
    _check_domain(domain)
    return as_batch([draw(s, resolution) for s in make_specs(len(prompts), domain, seed, prompts)])


def fd(images, prompts: list[str], domain: str, seed: int = 0, evaluator: Evaluator | None = None) -> float:
    """Frechet distance between evaluator features of ``images`` and of real generator images drawn
    for the same ``prompts`` in ``domain`` (``make_specs(len(prompts), domain, seed, prompts)``).
    Lower is better; compare only at equal n (see the module doc)."""
    x = as_batch(images)
    _parse(prompts, len(x))
    evaluator = evaluator or load_evaluator()
    real = reference_images(prompts, domain, seed, evaluator.config["resolution"])
    return frechet_distance(evaluator.embed(x), evaluator.embed(real))


def kid_score(images, prompts: list[str], domain: str, seed: int = 0, evaluator: Evaluator | None = None) -> float:
    """KID (``d2f.distances.kid``, unbiased) between evaluator features of ``images`` and of real
    generator images for the same prompts in ``domain``: comparable across n, unlike ``fd``."""
    x = as_batch(images)
    _parse(prompts, len(x))
    evaluator = evaluator or load_evaluator()
    real = reference_images(prompts, domain, seed, evaluator.config["resolution"])
    return kid(evaluator.embed(x), evaluator.embed(real))


def evaluate(
    images, prompts: list[str], domain: str, seed: int = 0, evaluator: Evaluator | None = None
) -> dict[str, float]:
    """All three metrics: {"prompt_accuracy", "domain_accuracy", "fd"} (``fd`` against ``domain``)."""
    x = as_batch(images)
    evaluator = evaluator or load_evaluator()
    return {
        "prompt_accuracy": prompt_accuracy(x, prompts, evaluator),
        "domain_accuracy": domain_accuracy(x, domain, evaluator),
        "fd": fd(x, prompts, domain, seed, evaluator),
    }


def fd_floor_table(ns=(32, 64, 128, 256), seeds=range(1, 6), evaluator: Evaluator | None = None) -> dict:
    """Measure the FD floor (``benchmarks/results/fd_floor.md``): for each n, FD of real base / real target images
    (seeds ``seeds``) against real references (seed 0) of the same domain, of base images blurred by
    a 32 -> 16 -> 32 px round trip against base references, and of base images against target
    references. Returns {n: {column: (mean, std)}}."""
    import torch.nn.functional as F

    from d2f.world.shapes import all_prompts

    def half_res(x: torch.Tensor) -> torch.Tensor:
        down = F.interpolate(x, scale_factor=0.5, mode="bilinear", antialias=True)
        return F.interpolate(down, scale_factor=2, mode="bilinear").clamp(0, 1)

    evaluator = evaluator or load_evaluator()
    table = {}
    for n in ns:
        prompts = [all_prompts()[k % 24] for k in range(n)]
        cols = {"base_vs_base": [], "target_vs_target": [], "blurred_base_vs_base": [], "base_vs_target": []}
        for s in seeds:
            base, target = (reference_images(prompts, d, s) for d in DOMAINS)
            cols["base_vs_base"].append(fd(base, prompts, "base", 0, evaluator))
            cols["target_vs_target"].append(fd(target, prompts, "target", 0, evaluator))
            cols["blurred_base_vs_base"].append(fd(half_res(base), prompts, "base", 0, evaluator))
            cols["base_vs_target"].append(fd(base, prompts, "target", 0, evaluator))
        table[n] = {k: (float(torch.tensor(v).mean()), float(torch.tensor(v).std())) for k, v in cols.items()}
    return table


if __name__ == "__main__":
    torch.set_num_threads(1)
    for n, row in fd_floor_table().items():
        print(f"{n:<5} " + "   ".join(f"{k} {m:.3f} +- {s:.3f}" for k, (m, s) in row.items()))
