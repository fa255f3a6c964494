"""Training checkpoints: everything ``--resume`` needs, in safetensors + JSON, written atomically.

A checkpoint is a folder ``checkpoints/step_XXXXX/``:

| file | what |
| --- | --- |
| ``trainable.safetensors`` | the trainable parameters (LoRA layers, or the whole UNet), by name, fp32 |
| ``optimizer.safetensors`` | AdamW's per-parameter tensors (``state.<i>.exp_avg``, ...) |
| ``ema.safetensors`` | the EMA of the trainable parameters (with ``--ema``) |
| ``rng.safetensors`` | torch's global RNG state (and CUDA's, where there is one) |
| ``state.json`` | step, optimizer groups and scalars, LR scheduler, EMA counter; the log window, metrics lines |

(``metrics lines``: how long ``metrics.jsonl`` was at this step, so that ``--resume`` can cut it back.)

No pickle anywhere: a checkpoint can be loaded without executing anything it contains (accelerate's
``save_state`` pickles the optimizer and RNG states, hence this module). The per-step randomness of the
trainer (batches, noise, t, caption dropout, flips) is drawn from generators seeded by (seed, step), so
the global RNG state is all that is left to carry over.

Atomic: the folder is written under a temporary name (``.tmp-step_XXXXX-<pid>``) and renamed into place
only when complete (``d2f.files.atomic_folder``), so a killed run never leaves a half checkpoint; a failed
write (a full disk: a ``UserError`` that says to free space and ``--resume``) removes its temporary folder;
``list_checkpoints`` ignores the
leftovers and ``remove_leftovers`` (run at the start of a run that holds the folder's lock) deletes them.
A checkpoint that is damaged anyway (a truncated file, e.g. a full disk or a copy cut short) is a
``UserError`` from ``load_checkpoint``; ``--resume`` then falls back to the one before.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from d2f.errors import UserError
from d2f.files import atomic_folder, make_folder, shareable
from d2f.training.faults import kill_point

PREFIX = "step_"
LEFTOVERS = (".tmp-", ".old-")  # folders of a write (or a replacement) that a killed run did not finish


def checkpoint_name(step: int) -> str:
    return f"{PREFIX}{step:05d}"


def list_checkpoints(folder: Path) -> list[tuple[int, Path]]:
    """(step, path) of the complete checkpoints in ``folder``, oldest first."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        if path.is_dir() and path.name.startswith(PREFIX) and (path / "state.json").is_file():
            try:
                found.append((int(path.name[len(PREFIX) :]), path))
            except ValueError:
                continue
    return sorted(found)


def latest(folder: Path) -> Path | None:
    found = list_checkpoints(folder)
    return found[-1][1] if found else None


def remove_leftovers(folder: Path) -> list[str]:
    """Delete the half-written checkpoint folders a killed run left behind; returns their names. Only for
    the run holding the folder's lock: another live run's are not leftovers."""
    found = [p for p in folder.iterdir() if p.name.startswith(LEFTOVERS)] if folder.is_dir() else []
    for path in found:
        shutil.rmtree(path, ignore_errors=True)
    return sorted(p.name for p in found)


def non_finite(tensors: dict[str, torch.Tensor]) -> list[str]:
    """The names of the tensors holding a NaN or an infinity (one device sync for all of them)."""
    if not tensors:
        return []
    flags = torch.stack([torch.isfinite(v).all() for v in tensors.values()]).cpu()
    return [name for name, ok in zip(tensors, flags.tolist()) if not ok]


def _optimizer_split(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """torch optimizer state dict -> (tensors for safetensors, the JSON-able rest)."""
    tensors, scalars = {}, {}
    for index, slots in state_dict["state"].items():
        for key, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                scalars[f"{index}.{key}"] = value
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in state_dict["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def _optimizer_join(tensors: dict[str, torch.Tensor], rest: dict) -> dict:
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        _, index, key = name.split(".", 2)
        state.setdefault(int(index), {})[key] = value
    for name, value in rest["scalars"].items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    groups = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in rest["param_groups"]]
    return {"state": state, "param_groups": groups}


def save_checkpoint(
    folder: Path,
    step: int,
    trainable: dict[str, torch.Tensor],
    optimizer,
    lr_scheduler,
    ema: dict[str, torch.Tensor] | None = None,
    extra: dict | None = None,
    keep: int | None = None,
    extra_files: Callable[[Path], None] | None = None,
) -> Path:
    """Write ``folder/step_XXXXX`` atomically and keep only the newest ``keep`` checkpoints.
    ``extra_files(tmp_folder)`` adds files (the run's LoRA in diffusers' format) before the folder completes."""
    make_folder(folder)
    final = folder / checkpoint_name(step)
    fix = (
        f"free space on {folder}'s disk (--checkpoints-total-limit keeps fewer checkpoints) and continue the run "
        "with --resume"
    )
    with atomic_folder(final, fix, tmp=folder / f".tmp-{final.name}-{os.getpid()}") as tmp:

        def written(name: str) -> None:
            kill_point(f"checkpoint:{final.name}:after={name}")

        trainable = {k: v.detach().float().contiguous().cpu() for k, v in trainable.items()}
        save_file(trainable, tmp / "trainable.safetensors")
        written("trainable.safetensors")
        tensors, rest = _optimizer_split(optimizer.state_dict())
        save_file(tensors, tmp / "optimizer.safetensors")
        written("optimizer.safetensors")
        if ema is not None:
            save_file({k: v.detach().contiguous().cpu() for k, v in ema.items()}, tmp / "ema.safetensors")
            written("ema.safetensors")
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda.{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, tmp / "rng.safetensors")
        written("rng.safetensors")
        if extra_files is not None:
            extra_files(tmp)
        shareable(tmp)
        lr_state = _jsonable(lr_scheduler.state_dict())
        state = {"step": step, "optimizer": rest, "lr_scheduler": lr_state, **(extra or {})}
        (tmp / "state.json").write_text(json.dumps(state, indent=2))
        written("state.json")
    kill_point(f"checkpoint:{final.name}:done")
    if keep:
        for _, path in list_checkpoints(folder)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
    return final


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint folder: ``step``, ``trainable``, ``optimizer`` (a torch state dict),
    ``lr_scheduler``, ``ema`` (or None), ``rng`` and the extra keys of ``state.json``."""
    try:
        state = json.loads((path / "state.json").read_text())
        out = dict(state)
        out["trainable"] = load_file(path / "trainable.safetensors")
        out["optimizer"] = _optimizer_join(load_file(path / "optimizer.safetensors"), state["optimizer"])
        out["ema"] = load_file(path / "ema.safetensors") if (path / "ema.safetensors").is_file() else None
        out["rng"] = load_file(path / "rng.safetensors")
        if out["step"] != int(path.name[len(PREFIX) :]):
            raise ValueError(f"state.json says step {out['step']}")
    except Exception as exc:  # safetensors raises its own SafetensorError for a truncated file
        first = str(exc).splitlines()[0] if str(exc) else ""
        raise UserError(f"checkpoint {path} is damaged ({type(exc).__name__}: {first})") from None
    return out


def restore_rng(rng: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda."))]
        if len(states) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(states)


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if not callable(v)}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    return obj
