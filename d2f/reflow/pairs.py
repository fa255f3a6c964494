"""Reflow pairs: noise x0 and where the teacher's ODE carries it, x1 (Liu et al. 2022, "Flow straight and fast",
arXiv 2209.03003, §2.2; InstaFlow, Liu et al. 2023, arXiv 2309.06380, §3).

Pair i: x0 is image i of ``d2f.pipeline.initial_noise`` from ``seed`` (``torch.Generator().manual_seed(seed + i)``),
so a pair does not depend on the shard size or on which shards were made in an earlier, interrupted call; x1 is
the teacher's final latent from that noise (``d2f.pipeline.sample_latents``: the teacher's own parametrisation,
sampler, steps and guidance) for caption ``captions[i % len(captions)]``.

**x0 is the state at t = 0.** An FM teacher (diff2flow, fm, reflow runs) starts at t = 0 from x0 itself. An
untouched diffusion teacher starts at t_min (where DDIM starts, docs/math.md §10) from x0 read as the diffusion
sample z at tau = N - 1, i.e. the FM state x0 / c(t_min) ~= (1 - t_min) x0 + t_min x1 with its small signal
part dropped. Either way x0 is the Gaussian draw itself: the point the student, an FM model, starts from at
t = 0 when ``d2f sample`` is given the same seed, so the student learns the map the teacher computes.

With K > 1 time windows (``windows``, PeRFlow: ``d2f.reflow.pair_batches``), the teacher's grid gets the inner
window boundaries b_k = k / K added and is integrated window by window, and the shard keeps its state at each of
them (``states``). Euler and DDIM steps are the same as on the merged grid in one go; Heun's last step in each
window is an Euler step, as on any grid's last step.

Shards are written through a temporary file and a rename, so a shard on disk is whole; ``pairs.json`` records
every setting that shapes a pair, a folder made with other settings is refused, and a new call resumes at the
shards that are missing. The folder format is ``d2f.reflow.pair_batches``.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from d2f.errors import UserError
from d2f.files import shareable, write_json_atomic
from d2f.reflow.pair_batches import PAIRS_FILE, SHARD, read_pairs_record, shard_count


@dataclass
class PairSettings:
    """Everything that decides the pairs (recorded in ``pairs.json``; other values mean other pairs)."""

    teacher_model: str  # where the teacher's base model was loaded from
    teacher_weights: str | None  # the teacher run's LoRA file or unet/ folder, None for an untouched model
    teacher_fingerprint: str | None  # size and modification time of those weights
    objective: str  # the parametrisation the teacher is sampled with
    sampler: str
    steps: int
    guidance: float
    num_pairs: int
    seed: int
    height: int
    width: int
    captions: list[str] = field(default_factory=list)
    shard_size: int = 64
    windows: int = 1  # K time windows (PeRFlow); 1: plain reflow, x0 and x1 only


def check_pair_settings(settings: PairSettings) -> None:
    if settings.num_pairs < 1:
        raise UserError(f"--num-pairs must be at least 1, got {settings.num_pairs}")
    if settings.shard_size < 1 or settings.steps < 1:
        raise UserError(f"--pair-steps and the shard size must be >= 1, got {settings.steps}, {settings.shard_size}")
    if settings.windows < 1:
        raise UserError(f"--windows must be at least 1, got {settings.windows}")
    if not settings.captions:
        raise UserError("no captions to pair the noise with: give --data with captions")


def check_folder(folder: Path, settings: PairSettings) -> dict | None:
    """The record of a pairs folder made with ``settings`` (None for a new folder); a folder made with other
    settings is refused: it would mix two teachers' pairs."""
    if not (folder / PAIRS_FILE).is_file():
        if folder.is_dir() and any(folder.glob("shard_*.safetensors")):
            raise UserError(f"{folder} holds shards but no {PAIRS_FILE}; delete it or choose another --pairs folder")
        return None
    record = read_pairs_record(folder)
    old = record.get("settings", {})
    defaults = {"windows": 1}  # settings added later: a folder made before them has their default
    changed = [k for k, v in asdict(settings).items() if old.get(k, defaults.get(k)) != v]
    if changed:
        raise UserError(
            f"{folder} holds pairs of another teacher or settings ({', '.join(changed)} differ); "
            "pass --pairs DIR for a new pairs folder, or delete that one to make the pairs again"
        )
    return record


