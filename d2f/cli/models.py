"""``d2f models``: the built-in models and where they lie."""

from __future__ import annotations

import typer
from rich.table import Table

from d2f.cli.app import app, console, friendly, print_json


@app.command("models")
@friendly
def models(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")):
    """List the built-in models and where they lie."""
    from d2f.pipeline.models import builtin_models

    rows = builtin_models()
    if as_json:
        print_json(rows)
        return
    table = Table(title="built-in models")
    for column in ("name", "prediction_type", "resolution", "path", "description"):
        table.add_column(column)
    for row in rows:
        table.add_row(row["name"], row["prediction_type"], str(row["resolution"]), row["path"], row["description"])
    console.print(table)
