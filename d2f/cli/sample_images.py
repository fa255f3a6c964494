"""What ``d2f sample`` does: pick the model, the prompts and the samplers, generate, save, evaluate.

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
from dataclasses import asdict, dataclass
from pathlib import Path

from d2f.cli.app import quiet_third_party
from d2f.errors import UserError
from d2f.files import check_image_path, check_writable_dir
from d2f.sampling import SAMPLERS, network_calls
from d2f.settings import MAX_GUIDANCE, MAX_SEED, MAX_SIDE, check_fits, check_settings, setting

COMPARE_SAMPLERS = ("euler", "heun", "ddim")
DEFAULT_GRID = Path("samples/grid.png")
FALLBACK = {"sampler": "euler", "guidance": 7.5, "steps": 25}  # for a model without a run
DTYPES = ("float32", "float16", "bfloat16")
MAX_IMAGES = 10**6
MAX_SAMPLE_STEPS = 10_000


@dataclass
class SampleSettings:
    """What to sample and how, declared once (``d2f.settings``; ``d2f sample``'s options are made from it).
    ``None`` means: the run's recorded value, else ``FALLBACK``."""

    model: str | None = setting(
        None,
        "Built-in model name, diffusers folder, single-file checkpoint (.safetensors) or hub id (default: "
        "the latest run's base model, else tiny-shapes-eps).",
    )
    model_config: str | None = setting(
        None,
        "For a single-file --model: a diffusers folder (or hub id) of the same architecture whose component "
        "configs to use (default: the run's, else inferred by diffusers, which needs the hub).",
    )
    allow_pickle: bool = setting(False, "Load a pickled .ckpt model (unpickling can run code in the file).")
    lora: str | None = setting(None, "A run folder of `d2f train` or a LoRA .safetensors file.")
    prompts: list[str] = setting(
        [], "A prompt. Repeatable. Default on built-in models: the world's 24 prompts.", flag="--prompt"
    )
    num_images: int | None = setting(
        None, "How many images (prompts are cycled; default one per prompt).", low=1, high=MAX_IMAGES
    )
    steps: int | None = setting(
        None,
        "Sampler steps (Heun uses 2*steps-1 network calls; default: the run's, else 25).",
        low=1,
        high=MAX_SAMPLE_STEPS,
    )
    sampler: str | None = setting(None, "The sampler (default: the run's, else euler).", choices=SAMPLERS)
    guidance: float | None = setting(
        None, "Classifier-free guidance scale, 1 = none (default: the run's, else 7.5).", low=0, high=MAX_GUIDANCE
    )
    seed: int = setting(0, "Image i uses noise from seed + i.", low=0, high=MAX_SEED - MAX_IMAGES)
    height: int | None = setting(None, "Image height in px (default: the model's).", low=8, high=MAX_SIDE)
    width: int | None = setting(None, "Image width in px (default: the model's).", low=8, high=MAX_SIDE)
    shift: float = setting(
        1.0, "Time shift of the FM grid (1 = uniform; >1 = more steps near noise).", above=0, high=1000
    )
    compare: bool = setting(False, "One grid, a row per sampler (euler, heun, ddim), same seeds and prompts.")
    batch_size: int = setting(64, "Images per network call.", low=1, high=2**16, cli=False)
    variant: str | None = setting(None, "Weights variant of the model folder or hub id, e.g. fp16.")
    revision: str | None = setting(None, "Hub revision (branch, tag or commit) of the model.")
    device: str | None = setting(None, "cpu, cuda or cuda:N (default: cuda where torch sees a GPU).")
    # the weights' precision; the noise and the ODE state stay float32
    dtype: str = setting("float32", "Weights' precision: float16 needs a GPU.", choices=DTYPES)


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


def resolve_device(device: str | None, dtype: str) -> tuple[str, object]:
    """(device, torch dtype) to sample on, checked: by default the first CUDA GPU where torch sees one."""
    import torch

    if dtype not in DTYPES:
        raise UserError(f"unknown --dtype {dtype!r}; use one of {', '.join(DTYPES)}")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    kind, _, index = device.partition(":")
    if kind not in ("cpu", "cuda") or (index and (kind == "cpu" or not index.isdigit())):
        raise UserError(f"--device {device!r}: use cpu, cuda or cuda:N")
    if kind == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {device}: torch sees no CUDA GPU here; use --device cpu")
    if kind == "cuda" and index and int(index) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: torch sees {torch.cuda.device_count()} GPU(s) (cuda:0 ...)")
    if kind == "cpu" and dtype == "float16":
        raise UserError("--dtype float16 needs a CUDA GPU; on a CPU use bfloat16 or float32")
    return device, getattr(torch, dtype)


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
    from d2f.pipeline.generate import check_settings as check_generate
    from d2f.pipeline.generate import latent_size

    start = time.time()
    s = settings
    check_settings(s)
    check_fits(min(s.batch_size, s.num_images or s.batch_size), s.height or 8, s.width or 8, "--height/--width")
    if output is None and output_dir is None:
        output = DEFAULT_GRID
    if output is not None:
        check_image_path(Path(output), "--output")
    if output_dir is not None:
        check_writable_dir(Path(output_dir), "--output-dir")
    device, dtype = resolve_device(s.device, s.dtype)
    quiet_third_party()
    model, lora, using = choose_source(s.model, s.lora, runs_dir)
    pipe = load_pipeline(
        model,
        lora,
        device=device,
        dtype=dtype,
        variant=s.variant,
        revision=s.revision,
        model_config=s.model_config,
        allow_pickle=s.allow_pickle,
    )
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
        check_generate(prompts, name, steps, guidance)
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
            f"{'/'.join(samplers)}, {steps} steps, guidance {guidance:g}; {device}, {s.dtype}"
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
        device=device,
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
