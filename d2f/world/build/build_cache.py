"""The build cache ``<output>/_build``: where each stage of ``python -m d2f.world.build`` keeps its result and
where the later stages find it (``stages.py``).

A stage that ran writes ``_build/<stage>`` (git-ignored: a cache, not package data). A later stage loads that
result, else the copy inside a prior already in ``<output>``, else (the tokenizer) the shipped one, so that
``--only priors`` rebuilds the priors on the last VAE without re-running the stages before it.
"""

from __future__ import annotations

import json
from pathlib import Path

from d2f.world.build import tokenizer


def stage_folder(out: Path, stage: str) -> Path:
    """``<out>/_build/<stage>``, with the ``.gitignore`` that keeps the cache out of the package."""
    (out / "_build").mkdir(parents=True, exist_ok=True)
    (out / "_build" / ".gitignore").write_text("*\n")
    return out / "_build" / stage


def json_or_none(path: Path):
    """A stage's ``d2f_build.json`` record, or None where that stage did not run here."""
    return json.loads(path.read_text()) if path.is_file() else None


def _first(folders, marker: str, missing: str):
    for folder in folders:
        if (folder / marker).is_file():
            return folder
    raise FileNotFoundError(missing)


def load_merges(out: Path) -> list[tuple[str, str]]:
    """The merges of the last ``tokenizer`` stage, else those of the priors in ``out``, else the shipped ones."""
    folders = (out / "_build" / "tokenizer", out / "tiny-shapes-eps" / "tokenizer", tokenizer.SHIPPED)
    missing = f"no tokenizer under {out}: run `python -m d2f.world.build --output {out} --only tokenizer`"
    return tokenizer.read_merges(_first(folders, "merges.txt", missing))


def load_vae(out: Path):
    """The VAE of the last ``vae`` stage, else the one shipped inside ``tiny-shapes-eps``, and its folder."""
    from diffusers import AutoencoderKL

    folders = (out / "_build" / "vae", out / "tiny-shapes-eps" / "vae")
    missing = f"no VAE under {out}: run `python -m d2f.world.build --output {out} --only vae` first"
    folder = _first(folders, "config.json", missing)
    return AutoencoderKL.from_pretrained(folder), folder


def load_text_encoder(out: Path, name: str):
    """The pretrained text encoder of the last ``text_encoder`` stage, else the one inside prior ``name``."""
    from transformers import CLIPTextModel

    folders = (out / "_build" / "text_encoder", out / name / "text_encoder")
    missing = (
        f"no pretrained text encoder under {out}: run `python -m d2f.world.build --output {out} --only text_encoder`"
    )
    folder = _first(folders, "config.json", missing)
    return CLIPTextModel.from_pretrained(folder), folder
