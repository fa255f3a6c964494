"""Images to files: PIL conversion, grids, one PNG per image. Each file is written whole or not at all
(``d2f.files.atomic_file``): a full disk leaves no empty or truncated PNG behind, and is one ``UserError``."""

from __future__ import annotations

from pathlib import Path

import torch

from d2f.files import atomic_file


def to_pil(images: torch.Tensor) -> list:
    """PIL images from a float tensor (B, 3, H, W) in [0, 1]."""
    from PIL import Image

    arrays = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a) for a in arrays]


def save_image(image, path: str | Path) -> Path:
    """Write a PIL image to ``path`` (the format from its suffix, PNG by default) through a temporary file."""
    from PIL import Image

    path = Path(path)
    image_format = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    # the temporary name has no image suffix, so the format is named, not guessed from it
    with atomic_file(path, fix=f"free space on {path.parent}'s disk, or write the images to another folder") as tmp:
        image.save(tmp, format=image_format)
    return path


def save_grid(images: torch.Tensor, path: str | Path, ncols: int | None = None, padding: int = 2) -> Path:
    """One PNG of the images in rows of ``ncols`` (default: about square), ``padding`` px of white between."""
    from PIL import Image

    n, _, h, w = images.shape
    ncols = ncols or max(1, int(round(n**0.5)))
    nrows = -(-n // ncols)
    grid = Image.new("RGB", (ncols * (w + padding) + padding, nrows * (h + padding) + padding), "white")
    for k, image in enumerate(to_pil(images)):
        grid.paste(image, (padding + (k % ncols) * (w + padding), padding + (k // ncols) * (h + padding)))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_image(grid, path)


def save_images(images: torch.Tensor, folder: str | Path, prefix: str = "") -> list[Path]:
    """One PNG per image: ``folder/{prefix}00000.png``, ..."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return [save_image(image, folder / f"{prefix}{k:05d}.png") for k, image in enumerate(to_pil(images))]
