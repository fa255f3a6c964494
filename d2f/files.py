"""Files that are never half-written, and folders checked before long work starts."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from d2f.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


def write_json_atomic(path: Path, obj) -> None:
    """Write JSON to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def shareable(*paths: Path) -> None:
    """Give the safetensors files at ``paths`` (files, or folders searched recursively) the mode any new file
    gets, 0o666 minus the umask, as ``metadata.jsonl`` or ``d2f_run.json`` beside them have.

    safetensors 0.8 writes through a temporary file that is always created 0600 and renamed into place
    (safetensors/safetensors#782), so without this a LoRA trained by one user could not be read by another
    (a shared server, a Docker image built as root)."""
    umask = os.umask(0)
    os.umask(umask)
    for path in map(Path, paths):
        for file in path.rglob("*.safetensors") if path.is_dir() else [path]:
            if file.is_file():
                os.chmod(file, 0o666 & ~umask)


def check_writable_dir(folder: Path, option: str) -> None:
    """``UserError`` unless ``folder`` is (or can be made) a folder this process can write into. Makes no
    folder: it walks up to the first one that exists and tries a temporary file there."""
    folder = Path(folder)
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UserError(f"{option} {folder}: {probe} is a file, not a folder; choose another path")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as exc:
        raise UserError(
            f"{option} {folder} cannot be written ({exc.strerror or type(exc).__name__} in {probe}); "
            "choose a folder you can write to"
        ) from None


def check_image_path(path: Path, option: str) -> None:
    """``UserError`` unless ``path`` names an image file (a known suffix) in a folder that can be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; give a file name such as {path / 'grid.png'}")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"{option} {path} needs an image suffix ({', '.join(IMAGE_SUFFIXES)}), e.g. {path}.png")
    check_writable_dir(path.parent, option)
