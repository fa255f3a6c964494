"""The versions of Python and of the packages that shaped a result, for run and build records."""

from __future__ import annotations

import platform
from importlib import metadata


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    """{"python": ..., package: version or "not installed"} for each of ``packages``."""
    out = {"python": platform.python_version()}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out
