"""Files that are never half-written, and folders checked before long work starts.

Every file d2f writes goes through ``atomic_file`` (or ``atomic_folder`` for a folder of files): the
content is written to a temporary name in the same folder (``.NAME.tmp-PID``) and renamed into place only
when complete, so a reader (or a later run) sees the old file or the new one, never half of one. When the
write fails the temporary file (or folder) is removed and the old file is left as it was; a failure the user
can fix (a full disk, a quota, a read-only file system, no permission: ``FIXABLE``) becomes one
``UserError`` naming the path and the fix, also when safetensors wraps it in its own ``SafetensorError``.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from d2f.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
# errno -> what the user is told; each is fixed outside d2f (free space, another folder), so it is a UserError
FIXABLE = {
    errno.ENOSPC: "no space left on the device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for this file system",
}
_OS_ERROR = re.compile(r"os error (\d+)")  # how safetensors' Rust side reports the OSError under its own


def _errno(exc: BaseException) -> int | None:
    """The errno of an OSError, or of the OSError inside safetensors' ``SafetensorError`` (``... (os error 28)``)."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.errno
    if type(exc).__name__ == "SafetensorError":
        found = _OS_ERROR.search(str(exc))
        return int(found.group(1)) if found else None
    return None


def write_failure(path: Path, exc: BaseException, fix: str | None = None) -> UserError | None:
    """The ``UserError`` for a write of ``path`` that failed with ``exc``, if the user can fix the cause
    (``FIXABLE``), else None. ``fix`` is what to do (default: free space or permissions on the folder)."""
    code = _errno(exc)
    if code not in FIXABLE:
        return None
    folder = Path(path).parent
    if fix is None:
        fix = (
            f"free space on {folder}'s disk and run the command again"
            if code in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
            else f"make {folder} writable, or write somewhere else"
        )
    return UserError(f"could not write {path} ({FIXABLE[code]}); {fix}")


def temporary_name(path: Path) -> Path:
    """The temporary sibling ``path`` is written under before the rename: hidden, in the same folder (a rename
    across file systems would not be atomic), and named after the process that writes it."""
    path = Path(path)
    return path.with_name(f".{path.name}.tmp-{os.getpid()}")


@contextmanager
def write_errors(path: Path, fix: str | None = None) -> Iterator[None]:
    """Inside the block, a ``FIXABLE`` failure to write ``path`` (an OSError, or safetensors' error around
    one) becomes its ``UserError``; other errors pass unchanged. For writers that are atomic themselves."""
    try:
        yield
    except Exception as exc:
        error = write_failure(path, exc, fix)
        if error is not None:
            raise error from None
        raise


@contextmanager
def atomic_file(path: Path, fix: str | None = None) -> Iterator[Path]:
    """``with atomic_file(path) as tmp:`` write ``tmp``; on leaving the block it replaces ``path`` (a rename).
    If the block (or the rename) fails, ``tmp`` is removed, ``path`` is untouched, and a ``FIXABLE`` cause is a
    ``UserError`` (``write_failure``, with ``fix``)."""
    path = Path(path)
    tmp = temporary_name(path)
    with write_errors(path, fix):
        try:
            yield tmp
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)  # gone after the rename; after a failure, what was written of it


@contextmanager
def atomic_folder(path: Path, fix: str | None = None, tmp: Path | None = None) -> Iterator[Path]:
    """``atomic_file`` for a folder: fill the yielded temporary folder (``tmp``, default ``temporary_name``);
    it becomes ``path`` only when complete (an existing ``path`` is replaced). On failure it is removed."""
    path = Path(path)
    tmp = Path(tmp) if tmp is not None else temporary_name(path)
    shutil.rmtree(tmp, ignore_errors=True)
    with write_errors(path, fix):
        try:
            tmp.mkdir()
            yield tmp
            if path.exists():  # e.g. a checkpoint of the same step from an earlier attempt
                old = path.with_name(f".old-{path.name}-{os.getpid()}")
                os.replace(path, old)
                shutil.rmtree(old, ignore_errors=True)
            os.replace(tmp, path)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def make_folder(folder: Path, fix: str | None = None) -> Path:
    """``folder.mkdir(parents=True, exist_ok=True)``, with a ``FIXABLE`` failure as a ``UserError``."""
    folder = Path(folder)
    with write_errors(folder, fix):
        folder.mkdir(parents=True, exist_ok=True)
    return folder


def write_text_atomic(path: Path, text: str, fix: str | None = None) -> None:
    """Write ``text`` to ``path`` through ``atomic_file``."""
    with atomic_file(path, fix) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, obj, fix: str | None = None) -> None:
    """Write JSON to ``path`` through a temporary file and a rename: a reader never sees half a file."""
    write_text_atomic(path, json.dumps(obj, indent=2, default=str), fix)


def save_safetensors(tensors: dict, path: Path, metadata: dict | None = None, fix: str | None = None) -> None:
    """``safetensors.torch.save_file`` through ``atomic_file``, with the mode any new file gets (``shareable``)."""
    from safetensors.torch import save_file

    with atomic_file(path, fix) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
        shareable(tmp)


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
        reason = FIXABLE.get(exc.errno) or exc.strerror or type(exc).__name__
        full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
        fix = f"free space on its disk or choose another {option}" if full else "choose a folder you can write to"
        raise UserError(f"{option} {folder} cannot be written ({reason} in {probe}); {fix}") from None


def check_image_path(path: Path, option: str) -> None:
    """``UserError`` unless ``path`` names an image file (a known suffix) in a folder that can be written."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{option} {path} is a directory; give a file name such as {path / 'grid.png'}")
    if path.suffix.lower() not in IMAGE_SUFFIXES:
        raise UserError(f"{option} {path} needs an image suffix ({', '.join(IMAGE_SUFFIXES)}), e.g. {path}.png")
    check_writable_dir(path.parent, option)
