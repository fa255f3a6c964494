"""The ``d2f`` command as a whole: quiet start, underscore spellings, and the extras a command needs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from d2f.cli import app
from d2f.cli.app import require_extra
from d2f.errors import UserError


def test_starting_d2f_prints_no_third_party_noise():
    """Loading a pipeline imports transformers' image processors, which announce that torchvision is missing;
    d2f never uses them, so nothing but d2f's own output reaches the terminal."""
    code = "from d2f.cli import app; app(['models', '--json'])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stderr == "" and json.loads(result.stdout)[0]["name"] == "tiny-shapes-eps"


def test_underscore_spellings_are_accepted_and_typos_get_a_suggestion():
    runner = CliRunner()
    dashed = runner.invoke(app, ["inspect-schedule", "--preset", "sd2-v", "--zero-terminal-snr", "--json"])
    underscored = runner.invoke(app, ["inspect-schedule", "--preset", "sd2-v", "--zero_terminal_snr", "--json"])
    assert dashed.exit_code == underscored.exit_code == 0 and dashed.stdout == underscored.stdout
    assert json.loads(underscored.stdout)["zero_terminal_snr"] is True
    typo = runner.invoke(app, ["inspect-schedule", "--zero-terminal-snar"])
    assert typo.exit_code == 2 and "--zero-terminal-snr" in typo.output


def test_a_missing_extra_is_named():
    require_extra("plot", "json")  # installed: nothing happens
    with pytest.raises(UserError, match=r"not installed: pip install 'd2f\[train\]'"):
        require_extra("train", "no_such_module_d2f")
