"""``d2f train --config FILE``: settings from TOML / YAML / JSON, checked against TrainConfig."""

from __future__ import annotations

import pytest

from d2f.errors import UserError
from d2f.training.config_file import read_config_file


@pytest.mark.parametrize(
    "name, text",
    [
        ("run.toml", 'lora_rank = 16\nvalidation_prompts = ["a", "b"]\nlr = 1e-4\n'),
        ("run.yaml", "lora_rank: 16\nvalidation_prompts: [a, b]\nlr: 1.0e-4\n"),
        ("run.json", '{"lora_rank": 16, "validation_prompts": ["a", "b"], "lr": 0.0001}'),
    ],
)
def test_each_format_reads_the_same_settings(tmp_path, name, text):
    (tmp_path / name).write_text(text)
    assert read_config_file(tmp_path / name) == {"lora_rank": 16, "validation_prompts": ["a", "b"], "lr": 1e-4}


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("run.toml", "lora_rnak = 4\n", "unknown setting 'lora_rnak'; did you mean lora_rank?"),
        ("run.toml", "lora_rank = \n", "is not valid TOML"),
        ("run.yaml", "- a\n- b\n", "must hold key = value settings"),
        ("run.ini", "x=1", "use a .toml, .yaml or .json file"),
    ],
)
def test_bad_config_files_are_one_line(tmp_path, name, text, message):
    (tmp_path / name).write_text(text)
    with pytest.raises(UserError, match=message) as info:
        read_config_file(tmp_path / name)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="cannot read --config"):
        read_config_file(tmp_path / "missing.toml")
