"""``d2f inspect-schedule``: a table of a schedule and the time map, and a plot (``d2f.schedule_report``)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from d2f.cli.app import app, console, friendly, print_json, require_extra
from d2f.core.schedule import Schedule
from d2f.errors import UserError
from d2f.files import check_writable_dir
from d2f.schedule_report import plot_schedule, schedule_report
from d2f.settings import Spec, check_value

MAX_ROWS = 10_000  # a table longer than a schedule's 1000 steps shows nothing more


@app.command("inspect-schedule")
@friendly
def inspect_schedule(
    preset: str | None = typer.Option(None, help="A public SD schedule: sd15, sd2-base or sd2-v (default sd15)."),
    model: str | None = typer.Option(
        None, help="A built-in model name, diffusers model folder or hub id: read its scheduler/scheduler_config.json."
    ),
    zero_terminal_snr: bool = typer.Option(False, "--zero-terminal-snr", help="Rescale to zero terminal SNR."),
    rows: int = typer.Option(11, help=f"Number of evenly spaced taus in the table (at most {MAX_ROWS})."),
    tau: list[float] = typer.Option([], "--tau", help="Add a row at this (fractional) tau. Repeatable."),
    t: list[float] = typer.Option([], "--t", help="Add a row at this FM time t, with the tau it maps to. Repeatable."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    plot: Path | None = typer.Option(None, help="Write a figure of the schedules and the time map to this PNG."),
):
    """Show a diffusion schedule, its alpha/sigma, and the map to flow-matching time.

    Example: d2f inspect-schedule --preset sd15 --t 0 --t 0.5 --tau 354.5 --plot schedule.png
    """
    if preset and model:
        raise UserError("give either --preset or --model, not both")
    check_value("rows", rows, int, Spec("", low=0, high=MAX_ROWS))
    if plot is not None:  # checked before any work: an extension-less name gets .png, as matplotlib would save it
        require_extra("plot", "matplotlib")
        if plot.is_dir():
            raise UserError(f"--plot {plot} is a directory; give a file name such as {plot / 'schedule.png'}")
        plot = plot if plot.suffix else plot.with_suffix(".png")
        check_writable_dir(plot.parent, "--plot")
    if model:
        from d2f.pipeline.models import hub_file, resolve_model

        ref = resolve_model(model)
        config_path = hub_file(ref, "scheduler/scheduler_config.json")
        schedule = Schedule.from_pretrained(config_path, zero_terminal_snr=zero_terminal_snr or None)
        source = ref.name
    else:
        schedule = Schedule.preset(preset or "sd15", zero_terminal_snr=zero_terminal_snr)
        source = preset or "sd15"
    report = schedule_report(schedule, rows, tau, t)
    if plot:
        plot = plot_schedule(schedule, plot, title=f"{source}: {schedule!r}")
    if as_json:
        print_json(report)
        return
    table = Table(
        title=f"{source}: prediction_type={report['prediction_type']}, N={report['num_train_timesteps']}, "
        f"covered t in [{report['t_min']:.4f}, {report['t_max']:.4f}], "
        f"max scale {report['scale_max']:.5f} at tau {report['scale_max_tau']:.2f}"
    )
    for column in ("tau", "t", "alpha", "sigma", "scale c", "log-SNR", "clamped"):
        table.add_column(column, justify="right")
    for row in report["rows"]:
        table.add_row(
            f"{row['tau']:.3f}",
            f"{row['t']:.5f}",
            f"{row['alpha']:.5f}",
            f"{row['sigma']:.5f}",
            f"{row['scale']:.5f}",
            f"{row['log_snr']:.4f}",
            "yes" if row["clamped"] else "",
        )
    console.print(table)
    if plot:
        console.print(f"plot written to {plot}")
