"""The `--model` resolver and `d2f models`."""

import json

import pytest
from typer.testing import CliRunner

from d2f.cli import app
from d2f.errors import UserError
from d2f.pipeline.models import builtin_models, check_resolution, hub_file, resolve_model


def make_folder(root, missing=()):
    files = {
        "model_index.json": "{}",
        "scheduler/scheduler_config.json": "{}",
        "unet/config.json": json.dumps({"block_out_channels": [32, 64], "sample_size": 8}),
        "vae/config.json": json.dumps({"block_out_channels": [32, 64, 64]}),
        "text_encoder/config.json": "{}",
    }
    for name, text in files.items():
        if name not in missing:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_text(text)
    return root


def test_local_folder_resolves(tmp_path):
    ref = resolve_model(str(make_folder(tmp_path)))
    assert ref.local and not ref.builtin and ref.source == str(tmp_path.resolve())


def test_incomplete_folder_names_the_missing_files(tmp_path):
    make_folder(tmp_path, missing=("unet/config.json", "model_index.json"))
    with pytest.raises(UserError, match="missing model_index.json, unet/config.json"):
        resolve_model(str(tmp_path))


def test_missing_folder(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "nope"))


def test_hub_id_offline_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))  # an empty cache
    ref = resolve_model("someone/some-model")
    assert not ref.local and ref.source == "someone/some-model"
    with pytest.raises(UserError, match="not cached and the hub cannot be reached; pass a local diffusers folder"):
        hub_file(ref, "scheduler/scheduler_config.json")


def test_resolution_multiple(tmp_path):
    make_folder(tmp_path)  # VAE down 4, UNet down 2: sides must be multiples of 8
    check_resolution(tmp_path, 32, 48)
    with pytest.raises(UserError, match="size 30 px does not fit this model: .* multiple of 8 px \\(e.g. 24 or 32\\)"):
        check_resolution(tmp_path, 30)


def test_builtin_models_listed_and_resolved():
    rows = {row["name"]: row for row in builtin_models()}
    assert rows["tiny-shapes-eps"]["prediction_type"] == "epsilon"
    assert rows["tiny-shapes-v"]["prediction_type"] == "v_prediction"
    assert rows["tiny-shapes-eps"]["resolution"] == 32
    result = CliRunner().invoke(app, ["models", "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == list(rows.values())
    assert resolve_model("tiny-shapes-v").builtin
    report = CliRunner().invoke(app, ["inspect-schedule", "--model", "tiny-shapes-v", "--json"])
    assert json.loads(report.stdout)["prediction_type"] == "v_prediction"


@pytest.mark.parametrize("columns", [200, 80, 79, 40, 12])
def test_models_listing_never_cuts_a_name(columns, tmp_path):
    """The name is what a user copies from ``d2f models``: whole, on one line, in any terminal width (the
    path and the description fold instead). A real process, as a terminal runs it."""
    import os
    import re
    import subprocess
    import sys

    names = [row["name"] for row in builtin_models()]
    if not names:
        pytest.skip("no built-in prior is built in this checkout")
    env = dict(os.environ, COLUMNS=str(columns))
    result = subprocess.run(
        [sys.executable, "-m", "d2f", "models"], capture_output=True, text=True, env=env, cwd=tmp_path, timeout=120
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in names:  # a whole word on some line: not 'tiny-shapes-…', not 'tiny-shapes-' + 'eps' below
        assert any(re.search(rf"(^|[\s│]){re.escape(name)}($|[\s│])", line) for line in lines), result.stdout
    assert "…" not in "".join(line for line in lines if any(n[:4] in line for n in names) and "/" not in line)
    assert all(len(line.rstrip()) <= max(columns, max(map(len, names))) for line in lines), result.stdout
