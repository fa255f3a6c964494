"""``python -m d2f`` is the ``d2f`` command."""

from d2f.cli import app

app(prog_name="d2f")
