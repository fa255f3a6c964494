"""``--resume``: the same data, the newest checkpoint that loads, and ``metrics.jsonl`` rewound to it.

- ``check_data``: the data's fingerprint must be the one in the run record (``--allow-data-change``
  resumes anyway, and says so);
- ``resume``: restores the newest checkpoint that loads. A damaged one (a truncated file) is moved aside
  as ``.damaged-step_XXXXX`` (kept for a look, ignored from then on) and the one before is used; the
  callback hears of it. A run killed before its first checkpoint starts again from step 0. Then
  ``metrics.jsonl`` is cut back to the lines it held when the checkpoint was written (a line torn by the
  kill is dropped, with a notice), so the resumed run appends exactly what the uninterrupted run wrote.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from d2f.errors import UserError
from d2f.pipeline.run_folder import CHECKPOINTS_DIR, METRICS_FILE
from d2f.training.checkpoint import list_checkpoints, load_checkpoint, restore_rng
from d2f.training.metrics import rewind_metrics


def check_data(run) -> None:
    """``UserError`` if the data differs from the data the run was trained on, unless allowed."""
    old = ((run.previous or {}).get("data") or {}).get("fingerprint")
    new = run.data.fingerprint
    if old is None or old == new:  # a record from before fingerprints: nothing to compare
        return
    if not run.cfg.allow_data_change:
        raise UserError(
            f"the data in {run.cfg.data} is not what the run in {run.out} trained on (fingerprint {old}, now "
            f"{new}: images, captions or their order changed); restore it, or pass --allow-data-change to "
            "resume on the new data"
        )
    run.notice("data_changed", f"the data changed since the run started (fingerprint {old} -> {new}); resuming")


def resume(run) -> int:
    """Restore the newest checkpoint that loads (see the module doc); returns its step (0: none yet)."""
    found = list_checkpoints(run.out / CHECKPOINTS_DIR)
    if run.cfg.resume_from:  # that checkpoint (or, if it is damaged, the one before)
        chosen = [step for step, path in found if path.resolve() == Path(run.cfg.resume_from).resolve()]
        if not chosen:
            raise UserError(f"--resume-from {run.cfg.resume_from} is not a complete checkpoint of {run.out}")
        found = [(step, path) for step, path in found if step <= chosen[0]]
    damaged = {}
    for _, path in reversed(found):
        try:
            ckpt = load_checkpoint(path)
            _restore(run, ckpt, path)
            step = ckpt["step"]
            break
        except UserError as exc:
            damaged[path] = str(exc)
    else:
        if found:
            raise UserError(
                f"every checkpoint in {run.out / CHECKPOINTS_DIR} is damaged (the newest: {damaged[found[-1][1]]}); "
                "start the run again with --overwrite"
            )
        step, ckpt, path = 0, None, None
    for bad, why in damaged.items():
        run.notice("checkpoint_damaged", f"{why}; resuming from an earlier checkpoint", checkpoint=str(bad))
    if run.acc.is_main_process:
        for bad in damaged:
            os.replace(bad, bad.with_name(f".damaged-{bad.name}"))
        kept, torn = rewind_metrics(run.out / METRICS_FILE, ckpt.get("metrics_lines") if ckpt else 0, step)
        run.metrics_lines = kept
        if torn:
            run.notice("metrics_torn", f"dropped {torn} line(s) of {METRICS_FILE} cut off when the run was killed")
    run.acc.wait_for_everyone()
    if path is None:
        run.notice("resumed", f"no checkpoint in {run.out / CHECKPOINTS_DIR} yet: starting again from step 0", step=0)
    else:
        run.notice("resumed", f"resumed from {path}", step=step, checkpoint=str(path))
    return step


def _restore(run, ckpt: dict, path) -> None:
    """Put a loaded checkpoint into the run; ``UserError`` (nothing changed) if it does not fit the run."""
    expected = {"trainable": run.trainable, **({"ema": run.trainable} if run.ema is not None else {})}
    for name, own in expected.items():
        saved = ckpt[name] or {}
        if set(saved) != set(own) or any(saved[k].shape != own[k].shape for k in own):
            raise UserError(f"checkpoint {path} is damaged (its {name} tensors do not fit this run)")
    try:  # first: torch checks the state against the parameter groups before it changes anything
        run.optimizer.load_state_dict(ckpt["optimizer"])
    except (KeyError, ValueError, RuntimeError) as exc:
        raise UserError(f"checkpoint {path} is damaged (optimizer state: {type(exc).__name__})") from None
    with torch.no_grad():
        for name, p in run.trainable.items():
            p.copy_(ckpt["trainable"][name].to(p.device, p.dtype))
    run.lr_scheduler.load_state_dict(ckpt["lr_scheduler"])
    if run.ema is not None:
        run.ema.load(ckpt["ema"], ckpt["ema_updates"])
    restore_rng(ckpt["rng"])
    run.metrics_before = ckpt.get("metrics_before")
    run.losses = ckpt.get("losses", [])
    if "window" in ckpt:  # checkpoints of older d2f versions did not carry the log window
        run.window.load(ckpt["window"])
    run.seconds_before = ckpt.get("seconds", 0.0)
