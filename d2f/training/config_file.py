"""``d2f train --config FILE``: every option of ``d2f train`` from a TOML, YAML or JSON file.

Keys are ``TrainConfig``'s field names (the CLI's options with ``_`` for ``-``; ``validation_prompts`` is a
list). Options given on the command line override the file; the resolved settings are what ``d2f_run.json``
records. An unknown key is an error that names the closest known one.

    # run.toml
    model = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    data = "./my_images"
    lora_rank = 16
    validation_prompts = ["a photo of sks dog", "sks dog on a beach"]
"""

from __future__ import annotations

import difflib
import json
from dataclasses import fields
from pathlib import Path

from d2f.errors import UserError
from d2f.training.config import TrainConfig


def read_config_file(path: str | Path) -> dict:
    """The settings in a config file, checked against ``TrainConfig``'s fields."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read --config {path} ({exc.strerror or type(exc).__name__})") from None
    suffix = path.suffix.lower()
    try:
        if suffix == ".toml":
            try:
                import tomllib
            except ImportError:  # Python 3.10
                import tomli as tomllib
            settings = tomllib.loads(text)
        elif suffix in (".yaml", ".yml"):
            import yaml

            settings = yaml.safe_load(text)
        elif suffix == ".json":
            settings = json.loads(text)
        else:
            raise UserError(f"--config {path}: use a .toml, .yaml or .json file")
    except UserError:
        raise
    except Exception as exc:  # the parsers' own errors: a line and column where they can
        raise UserError(f"--config {path} is not valid {suffix[1:].upper()}: {str(exc).splitlines()[0]}") from None
    if not isinstance(settings, dict):
        raise UserError(f"--config {path} must hold key = value settings, not a {type(settings).__name__}")
    known = [f.name for f in fields(TrainConfig)]
    for key in settings:
        if key not in known:
            close = difflib.get_close_matches(key.replace("-", "_"), known, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise UserError(f"--config {path}: unknown setting {key!r}{hint}")
    return settings
