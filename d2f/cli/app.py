"""The typer app shared by the command modules, and how every command reports bad input.

Every command turns a ``UserError`` into one line on stderr and exit code 2 (no traceback); so do click's own
errors for options it cannot parse (``OneLineErrors``).
"""

from __future__ import annotations

import functools
import json
import logging
import sys

import typer
from rich.console import Console
from typer.core import TyperGroup

from d2f.errors import UserError

# click's base error, as the typer installed raises it (recent typer vendors its own click)
ClickException = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "ClickException")

console = Console()
err_console = Console(stderr=True)


class OneLineErrors(TyperGroup):
    """click's own errors (an unknown option, a value that is not a number or not one of the choices) as one
    line naming the option and the fix, exit code 2, like d2f's ``UserError``: not click's usage box."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            code = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except ClickException as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # a bare `d2f`: the help, as click shows it
                exc.show()
                sys.exit(exc.exit_code)
            ctx = getattr(exc, "ctx", None)
            hint = f" (see {ctx.command_path} --help)" if ctx is not None else ""
            message = exc.format_message().replace("Value error, ", "")  # typer's parser names pydantic's kind
            err_console.print(f"[bold red]error:[/] {message}{hint}", highlight=False, soft_wrap=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            err_console.print("aborted", highlight=False)
            sys.exit(1)
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="d2f",
    cls=OneLineErrors,
    help="Turn a pretrained diffusion model into a flow-matching model (Diff2Flow) and finetune it.\n\n"
    "Conventions: FM time t = 0 is noise, t = 1 is data; diffusion time tau runs 0..N-1 (data to noise).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # --validation_prompt as diffusers' training scripts spell it is --validation-prompt
    context_settings={"token_normalize_func": lambda token: token.replace("_", "-")},
)


class _NoTorchvisionNotice(logging.Filter):
    """transformers announces at import that its image processors fall back to PIL without torchvision. d2f
    never uses them (and must not depend on torchvision), so a user could do nothing about the notice."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "requires torchvision" not in record.getMessage()


def _silence_import_notices() -> None:
    from transformers.utils import logging as transformers_logging

    transformers_logging.get_logger()  # configures transformers' handler, which the notice goes through
    for handler in logging.getLogger("transformers").handlers:
        handler.addFilter(_NoTorchvisionNotice())


_silence_import_notices()


def friendly(command):
    """Bad input -> one line on stderr, exit code 2."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except UserError as exc:
            err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


def print_json(obj) -> None:
    sys.stdout.write(json.dumps(obj, indent=2) + "\n")


def quiet_third_party() -> None:
    """No tqdm bars or info logs from diffusers, transformers and datasets: d2f shows its own progress, and
    checks LoRA keys itself (``d2f.pipeline.loading``) instead of relying on diffusers' warnings."""
    import datasets
    import diffusers
    import transformers

    diffusers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()


def require_extra(extra: str, *modules: str) -> None:
    """``UserError`` naming the pip extra to install when one of ``modules`` is missing."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"this needs {', '.join(missing)}, which is not installed: pip install 'd2f[{extra}]'")
