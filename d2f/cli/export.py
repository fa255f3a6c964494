"""``d2f export``: a run's LoRA in another tool's format (``d2f.pipeline.export``)."""

from __future__ import annotations

from pathlib import Path

import typer

from d2f.cli.app import app, console, friendly, print_json


@app.command("export")
@friendly
def export(
    lora: str = typer.Argument(..., help="A run folder of `d2f train` or a LoRA .safetensors file."),
    fmt: str = typer.Option("kohya", "--format", help="kohya: the kohya / AUTOMATIC1111 / ComfyUI key format."),
    output: Path | None = typer.Option(None, help="File to write (default: beside the LoRA, *_kohya.safetensors)."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace --output if it exists (never the run's own files)."
    ),
    model: str | None = typer.Option(
        None, help="The LoRA's base model, to check its layers against (default: the run's; a bare file: none)."
    ),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object on stdout."),
):
    """Export a LoRA for other tools (the diffusers format d2f writes stays the default).

    Example: d2f export runs/my-run --format kohya
    """
    from d2f.pipeline.export import export_lora

    path = export_lora(lora, output, fmt, overwrite=overwrite, model=model)
    if as_json:
        print_json({"output": str(path), "format": fmt})
        return
    console.print(f"{fmt} LoRA written to {path}")
