"""Text drawn with the fonts that matplotlib ships (DejaVu, STIX, Computer Modern): no system fonts needed.

The VAE's corpus draws glyphs in DejaVu (``d2f.world.build.corpus``); the held-out digits of ``digits.py`` use
STIX and Computer Modern, fonts no part of the built-in world was trained on.
"""

from __future__ import annotations

import functools
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

# fonts no part of the built-in world was trained on (the VAE's glyphs are DejaVu): the held-out class datasets'
UNSEEN_FONTS = (
    "STIXGeneral.ttf",
    "STIXGeneralBol.ttf",
    "STIXGeneralItalic.ttf",
    "cmr10.ttf",
    "cmss10.ttf",
    "cmb10.ttf",
)


@functools.cache
def font_path(name: str) -> str:
    """A font file that matplotlib ships (DejaVu, STIX, Computer Modern): no system fonts needed."""
    import matplotlib

    path = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / name
    if not path.is_file():
        raise FileNotFoundError(
            f"font {name} not found under {path.parent}; install matplotlib (pip install matplotlib)"
        )
    return str(path)


def draw_glyph(
    text: str, font: str, size: float, colour, background, rng: random.Random, side: int, angle: float = 0.0
):
    """``text`` in ``font`` at ``size`` (fraction of the side), centred with a random offset, rotated by ``angle``."""
    layer = Image.new("L", (side, side), 0)
    pen = ImageDraw.Draw(layer)
    face = ImageFont.truetype(font_path(font), max(4, int(size * side)))
    left, top, right, bottom = pen.textbbox((0, 0), text, font=face)
    w, h = right - left, bottom - top
    x = (side - w) / 2 - left + rng.uniform(-0.5, 0.5) * max(0, side - w) * 0.8
    y = (side - h) / 2 - top + rng.uniform(-0.5, 0.5) * max(0, side - h) * 0.8
    pen.text((x, y), text, fill=255, font=face)
    if angle:
        layer = layer.rotate(angle, resample=Image.BICUBIC)
    image = Image.new("RGB", (side, side), background)
    image.paste(Image.new("RGB", (side, side), colour), mask=layer)
    return image
