"""A "true blacks and whites" task for the built-in world: ``shapes-extremes``, shapes on pure black or pure white.

Lin et al. (2024, "Common diffusion noise schedules and sample steps are flawed", arXiv 2305.08891) showed that a
model trained with a non-zero terminal SNR cannot make a very dark or a very bright image: at the last training
timestep a little of the image is left in the noise, so the model learns to keep the mean brightness that leak
carries, and sampling, which starts from pure noise, starts from mean brightness 0.5 every time. Diff2Flow trains
at pure noise (t = 0; docs/math.md §5) and is claimed to fix it. This dataset asks for it directly: the priors'
own filled shapes (``base`` style) in their six colours on a background of exactly 0 or exactly 255, captioned
"a red circle on black" / "a red circle on white".

Scoring (``evaluate``): prompt accuracy reads the shape with the evaluator's shape head and the colour off the
pixels (``novel.pixel_colour``, nearest of the six colours), both as asked; and each sample's background (its
outer 2 px ring, ``metrics.background_luminance``) against the 0 or 1 its caption asks for. The evaluator's
domain head does not apply (it knows light and dark backgrounds, not these).
"""

from __future__ import annotations

import dataclasses
import random

import torch

from d2f.world.evaluator import Evaluator, as_batch, load_evaluator
from d2f.world.shapes import COLOURS, SHAPES, caption, draw, random_spec

NAME = "shapes-extremes"
DOMAIN = "base"
BACKGROUNDS = {"black": (0, 0, 0), "white": (255, 255, 255)}


def prompts() -> list[str]:
    """The task's 48 captions, each shape and colour on black then on white ("a red circle on black", "a red circle
    on white", ...): any run of consecutive prompts asks for both extremes."""
    return [f"{caption(s, c)} on {b}" for s in SHAPES for c in COLOURS for b in BACKGROUNDS]


def parse(prompt: str) -> tuple[str, str, str]:
    """(shape, colour, background) of a caption of this task."""
    words = prompt.strip().lower().split()
    if (
        len(words) != 5
        or words[0] != "a"
        or words[1] not in COLOURS
        or words[2] not in SHAPES
        or words[3] != "on"
        or (words[4] not in BACKGROUNDS)
    ):
        raise ValueError(f"{prompt!r} is not a caption of {NAME} (e.g. 'a red circle on black')")
    return words[2], words[1], words[4]


def specs(num_images: int, seed: int, prompt_list: list[str] | None = None):
    """``num_images`` specs: the base style's shapes, on the background of ``prompt_list[k % len]``, else drawn."""
    rng = random.Random(f"{NAME}-{seed}")
    out = []
    for k in range(num_images):
        if prompt_list:
            shape, colour, background = parse(prompt_list[k % len(prompt_list)])
        else:
            shape, colour, background = rng.choice(SHAPES), rng.choice(sorted(COLOURS)), rng.choice(sorted(BACKGROUNDS))
        spec = random_spec(rng, DOMAIN, shape, colour)
        out.append((dataclasses.replace(spec, background=BACKGROUNDS[background]), background))
    return out


def make_dataset(num_images: int, seed: int = 0, resolution: int = 32):
    """A ``datasets.Dataset`` like ``shapes.make_dataset``'s (image, text, shape, colour, domain)."""
    import datasets

    rows = specs(num_images, seed)
    return datasets.Dataset.from_dict(
        {
            "image": [draw(s, resolution) for s, _ in rows],
            "text": [f"{caption(s.shape, s.colour)} on {b}" for s, b in rows],
            "shape": [s.shape for s, _ in rows],
            "colour": [s.colour for s, _ in rows],
            "domain": [s.domain for s, _ in rows],
        }
    ).cast_column("image", datasets.Image())


def reference_images(prompt_list: list[str], seed: int = 0, resolution: int = 32) -> torch.Tensor:
    """Real images of the task for ``prompt_list``: (len, 3, res, res) in [0, 1]."""
    return as_batch([draw(s, resolution) for s, _ in specs(len(prompt_list), seed, prompt_list)])


def asked_background(prompt_list: list[str]) -> torch.Tensor:
    """The background luminance each caption asks for: 0 (black) or 1 (white), (len,) float32."""
    return torch.tensor([float(parse(p)[2] == "white") for p in prompt_list])


def correct(images, prompt_list: list[str], evaluator: Evaluator | None = None) -> list[bool]:
    """Per image: shape (evaluator head) and colour (``novel.pixel_colour``) both as asked."""
    from d2f.world.novel import pixel_colour

    x = as_batch(images)
    shapes = (evaluator or load_evaluator()).predict(x)["shape"]
    colours = pixel_colour(x)
    return [(s, c) == parse(p)[:2] for s, c, p in zip(shapes, colours, prompt_list)]


def evaluate(images, prompt_list: list[str], seed: int = 0, evaluator: Evaluator | None = None) -> dict[str, float]:
    """{"prompt_accuracy", "domain_accuracy", "fd", "black_background", "white_background"} of samples of this task:
    the last two the mean background luminance of the samples asked for black (0 is right) and for white (1)."""
    from d2f.world.metrics import background_luminance
    from d2f.world.novel import task_scores

    x = as_batch(images)
    scores = task_scores(x, prompt_list, correct, reference_images, DOMAIN, seed, evaluator)
    luminance, white = background_luminance(x), asked_background(prompt_list) == 1
    return {
        **scores,
        "black_background": float(luminance[~white].mean()) if (~white).any() else float("nan"),
        "white_background": float(luminance[white].mean()) if white.any() else float("nan"),
    }
