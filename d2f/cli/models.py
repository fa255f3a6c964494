"""``d2f models``: the built-in models and where they lie.

The name is what a user copies from the listing, so it is never cut or wrapped: the table gives it its full
width and lets the path and the description fold. A terminal too narrow for a table (under ``TABLE_MIN_WIDTH``
columns) gets one block per model instead.
"""

from __future__ import annotations

import typer
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from d2f.cli.app import app, console, friendly, print_json

TABLE_MIN_WIDTH = 80


@app.command("models")
@friendly
def models(as_json: bool = typer.Option(False, "--json", help="Print a JSON list.")):
    """List the built-in models and where they lie."""
    from d2f.pipeline.models import builtin_models

    rows = builtin_models()
    if as_json:
        print_json(rows)
        return
    if console.width < TABLE_MIN_WIDTH:
        for row in rows:
            console.print(row["name"], style="bold", no_wrap=True, overflow="ignore", crop=False, highlight=False)
            details = f"{row['prediction_type']}, {row['resolution']} px\n{row['path']}\n{row['description']}"
            console.print(Padding(Text(details, overflow="fold"), (0, 0, 0, 2), expand=False), highlight=False)
        return
    table = Table(title="built-in models")
    table.add_column("name", no_wrap=True, min_width=max(len(row["name"]) for row in rows) if rows else None)
    table.add_column("prediction", no_wrap=True)
    table.add_column("px", no_wrap=True)
    table.add_column("path", overflow="fold", ratio=1)
    table.add_column("description", overflow="fold", ratio=1)
    for row in rows:
        table.add_row(row["name"], row["prediction_type"], str(row["resolution"]), row["path"], row["description"])
    console.print(table)
