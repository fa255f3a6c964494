"""A broad, self-made image corpus for the built-in VAE: what "general-purpose" means at 32 px.

SD's VAE was trained on photographs of everything, so it encodes a user's photos it never saw. The built-in
VAE gets the same chance from a corpus made here, offline, of seven **kinds** (``KINDS``):

| kind | what |
| --- | --- |
| ``strokes`` | 1-4 random polylines, 1-4 px wide, any colour on any background (white-on-black included) |
| ``polygons`` | 1-4 random polygons, ellipses and rectangles, filled or outlined |
| ``gradients`` | linear and radial gradients between two random colours |
| ``textures`` | stripes, checkers, dots and smooth value noise, at random scales and colours |
| ``glyphs`` | 1-3 letters, digits or signs in the DejaVu fonts that matplotlib ships, any size and angle |
| ``photos`` | random crops of the natural photographs bundled with scikit-image and matplotlib (``PHOTOS``) |
| ``shapes`` | the shapes world of ``d2f.world.shapes``, both domains (the priors' own data) |

Every image is drawn at 4x and downsampled (antialiased), deterministically from ``(kind, seed)``. Held-out
images for the PSNR report come from another seed; for ``photos`` from photographs the VAE never saw
(``HELD_OUT_PHOTOS``), so the number says how it does on *new* natural images, not new crops of old ones.
Glyphs use DejaVu only: the other fonts matplotlib ships (STIX, Computer Modern) stay unseen, for the
held-out "own images" dataset of ``d2f.world.digits``.
"""

from __future__ import annotations

import functools
import math
import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from d2f.world.glyphs import draw_glyph
from d2f.world.shapes import draw, random_spec

KINDS = ("strokes", "polygons", "gradients", "textures", "glyphs", "photos", "shapes")
_SUPERSAMPLE = 4
GLYPH_FONTS = ("DejaVuSans.ttf", "DejaVuSans-Bold.ttf", "DejaVuSerif.ttf", "DejaVuSerif-Bold.ttf", "DejaVuSansMono.ttf")
GLYPHS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789&?!@#%+=*"
# (package, file) of the photographs used for training crops, and of those held out for the PSNR report
PHOTOS = (
    ("skimage", "astronaut.png"),
    ("skimage", "coffee.png"),
    ("skimage", "rocket.jpg"),
    ("skimage", "motorcycle_left.png"),
    ("skimage", "brick.png"),
    ("skimage", "grass.png"),
    ("skimage", "gravel.png"),
    ("skimage", "hubble_deep_field.jpg"),
    ("skimage", "camera.png"),
    ("skimage", "coins.png"),
)
HELD_OUT_PHOTOS = (("skimage", "chelsea.png"), ("matplotlib", "grace_hopper.jpg"), ("skimage", "motorcycle_right.png"))


def _colour(rng: random.Random) -> tuple[int, int, int]:
    return tuple(rng.randint(0, 255) for _ in range(3))


def _background(rng: random.Random) -> tuple[int, int, int]:
    """Dark, light or any colour, a third each: users' images are often white on black or black on white."""
    mode = rng.random()
    if mode < 1 / 3:
        return tuple(rng.randint(0, 40) for _ in range(3))
    if mode < 2 / 3:
        return tuple(rng.randint(215, 255) for _ in range(3))
    return _colour(rng)


def _point(rng: random.Random, side: int, margin: float = 0.05) -> tuple[float, float]:
    return rng.uniform(margin, 1 - margin) * side, rng.uniform(margin, 1 - margin) * side


def _strokes(rng: random.Random, side: int) -> Image.Image:
    image = Image.new("RGB", (side, side), _background(rng))
    pen = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 4)):
        points = [_point(rng, side) for _ in range(rng.randint(2, 6))]
        pen.line(points, fill=_colour(rng), width=rng.randint(1, 4) * _SUPERSAMPLE, joint="curve")
    return image


def _polygons(rng: random.Random, side: int) -> Image.Image:
    image = Image.new("RGB", (side, side), _background(rng))
    pen = ImageDraw.Draw(image)
    for _ in range(rng.randint(1, 4)):
        colour, outline = _colour(rng), rng.random() < 0.4
        style = dict(outline=colour, width=rng.randint(1, 3) * _SUPERSAMPLE) if outline else dict(fill=colour)
        (x0, y0), (x1, y1) = _point(rng, side, 0.0), _point(rng, side, 0.0)
        box = [min(x0, x1), min(y0, y1), max(x0, x1) + 8, max(y0, y1) + 8]  # at least 2 px at 32 px
        kind = rng.choice(("polygon", "ellipse", "rectangle"))
        if kind == "polygon":
            cx, cy, r = *_point(rng, side, 0.2), rng.uniform(0.1, 0.45) * side
            n, turn = rng.randint(3, 7), rng.uniform(0, 2 * math.pi)
            points = [
                (cx + r * math.cos(turn + 2 * math.pi * k / n), cy + r * math.sin(turn + 2 * math.pi * k / n))
                for k in range(n)
            ]
            pen.polygon(points, **style)
        elif kind == "ellipse":
            pen.ellipse(box, **style)
        else:
            pen.rectangle(box, **style)
    return image


