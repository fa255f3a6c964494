"""``d2f sample``: the options and the printout; the work is ``d2f.cli.sample_images``."""

from __future__ import annotations

from pathlib import Path

from d2f.cli.app import app, console, err_console, friendly, print_json
from d2f.cli.options import command, option, parameters, plain
from d2f.cli.sample_images import SampleSettings, read_prompts_file, sample_images


def sample(
    prompts: list[str],
    prompts_file: Path | None,
    output: Path | None,
    output_dir: Path | None,
    evaluate: bool,
    domain: str | None,
    runs_dir: Path,
    as_json: bool,
    **options,
):
    """Sample a model (optionally with a LoRA) with FM Euler, FM Heun or DDIM.

    Example: d2f sample --model tiny-shapes-eps --prompt "a red circle" --num-images 8 --compare
    """
    prompts = list(prompts) + (read_prompts_file(prompts_file) if prompts_file else [])
    settings = SampleSettings(**plain(options), prompts=prompts)
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
        metrics = result["metrics"] if used["compare"] else {used["samplers"][0]: result["metrics"]}
        for name, m in metrics.items():
            console.print(
                f"{name}: prompt accuracy {m['prompt_accuracy']:.3f}, domain accuracy "
                f"({result['domain']}) {m['domain_accuracy']:.3f}, FD {m['fd']:.2f}"
            )


app.command("sample")(
    friendly(
        command(
            sample,
            [
                *parameters(SampleSettings, only=("model", "model_config", "allow_pickle", "lora", "prompts")),
                option("prompts_file", Path | None, None, help="A text file with one prompt per line."),
                *parameters(SampleSettings, skip=("model", "model_config", "allow_pickle", "lora", "prompts")),
                option(
                    "output",
                    Path | None,
                    None,
                    help="Write one grid image here (default samples/grid.png unless --output-dir is given).",
                ),
                option("output_dir", Path | None, None, help="Also write every image as its own PNG here."),
                option("evaluate", bool, False, "--evaluate", help="Score with the built-in world's evaluator."),
                option(
                    "domain", str | None, None, help="Domain for --evaluate: base or target (default: the run's data)."
                ),
                option("runs_dir", Path, Path("runs"), help="Where to look for the latest run."),
                option("as_json", bool, False, "--json", help="Print one JSON object on stdout."),
            ],
        )
    )
)
