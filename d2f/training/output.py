"""The output folder of a run: checked (and, with ``--overwrite``, cleared) before training starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from d2f.errors import UserError
from d2f.pipeline.run_folder import RUN_FILE
from d2f.training.config import TrainConfig, settings_changed


def prepare_output(cfg: TrainConfig, out: Path, acc) -> None:
    """Check ``out`` for this run: with ``--resume`` it must hold the same run (same settings, except the
    ``RESUMABLE_CHANGES``); otherwise it must be new or empty, or a d2f run to delete with ``--overwrite``.
    A folder d2f did not write is never deleted."""
    has_run = (out / RUN_FILE).is_file()
    if cfg.resume:
        if not has_run:
            raise UserError(f"nothing to resume in {out}: no {RUN_FILE} there; drop --resume to start a run")
        old = json.loads((out / RUN_FILE).read_text()).get("settings", {})
        changed = settings_changed(old, cfg)
        if changed:
            diff = ", ".join(f"{k}: {old[k]!r} -> {getattr(cfg, k)!r}" for k in changed)
            raise UserError(f"--resume needs the settings of the run in {out}; these differ: {diff}")
        return
    if out.exists() and any(out.iterdir()):
        if not has_run:  # never delete a folder d2f did not write
            raise UserError(
                f"{out} exists and is not a d2f run folder (no {RUN_FILE}); choose an empty or new --output"
            )
        if not cfg.overwrite:
            raise UserError(
                f"{out} already holds a run; pass --resume to continue it, --overwrite to start "
                "again, or --output DIR for a new folder"
            )
        if acc.is_main_process:
            shutil.rmtree(out)
    acc.wait_for_everyone()