def generate_pairs(
    pipe, settings: PairSettings, folder: str | Path, on_shard: Callable[[int, int], None] | None = None
) -> dict:
    """Write the missing shards of ``folder``; returns the ``pairs.json`` record, with ``seconds`` (all calls
    together), ``bytes`` and ``shards_written`` (this call). ``on_shard(done, total)`` after each shard."""
    from d2f.pipeline import initial_noise

    check_pair_settings(settings)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    previous = check_folder(folder, settings) or {}
    for leftover in folder.glob(".shard_*"):  # a shard whose writing was interrupted
        leftover.unlink()
    total = shard_count(settings.num_pairs, settings.shard_size)
    record = {"settings": asdict(settings), "shards": total, "complete": False}
    record["seconds"] = previous.get("seconds", 0.0)
    write_json_atomic(folder / PAIRS_FILE, record)
    start, written = time.perf_counter(), 0
    for k in range(total):
        path = folder / SHARD.format(k)
        if path.is_file():
            continue
        first = k * settings.shard_size
        n = min(settings.shard_size, settings.num_pairs - first)
        index = torch.arange(first, first + n) % len(settings.captions)
        prompts = [settings.captions[i] for i in index.tolist()]
        # x0 of pair i: N(0, I) from seed + i (the noise sample_latents draws for the same seed)
        x0 = initial_noise(pipe, n, settings.height, settings.width, settings.seed, offset=first)
        # x1 of pair i: the teacher's ODE integrated from x0 (from x0 / c(t_min) for a diffusion teacher)
        *states, x1 = teacher_path(pipe, prompts, settings, first)
        tensors = {"x0": x0.contiguous(), "x1": x1.contiguous(), "caption": index}
        if states:
            tensors["states"] = torch.stack(states, dim=1).contiguous()
        _save_shard(path, tensors, k, total)
        written += 1
        record["seconds"] = round(previous.get("seconds", 0.0) + time.perf_counter() - start, 2)
        if on_shard:
            on_shard(k + 1, total)
    record.update(complete=True, shards_written=written, bytes=folder_bytes(folder))
    write_json_atomic(folder / PAIRS_FILE, record)
    return record


def teacher_path(pipe, prompts: list[str], settings: PairSettings, first: int) -> list[torch.Tensor]:
    """The teacher's states at the window boundaries b_1, ..., b_K = 1 for the noise of pairs ``first``, ...:
    one state (x1) for K = 1; else the sampler's grid with the inner boundaries added, integrated window by
    window from the state the previous window ended at."""
    from d2f.pipeline import pipe_parametrization, sample_latents
    from d2f.reflow.pair_batches import window_bounds
    from d2f.sampling import sampler_grid

    run = dict(sampler=settings.sampler, guidance=settings.guidance, seed=settings.seed + first,
               height=settings.height, width=settings.width, objective=settings.objective)  # fmt: skip
    if settings.windows == 1:
        return [sample_latents(pipe, prompts, steps=settings.steps, **run)]
    model = pipe_parametrization(pipe, settings.objective)
    grid = sampler_grid(settings.sampler, settings.steps, model.t_start, 1.0, model.schedule)
    inner = window_bounds(settings.windows)[1:-1]
    grid = torch.unique(torch.cat([grid, inner]).round(decimals=12))  # sorted
    states, x = [], None
    for low, high in zip([float(grid[0]), *inner.tolist()], [*inner.tolist(), 1.0]):
        ts = grid[(grid >= low - 1e-12) & (grid <= high + 1e-12)]
        # noise None: the first window starts from the pairs' noise, as sample_latents draws it for the seed
        x = sample_latents(pipe, prompts, steps=len(ts) - 1, noise=x, ts=ts, batch_size=len(prompts), **run)
        states.append(x)
    return states


def _save_shard(path: Path, tensors: dict, k: int, total: int) -> None:
    """Write one shard whole or not at all: a temporary file, then a rename. A full disk leaves no
    temporary file behind and says how to go on."""
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(tensors, str(tmp))
        shareable(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        reason = "the disk is full" if exc.errno in (errno.ENOSPC, errno.EDQUOT) else exc.strerror or type(exc).__name__
        raise UserError(
            f"could not write pair shard {k + 1}/{total} to {path.parent} ({reason}); free space (or pass --pairs "
            "DIR on another disk) and run the same command again: it resumes at this shard"
        ) from None


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in Path(folder).glob("shard_*.safetensors"))


def weights_fingerprint(path: str | Path | None) -> str | None:
    """A cheap identity of a teacher's weights (a LoRA file or a ``unet/`` folder): size and mtime of its files."""
    if path is None:
        return None
    path = Path(path)
    files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
    return ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)
