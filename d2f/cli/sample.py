"""What ``d2f sample`` does, as a library function: pick the model, the prompts and the samplers, generate,
save, evaluate. The CLI only parses options and prints.

    result = sample_images(SampleSettings(prompts=["a red circle"], steps=25), output="grid.png")
    result["images"], result["metrics"]

Defaults (issue 4): with neither a model nor a LoRA, the latest run under ``runs/`` if there is one, else
the built-in ``tiny-shapes-eps``. With no prompts, a built-in base model uses the world's 24 captions
(``d2f.world.shapes.all_prompts``); any other model needs prompts. The sampler defaults to the run's
recommended one (``d2f_run.json``'s ``sampler``), else ``euler``.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

from d2f.errors import UserError
from d2f.pipeline import (DEFAULT_MODEL, RUNS_DIR, check_settings, generate, latent_size, latest_run, load_pipeline,
                          save_grid, save_images)
from d2f.sampling import get_sampler, network_calls

COMPARE_SAMPLERS = ("euler", "heun", "ddim")
DEFAULT_GRID = Path("samples/grid.png")


@dataclass
class SampleSettings:
    model: Optional[str] = None
    lora: Optional[str] = None
    prompts: list[str] = field(default_factory=list)
    num_images: Optional[int] = None
    steps: int = 25
    sampler: Optional[str] = None
    guidance: float = 7.5
    seed: int = 0
    height: Optional[int] = None
    width: Optional[int] = None
    shift: float = 1.0
    compare: bool = False
    batch_size: int = 64


def read_prompts_file(path: str | Path) -> list[str]:
    """One prompt per non-empty line."""
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as exc:
        raise UserError(f"cannot read --prompts-file {path} ({type(exc).__name__})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"--prompts-file {path} has no prompts (one per line)")
    return prompts


def choose_source(model: str | None, lora: str | None, runs_dir: str | Path = RUNS_DIR) -> tuple[str | None, str | None, str]:
    """(model, lora, a sentence saying what is used) with the defaults of ``d2f sample``."""
    if model is None and lora is None:
        run = latest_run(runs_dir)
        if run is not None:
            return None, str(run), f"the latest run {run} (no --model or --lora given)"
        return DEFAULT_MODEL, None, f"the built-in {DEFAULT_MODEL} (no --model, --lora or run under {runs_dir}/)"
    what = " + ".join(x for x in (model and f"model {model}", lora and f"LoRA {lora}") if x)
    return model, lora, what


def sample_images(settings: SampleSettings, output: str | Path | None = None,
                  output_dir: str | Path | None = None, evaluate: bool = False, domain: str | None = None,
                  runs_dir: str | Path = RUNS_DIR, progress: bool = True, log=None) -> dict:
    """Generate, save and (optionally) evaluate; returns the ``--json`` object: ``images`` (paths),
    ``settings``, ``seconds``, ``using`` and, with ``evaluate``, ``metrics`` (one dict per sampler with
    ``--compare``)."""
    start = time.time()
    s = settings
    if s.steps < 1:
        raise UserError(f"--steps must be at least 1, got {s.steps}")
    if s.guidance < 0:
        raise UserError(f"--guidance must be 0 or more (1 = no guidance), got {s.guidance}")
    if s.num_images is not None and s.num_images < 1:
        raise UserError(f"--num-images must be at least 1, got {s.num_images}")
    if s.sampler is not None:
        get_sampler(s.sampler)
    if output is None and output_dir is None:
        output = DEFAULT_GRID
    _quiet_loading()
    model, lora, using = choose_source(s.model, s.lora, runs_dir)
    pipe = load_pipeline(model, lora)
    run = pipe.d2f_run or {}
    objective = run.get("objective", "diff2flow")
    samplers = list(COMPARE_SAMPLERS) if s.compare else [s.sampler or run.get("sampler", "euler")]
    prompts = list(s.prompts)
    builtin = _builtin_base(model or run.get("base_model"))
    if not prompts and builtin:
        from d2f.world.shapes import all_prompts

        prompts = all_prompts()
    n = s.num_images or len(prompts)
    prompts = [prompts[k % len(prompts)] for k in range(n)] if prompts else []
    for name in samplers:
        check_settings(prompts, name, s.steps, s.guidance, objective)
    height, width, _ = latent_size(pipe, s.height, s.width)
    if evaluate:
        data = run.get("data")
        domain = domain or ((data.get("domain") if isinstance(data, dict) else None) or "base")
        if domain not in ("base", "target"):
            raise UserError(f"--domain {domain!r} is not a domain of the built-in world; use base or target")
        _check_world_prompts(prompts)
    if log:
        log(f"using {using}; objective {objective}, prediction type {pipe.scheduler.config.prediction_type}")

    rows, paths, metrics = [], [], {}
    for name in samplers:
        images = generate(pipe, prompts, sampler=name, steps=s.steps, guidance=s.guidance, seed=s.seed,
                          height=height, width=width, objective=objective, shift=s.shift,
                          batch_size=s.batch_size, progress=progress)
        rows.append(images)
        if output_dir is not None:
            prefix = f"{name}_" if s.compare else ""
            paths += [str(p) for p in save_images(images, output_dir, prefix)]
        if evaluate:
            from d2f.world.metrics import evaluate as world_evaluate

            metrics[name] = world_evaluate(images, prompts, domain)
    if output is not None:
        import torch

        grid = torch.cat(rows)
        paths.insert(0, str(save_grid(grid, output, ncols=len(prompts) if s.compare else None)))
    record = dict(asdict(s), prompts=prompts, num_images=n, height=height, width=width, objective=objective,
                  samplers=samplers, network_calls={name: network_calls(name, s.steps) for name in samplers},
                  model=model or run.get("base_model"), lora=lora)
    result = {"images": paths, "settings": record, "seconds": round(time.time() - start, 3), "using": using}
    if evaluate:
        result["domain"] = domain
        result["metrics"] = metrics if s.compare else metrics[samplers[0]]
    return result


def _quiet_loading() -> None:
    """No tqdm bars from diffusers / transformers while loading (the CLI shows its own progress)."""
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()  # LoRA key checks are d2f's own (pipeline._load_lora)
    transformers.utils.logging.disable_progress_bar()


def _builtin_base(model: str | None) -> bool:
    from d2f.models import BUILTIN_DESCRIPTIONS

    return model in BUILTIN_DESCRIPTIONS


def _check_world_prompts(prompts: list[str]) -> None:
    from d2f.world.shapes import parse_prompt

    bad = [p for p in prompts if parse_prompt(p) is None]
    if bad:
        raise UserError(f"--evaluate needs prompts of the built-in world like 'a red circle'; {bad[0]!r} is not one "
                        "(drop --prompt to use the world's prompts)")
