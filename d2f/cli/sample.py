"""``d2f sample``: the options and the printout; the work is ``d2f.cli.sample_images``."""

from __future__ import annotations

from pathlib import Path

import typer

from d2f.cli.app import app, console, err_console, friendly, print_json
from d2f.cli.sample_images import SampleSettings, read_prompts_file, sample_images


@app.command("sample")
@friendly
def sample(
    model: str | None = typer.Option(
        None,
        help="Built-in model name, diffusers folder, single-file checkpoint (.safetensors) or hub id (default: "
        "the latest run's base model, else tiny-shapes-eps).",
    ),
    model_config: str | None = typer.Option(
        None,
        help="For a single-file --model: a diffusers folder (or hub id) of the same architecture whose component "
        "configs to use (default: the run's, else inferred by diffusers, which needs the hub).",
    ),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Load a pickled .ckpt model (unpickling can run code in the file)."
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
    variant: str | None = typer.Option(None, help="Weights variant of the model folder or hub id, e.g. fp16."),
    revision: str | None = typer.Option(None, help="Hub revision (branch, tag or commit) of the model."),
    device: str | None = typer.Option(None, help="cpu, cuda or cuda:N (default: cuda where torch sees a GPU)."),
    dtype: str = typer.Option("float32", help="Weights' precision: float32, float16 (GPU) or bfloat16."),
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
        variant=variant,
        revision=revision,
        model_config=model_config,
        allow_pickle=allow_pickle,
        device=device,
        dtype=dtype,
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
