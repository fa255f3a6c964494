"""Experiment trackers (``--report-to``): what ``metrics.jsonl`` logs, through accelerate's trackers.

``--report-to tensorboard`` (or wandb, mlflow, comet_ml, aim, clearml, dvclive, trackio, swanlab: whatever
accelerate supports and is installed) sends every train record (loss, lr, the loss in t-bins) and every
validation record (the evaluator's metrics) as scalars at their step, and (to tensorboard) the validation
grids as images. The tracker packages are not d2f dependencies: ``pip install tensorboard``
(or ``d2f[track]``). ``metrics.jsonl`` stays the record d2f itself reads.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from d2f.errors import UserError

# --report-to name -> the package it needs
TRACKERS = {
    "tensorboard": "tensorboard",
    "wandb": "wandb",
    "mlflow": "mlflow",
    "comet_ml": "comet_ml",
    "aim": "aim",
    "clearml": "clearml",
    "dvclive": "dvclive",
    "trackio": "trackio",
    "swanlab": "swanlab",
}


def check_report_to(names: list[str]) -> list[str]:
    """``UserError`` for an unknown tracker or one whose package is not installed."""
    for name in names:
        if name not in TRACKERS:
            raise UserError(f"unknown --report-to {name!r}; use one of {', '.join(TRACKERS)}")
        if importlib.util.find_spec(TRACKERS[name]) is None:
            raise UserError(f"--report-to {name} needs the {TRACKERS[name]} package: pip install {TRACKERS[name]}")
    return names


def start(acc, project: str, config: dict) -> None:
    """Open the trackers (main process), with the run's settings as hyperparameters (scalars only: the
    trackers take numbers, strings and booleans)."""
    if acc.log_with:
        hparams = {k: v for k, v in config.items() if isinstance(v, (int, float, str, bool))}
        acc.init_trackers(project, config=hparams)


def scalars(record: dict) -> dict[str, float]:
    """The numbers of a metrics.jsonl record, flat: ``train/loss``, ``train/loss_t_bin_3``, ``validation/fd``."""
    kind = record.get("kind", "train")
    out = {}
    for key, value in record.items():
        if key in ("step", "kind", "grid"):
            continue
        if isinstance(value, list):
            out.update({f"{kind}/{key[:-1]}_{k}": v for k, v in enumerate(value) if isinstance(v, (int, float))})
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{kind}/{key}"] = value
    return out


def log(acc, record: dict, run_folder: Path) -> None:
    """Send one metrics record (and, for a validation record, its grid image) to the trackers."""
    if not acc.log_with:
        return
    acc.log(scalars(record), step=record["step"])
    if record.get("grid"):
        import numpy as np
        from PIL import Image

        image = np.asarray(Image.open(run_folder / record["grid"]).convert("RGB"))
        for tracker in acc.trackers:
            if tracker.name == "tensorboard":  # the one image API d2f tests here; others get the scalars
                tracker.log_images({"validation/grid": image[None]}, step=record["step"], dataformats="NHWC")
