"""The output folder of a run: checked before anything is loaded; with ``--overwrite`` the old run is set
aside, and deleted only once the new run has made its first step.

``setup`` takes the folder's lock (``d2f.training.lock``; a writable folder first), runs ``check_output``
(new, empty, the run to resume, or a run to overwrite: nothing is changed), loads the model and the data,
and only then calls ``claim_output``: with ``--overwrite`` that moves the old run into ``.overwritten/``
inside the folder (renames, nothing is copied or deleted). ``train`` deletes it after the new run's first
step (``discard_overwritten``) and puts it back if the new run fails before that (``restore_overwritten``:
an error, a diverged first step, Ctrl-C), so a run that cannot start, or dies at its step-0 validation,
leaves the old run as it was.

A process killed while the old run is set aside leaves ``.overwritten/`` behind; it counts as the folder's
run: ``--overwrite`` again keeps it (and deletes what the killed attempt wrote), ``--resume`` of the killed
attempt deletes it after its first step. ``.overwritten/.complete`` marks that every entry was moved.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, replace
from pathlib import Path

from d2f.errors import UserError
from d2f.files import check_writable_dir
from d2f.pipeline.run_folder import (
    CHECKPOINTS_DIR,
    LOCK_FILE,
    METRICS_FILE,
    OVERWRITTEN_DIR,
    RUN_FILE,
    has_weights,
    read_run,
)
from d2f.training.batches import BatchSource
from d2f.training.checkpoint import remove_leftovers
from d2f.training.config import TrainConfig, settings_changed


def check_output(cfg: TrainConfig, out: Path, source: BatchSource | None = None) -> dict | None:
    """Check ``out`` for this run; returns the run record there when resuming (else None). With
    ``--resume`` it must hold the same run (same settings, except the ``RESUMABLE_CHANGES``, and the same
    ``source.settings``); otherwise it
    must be new or empty, or a d2f run to delete with ``--overwrite``. A folder d2f did not write is never
    deleted. Changes nothing."""
    check_writable_dir(out, "--output")  # a file, a path under a file, a read-only folder: before any loading
    has_run = (out / RUN_FILE).is_file() or (out / OVERWRITTEN_DIR).is_dir()  # a killed --overwrite's old run
    if cfg.resume:
        if not has_run:
            raise UserError(f"nothing to resume in {out}: no {RUN_FILE} there; drop --resume to start a run")
        record = read_run(out)
        old = record.get("settings", {})
        own = source.settings if source else {}  # the caller's settings of the run (a reflow run's pairs)
        new = {**asdict(cfg), **own}
        changed = settings_changed(old, cfg) + [k for k, v in own.items() if old.get(k) != v]
        if changed:
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in changed)
            raise UserError(f"--resume needs the settings of the run in {out}; these differ: {diff}")
        return record
    kept = kept_names(source)
    if out.is_dir() and any(p.name not in kept for p in out.iterdir()):  # a stale lock (or a source's) alone: empty
        if not has_run:  # never delete a folder d2f did not write
            raise UserError(
                f"{out} exists and is not a d2f run folder (no {RUN_FILE}); choose an empty or new --output"
            )
        if not cfg.overwrite:
            raise UserError(
                f"{out} already holds a run; pass --resume to continue it, --overwrite to start "
                "again, or --output DIR for a new folder"
            )
    return None


def kept_names(source: BatchSource | None = None) -> set[str]:
    """What in an output folder is not the run's and stays on ``--overwrite``: the lock, and the files of the
    run's batch source (``BatchSource.kept``: a reflow run's pairs folder)."""
    return {LOCK_FILE} | (set(source.kept) if source else set())


def finished_summary(cfg: TrainConfig, out: Path, source: BatchSource | None = None) -> dict | None:
    """With ``--resume``, the summary of the run in ``out`` if it already finished (its record says so and
    its weights are there): there is nothing left to do. None otherwise; ``check_output``'s errors first."""
    if not cfg.resume:
        return None
    record = check_output(cfg, out, source)
    if record.get("status") != "finished" or not has_weights(out) or "summary" not in record:
        return None
    if record["summary"].get("steps", 0) < cfg.steps:  # more --steps: training goes on
        return None
    return record["summary"]


def with_resume_from(cfg: TrainConfig) -> TrainConfig:
    """``--resume-from CHECKPOINT`` is ``--resume`` of the checkpoint's run folder, from that checkpoint."""
    if not cfg.resume_from:
        return cfg
    path = Path(cfg.resume_from)
    if not (path / "state.json").is_file():
        raise UserError(
            f"--resume-from {path} is not a checkpoint folder (a run's checkpoints/step_XXXXX, with a state.json)"
        )
    run_folder = path.resolve().parent.parent
    if cfg.output and Path(cfg.output).resolve() != run_folder:
        raise UserError(f"--resume-from {path} belongs to the run in {run_folder}, not to --output {cfg.output}")
    return replace(cfg, resume=True, output=str(run_folder))


def claim_output(cfg: TrainConfig, out: Path, source: BatchSource | None = None) -> tuple[list[str], bool]:
    """Make ``out`` this run's, on the main process holding its lock: with ``--overwrite`` (and no
    ``--resume``) set the old run aside (``set_aside``); remove what a killed run left half-written. Returns
    the leftovers removed, and whether an old run was set aside (``train`` discards or restores it)."""
    set_aside_now = cfg.overwrite and not cfg.resume
    if set_aside_now:
        set_aside(out, kept_names(source))
    removed = remove_leftovers(out / CHECKPOINTS_DIR)
    for name in (RUN_FILE, METRICS_FILE):  # files written through a temporary file and a rename
        for path in out.glob(f".{name}.tmp-*"):
            path.unlink(missing_ok=True)
            removed.append(path.name)
    return removed, set_aside_now and (out / OVERWRITTEN_DIR).is_dir()


COMPLETE = ".complete"  # in .overwritten/: every entry of the old run was moved there


def set_aside(out: Path, kept: set[str]) -> None:
    """Move everything in ``out`` but ``kept`` into ``out/.overwritten/`` (renames). If a killed attempt left
    a complete one, that is the run to keep: what the attempt wrote (never past its first step) is deleted."""
    aside = out / OVERWRITTEN_DIR
    if (aside / COMPLETE).is_file():
        _delete(_entries(out, kept))
        return
    aside.mkdir(exist_ok=True)  # an incomplete one: a kill while moving; the rest follows
    for path in _entries(out, kept):
        os.replace(path, aside / path.name)
    (aside / COMPLETE).touch()


def restore_overwritten(out: Path, kept: set[str]) -> None:
    """Put the run set aside by ``set_aside`` back, deleting what the new run wrote."""
    aside = out / OVERWRITTEN_DIR
    if not aside.is_dir():
        return
    _delete(_entries(out, kept))
    (aside / COMPLETE).unlink(missing_ok=True)  # from here on, a kill leaves an incomplete one: set_aside resumes
    for path in list(aside.iterdir()):
        os.replace(path, out / path.name)
    aside.rmdir()


def discard_overwritten(out: Path) -> None:
    """Delete the old run set aside by ``--overwrite`` (the new run made its first step)."""
    if (out / OVERWRITTEN_DIR).is_dir():
        shutil.rmtree(out / OVERWRITTEN_DIR)


def _entries(out: Path, kept: set[str]) -> list[Path]:
    return [p for p in out.iterdir() if p.name not in kept and p.name != OVERWRITTEN_DIR]


def _delete(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
