"""A "new content" task for the built-in world: ``shapes-novel-colours``, shapes in colours the priors never drew.

The priors drew their shapes in six colours (``shapes.COLOURS``). This dataset draws the same four shapes, filled
on a light background (the priors' own ``base`` style), in three colours no shape of theirs ever had
(``shapes.NOVEL_COLOURS``: pink, cyan, brown), captioned "a pink circle". A finetune must therefore learn new
content (a colour word that never appeared in a caption the priors were trained on, so its embedding is
untrained, bound to a shape in a colour it was never asked for), not a new style: the counterpart of
``shapes-target``, which keeps the content and changes the style.

Scoring. The evaluator's shape and domain heads read these images (they are shapes in the base style); its
colour head knows only the six old colours, so the colour is read off the pixels instead
(``pixel_colour``: the mean colour of the pixels far from the background, nearest of all nine palette
colours, old and new: a finetune that draws "a pink circle" red is wrong). Generator images score 1.0 on
``prompt_accuracy`` (shape head AND pixel colour) and on ``domain_accuracy`` (base); ``fd`` and ``kid`` compare
evaluator features with real images of this dataset drawn for the same prompts (``reference_images``).
"""

from __future__ import annotations

import torch

from d2f.world.evaluator import Evaluator, as_batch, load_evaluator
from d2f.world.shapes import COLOURS, NOVEL_COLOURS, SHAPES, caption, draw, random_spec

NAME = "shapes-novel-colours"
DOMAIN = "base"
PALETTE = {**COLOURS, **NOVEL_COLOURS}


def prompts() -> list[str]:
    """The task's 12 captions, shape-major then colour: "a pink circle", ..."""
    return [caption(s, c) for s in SHAPES for c in NOVEL_COLOURS]


def parse(prompt: str) -> tuple[str, str]:
    words = prompt.strip().lower().split()
    if len(words) != 3 or words[0] != "a" or words[1] not in NOVEL_COLOURS or words[2] not in SHAPES:
        raise ValueError(f"{prompt!r} is not a caption of {NAME} (e.g. 'a pink circle')")
    return words[2], words[1]


def specs(num_images: int, seed: int, prompt_list: list[str] | None = None):
    """``num_images`` specs in the base style; colour and shape from ``prompt_list[k % len]``, else drawn."""
    import random

    rng = random.Random(f"{NAME}-{seed}")
    out = []
    for k in range(num_images):
        if prompt_list:
            shape, colour = parse(prompt_list[k % len(prompt_list)])
        else:
            shape, colour = rng.choice(SHAPES), rng.choice(sorted(NOVEL_COLOURS))
        out.append(random_spec(rng, DOMAIN, shape, colour))
    return out


def make_dataset(num_images: int, seed: int = 0, resolution: int = 32):
    """A ``datasets.Dataset`` like ``shapes.make_dataset``'s (image, text, shape, colour, domain)."""
    import datasets

    rows = specs(num_images, seed)
    return datasets.Dataset.from_dict(
        {
            "image": [draw(s, resolution) for s in rows],
            "text": [caption(s.shape, s.colour) for s in rows],
            "shape": [s.shape for s in rows],
            "colour": [s.colour for s in rows],
            "domain": [s.domain for s in rows],
        }
    ).cast_column("image", datasets.Image())


def reference_images(prompt_list: list[str], seed: int = 0, resolution: int = 32) -> torch.Tensor:
    """Real images of the task for ``prompt_list``: (len, 3, res, res) in [0, 1]."""
    return as_batch([draw(s, resolution) for s in specs(len(prompt_list), seed, prompt_list)])


def pixel_colour(images) -> list[str]:
    """The palette colour (old or new) of each image's foreground: the background is the median of the
    border pixels; the foreground the pixels more than 0.25 (RGB distance in [0, 1] units) away from it;
    its mean colour is matched to the nearest of the nine palette colours."""
    x = as_batch(images)
    border = torch.cat([x[:, :, 0], x[:, :, -1], x[:, :, :, 0], x[:, :, :, -1]], dim=2)  # (B, 3, 4H)
    background = border.median(dim=2).values[:, :, None, None]
    far = (x - background).norm(dim=1) > 0.25  # (B, H, W)
    names = list(PALETTE)
    palette = torch.tensor([PALETTE[c] for c in names], dtype=torch.float32) / 255  # (9, 3)
    out = []
    for k in range(len(x)):
        if not far[k].any():
            out.append("none")
            continue
        mean = x[k][:, far[k]].mean(dim=1)  # (3,)
        out.append(names[int((palette - mean).norm(dim=1).argmin())])
    return out


def evaluate(images, prompt_list: list[str], seed: int = 0, evaluator: Evaluator | None = None) -> dict[str, float]:
    """{"prompt_accuracy", "domain_accuracy", "fd"} of samples of this task (see the module doc)."""
    return task_scores(images, prompt_list, correct, reference_images, DOMAIN, seed, evaluator)


def task_scores(images, prompt_list, correct_fn, references_fn, domain: str, seed: int, evaluator) -> dict[str, float]:
    """{"prompt_accuracy", "domain_accuracy", "fd"} of samples of a task with captions of its own: its
    ``correct_fn(images, prompts, evaluator)`` and ``references_fn(prompts, seed, resolution)`` (real images)."""
    from d2f.distances import frechet_distance

    x = as_batch(images)
    if len(prompt_list) != len(x):
        raise ValueError(f"got {len(x)} images but {len(prompt_list)} prompts")
    evaluator = evaluator or load_evaluator()
    hits = correct_fn(x, prompt_list, evaluator)
    predicted = evaluator.predict(x)["domain"]
    real = references_fn(prompt_list, seed, evaluator.config["resolution"])
    return {
        "prompt_accuracy": sum(hits) / len(hits),
        "domain_accuracy": sum(d == domain for d in predicted) / len(predicted),
        "fd": frechet_distance(evaluator.embed(x), evaluator.embed(real)),
    }


def correct(images, prompt_list: list[str], evaluator: Evaluator | None = None) -> list[bool]:
    """Per image: shape (evaluator head) and colour (``pixel_colour``) both as asked."""
    x = as_batch(images)
    shapes = (evaluator or load_evaluator()).predict(x)["shape"]
    colours = pixel_colour(x)
    return [(s, c) == parse(p) for s, c, p in zip(shapes, colours, prompt_list)]
