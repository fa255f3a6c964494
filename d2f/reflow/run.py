"""``d2f reflow``: straighten a teacher's flow into a few-step student (Liu et al. 2022, "Flow straight and fast",
arXiv 2209.03003; InstaFlow, Liu et al. 2023, arXiv 2309.06380).

1. **Pairs** (``d2f.reflow.pairs``): noise x0 from the seed, x1 = the teacher's ODE from x0 (its own sampler,
   steps and guidance w), for the training captions; kept in ``<run>/pairs`` (or ``--pairs DIR``), reused when
   the teacher and the settings are the same.
2. **Straightening**: ``d2f.training.train`` unchanged, on the pairs (``train(source=pair_source(...))``: a
   ``d2f.reflow.pair_batches.PairBatches`` instead of image batches), with the student starting as the teacher
   (``init_weights``) and the Diff2Flow objective (or naive FM, ``objective="fm"``) on the paired points:

       x_t = t x1 + (1 - t) x0,    loss = || u_hat(x_t, t) - (x1 - x0) ||^2

   Captions are never dropped and the student is sampled with guidance 1: the teacher's guidance is distilled
   into it, so one sampler step is one network call.
3. The result is a normal run folder, ``objective: reflow`` in ``d2f_run.json`` (sampled as its
   ``reflow_objective``, FM Euler, 1 step, guidance 1), validation grids at 1, 2 and 4 steps.

With ``windows`` K > 1 (PeRFlow, Yan et al. 2024, arXiv 2405.07510) the pairs keep the teacher's state at
t = k / K and the student straightens each window on its own (``d2f.reflow.pair_batches``); it is sampled with
K steps, one per window (validation grids at K, 2K and 4K steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from d2f.errors import UserError
from d2f.reflow.pair_batches import pair_source, read_pairs_record
from d2f.reflow.pairs import PairSettings, generate_pairs, weights_fingerprint
from d2f.sampling import SAMPLERS
from d2f.settings import MAX_COUNT, MAX_GUIDANCE, MAX_SEED, MAX_SIDE, check_settings, setting
from d2f.training.config import MAX_SAMPLE_STEPS, TrainConfig, check_config
from d2f.training.data import BuiltinResolver

VALIDATION_STEPS = [1, 2, 4]
# measured (docs/reflow.md, benchmarks/results/reflow.md): with the same pairs and budget, t with density
# 2 (1 - t) gave the prior's student 0.64 / FD 70 at 1 call and 0.96 / FD 17 at 2 calls, against 0.54 / 89 and
# 0.94 / 22 uniform
T_SAMPLING = "near-noise"
MAX_WINDOWS = 16


@dataclass
class ReflowConfig:
    """The teacher and the pairs (declared like ``TrainConfig``, ``d2f.settings``); ``train`` holds
    ``TrainConfig`` settings of the straightening (steps, lr, ...)."""

    model: str | None = setting(
        None, "The teacher's model (default: the --lora run's base model; with neither, as d2f sample)."
    )
    lora: str | None = setting(None, "The teacher run (a run folder of d2f train or d2f reflow).")
    data: str | None = setting(None, "Whose captions the pairs use (default: the teacher run's data).")
    num_pairs: int = setting(1024, "How many (noise, teacher sample) pairs.", low=1, high=MAX_COUNT)
    pair_steps: int = setting(25, "Teacher sampler steps per pair.", low=1, high=MAX_SAMPLE_STEPS)
    pair_sampler: str | None = setting(None, "Teacher sampler (default: the teacher's own).", choices=SAMPLERS)
    guidance: float | None = setting(
        None, "Teacher guidance (default: the teacher run's, else 2.0).", low=0, high=MAX_GUIDANCE
    )
    pairs: str | None = setting(None, "Pairs folder (default <output>/pairs); reused if it matches.")
    objective: str | None = setting(
        None, "Student objective (default: fm for an fm teacher, else diff2flow).", choices=("diff2flow", "fm")
    )
    output: str | None = setting(None, "Run folder (default runs/<teacher>-reflow-<objective>).")
    seed: int = setting(
        0, "Seed of the pairs' noise (pair i: seed + i) and of training.", low=0, high=MAX_SEED - MAX_COUNT
    )
    windows: int = setting(
        1,
        "Time windows K (PeRFlow): straighten the path piecewise; sample the student with --steps K.",
        low=1,
        high=MAX_WINDOWS,
    )
    resolution: int | None = setting(None, "Resolution in px (default: the teacher's).", low=1, high=MAX_SIDE)
    shard_size: int = setting(64, "Pairs per shard file.", low=1, high=MAX_COUNT, cli=False)
    train: dict = field(default_factory=dict)


def check_reflow_config(rcfg: ReflowConfig) -> None:
    """``UserError`` for a setting of the reflow or of its student's training that cannot work, before any load."""
    check_settings(rcfg)
    check_settings(TrainConfig(**rcfg.train), names=list(rcfg.train))


