"""The built-in world's named datasets for ``d2f train --data``: ``shapes-base``, ``shapes-target``,
``shapes-novel-colours`` (new content: shapes in colours the priors never drew, ``d2f/world/novel.py``) and
``shapes-extremes`` (shapes on pure black or pure white, as the caption asks: ``d2f/world/extremes.py``).

``builtin_data(name, resolution)`` is the resolver that training takes as its ``builtin`` hook: it writes
the named dataset once as an imagefolder (images + ``metadata.jsonl``) into d2f's cache, so the demo runs
through the same loading code as a user's folder, and says how samples of it are scored (the world's
evaluator: prompt accuracy, domain accuracy, FD against the domain).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from d2f.training.data import BuiltinData

DATASETS = {
    "shapes-base": "base",
    "shapes-target": "target",
    "shapes-novel-colours": "novel-colours",
    "shapes-extremes": "extremes",
}
NUM_IMAGES = 2048
SEED = 7  # the priors were built from generator seeds 0 and 1: seed 7 draws images they never saw


_TASK_MODULES = {"shapes-novel-colours": "novel", "shapes-extremes": "extremes"}  # captions of their own


def _task_module(name: str):
    """The module of a dataset with captions of its own: ``make_dataset``, ``DOMAIN``, ``prompts``, ``evaluate``."""
    import importlib

    return importlib.import_module(f"d2f.world.{_TASK_MODULES[name]}")


def cache_root() -> Path:
    """Where d2f caches generated data: ``$D2F_CACHE`` or ``~/.cache/d2f``."""
    return Path(os.environ.get("D2F_CACHE", Path.home() / ".cache" / "d2f"))


def builtin_folder(name: str, resolution: int, num_images: int | None = None, seed: int = SEED) -> Path:
    """The cache folder of a built-in dataset, written on first use (atomically: into a temporary folder
    that is then renamed, so concurrent processes and killed runs never see a half-written folder)."""
    from d2f.world.shapes import make_dataset, write_imagefolder

    num_images = NUM_IMAGES if num_images is None else num_images
    folder = cache_root() / "data" / f"{name}-n{num_images}-seed{seed}-{resolution}px"
    if (folder / "metadata.jsonl").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}-", dir=folder.parent))
    if name in _TASK_MODULES:
        dataset = _task_module(name).make_dataset(num_images, seed, resolution)
    else:
        dataset = make_dataset(num_images, DATASETS[name], seed, resolution)
    write_imagefolder(dataset, tmp)
    try:
        os.replace(tmp, folder)
    except OSError:  # another process got there first
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def builtin_data(name: str, resolution: int) -> BuiltinData | None:
    """The ``BuiltinData`` of a built-in dataset name, or None for any other ``--data``."""
    if name not in DATASETS:
        return None
    from d2f.world.metrics import evaluate
    from d2f.world.shapes import all_prompts

    domain = DATASETS[name]
    if name in _TASK_MODULES:
        task = _task_module(name)
        return BuiltinData(
            folder=builtin_folder(name, resolution),
            domain=task.DOMAIN,
            prompts=task.prompts(),
            evaluate=lambda images, prompts: task.evaluate(images, prompts),
        )
    return BuiltinData(
        folder=builtin_folder(name, resolution),
        domain=domain,
        prompts=all_prompts(),
        evaluate=lambda images, prompts: evaluate(images, prompts, domain),
    )


builtin_data.names = tuple(DATASETS)  # for messages that list what --data accepts
