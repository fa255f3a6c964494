"""Typer options made from the settings' one definition (``d2f.settings``): name, type, default, help, choices.

``parameters(TrainConfig)`` turns each declared field into a typer option: ``lora_rank`` becomes
``--lora-rank``, a bool becomes a flag (or the ``flag`` spelling its spec gives), a list a repeatable option,
and a field with ``choices`` an enum, so ``--help`` lists every accepted value and a typo is refused by name.
``command(function, params)`` gives ``function(**values)`` that signature, so a new setting is written once, in
its dataclass, and appears in every command that takes it.
"""

from __future__ import annotations

import enum
import inspect
import typing
from collections.abc import Callable, Iterable

import typer

from d2f.settings import declared, default_of, option_name, type_hints, unwrap_optional

MAX_METAVAR = 36  # characters of "a|b|c" shown as the option's value; longer lists go into the help


def choice_enum(name: str, values: Iterable[str]) -> type[enum.Enum]:
    """A str enum of ``values`` (typer shows them as ``[a|b|c]`` and refuses anything else)."""
    return enum.Enum("".join(part.title() for part in name.split("_")), {v: v for v in values}, type=str)


def parameters(
    cls, only: Iterable[str] | None = None, skip: Iterable[str] = (), overrides: dict | None = None
) -> list[inspect.Parameter]:
    """Typer options for the declared fields of the dataclass ``cls`` (those in ``only``, in ``only``'s order
    when given, less ``skip``). ``overrides[name]`` may replace a field's ``default`` and ``help`` (a command
    that means "its own default" by None, say)."""
    overrides = overrides or {}
    hints = type_hints(cls)
    by_name = {f.name: f for f in declared(cls) if f.metadata["d2f"].cli}
    names = list(only) if only is not None else list(by_name)
    result = []
    for name in names:
        if name in skip:
            continue
        f = by_name[name]
        spec = f.metadata["d2f"]
        default = overrides.get(name, {}).get("default", default_of(f))
        help = overrides.get(name, {}).get("help", spec.help)
        kind, optional = unwrap_optional(hints[name])
        decls = [spec.flag] if spec.flag else []
        allowed = spec.allowed()
        metavar = None
        if typing.get_origin(kind) is list:
            annotation, default = kind, list(default or [])
        elif allowed is not None:
            choices = choice_enum(name, allowed)
            annotation = choices | None if optional or default is None else choices
            default = None if default is None else choices(default)
            if len("|".join(allowed)) > MAX_METAVAR:  # a long list is cut in an 80-column help: say it in words
                metavar, help = "NAME", f"{help} One of: {', '.join(allowed)}."
        elif kind is bool:
            annotation = bool | None if optional else bool  # None: the flag not given (an "auto" setting)
            decls = decls or [option_name(name)]
        else:
            annotation = kind | None if optional or default is None else kind
        option = typer.Option(default, *decls, help=help, metavar=metavar)
        result.append(inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation))
    return result


def option(name: str, annotation, default, *decls: str, help: str) -> inspect.Parameter:
    """One hand-written option (one that is no setting: ``--json``, ``--config``, an output path)."""
    return inspect.Parameter(
        name, inspect.Parameter.KEYWORD_ONLY, default=typer.Option(default, *decls, help=help), annotation=annotation
    )


def command(function: Callable, params: list[inspect.Parameter], context: bool = False) -> Callable:
    """``function`` with the signature typer reads its options from (a ``typer.Context`` first if ``context``)."""
    head = [inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context)]
    function.__signature__ = inspect.Signature((head if context else []) + params)
    return function


def plain(values: dict) -> dict:
    """The values typer passed, as the settings hold them: enum members as their strings, empty lists as None."""
    out = {}
    for key, value in values.items():
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, list | tuple):
            value = list(value) or None
        out[key] = value
    return out