def reflow(
    rcfg: ReflowConfig, callback: Callable[[dict], None] | None = None, builtin: BuiltinResolver | None = None
) -> dict:
    """Make (or reuse) the pairs, then train the student; returns ``train``'s summary with ``pairs`` added.
    ``callback`` receives ``train``'s events and ``{"event": "pairs", "done", "total"}`` per shard written."""
    import torch

    from d2f.pipeline import load_pipeline, pipe_parametrization
    from d2f.pipeline.models import resolve_model
    from d2f.training.loop import train

    callback = callback or (lambda event: None)
    check_reflow_config(rcfg)
    teacher = load_pipeline(rcfg.model, rcfg.lora)  # a model d2f cannot sample is a UserError here
    run = teacher.d2f_run or {}
    flow = pipe_parametrization(teacher)
    cfg, folder = _student_config(rcfg, teacher, run, flow.name)
    check_config(cfg)
    check_student(cfg)
    source = pair_source(folder, cfg.output, record={})  # its record once the pairs are made
    _check_output_early(cfg, source)
    from d2f.training.data import load_run_data

    data = load_run_data(cfg, cfg.resolution, builtin)
    settings = PairSettings(
        teacher_model=resolve_model(cfg.model).source,
        teacher_weights=cfg.init_weights,
        teacher_fingerprint=weights_fingerprint(cfg.init_weights),
        objective=flow.name,
        sampler=rcfg.pair_sampler or run.get("sampler") or flow.sampler,
        steps=rcfg.pair_steps,
        guidance=float(rcfg.guidance if rcfg.guidance is not None else run.get("guidance", 2.0)),
        num_pairs=rcfg.num_pairs,
        seed=rcfg.seed,
        height=cfg.resolution,
        width=cfg.resolution,
        captions=_captions(data, rcfg.seed),
        shard_size=rcfg.shard_size,
        windows=rcfg.windows,
    )
    if torch.cuda.is_available():
        teacher.to("cuda")
    record = generate_pairs(
        teacher, settings, folder, lambda done, total: callback({"event": "pairs", "done": done, "total": total})
    )
    del teacher
    # sampled as its student's objective, unguided (d2f.pipeline reads these keys)
    source.record = dict(objective="reflow", reflow_objective=cfg.objective, reflow=reflow_record(cfg, folder))
    summary = train(cfg, callback=callback, builtin=builtin, source=source)
    summary["pairs"] = {k: record.get(k) for k in ("shards", "shards_written", "seconds", "bytes")}
    summary["pairs"]["folder"] = str(folder)
    summary["sample_command"] = f"d2f sample --lora {summary['output_dir']} --steps {rcfg.windows}"
    return summary


