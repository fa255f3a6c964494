"""The built-in priors ``tiny-shapes-eps`` and ``tiny-shapes-v``: tiny Stable Diffusions, made here.

Each prior is a complete diffusers ``StableDiffusionPipeline`` folder with exactly SD's components at a
tiny size (``d2f.world.build.components``). The recipe, in the order SD was made:

1. **Tokenizer**: a byte-level BPE learnt from ordinary English (``tokenizer.py``), SD's 77-token window.
2. **VAE** on a broad corpus (``corpus.py``, trained by ``vae_training.py``): strokes, polygons, gradients,
   textures, glyphs, photo crops and the shapes world, so that it encodes images it never saw.
3. **UNet + text encoder**, jointly from scratch, with the diffusion objective of the prior's prediction
   type (docs/math.md §8, "Diffusion"): ``i ~ U{0..N-1}``, ``z = alpha_i x1 + sigma_i eps``, target ``eps``
   (epsilon) or ``v = alpha_i eps - sigma_i x1`` (v_prediction). The data: the shapes world's base domain
   (``SHAPES_FRACTION`` of each batch, captions "a red circle") and, for the rest, the corpus kinds that are
   not glyphs (captioned by kind: "strokes", "a photo", ...), so that the prior has drawn more than shapes
   and a finetune on a user's images starts from a general model, as SD's does. Glyphs and the shapes
   world's target domain stay unseen: they are what finetunes are measured on. Captions are dropped to
   ``""`` 10% of the time so classifier-free guidance works. The shipped weights are an EMA of the trained ones.

The eps prior's scheduler config mirrors SD 1.5 (PNDM), the v prior's SD 2.x (DDIM).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from d2f.training.ema import EMA
from d2f.world.build.components import RESOLUTION, SD_BETAS, make_text_encoder, make_unet
from d2f.world.build.corpus import corpus_images
from d2f.world.build.lr_schedule import warmup_cosine
from d2f.world.shapes import all_prompts, shape_images, to_unit_range

PRIORS = {"tiny-shapes-eps": "epsilon", "tiny-shapes-v": "v_prediction", "tiny-shapes-eps-words": "epsilon"}
# priors whose text encoder was pretrained on English words first and kept frozen (text_pretraining.py)
WORDS_SUFFIX = "-words"
# corpus kinds the priors also learn to draw, with their captions (glyphs stay unseen: see the module doc)
KIND_CAPTIONS = {
    "strokes": "colourful strokes",
    "polygons": "colourful polygons",
    "gradients": "a colour gradient",
    "textures": "a pattern",
    "photos": "a photo",
}
SHAPES_FRACTION = 0.65


def training_captions() -> list[str]:
    """Every caption the priors were trained on (besides "" for guidance): the world's 24 shape captions and the
    corpus kinds'. Recorded in each prior's ``d2f_build.json``, where ``d2f train`` finds the words it never
    learnt (``d2f.training.caption_check``)."""
    return all_prompts() + list(KIND_CAPTIONS.values())


Log = Callable[[int, float], None]  # (step, loss) -> None, for progress bars


def prior_data(num_images: int, seed: int) -> tuple[torch.Tensor, list[str], torch.Tensor]:
    """The priors' training images (float, [-1, 1]), their captions, and each image's sampling weight:
    ``num_images`` shapes (base domain) sharing ``SHAPES_FRACTION`` of the draws, and ``num_images / 4`` of each
    kind in ``KIND_CAPTIONS`` sharing the rest."""
    shapes, captions = shape_images(num_images, "base", seed)
    per_kind = num_images // 4
    kinds = [to_unit_range(corpus_images(kind, per_kind, seed + 1)) for kind in KIND_CAPTIONS]
    captions += [text for text in KIND_CAPTIONS.values() for _ in range(per_kind)]
    weights = torch.cat(
        [
            torch.full((num_images,), SHAPES_FRACTION / num_images),
            torch.full((per_kind * len(kinds),), (1 - SHAPES_FRACTION) / (per_kind * len(kinds))),
        ]
    )
    return torch.cat([shapes, *kinds]), captions, weights


def train_prior(
    vae,
    tokenizer,
    prediction_type: str,
    steps: int,
    num_images: int = 4096,
    batch_size: int = 32,
    lr: float = 1e-3,
    caption_dropout: float = 0.1,
    ema_decay: float = 0.999,
    seed: int = 0,
    log: Log | None = None,
    init=None,
    text_encoder=None,
):
    """Train UNet + text encoder (from scratch unless ``init``) on the priors' data (``prior_data``).
    Returns ``(unet, text_encoder, final_loss)`` with the EMA weights loaded. ``init``: an optional
    ``(unet, text_encoder)`` pair to continue training instead of starting from scratch. ``text_encoder``: a
    pretrained one (``text_pretraining.py``) kept frozen, as SD keeps CLIP: only the UNet trains (the ``-words``
    priors).

    Latents are precomputed once as posterior mean and std; each step draws a fresh posterior
    sample ``mean + std*n`` (what SD's training does with its cached VAE moments)."""
    from diffusers import DDPMScheduler

    torch.manual_seed(seed)
    noise_sched = DDPMScheduler(**SD_BETAS, prediction_type=prediction_type)
    images, captions, weights = prior_data(num_images, seed + 1)
    with torch.no_grad():
        moments = [vae.encode(c).latent_dist for c in images.split(256)]
    mean = torch.cat([m.mean for m in moments])
    std = torch.cat([m.std for m in moments])
    scale = vae.config.scaling_factor
    # every caption the model sees is one of a few dozen or "": tokenize them once
    vocab = sorted(set(captions)) + [""]
    ids = tokenizer(
        vocab, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    index = torch.tensor([vocab.index(c) for c in captions])

    frozen = text_encoder is not None
    if frozen:
        unet = init[0] if init else make_unet()
        text_encoder.requires_grad_(False).eval()
    else:
        unet, text_encoder = init or (make_unet(), make_text_encoder(tokenizer))
    named = {f"unet.{k}": p for k, p in unet.named_parameters()}
    if not frozen:
        named |= {f"text_encoder.{k}": p for k, p in text_encoder.named_parameters()}
    params = list(named.values())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    ema = EMA(named, ema_decay)
    gen = torch.Generator().manual_seed(seed)
    loss_value = float("nan")
    unet.train(), text_encoder.train(not frozen)
    for step in range(steps):
        pick = torch.multinomial(weights, batch_size, replacement=True, generator=gen)
        # x1: a posterior sample, scaled to unit variance
        data = (mean[pick] + std[pick] * torch.randn(mean[pick].shape, generator=gen)) * scale
        which = index[pick].clone()
        which[torch.rand(batch_size, generator=gen) < caption_dropout] = len(vocab) - 1  # "" for CFG
        noise = torch.randn(data.shape, generator=gen)
        t = torch.randint(0, noise_sched.config.num_train_timesteps, (batch_size,), generator=gen)
        # z = alpha_i*x1 + sigma_i*eps
        z = noise_sched.add_noise(data, noise, t)
        # epsilon: target eps;  v_prediction: target v = alpha_i*eps - sigma_i*x1
        target = noise if prediction_type == "epsilon" else noise_sched.get_velocity(data, noise, t)
        states = text_encoder(ids[which]).last_hidden_state
        loss = F.mse_loss(unet(z, t, encoder_hidden_states=states).sample, target)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        ema.update()
        loss_value = loss.item()  # the last batch's loss is what the build records as final_loss
        if log:
            log(step, loss_value)
    with torch.no_grad():
        for k, p in named.items():
            p.copy_(ema.avg[k])
    unet.eval(), text_encoder.eval()
    return unet, text_encoder, loss_value


# ----------------------------------------------------------------------------- quality


@torch.no_grad()
def sample_prior(
    folder: str | Path, prompts: list[str], steps: int = 25, guidance: float = 7.5, seed: int = 0, batch: int = 64
) -> torch.Tensor:
    """Samples (B,3,32,32) in [0,1] from a saved prior with plain diffusers: the folder's pipeline,
    its scheduler config turned into DDIM, ``output_type="pt"``."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    gen = torch.Generator().manual_seed(seed)
    out = [
        pipe(
            prompts[k : k + batch],
            num_inference_steps=steps,
            guidance_scale=guidance,
            generator=gen,
            output_type="pt",
            height=RESOLUTION,
            width=RESOLUTION,
        ).images
        for k in range(0, len(prompts), batch)
    ]
    return torch.cat(out).float().clamp(0, 1)


def evaluate_prior(
    folder: str | Path,
    num_samples: int = 64,
    steps: int = 25,
    guidance: float = 7.5,
    seed: int = 0,
    evaluator: str | Path | None = None,
) -> dict:
    """The quality bar of the built-in priors: ``prompt_accuracy`` of ``num_samples`` samples over the 24 base
    prompts (cycled), 25 DDIM steps with guidance, scored by the evaluator at ``evaluator`` (default:
    the shipped one). ``prompt_accuracy`` is ``None`` if no evaluator weights exist yet."""
    prompts = [all_prompts()[k % 24] for k in range(num_samples)]
    start = time.time()
    images = sample_prior(folder, prompts, steps, guidance, seed)
    record = dict(
        num_samples=num_samples,
        ddim_steps=steps,
        guidance=guidance,
        seed=seed,
        sample_seconds=round(time.time() - start, 1),
        prompt_accuracy=None,
    )
    from d2f.world.evaluator import load_evaluator
    from d2f.world.metrics import prompt_accuracy

    try:
        model = load_evaluator(evaluator)
    except ValueError:  # no weights yet (the evaluator is built after the priors)
        return record
    record["prompt_accuracy"] = float(prompt_accuracy(images, prompts, evaluator=model))
    return record


def save_grid(folders: list[Path], path: Path, guidance: float, seed: int, per_row: int = 12, cell: int = 64) -> Path:
    """One labelled row of ``per_row`` samples per prior folder (prompts spread over the world's 24, 25 DDIM
    steps at ``guidance``), each 32 px sample upscaled to ``cell`` px (nearest)."""
    from PIL import Image, ImageDraw

    prompts = [all_prompts()[(5 * k) % 24] for k in range(per_row)]  # spread over shapes and colours
    label_w = 110
    grid = Image.new("RGB", (label_w + per_row * cell, len(folders) * cell), "white")
    pen = ImageDraw.Draw(grid)
    for row, folder in enumerate(folders):
        images = sample_prior(folder, prompts, guidance=guidance, seed=seed)
        pen.text((4, row * cell + cell // 2 - 6), folder.name, fill="black")
        for col, img in enumerate(images):
            pixels = (img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            tile = Image.fromarray(pixels).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (label_w + col * cell, row * cell))
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