def _gradients(rng: random.Random, side: int) -> Image.Image:
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    if rng.random() < 0.5:  # linear, any direction
        angle = rng.uniform(0, 2 * math.pi)
        s = x * math.cos(angle) + y * math.sin(angle)
    else:  # radial, any centre
        cx, cy = rng.random(), rng.random()
        s = np.sqrt((x - cx) ** 2 + (y - cy) ** 2)
    s = (s - s.min()) / max(float(s.max() - s.min()), 1e-6)
    return Image.fromarray((a + (b - a) * s[..., None]).astype(np.uint8))


def _textures(rng: random.Random, side: int) -> Image.Image:
    a, b = np.array(_colour(rng), np.float32), np.array(_colour(rng), np.float32)
    y, x = np.mgrid[0:side, 0:side].astype(np.float32) / side
    period = rng.uniform(0.08, 0.4)
    kind = rng.choice(("stripes", "checkers", "dots", "noise"))
    if kind == "stripes":
        angle = rng.uniform(0, math.pi)
        s = (np.sin(2 * math.pi * (x * math.cos(angle) + y * math.sin(angle)) / period) > 0).astype(np.float32)
    elif kind == "checkers":
        s = ((np.floor(x / period) + np.floor(y / period)) % 2).astype(np.float32)
    elif kind == "dots":
        fx, fy = (x / period) % 1 - 0.5, (y / period) % 1 - 0.5
        s = (fx**2 + fy**2 < rng.uniform(0.03, 0.2)).astype(np.float32)
    else:  # smooth value noise: a coarse random grid, upsampled bicubically
        cells = rng.randint(2, 8)
        grid = np.random.default_rng(rng.getrandbits(32)).random((cells, cells)).astype(np.float32)
        s = np.asarray(Image.fromarray(grid).resize((side, side), Image.BICUBIC)).clip(0, 1)
    return Image.fromarray((a + (b - a) * s[..., None]).astype(np.uint8))


def _glyphs(rng: random.Random, side: int) -> Image.Image:
    text = "".join(rng.choice(GLYPHS) for _ in range(rng.randint(1, 3)))
    size = rng.uniform(0.35, 0.9) / len(text) ** 0.5
    return draw_glyph(
        text, rng.choice(GLYPH_FONTS), size, _colour(rng), _background(rng), rng, side, rng.uniform(-20, 20)
    )


@functools.cache
def _photo(package: str, name: str) -> Image.Image:
    if package == "skimage":
        try:
            import skimage.data
        except ImportError as e:
            raise ImportError("the photos kind needs scikit-image's bundled images: pip install scikit-image") from e
        folder = Path(skimage.data.__file__).parent
    else:
        import matplotlib

        folder = Path(matplotlib.get_data_path()) / "sample_data"
    return Image.open(folder / name).convert("RGB")


def _photos(rng: random.Random, side: int, photos=PHOTOS) -> Image.Image:
    photo = _photo(*rng.choice(photos))
    w, h = photo.size
    crop = int(rng.uniform(0.12, 0.6) * min(w, h))  # a detail to most of the picture
    x, y = rng.randint(0, w - crop), rng.randint(0, h - crop)
    image = photo.crop((x, y, x + crop, y + crop)).resize((side, side), Image.BICUBIC)
    return image.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else image


def _shapes(rng: random.Random, side: int) -> Image.Image:
    spec = random_spec(rng, rng.choice(("base", "target")))
    return draw(spec, side)


_DRAW = dict(
    strokes=_strokes, polygons=_polygons, gradients=_gradients, textures=_textures, glyphs=_glyphs, photos=_photos
)


def draw_image(kind: str, rng: random.Random, resolution: int = 32, held_out: bool = False) -> Image.Image:
    """One image of ``kind`` at ``resolution`` (RGB PIL); ``held_out`` photos come from ``HELD_OUT_PHOTOS``."""
    if kind == "shapes":
        return _shapes(rng, resolution)
    if kind not in _DRAW:
        raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(KINDS)}")
    side = resolution * _SUPERSAMPLE
    image = _photos(rng, side, HELD_OUT_PHOTOS) if kind == "photos" and held_out else _DRAW[kind](rng, side)
    return image.resize((resolution, resolution), Image.LANCZOS)


def corpus_images(kind: str, num_images: int, seed: int, resolution: int = 32, held_out: bool = False) -> torch.Tensor:
    """``num_images`` images of ``kind`` as uint8 (B, 3, H, W), deterministic in all arguments."""
    rng = random.Random(f"{kind}-{seed}-{held_out}")
    pixels = np.stack([np.asarray(draw_image(kind, rng, resolution, held_out)) for _ in range(num_images)])
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous()
