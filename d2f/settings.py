"""Options declared once: each setting's default, help, type and allowed values, for the CLI and the checks.

A dataclass field made with ``setting(...)`` carries its help text and its bounds in ``field.metadata``.
``check_settings(obj)`` checks every field of ``obj`` against its declared type and bounds (a value read from
a config file is checked like one typed on the command line) and raises one ``UserError`` that names the
option; ``d2f.cli.options`` builds the typer options, their help and their choices from the same fields. So a
new option is written once, and every number is checked in one place: finite, in range, of the right type.

    @dataclass
    class Settings:
        steps: int = setting(1000, "Optimizer steps.", low=1)
        guidance: float = setting(2.0, "Guidance scale.", low=0, high=MAX_GUIDANCE)
        sampler: str = setting("euler", "The sampler.", choices=("euler", "heun", "ddim"))

Sizes get one more check, ``check_fits``: a rough lower bound of the memory one batch needs, against the
machine's memory, before any model is loaded (a 100,000 px image is refused, not killed by the kernel).
"""

from __future__ import annotations

import math
import os
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields

from d2f.errors import UserError

MAX_SEED = 2**32 - 1  # numpy's (and so accelerate's set_seed) limit; seed + i must stay a valid seed
# Above this guidance the guided output o_u + w (o_c - o_u) only grows towards overflow (diffusers' and
# A1111's sliders stop at 20-30); refusing it says so instead of blaming the model's weights for inf latents.
MAX_GUIDANCE = 100.0
MAX_COUNT = 10**9  # steps, images, pairs: a larger count is a typo, not a plan
MAX_SIDE = 2**16  # px; far larger than any model's, small enough that H * W * C stays an exact float


@dataclass(frozen=True)
class Spec:
    """What a setting accepts. ``low``/``high``: inclusive bounds (``above``, ``below``: exclusive ones);
    ``choices``: the allowed strings, or a function returning them (a registry, read when asked);
    ``flag``: the CLI's spelling of a bool
    (``"--cache/--no-cache"``); ``cli``: False for settings that are not options."""

    help: str
    low: float | None = None
    high: float | None = None
    above: float | None = None
    below: float | None = None
    choices: Sequence[str] | Callable[[], Sequence[str]] | None = None
    flag: str | None = None
    cli: bool = True

    def allowed(self) -> tuple[str, ...] | None:
        return None if self.choices is None else tuple(self.choices() if callable(self.choices) else self.choices)


def setting(default, help: str, **spec):
    """A dataclass field with its ``Spec`` (see the module docstring); list defaults are copied per instance."""
    meta = {"d2f": Spec(help=help, **spec)}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def spec_of(cls, name: str) -> Spec:
    return next(f.metadata["d2f"] for f in fields(cls) if f.name == name)


def option_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def unwrap_optional(hint) -> tuple[object, bool]:
    """(the type inside ``X | None``, whether None is allowed)."""
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and type(None) in args:
        inner = [a for a in args if a is not type(None)]
        return (inner[0] if len(inner) == 1 else hint), True
    return hint, False


def type_hints(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def check_value(name: str, value, hint, spec: Spec) -> None:
    """``UserError`` unless ``value`` has the type ``hint`` and lies within ``spec``."""
    kind, optional = unwrap_optional(hint)
    option = option_name(name)
    if value is None:
        if optional:
            return
        raise UserError(f"{option} needs a value")
    if typing.get_origin(kind) is list:
        (item,) = typing.get_args(kind)
        if not isinstance(value, list | tuple):
            raise UserError(f"{option} must be a list, got {value!r}")
        for v in value:
            check_value(name, v, item, spec)
        return
    if kind is bool:
        if not isinstance(value, bool):
            raise UserError(f"{option} must be true or false, got {value!r}")
        return
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{option} must be a whole number, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise UserError(f"{option} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{option} must be a finite number, got {value}")
    elif kind is str:
        if not isinstance(value, str):
            raise UserError(f"{option} must be text, got {value!r}")
        allowed = spec.allowed()
        if allowed is not None and value not in allowed:
            raise UserError(f"unknown {option} {value!r}; use one of {', '.join(allowed)}")
        return
    else:
        return  # paths and other types are checked where they are used
    _check_range(option, value, spec)


def _number(x) -> str:
    return str(x) if isinstance(x, int) or float(x).is_integer() and abs(x) < 1e15 else f"{x:g}"


def _check_range(option: str, value, spec: Spec) -> None:
    if spec.above is not None and not value > spec.above:
        raise UserError(f"{option} must be greater than {_number(spec.above)}, got {value}")
    if spec.low is not None and not value >= spec.low:
        raise UserError(f"{option} must be at least {_number(spec.low)}, got {value}")
    if spec.high is not None and not value <= spec.high:
        raise UserError(f"{option} must be at most {_number(spec.high)}, got {value}")
    if spec.below is not None and not value < spec.below:
        raise UserError(f"{option} must be less than {_number(spec.below)}, got {value}")


def check_settings(obj, names: Sequence[str] | None = None) -> None:
    """Check every declared field of the dataclass ``obj`` (or only ``names``): type, finiteness, range, choices."""
    hints = type_hints(type(obj))
    for f in fields(obj):
        if "d2f" in f.metadata and (names is None or f.name in names):
            check_value(f.name, getattr(obj, f.name), hints[f.name], f.metadata["d2f"])


def declared(cls) -> list:
    """The fields of ``cls`` made with ``setting``, in order."""
    return [f for f in fields(cls) if "d2f" in f.metadata]


def default_of(f):
    return f.default_factory() if f.default is MISSING else f.default


# --- memory -----------------------------------------------------------------------------------------------

# A lower bound of the bytes one image of H x W px costs while it is encoded or decoded: float32 RGB in, and
# the first and last convolution of any SD-style VAE (at least 32 channels at full resolution; SD's have 128).
BYTES_PER_PIXEL = 4 * (3 + 32)


def machine_memory() -> int:
    """Bytes of memory the work can use: the first CUDA GPU's where torch sees one, else the machine's RAM."""
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_properties(0).total_memory
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(batch: int, height: int, width: int, fix: str) -> None:
    """``UserError`` when one batch of ``batch`` images of ``height`` x ``width`` px cannot fit in memory by the
    lower bound ``BYTES_PER_PIXEL`` (so a refusal is certain; a pass is no promise). ``fix`` names the options."""
    need = batch * height * width * BYTES_PER_PIXEL
    have = machine_memory()
    if need > have:
        raise UserError(
            f"{batch} image(s) of {width}x{height} px need at least {need / 2**30:.1f} GiB, more than this machine's "
            f"{have / 2**30:.1f} GiB: lower {fix}"
        )
