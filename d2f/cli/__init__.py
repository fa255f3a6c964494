"""The ``d2f`` command line: thin command modules that parse options and call the library.

``app`` (``d2f.cli.app``) is the console script; each command lives in the module named after it:
``export``, ``inspect_schedule``, ``models``, ``reflow``, ``sample`` (its work in ``sample_images``), ``train``.
"""

from d2f.cli import export, inspect_schedule, models, reflow, sample, train  # noqa: F401  (registers the commands)
from d2f.cli.app import app

__all__ = ["app"]
