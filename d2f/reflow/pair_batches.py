"""Training on coupled (x0, x1) pairs (reflow, Liu et al. 2022, "Flow straight and fast", arXiv 2209.03003).

A pairs folder (written by ``d2f.reflow.pairs``; its format is defined here, once):

- ``pairs.json``: the settings that made the pairs (teacher, sampler, steps, guidance, seed, captions, ...),
  whether the folder is ``complete``, the seconds the teacher took and the shards' bytes;
- ``shard_XXXXX.safetensors``: ``x0`` noise and ``x1`` the teacher's end point from it, (n, C, h, w) float32,
  ``caption`` (n,) int64 indices into the ``captions`` of ``pairs.json``, and, for pairs made with K > 1 time
  windows, ``states`` (n, K - 1, C, h, w): the teacher's state at each inner window boundary b_1 .. b_{K-1}.

``PairBatches`` is a drop-in for ``d2f.training.batches.Batches``: ``get(micro_step, rank, world)`` returns
(x1, x0, time, cond) with the same reproducible draws (``step_generator``, ``batch_indices``), but x0 and x1
are a *coupled* pair instead of independent noise and data, so every objective of ``d2f.objectives`` trains on
the straight line between them unchanged: x_t = t x1 + (1 - t) x0, target u = x1 - x0. ``pair_source`` hands
them to ``d2f.training.train`` as a ``BatchSource`` (with the pairs folder as a setting of the run).

**Time windows** (piecewise rectified flow, PeRFlow, Yan et al. 2024, arXiv 2405.07510, §3): with K windows
[b_k, b_{k+1}], b_k = k / K, the teacher's path is straightened in each window on its own (docs/math.md §8.2).
A sample draws a window k and s from the run's t density on [0, 1], t = b_k + s / K, and trains on the line
from the teacher's state x_{b_k} to x_{b_{k+1}}, written as the straight path of a virtual pair (``window_line``),
so ``get`` returns (x1', x0') and every objective trains on it unchanged. The student is sampled with FM Euler
on the uniform K-step grid: one step per window.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from d2f.errors import UserError
from d2f.parametrizations import Parametrization
from d2f.training.batches import BatchSource, batch_indices, step_generator

PAIRS_FILE = "pairs.json"
SHARD = "shard_{:05d}.safetensors"


def shard_count(num_pairs: int, shard_size: int) -> int:
    return -(-num_pairs // shard_size)


def window_bounds(windows: int) -> torch.Tensor:
    """The K + 1 window boundaries b_k = k / K (float64): those of the student's K-step uniform Euler grid."""
    return torch.linspace(0, 1, windows + 1, dtype=torch.float64)


def window_line(start: torch.Tensor, end: torch.Tensor, k: torch.Tensor, windows: int):
    """The virtual pair (x0', x1') whose straight path runs through ``start`` at t = b_k and ``end`` at b_{k+1}
    (docs/math.md §8.2); start, end (B, ...), k (B,) the window of each sample."""
    b_k = (k.double() / windows).to(start.dtype).view(-1, *[1] * (start.dim() - 1))
    # u_k = K (x_{b_{k+1}} - x_{b_k})
    u = windows * (end - start)
    # x0' = x_{b_k} - b_k u_k,   x1' = x0' + u_k
    x0 = start - b_k * u
    return x0, x0 + u


def read_pairs_record(folder: str | Path) -> dict:
    """``pairs.json`` of a pairs folder; ``UserError`` if there is none or it cannot be read."""
    path = Path(folder) / PAIRS_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        name = type(exc).__name__
        raise UserError(f"cannot read {path} ({name}); is {folder} a pairs folder of `d2f reflow`?") from None


def load_pairs(folder: str | Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[str]]:
    """(x0, x1, caption index, captions) of a complete pairs folder; ``UserError`` naming a missing shard."""
    from safetensors.torch import load_file

    folder = Path(folder)
    settings = read_pairs_record(folder)["settings"]
    shards = []
    for k in range(shard_count(settings["num_pairs"], settings["shard_size"])):
        path = folder / SHARD.format(k)
        if not path.is_file():
            raise UserError(f"{path} is missing: the pairs in {folder} are incomplete; run `d2f reflow` again")
        shards.append(load_file(path))
    x0, x1, index = (torch.cat([s[key] for s in shards]) for key in ("x0", "x1", "caption"))
    return x0, x1, index, list(settings["captions"])


