"""Every numeric option of every command, drawn at random (negative, zero, nan, inf, huge, ordinary): the
command either refuses it with one line naming the option and exit code 2, before anything is loaded, or
takes it; never a traceback. The settings' declarations (``d2f.settings``) are the one place these bounds
live, and the typer options are made from them: both are checked here.
"""

from __future__ import annotations

import math
from dataclasses import fields

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from d2f.cli import app
from d2f.cli.sample_images import SampleSettings
from d2f.errors import UserError
from d2f.reflow.run import ReflowConfig
from d2f.settings import check_settings, declared, option_name, spec_of, type_hints
from d2f.training.config import TrainConfig, check_config

COMMANDS = {"train": TrainConfig, "sample": SampleSettings, "reflow": ReflowConfig}


def numeric_options(cls) -> list[tuple[str, object]]:
    hints = type_hints(cls)
    out = []
    for f in declared(cls):
        kind = hints[f.name]
        if f.metadata["d2f"].cli and any(k in str(kind) for k in ("int", "float")) and "list" not in str(kind):
            out.append((f.name, "float" if "float" in str(kind) else "int"))
    return out


OPTIONS = [(command, name, kind) for command, cls in COMMANDS.items() for name, kind in numeric_options(cls)]
# reflow takes these of d2f train's too (d2f.cli.reflow.TRAIN_OPTIONS)
OPTIONS += [("reflow", n, k) for n, k in numeric_options(TrainConfig) if n in ("steps", "lr", "batch_size")]

VALUES = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "-1", "0", "1e30", "-1e-9", "99999999999999999999999", "1.5", "abc"]),
    st.integers(min_value=-(2**70), max_value=2**70).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
)


def expected_error(command: str, name: str, kind: str, text: str) -> bool:
    """Whether the declared settings refuse ``text`` for ``--name``, read as typer reads it (pydantic's lax
    parsing: "-0.0" is the int 0)."""
    from pydantic import TypeAdapter, ValidationError

    try:
        value = TypeAdapter(int if kind == "int" else float).validate_python(text)
    except ValidationError:
        return True  # not a number of that kind: typer's parser refuses it
    cls = COMMANDS[command] if name in {f.name for f in fields(COMMANDS[command])} else TrainConfig
    try:
        obj = cls(**{name: value})
        check_config(obj) if cls is TrainConfig else check_settings(obj)
    except UserError:
        return True
    return False


@pytest.mark.parametrize(("command", "name", "kind"), OPTIONS, ids=[f"{c}-{n}" for c, n, _ in OPTIONS])
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=VALUES)
def test_a_number_is_refused_in_one_line_or_taken(command, name, kind, text, tmp_path):
    if not expected_error(command, name, kind, text):
        return  # an accepted value would start a real run; the happy paths run those (test_happy_paths.py)
    args = [
        command,
        option_name(name),
        text,
        "--output",
        str(tmp_path / "out.png" if command == "sample" else tmp_path),
    ]
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, (args, result.output, result.exception)
    assert len(lines) == 1 and lines[0].startswith("error:") and option_name(name) in lines[0], (args, lines)


@pytest.mark.parametrize(("command", "name", "kind"), OPTIONS, ids=[f"{c}-{n}" for c, n, _ in OPTIONS])
def test_declared_bounds_are_finite_and_refuse_nan(command, name, kind):
    cls = COMMANDS[command] if name in {f.name for f in fields(COMMANDS[command])} else TrainConfig
    spec = spec_of(cls, name)
    assert any(b is not None for b in (spec.low, spec.above)), f"{name}: a number needs a lower bound"
    if kind == "float":
        with pytest.raises(UserError, match="finite"):
            check_settings(cls(**{name: math.nan}), names=[name])


# The cases of the hardening issue, each tried once by a user: one line naming the problem, exit 2.
CASES = [
    (["train", "--resolution", "0"], "--resolution must be at least 1"),
    (["train", "--resolution", "100000"], "--resolution must be at most 65536"),
    (["train", "--resolution", "40000"], "more than this machine's"),
    (["train", "--weight-decay", "nan"], "--weight-decay must be a finite number"),
    (["train", "--max-grad-norm", "nan"], "--max-grad-norm must be a finite number"),
    (["train", "--max-grad-norm", "-1"], "--max-grad-norm must be at least 0"),
    (["train", "--lora-alpha", "nan"], "--lora-alpha must be a finite number"),
    (["train", "--t-sampling", "bogus"], "'bogus' is not one of 'uniform', 'logit-normal', 'near-noise'"),
    (["sample", "--height", "0"], "--height must be at least 8"),
    (["sample", "--height", "100000", "--width", "100000"], "--height must be at most 65536"),
    (["sample", "--height", "30000", "--width", "30000"], "more than this machine's"),
    (["sample", "--shift", "nan"], "--shift must be a finite number"),
    (["sample", "--seed", "99999999999999999999999"], "--seed must be at most"),
    (["sample", "--guidance", "nan"], "--guidance must be a finite number"),
    (["sample", "--guidance", "inf"], "--guidance must be a finite number"),
    (["sample", "--guidance", "1e30"], "--guidance must be at most 100"),
    (["reflow", "--guidance", "nan"], "--guidance must be a finite number"),
    (["reflow", "--lr", "nan"], "--lr must be a finite number"),
    (["inspect-schedule", "--rows", "100000000"], "--rows must be at most 10000"),
]


@pytest.mark.parametrize(("args", "message"), CASES, ids=[" ".join(a) for a, _ in CASES])
def test_the_issues_cases_are_one_line(args, message):
    result = CliRunner().invoke(app, args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1 and message in lines[0], (result.output, result.exception)


def test_values_from_a_config_file_are_checked_like_options(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('steps = "abc"\n')
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2 and "--steps must be a whole number, got 'abc'" in result.stderr
    config.write_text("lr = nan\n")
    result = CliRunner().invoke(app, ["train", "--config", str(config)])
    assert result.exit_code == 2 and "--lr must be a finite number" in result.stderr


def test_help_lists_every_accepted_value():
    from d2f.objectives import OBJECTIVES
    from d2f.parametrizations import T_SAMPLINGS

    text = CliRunner().invoke(app, ["train", "--help"], env={"COLUMNS": "250"}).output
    assert all(name in text for name in OBJECTIVES) and all(name in text for name in T_SAMPLINGS)
    text = CliRunner().invoke(app, ["reflow", "--help"], env={"COLUMNS": "250"}).output
    assert "near-noise" in text and "--num-pairs" in text and "--lora-rank" in text
