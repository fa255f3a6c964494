"""`d2f inspect-schedule`, `d2f --help` and the import boundaries of the math core."""

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from d2f.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args))


def test_sd15_json_matches_the_math_page():
    result = run("inspect-schedule", "--preset", "sd15", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["t_min"] == pytest.approx(0.0640, abs=5e-5)
    assert report["t_max"] == pytest.approx(0.9717, abs=5e-5)
    assert report["scale_max"] == pytest.approx(2**0.5, abs=1e-6)
    assert report["scale_max_tau"] == pytest.approx(354, abs=0.5)
    assert report["prediction_type"] == "epsilon" and report["num_train_timesteps"] == 1000
    assert report["beta_schedule"] == "scaled_linear" and report["zero_terminal_snr"] is False
    assert [row["tau"] for row in report["rows"]] == pytest.approx([k * 99.9 for k in range(11)])
    assert set(report["rows"][0]) == {"tau", "t", "alpha", "sigma", "scale", "log_snr", "clamped"}


def test_asked_rows_keep_their_t_and_say_when_clamped():
    result = run(
        "inspect-schedule", "--preset", "sd2-v", "--rows", "0", "--t", "0", "--t", "0.5", "--tau", "354.5", "--json"
    )
    rows = json.loads(result.stdout)["rows"]
    assert [row["tau"] for row in rows][0] == 354.5 and rows[0]["clamped"] is False
    at_zero, at_half = rows[1], rows[2]
    assert at_zero["t"] == 0 and at_zero["clamped"] is True and at_zero["tau"] == pytest.approx(999)
    assert at_half["t"] == 0.5 and at_half["clamped"] is False and at_half["log_snr"] == pytest.approx(0, abs=1e-9)
    assert json.loads(result.stdout)["prediction_type"] == "v_prediction"


def test_zero_terminal_snr_covers_down_to_t_zero():
    report = json.loads(run("inspect-schedule", "--preset", "sd2-v", "--zero-terminal-snr", "--json").stdout)
    assert report["t_min"] == 0.0 and report["zero_terminal_snr"] is True
    assert report["rows"][-1]["alpha"] == 0.0


def test_table_and_plot(tmp_path):
    plot = tmp_path / "schedule.png"
    result = run("inspect-schedule", "--preset", "sd15", "--plot", str(plot))
    assert result.exit_code == 0
    assert "0.0640" in result.stdout and "0.9717" in result.stdout and "353.89" in result.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 20_000


def model_folder(folder, scheduler_config: str):
    """A diffusers folder layout with the given scheduler_config.json text (the other parts are not read)."""
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(scheduler_config)
    for part in ("unet", "vae", "text_encoder"):
        (folder / part).mkdir()
        (folder / part / "config.json").write_text("{}")
    (folder / "model_index.json").write_text("{}")
    return folder


def test_model_folder(tmp_path):
    config = {"beta_schedule": "linear", "beta_start": 0.0001, "beta_end": 0.02, "prediction_type": "sample"}
    model_folder(tmp_path, json.dumps(config))
    report = json.loads(run("inspect-schedule", "--model", str(tmp_path), "--json").stdout)
    assert report["prediction_type"] == "sample" and report["beta_schedule"] == "linear"


@pytest.mark.parametrize(
    "text, message",
    [
        ("{bad", "is not valid JSON"),
        ("[1, 2]", "is not a scheduler config"),
        ('{"beta_schedule": "sigmoid"}', "unknown"),
    ],
)
def test_a_broken_scheduler_config_is_one_line(tmp_path, text, message):
    result = run("inspect-schedule", "--model", str(model_folder(tmp_path, text)))
    assert result.exit_code == 2 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1


def test_plot_path_is_checked_first_and_gets_the_suffix_it_is_written_with(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    result = run("inspect-schedule", "--plot", str(tmp_path / "file.txt" / "p.png"))
    assert result.exit_code == 2 and "is a file, not a folder" in result.stderr
    result = run("inspect-schedule", "--plot", str(tmp_path))
    assert result.exit_code == 2 and "is a directory" in result.stderr
    result = run("inspect-schedule", "--plot", str(tmp_path / "schedule"))
    assert result.exit_code == 0 and (tmp_path / "schedule.png").is_file()
    assert f"plot written to {tmp_path / 'schedule.png'}" in result.stdout.replace("\n", "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "sd3"], "unknown preset 'sd3'"),
        (["--tau", "1000"], "--tau 1000.0 is outside [0, 999]"),
        (["--t", "-0.1"], "--t -0.1 is outside [0, 1]"),
        (["--model", "/no/such/folder"], "does not exist"),
        (["--preset", "sd15", "--model", "x"], "either --preset or --model"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path):
    result = run("inspect-schedule", *args)
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2


def test_folder_without_scheduler_config_names_the_missing_file(tmp_path):
    result = run("inspect-schedule", "--model", str(tmp_path))
    assert result.exit_code == 2 and "missing model_index.json, scheduler/scheduler_config.json" in result.output


def test_help_reads_well_and_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "d2f", "inspect-schedule", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "Example: d2f inspect-schedule" in out.stdout
    assert "inspect-schedule" in run("--help").stdout