def load_path(folder: str | Path) -> torch.Tensor:
    """The teacher's states at every window boundary of a complete pairs folder, (n, K + 1, C, h, w):
    x0, the inner boundaries' ``states`` (none for K = 1), x1."""
    from safetensors.torch import load_file

    x0, x1, _, _ = load_pairs(folder)
    settings = read_pairs_record(folder)["settings"]
    windows = settings.get("windows", 1)
    if windows == 1:
        return torch.stack([x0, x1], dim=1)
    count = shard_count(settings["num_pairs"], settings["shard_size"])
    states = torch.cat([load_file(Path(folder) / SHARD.format(k))["states"] for k in range(count)])
    return torch.cat([x0[:, None], states, x1[:, None]], dim=1)


class PairBatches:
    """Draws the batches of a reflow run from a pairs folder (see the module doc). The text encoding of every
    caption is computed once; ``caption_dropout`` replaces a caption by the empty one (reflow uses 0: the
    student is sampled without guidance)."""

    def __init__(
        self,
        folder: str | Path,
        text_encoder,
        tokenizer,
        flow: Parametrization,
        *,
        latent_shape: tuple[int, int, int],
        batch_size: int,
        caption_dropout: float,
        t_sampling: str,
        seed: int,
        device,
    ):
        _, _, self.caption_index, captions = load_pairs(folder)
        self.path = load_path(folder)  # (n, K + 1, C, h, w)
        self.windows = self.path.shape[1] - 1
        if tuple(self.path.shape[2:]) != tuple(latent_shape):
            raise UserError(
                f"the pairs in {folder} are latents of shape {tuple(self.path.shape[2:])}, but this run trains on "
                f"{tuple(latent_shape)}: pass the --resolution the pairs were made at"
            )
        self.flow, self.batch_size, self.caption_dropout = flow, batch_size, caption_dropout
        self.t_sampling, self.seed, self.device = t_sampling, seed, device
        self.captions = captions + [""]
        self.empty = len(captions)
        self.text_cache = _encode_text(text_encoder, tokenizer, self.captions, device)

    def __len__(self) -> int:
        return len(self.path)

    def get(self, micro_step: int, rank: int = 0, world: int = 1):
        """(data x1, noise x0, time, cond) of one micro step on process ``rank``: pairs in the order of a
        per-epoch permutation, caption dropout and t from the micro step's own generator; with K > 1 windows,
        the window too, and (x1', x0') the virtual pair of the window's line (module doc)."""
        gen = step_generator(self.seed, micro_step, rank)
        idx = batch_indices(len(self), self.batch_size, micro_step, rank, world, self.seed)
        b = len(idx)
        drop = torch.rand(b, generator=gen) < self.caption_dropout
        which = torch.where(drop, torch.tensor(self.empty), self.caption_index[idx])
        time = self.flow.sample_time(b, self.t_sampling, gen)
        path = self.path[idx]
        x0, x1 = path[:, 0], path[:, -1]
        if self.windows > 1:
            k = torch.randint(0, self.windows, (b,), generator=gen)
            # t = b_k + s / K,  s from the run's density on [0, 1]
            time = (k.double() / self.windows).float() + time / self.windows
            x0, x1 = window_line(path[torch.arange(b), k], path[torch.arange(b), k + 1], k, self.windows)
        dev = self.device
        return x1.to(dev), x0.to(dev), time.to(dev), self.text_cache[which].to(dev)


@torch.no_grad()
def _encode_text(text_encoder, tokenizer, captions: list[str], device) -> torch.Tensor:
    """Text encoder hidden states (B, L, D), float32, as the SD pipeline computes them (as ``Batches``)."""
    ids = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids.to(device)
    return torch.cat([text_encoder(chunk)[0].float().cpu() for chunk in ids.split(64)])


def pair_source(folder: str | Path, output: str | Path, record: dict) -> BatchSource:
    """The ``BatchSource`` of a reflow run on the pairs in ``folder``: ``PairBatches`` with the run's text
    encoder, parametrisation and settings; ``settings.pairs`` and ``record`` (the keys ``d2f.reflow.run`` adds) in
    ``d2f_run.json``; the pairs folder, when it lies in the ``output`` folder, kept on ``--overwrite``."""
    folder = Path(folder)

    def make(run) -> PairBatches:
        cfg, pipe = run.cfg, run.pipe
        down = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
        side = run.data.resolution // down
        return PairBatches(
            folder,
            pipe.text_encoder,
            pipe.tokenizer,
            run.parametrization,
            latent_shape=(pipe.vae.config.latent_channels, side, side),
            batch_size=cfg.batch_size,
            caption_dropout=cfg.caption_dropout,
            t_sampling=cfg.t_sampling,
            seed=cfg.seed,
            device=run.acc.device,
        )

    inside = folder.resolve().parent == Path(output).resolve()
    return BatchSource(make, settings={"pairs": str(folder)}, record=record, kept={folder.name} if inside else set())