def _student_config(rcfg: ReflowConfig, teacher, run: dict, teacher_objective: str) -> tuple[TrainConfig, str]:
    """The ``TrainConfig`` of the straightening (the teacher's base model and weights, unguided sampling at 1 step)
    and the pairs folder."""
    from d2f.pipeline.run_folder import resolve_lora
    from d2f.training.start_weights import lora_file_settings

    weights = str(resolve_lora(rcfg.lora)[0]) if rcfg.lora else None
    settings = run.get("settings") or {}
    if settings.get("train_text_encoder"):  # before the pairs: the student (UNet only) could not start as it
        raise UserError(
            f"the teacher {rcfg.lora} was trained with --train-text-encoder; reflow trains the UNet only, so "
            "its student cannot start as this teacher: reflow a run trained with --no-train-text-encoder"
        )
    if settings.get("train_conv_io"):  # the student could not start as it: its conv_in / conv_out are not a LoRA
        raise UserError(
            f"the teacher {rcfg.lora} was trained with --train-conv-io; reflow starts its student from the teacher's "
            "LoRA alone, so it cannot start as this teacher: reflow a run trained without --train-conv-io"
        )
    resolution = rcfg.resolution or run.get("resolution")
    resolution = resolution or int(teacher.unet.config.sample_size) * teacher.vae_scale_factor
    objective = rcfg.objective or ("fm" if teacher_objective == "fm" else "diff2flow")
    base = run.get("base_model") or rcfg.model or "tiny-shapes-eps"
    name = Path(rcfg.lora).name if rcfg.lora else Path(base).name
    output = Path(rcfg.output) if rcfg.output else Path("runs") / f"{name}-reflow-{objective}"
    own = dict(
        model=base,
        model_config=run.get("model_config"),
        data=rcfg.data or settings.get("data") or TrainConfig.data,
        objective=objective,
        prediction_type=run.get("prediction_type") if run else None,
        zero_terminal_snr=bool((run.get("schedule") or {}).get("zero_terminal_snr")),
        resolution=resolution,
        output=str(output),
        seed=rcfg.seed,
        caption_dropout=0.0,  # the student is unguided: no empty-caption branch to learn
        guidance=1.0,
        sample_steps=rcfg.windows,  # one Euler step per window
        validation_steps=sorted({rcfg.windows * k for k in VALIDATION_STEPS}),
        init_weights=weights,
    )
    if weights and Path(weights).is_file():  # a LoRA teacher: the student is a LoRA of its rank and alpha
        lora = lora_file_settings(weights)
        own.update(lora_rank=lora["rank"], lora_alpha=lora["alpha"], lora_targets=lora["targets"])
    elif weights:
        own.update(lora_rank=0)
    given = dict(rcfg.train)
    given.setdefault("t_sampling", T_SAMPLING)
    for key in ("lora_rank", "lora_alpha", "lora_targets"):
        if key in own and key in given and given[key] != own[key]:
            raise UserError(
                f"the student starts as the teacher {weights}, whose {key.replace('_', '-')} is {own[key]}: "
                f"drop --{key.replace('_', '-')} {given[key]}"
            )
    return TrainConfig(**{**given, **own}), str(rcfg.pairs or output / "pairs")


def check_student(cfg: TrainConfig) -> None:
    """``UserError`` for the student settings reflow cannot train (beyond ``check_config``'s)."""
    if cfg.train_text_encoder:
        raise UserError("reflow trains the UNet only: drop --train-text-encoder")
    if cfg.objective == "diffusion":
        raise UserError("training on reflow pairs needs an FM objective (diff2flow or fm), not diffusion")


def reflow_record(cfg: TrainConfig, folder: str) -> dict:
    """What a reflow run's record says about its teacher and pairs (``pairs.json``, captions counted, not listed)."""
    pairs = read_pairs_record(folder)
    settings = dict(pairs.get("settings", {}))
    captions = settings.pop("captions", [])
    return {
        "pairs": str(folder),
        "teacher": {k: settings.pop(k, None) for k in ("teacher_model", "teacher_weights", "teacher_fingerprint")},
        "pair_settings": {**settings, "num_captions": len(captions)},
        "pairs_seconds": pairs.get("seconds"),
        "pairs_bytes": pairs.get("bytes"),
        "guidance_distilled": True,  # the student samples with guidance 1: one step is one network call
        "t_sampling": cfg.t_sampling,
    }


def _check_output_early(cfg: TrainConfig, source) -> None:
    """The output folder's checks of ``d2f train`` before the (long) pair generation."""
    from d2f.files import check_writable_dir
    from d2f.training.output import check_output

    check_writable_dir(Path(cfg.output), "--output")
    check_output(cfg, Path(cfg.output), source)


def _captions(data, seed: int) -> list[str]:
    """The captions pair i cycles through: a built-in world's prompts, else the data's distinct non-empty
    captions in an order shuffled by ``seed`` (so that few pairs are not the first folder's captions)."""
    import torch

    if data.builtin:
        return list(data.builtin.prompts)
    distinct = list(dict.fromkeys(c for c in data.captions if c))
    order = torch.randperm(len(distinct), generator=torch.Generator().manual_seed(seed)).tolist()
    return [distinct[k] for k in order]
