"""``d2f sample``: pick the model, the prompts and the samplers, generate, save, evaluate.

    result = sample_images(SampleSettings(prompts=["a red circle"], steps=25), output="grid.png")
    result["images"], result["metrics"]

Defaults: with neither a model nor a LoRA, the latest run under ``runs/`` if there is one, else the
built-in ``tiny-shapes-eps``. With no prompts, a built-in base model uses the world's 24 captions; any
other model needs prompts. A run is sampled the way it records (``d2f_run.json``: its objective, and its
``sampler``, ``guidance`` and ``sample_steps`` as the defaults); options given explicitly win. A model
without a run is an untouched diffusion model (``d2f.pipeline.pipe_parametrization``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import typer

from d2f.cli.app import app, console, err_console, friendly, print_json, quiet_third_party
from d2f.errors import UserError
from d2f.files import check_image_path, check_writable_dir
from d2f.sampling import get_sampler, network_calls

COMPARE_SAMPLERS = ("euler", "heun", "ddim")
DEFAULT_GRID = Path("samples/grid.png")
FALLBACK = {"sampler": "euler", "guidance": 7.5, "steps": 25}  # for a model without a run


@dataclass
class SampleSettings:
    """``None`` means: the run's recorded value, else ``FALLBACK``."""

    model: str | None = None
    lora: str | None = None
    prompts: list[str] = field(default_factory=list)
    num_images: int | None = None
    steps: int | None = None
    sampler: str | None = None
    guidance: float | None = None
    seed: int = 0
    height: int | None = None
    width: int | None = None
    shift: float = 1.0
    compare: bool = False
    batch_size: int = 64


def read_prompts_file(path: str | Path) -> list[str]:
    """One prompt per non-empty line."""
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --prompts-file {path} ({type(exc).__name__})") from None
    prompts = [line.strip() for line in lines if line.strip()]
    if not prompts:
        raise UserError(f"--prompts-file {path} has no prompts (one per line)")
    return prompts


def choose_source(model: str | None, lora: str | None, runs_dir: str | Path) -> tuple[str | None, str | None, str]:
    """(model, lora, a sentence saying what is used) with the defaults of ``d2f sample``."""
    from d2f.pipeline import DEFAULT_MODEL
    from d2f.pipeline.run_folder import latest_run

    if model is None and lora is None:
        run = latest_run(runs_dir)
        if run is not None:
            return None, str(run), f"the latest run {run} (no --model or --lora given)"
        return DEFAULT_MODEL, None, f"the built-in {DEFAULT_MODEL} (no --model, --lora or run under {runs_dir}/)"
    what = " + ".join(x for x in (model and f"model {model}", lora and f"LoRA {lora}") if x)
    return model, lora, what


def run_defaults(run: dict | None) -> dict:
    """How a run is meant to be sampled: its recorded sampler, guidance and steps (older records keep the
    last two in ``settings``), else ``FALLBACK``."""
    run = run or {}
    settings = run.get("settings") or {}
    return {
        "sampler": run.get("sampler") or FALLBACK["sampler"],
        "guidance": run.get("guidance", settings.get("guidance", FALLBACK["guidance"])),
        "steps": run.get("sample_steps", settings.get("sample_steps", FALLBACK["steps"])),
    }


def sample_images(
    settings: SampleSettings,
    output: str | Path | None = None,
    output_dir: str | Path | None = None,
    evaluate: bool = False,
    domain: str | None = None,
    runs_dir: str | Path = "runs",
    progress: bool = True,
    log=None,
) -> dict:
    """Generate, save and (optionally) evaluate; returns the ``--json`` object: ``images`` (paths),
    ``settings``, ``seconds``, ``using`` and, with ``evaluate``, ``metrics`` (one dict per sampler with
    ``--compare``)."""
    from d2f.pipeline import generate, load_pipeline, pipe_parametrization, save_grid, save_images
    from d2f.pipeline.generate import check_settings, latent_size

    start = time.time()
    s = settings
    for name, value in (("--steps", s.steps), ("--num-images", s.num_images)):
        if value is not None and value < 1:
            raise UserError(f"{name} must be at least 1, got {value}")
    if s.guidance is not None and s.guidance < 0:
        raise UserError(f"--guidance must be 0 or more (1 = no guidance), got {s.guidance}")
    if s.sampler is not None:
        get_sampler(s.sampler)
    if output is None and output_dir is None:
        output = DEFAULT_GRID
    if output is not None:
        check_image_path(Path(output), "--output")
    if output_dir is not None:
        check_writable_dir(Path(output_dir), "--output-dir")
    quiet_third_party()
    model, lora, using = choose_source(s.model, s.lora, runs_dir)
    pipe = load_pipeline(model, lora)
    run = pipe.d2f_run or {}
    flow = pipe_parametrization(pipe)
    defaults = run_defaults(pipe.d2f_run)
    steps = s.steps if s.steps is not None else defaults["steps"]
    guidance = s.guidance if s.guidance is not None else defaults["guidance"]
    samplers = list(COMPARE_SAMPLERS) if s.compare else [s.sampler or defaults["sampler"]]
    prompts = list(s.prompts)
    builtin = _builtin_base(model or run.get("base_model"))
    if not prompts and builtin:
        from d2f.world.shapes import all_prompts

        prompts = all_prompts()
    n = s.num_images or len(prompts)
    prompts = [prompts[k % len(prompts)] for k in range(n)] if prompts else []
    for name in samplers:
        check_settings(prompts, name, steps, guidance)
    height, width, _ = latent_size(pipe, s.height, s.width)
    if evaluate:
        data = run.get("data")
        domain = domain or ((data.get("domain") if isinstance(data, dict) else None) or "base")
        if domain not in ("base", "target"):
            raise UserError(f"--domain {domain!r} is not a domain of the built-in world; use base or target")
        _check_world_prompts(prompts)
    if log:
        log(
            f"using {using}; objective {flow.name}, prediction type {flow.prediction_type}; "
            f"{'/'.join(samplers)}, {steps} steps, guidance {guidance:g}"
        )

    rows, paths, metrics = [], [], {}
    for name in samplers:
        images = generate(
            pipe,
            prompts,
            sampler=name,
            steps=steps,
            guidance=guidance,
            seed=s.seed,
            height=height,
            width=width,
            shift=s.shift,
            batch_size=s.batch_size,
            progress=progress,
        )
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
    record = dict(
        asdict(s),
        prompts=prompts,
        num_images=n,
        height=height,
        width=width,
        objective=flow.name,
        steps=steps,
        guidance=guidance,
        samplers=samplers,
        network_calls={name: network_calls(name, steps) for name in samplers},
        model=model or run.get("base_model"),
        lora=lora,
    )
    result = {"images": paths, "settings": record, "seconds": round(time.time() - start, 3), "using": using}
    if evaluate:
        result["domain"] = domain
        result["metrics"] = metrics if s.compare else metrics[samplers[0]]
    return result


