"""What one training step sees: a batch of (data x1, noise x0, time, cond), drawn reproducibly.

The frozen VAE and text encoder run once before training (``cache=True``): the VAE posterior (mean, std)
of every image (and of its mirror image with ``--random-flip``) and the text embedding of every caption.
A step then costs one UNet forward and backward, whatever the objective. ``cache=False`` runs them in
every step instead, with the same draws. With ``text_trainable`` (``--train-text-encoder``) the text encoder
is part of what is trained, so nothing of it can be cached: ``cond`` is the captions' token ids (B, L), which
the training step embeds.

Reproducibility: every random draw of micro step k on process r (which images, flips, caption dropout,
posterior noise, x0, t) comes from a generator seeded by (seed, k, r), so a run resumed from a checkpoint
draws exactly what the uninterrupted run drew.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from d2f.parametrizations import Parametrization


def step_generator(seed: int, micro_step: int, rank: int) -> torch.Generator:
    """The generator of one micro step on one process: a pure function of (seed, micro step, rank)."""
    return torch.Generator().manual_seed((seed * 1_000_003 + micro_step * 1009 + rank) % (2**63 - 1))


def batch_indices(n: int, batch_size: int, micro_step: int, rank: int, world: int, seed: int) -> list[int]:
    """Sample indices of one micro step: the data is shuffled once per epoch (a permutation seeded by
    (seed, epoch)) and read in order, process r taking the r-th slice of each global batch."""
    start = (micro_step * world + rank) * batch_size
    out = []
    for position in range(start, start + batch_size):
        epoch, k = divmod(position, n)
        out.append(int(_permutation(n, seed, epoch)[k]))
    return out


_PERMUTATIONS: dict[tuple[int, int, int], torch.Tensor] = {}


def _permutation(n: int, seed: int, epoch: int) -> torch.Tensor:
    key = (n, seed, epoch)
    if key not in _PERMUTATIONS:
        if len(_PERMUTATIONS) > 4:
            _PERMUTATIONS.clear()
        _PERMUTATIONS[key] = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 7919 + epoch))
    return _PERMUTATIONS[key]


@dataclass
class BatchSource:
    """Batches that a caller brings instead of the run's images, passed as ``train(cfg, source=...)``
    (``d2f.reflow`` brings its teacher's coupled pairs, as ``d2f.world`` brings its built-in data through
    ``builtin=``). Training knows nothing of where they come from:

    - ``make(run)``: the batches, made once the model and the data are loaded (``run.pipe``,
      ``run.parametrization``, ``run.data``, ``run.acc.device``): any object with ``Batches.get``'s
      ``get(micro_step, rank, world) -> (x1, x0, time, cond)``. Its data never passes through the VAE, so the
      VAE check (``d2f.training.vae_check``) is skipped;
    - ``settings``: the caller's settings of the run, recorded with ``TrainConfig``'s in ``d2f_run.json``
      (``settings``) and, like them, required to be the same by ``--resume``;
    - ``record``: keys of ``d2f_run.json`` that it sets (or replaces, e.g. ``objective``);
    - ``kept``: names in the output folder that are the caller's and stay when ``--overwrite`` clears it.
    """

    make: Callable[[object], object]
    settings: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    kept: set[str] = field(default_factory=set)


class Batches:
    """Draws the batches of a run from its data, VAE and text encoder (see the module doc)."""

    def __init__(
        self,
        data,
        vae,
        text_encoder,
        tokenizer,
        flow: Parametrization,
        *,
        batch_size: int,
        caption_dropout: float,
        random_flip: bool,
        t_sampling: str,
        seed: int,
        cache: bool,
        device,
        noise_offset: float = 0.0,
        workers: int = 0,
        text_trainable: bool = False,
    ):
        self.data, self.vae, self.text_encoder, self.tokenizer, self.flow = data, vae, text_encoder, tokenizer, flow
        self.batch_size, self.caption_dropout, self.random_flip = batch_size, caption_dropout, random_flip
        self.t_sampling, self.seed, self.device = t_sampling, seed, device
        self.noise_offset, self.workers = noise_offset, workers
        down = 2 ** (len(vae.config.block_out_channels) - 1)
        self.latent_shape = (vae.config.latent_channels, data.resolution // down, data.resolution // down)
        self.captions = sorted(set(data.captions) | {""})
        self.caption_index = torch.tensor([self.captions.index(c) for c in data.captions])
        self.empty = self.captions.index("")
        self.token_ids = self.tokenize(self.captions) if text_trainable else None
        self.text_cache = self.encode_text(self.captions) if cache and not text_trainable else None
        self.latent_cache = self._encode_all() if cache else None

    def tokenize(self, captions: list[str]) -> torch.Tensor:
        """Token ids (B, L), padded and cut to the tokenizer's window, as the SD pipeline makes them."""
        return self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    @torch.no_grad()
    def encode_text(self, captions: list[str]) -> torch.Tensor:
        """Text encoder hidden states (B, L, D), float32, as the SD pipeline computes them."""
        return self.text_encoder(self.tokenize(captions).to(self.device))[0].float()

    @torch.no_grad()
    def encode_images(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The VAE posterior (mean, std) of images in [-1, 1], float32."""
        dist = self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist
        return dist.mean.float(), dist.std.float()

    def pixels(self, indices) -> torch.Tensor:
        """The preprocessed images (B, 3, R, R), decoded by ``workers`` threads (image decoding releases
        the GIL) or in this thread."""
        indices = list(indices)
        if not self.workers:
            return self.data.pixels(indices)
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(self.workers) as pool:
            return torch.cat(list(pool.map(lambda k: self.data.pixels([k]), indices)))

    def _encode_all(self) -> dict[bool, tuple[torch.Tensor, torch.Tensor]]:
        moments = {False: ([], []), True: ([], [])}
        for start in range(0, len(self.data), 64):
            pixels = self.pixels(range(start, min(start + 64, len(self.data))))
            for flip in (False, True) if self.random_flip else (False,):
                mean, std = self.encode_images(pixels.flip(-1) if flip else pixels)
                moments[flip][0].append(mean.cpu())
                moments[flip][1].append(std.cpu())
        return {flip: (torch.cat(m), torch.cat(s)) for flip, (m, s) in moments.items() if m}

    def get(self, micro_step: int, rank: int = 0, world: int = 1):
        """(data x1, noise x0, time, cond) of one micro step on process ``rank``, on the device; all draws
        from the micro step's own generator, in a fixed order, whether the caches are on or off."""
        gen = step_generator(self.seed, micro_step, rank)
        idx = batch_indices(len(self.data), self.batch_size, micro_step, rank, world, self.seed)
        b = len(idx)
        flips = torch.rand(b, generator=gen) < 0.5
        if not self.random_flip:
            flips = torch.zeros_like(flips)
        drop = torch.rand(b, generator=gen) < self.caption_dropout
        which = torch.where(drop, torch.tensor(self.empty), self.caption_index[idx])
        posterior = torch.randn((b, *self.latent_shape), generator=gen)
        noise = torch.randn((b, *self.latent_shape), generator=gen)
        time = self.flow.sample_time(b, self.t_sampling, gen)
        if self.noise_offset:  # Guttenberg (2023): a per-channel constant in the noise, diffusion objective only
            noise = noise + self.noise_offset * torch.randn((b, self.latent_shape[0], 1, 1), generator=gen)
        if self.latent_cache is not None:
            mean = torch.stack([self.latent_cache[bool(f)][0][k] for k, f in zip(idx, flips)])
            std = torch.stack([self.latent_cache[bool(f)][1][k] for k, f in zip(idx, flips)])
        else:
            pixels = self.pixels(idx)
            pixels = torch.where(flips[:, None, None, None], pixels.flip(-1), pixels)
            mean, std = self.encode_images(pixels)
        if self.token_ids is not None:  # the text encoder is trained: the step embeds the ids
            cond = self.token_ids[which]
        elif self.text_cache is not None:
            cond = self.text_cache[which]
        else:
            cond = self.encode_text([self.captions[k] for k in which])
        scaling = self.vae.config.scaling_factor
        shift = getattr(self.vae.config, "shift_factor", None) or 0.0
        # x1 = (mu + s * n - shift) * scaling_factor: a posterior sample, scaled to unit variance
        data = (mean.cpu() + std.cpu() * posterior - shift) * scaling
        dev = self.device
        return data.to(dev), noise.to(dev), time.to(dev), cond.to(dev)
