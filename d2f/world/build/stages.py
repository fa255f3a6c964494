"""Rebuild the built-in world's weights from scratch: the VAE, both priors and the evaluator.

    python -m d2f.world.build --output d2f/assets                 # everything (see below for time)
    python -m d2f.world.build --output d2f/assets --only priors   # reuse the VAE of the last build
    python -m d2f.world.build --output d2f/assets --only quality  # re-measure the shipped priors

Stages, in order (``priors.py`` has the recipe and why); each keeps its result, so a build that stops
resumes from the stage it was in (``--only`` the remaining stages):

1. ``tokenizer``: learn the BPE merges from ``wordfreq``'s English words (``tokenizer.py``); kept in
   ``<output>/_build/tokenizer``.
   ``text_encoder``: pretrain a text encoder on English words alone (``text_pretraining.py``), for the
   ``-words`` priors; kept in ``<output>/_build/text_encoder``.
2. ``vae``: train the AutoencoderKL on the broad corpus (``corpus.py``, ``vae_training.py``) and measure its
   reconstruction PSNR per kind; kept in ``<output>/_build/vae`` (each prior folder gets a copy in ``vae/``).
3. ``priors``: ``tiny-shapes-eps`` and ``tiny-shapes-v`` (UNet + text encoder from scratch on the
   shapes world's base domain and the corpus) and ``tiny-shapes-eps-words`` (the UNet from scratch on the same
   data, under the pretrained text encoder kept frozen), each saved as a StableDiffusionPipeline folder with a
   ``d2f_build.json`` record.
4. ``evaluator``: ``evaluator_training.train_evaluator`` into ``<output>/evaluator``.
5. ``quality``: sample each prior (64 prompts, 25 DDIM steps, guidance 5) and score it with the
   evaluator's ``prompt_accuracy``; the numbers go into each prior's ``d2f_build.json``.
6. ``grid``: a PNG with one row of samples per prior (``--grid``, default ``docs/priors.png``).

``benchmarks/results/world_build.md`` has the times measured for the shipped build. The build scripts need
the ``build`` extra (``pip install -e ".[build]"``: wordfreq's word list, scikit-image's photographs).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from d2f.versions import versions
from d2f.world.build import priors, tokenizer, vae_training
from d2f.world.build.build_cache import json_or_none, load_merges, load_text_encoder, load_vae, stage_folder
from d2f.world.build.components import save_prior
from d2f.world.build.text_pretraining import write_text_encoder_words

STAGES = ("tokenizer", "text_encoder", "vae", "priors", "evaluator", "quality", "grid")


def _progress(console, label: str, total: int):
    """A rich progress bar and a ``log(step, loss)`` callback that advances it."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn(f"{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    task = bar.add_task(label, total=total, loss="-")

    def log(step: int, loss: float):
        if step % 10 == 0 or step == total - 1:
            bar.update(task, completed=step + 1, loss=f"{loss:.4f}")
        if not console.is_terminal and (step % 100 == 0 or step == total - 1):
            # a log file gets no live bar: print a plain line now and then
            console.print(f"{label} step {step + 1}/{total} loss {loss:.4f} {bar.tasks[0].elapsed or 0:.0f}s")

    return bar, log


def build_tokenizer(out: Path, console) -> Path:
    start = time.time()
    merges = tokenizer.train_merges(tokenizer.english_word_counts(), tokenizer.NUM_MERGES)
    folder = stage_folder(out, "tokenizer")
    tokenizer.write_vocab_files(folder, merges)
    console.print(f"tokenizer: {len(merges)} merges in {time.time() - start:.0f} s -> {folder}")
    return folder


def build_text_encoder(out: Path, args, console) -> Path:
    from d2f.world.build.text_pretraining import pretrain_text_encoder

    start = time.time()
    tok = tokenizer.make_tokenizer(load_merges(out))
    bar, log = _progress(console, "text_encoder", args.text_steps)
    with bar:
        text_encoder, record = pretrain_text_encoder(tok, steps=args.text_steps, seed=args.seed, log=log)
    record |= dict(train_seconds=round(time.time() - start, 1), threads=torch.get_num_threads())
    folder = stage_folder(out, "text_encoder")
    text_encoder.save_pretrained(folder, safe_serialization=True)
    (folder / "d2f_build.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"text_encoder: {record}")
    return folder


def build_vae(out: Path, args, console) -> Path:
    start = time.time()
    bar, log = _progress(console, "vae", args.vae_steps)
    with bar:
        vae, loss = vae_training.train_vae(
            args.vae_steps, num_per_kind=args.num_images, batch_size=args.batch_size, seed=args.seed, log=log
        )
    seconds = time.time() - start
    folder = stage_folder(out, "vae")
    vae.save_pretrained(folder, safe_serialization=True)
    record = dict(
        steps=args.vae_steps,
        num_images_per_kind=args.num_images,
        kinds=list(vae_training.KINDS),
        batch_size=args.batch_size,
        seed=args.seed,
        final_loss=round(loss, 5),
        scaling_factor=vae.config.scaling_factor,
        held_out_psnr_db=vae_training.psnr_by_kind(vae, min(256, args.num_images)),
        train_seconds=round(seconds, 1),
        threads=torch.get_num_threads(),
    )
    (folder / "d2f_build.json").write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"vae: {record}")
    return folder


def build_prior(out: Path, name: str, args, console) -> Path:
    prediction_type = priors.PRIORS[name]
    vae, vae_folder = load_vae(out)
    vae_record = vae_folder / "d2f_build.json"
    merges = load_merges(out)
    tok = tokenizer.make_tokenizer(merges)
    start = time.time()
    init, history = None, []
    if args.resume:  # continue from the weights (EMA) of the prior already in <output>/<name>
        from diffusers import UNet2DConditionModel
        from transformers import CLIPTextModel

        init = (
            UNet2DConditionModel.from_pretrained(out / name / "unet"),
            CLIPTextModel.from_pretrained(out / name / "text_encoder"),
        )
        old = json.loads((out / name / "d2f_build.json").read_text())
        history = old.get("history", []) + [{k: old[k] for k in ("recipe", "final_loss", "train_seconds")}]
    words = name.endswith(priors.WORDS_SUFFIX)
    pretrained, text_record = load_text_encoder(out, name) if words else (None, None)
    bar, log = _progress(console, name, args.prior_steps)
    with bar:
        unet, text_encoder, loss = priors.train_prior(
            vae,
            tok,
            prediction_type,
            args.prior_steps,
            num_images=args.num_images,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed + len(history),
            log=log,
            init=init,
            text_encoder=pretrained,
        )
    seconds = time.time() - start
    folder = save_prior(out / name, vae, text_encoder, tok, unet, prediction_type, merges)
    record = {
        "name": name,
        "command": f"python -m d2f.world.build --output {out} --only priors --priors {name} "
        f"--prior-steps {args.prior_steps} --lr {args.lr}" + (" --resume" if args.resume else ""),
        "prediction_type": prediction_type,
        "recipe": {
            "unet": "UNet2DConditionModel (32,64,64), layers_per_block 1, cross-attention 64, from scratch",
            "text_encoder": (
                "pretrained on English words alone, then frozen (d2f.world.build.text_pretraining)"
                if words
                else "from scratch, with the UNet"
            )
            + f"; CLIPTextModel hidden 64, 2 layers, 77 positions; byte-level BPE of {len(merges)} merges learnt "
            "from wordfreq's English words",
            "objective": f"diffusion, {prediction_type} target, i ~ U{{0..999}}, SD betas scaled_linear 0.00085-0.012",
            "data": f"{args.num_images} shapes base-domain images ({priors.SHAPES_FRACTION:.0%} of draws) and "
            f"{args.num_images // 4} of each of {list(priors.KIND_CAPTIONS)} (seed {args.seed + 1}), "
            "VAE posterior sample each step",
            "steps": args.prior_steps,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "optimizer": "AdamW(weight_decay=0.01), 5% warmup, cosine to 0.1x, grad clip 1.0",
            "caption_dropout": 0.1,
            "ema_decay": 0.999,
            "seed": args.seed,
        },
        "vae": json.loads(vae_record.read_text()) if vae_record.is_file() else str(vae_folder),
        "final_loss": round(loss, 5),
        "train_seconds": round(seconds, 1),
        "threads": torch.get_num_threads(),
        "versions": versions(("torch", "diffusers", "transformers", "tokenizers", "safetensors", "numpy", "pillow")),
        "quality": None,
        "captions": priors.training_captions(),  # what its UNet (and a joint text encoder) learnt from
        # a pretrained text encoder learnt every word of its word list (d2f.training.caption_check reads this)
        "text_encoder_pretraining": json_or_none(text_record / "d2f_build.json") if words else None,
        "history": history,  # earlier runs this one continued from (--resume), oldest first
        "total_steps": args.prior_steps + sum(h["recipe"]["steps"] for h in history),
    }
    (folder / "d2f_build.json").write_text(json.dumps(record, indent=2) + "\n")
    if words:  # what the text encoder learnt, for d2f train's caption check
        write_text_encoder_words(folder)
    console.print(f"{name}: final loss {loss:.4f}, {seconds:.0f} s -> {folder}")
    return folder


def measure_quality(out: Path, name: str, args, console) -> dict:
    """Score a saved prior and write the numbers into its ``d2f_build.json``."""
    folder, evaluator = out / name, out / "evaluator"
    quality = priors.evaluate_prior(
        folder,
        num_samples=args.eval_samples,
        guidance=args.guidance,
        seed=args.seed,
        evaluator=evaluator if (evaluator / "config.json").is_file() else None,
    )
    path = folder / "d2f_build.json"
    record = json.loads(path.read_text()) if path.is_file() else {"name": name}
    record["quality"] = quality
    path.write_text(json.dumps(record, indent=2) + "\n")
    console.print(f"{name}: {quality}")
    return quality


def main(argv=None) -> None:
    from rich.console import Console

    p = argparse.ArgumentParser(
        prog="python -m d2f.world.build", description="Rebuild d2f's built-in VAE, priors and evaluator from scratch."
    )
    p.add_argument("--output", default="d2f/assets", help="assets folder (default d2f/assets)")
    p.add_argument("--only", choices=STAGES, action="append", help="run only these stages (repeatable)")
    p.add_argument("--priors", default=",".join(priors.PRIORS), help="comma-separated priors to build")
    p.add_argument("--vae-steps", type=int, default=600)
    p.add_argument("--prior-steps", type=int, default=3900)
    p.add_argument("--text-steps", type=int, default=1000, help="text encoder pretraining steps (-words priors)")
    p.add_argument(
        "--evaluator-steps", type=int, default=800
    )  # the shipped evaluator's recipe (d2f/assets/evaluator/d2f_build.json)
    p.add_argument("--num-images", type=int, default=4096, help="images per corpus kind (VAE) and of shapes (priors)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="prior learning rate")
    p.add_argument("--eval-samples", type=int, default=64)
    p.add_argument(
        "--guidance",
        type=float,
        default=5.0,
        help="CFG scale for quality and grid (7.5 oversaturates these tiny priors, the v one most)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="priors: continue from the weights in --output")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--grid", default="docs/priors.png", help="where the grid stage writes its PNG")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    console, out, start = Console(), Path(args.output), time.time()
    stages = args.only or list(STAGES)
    names = [n for n in args.priors.split(",") if n]
    unknown = [n for n in names if n not in priors.PRIORS]
    if unknown:
        p.error(f"unknown prior(s) {unknown}; choose from {list(priors.PRIORS)}")
    if "tokenizer" in stages:
        build_tokenizer(out, console)
    if "text_encoder" in stages:
        build_text_encoder(out, args, console)
    if "vae" in stages:
        build_vae(out, args, console)
    if "priors" in stages:
        for name in names:
            build_prior(out, name, args, console)
    if "evaluator" in stages:
        from d2f.world.build.evaluator_training import train_evaluator

        train_evaluator(out / "evaluator", steps=args.evaluator_steps, seed=args.seed, log=console.print)
    if "quality" in stages:
        for name in names:
            measure_quality(out, name, args, console)
    if "grid" in stages:
        console.print(f"grid: {priors.save_grid([out / n for n in names], Path(args.grid), args.guidance, args.seed)}")
    console.print(f"built {', '.join(stages)} into {out} in {time.time() - start:.0f} s")