def _builtin_base(model: str | None) -> bool:
    from d2f.pipeline.models import BUILTIN_DESCRIPTIONS

    return model in BUILTIN_DESCRIPTIONS


def _check_world_prompts(prompts: list[str]) -> None:
    from d2f.world.shapes import parse_prompt

    bad = [p for p in prompts if parse_prompt(p) is None]
    if bad:
        raise UserError(
            f"--evaluate needs prompts of the built-in world like 'a red circle'; {bad[0]!r} is not one "
            "(drop --prompt to use the world's prompts)"
        )


@app.command("sample")
@friendly
def sample(
    model: str | None = typer.Option(
        None,
        help="Built-in model name, diffusers folder or hub id (default: the "
        "latest run's base model, else tiny-shapes-eps).",
    ),
    lora: str | None = typer.Option(None, help="A run folder of `d2f train` or a LoRA .safetensors file."),
    prompt: list[str] = typer.Option(
        [], "--prompt", help="A prompt. Repeatable. Default on built-in models: the world's 24 prompts."
    ),
    prompts_file: Path | None = typer.Option(None, help="A text file with one prompt per line."),
    num_images: int | None = typer.Option(None, help="How many images (prompts are cycled; default one per prompt)."),
    steps: int | None = typer.Option(
        None, help="Sampler steps (Heun uses 2*steps-1 network calls; default: the run's, else 25)."
    ),
    sampler: str | None = typer.Option(None, help="euler | heun | ddim (default: the run's, else euler)."),
    guidance: float | None = typer.Option(
        None, help="Classifier-free guidance scale, 1 = none (default: the run's, else 7.5)."
    ),
    seed: int = typer.Option(0, help="Image i uses noise from seed + i."),
    height: int | None = typer.Option(None, help="Image height in px (default: the model's)."),
    width: int | None = typer.Option(None, help="Image width in px (default: the model's)."),
    shift: float = typer.Option(1.0, help="Time shift of the FM grid (1 = uniform; >1 = more steps near noise)."),
    output: Path | None = typer.Option(
        None, help="Write one grid image here (default samples/grid.png unless --output-dir is given)."
    ),
    output_dir: Path | None = typer.Option(None, help="Also write every image as its own PNG here."),
    compare: bool = typer.Option(
        False, "--compare", help="One grid, a row per sampler (euler, heun, ddim), same seeds and prompts."
    ),
    evaluate: bool = typer.Option(False, "--evaluate", help="Score with the built-in world's evaluator."),
    domain: str | None = typer.Option(None, help="Domain for --evaluate: base or target (default: the run's data)."),
    runs_dir: Path = typer.Option(Path("runs"), help="Where to look for the latest run."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
):
    """Sample a model (optionally with a LoRA) with FM Euler, FM Heun or DDIM.

    Example: d2f sample --model tiny-shapes-eps --prompt "a red circle" --num-images 8 --compare
    """
    prompts = list(prompt) + (read_prompts_file(prompts_file) if prompts_file else [])
    settings = SampleSettings(
        model=model,
        lora=lora,
        prompts=prompts,
        num_images=num_images,
        steps=steps,
        sampler=sampler,
        guidance=guidance,
        seed=seed,
        height=height,
        width=width,
        shift=shift,
        compare=compare,
    )
    log = None if as_json else (lambda line: err_console.print(line, highlight=False))
    result = sample_images(
        settings,
        output=output,
        output_dir=output_dir,
        evaluate=evaluate,
        domain=domain,
        runs_dir=runs_dir,
        progress=not as_json,
        log=log,
    )
    if as_json:
        print_json(result)
        return
    where = result["images"][0] if output or not output_dir else f"{output_dir}/ ({len(result['images'])} images)"
    used = result["settings"]
    console.print(
        f"{len(used['prompts'])} images per sampler ({', '.join(used['samplers'])}, {used['steps']} steps) "
        f"in {result['seconds']:.1f} s -> {where}"
    )
    if evaluate:
        metrics = result["metrics"] if compare else {used["samplers"][0]: result["metrics"]}
        for name, m in metrics.items():
            console.print(
                f"{name}: prompt accuracy {m['prompt_accuracy']:.3f}, domain accuracy "
                f"({result['domain']}) {m['domain_accuracy']:.3f}, FD {m['fd']:.2f}"
            )
