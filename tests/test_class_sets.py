"""The class datasets of ``d2f.world.class_sets`` (digits, letters, patterns): user-style folders with words the
priors never learnt, and classifiers that read them; and the table of ``benchmarks/own_images_auto.py``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from helpers import builtin_prior
from transformers import AutoTokenizer

from d2f.training.caption_check import training_captions, unseen_words
from d2f.training.data import load_data
from d2f.world.class_reader import as_tensor, class_accuracy
from d2f.world.class_sets import CLASS_SETS, class_set, reader_for

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.mark.parametrize("name", sorted(CLASS_SETS))
def test_each_set_is_a_user_folder_of_new_words(name, tmp_path):
    cset = class_set(name)
    folder = cset.write(tmp_path / name, num_images=2 * len(cset.classes), seed=0)
    data = load_data(str(folder), resolution=32)
    assert data.captions[: len(cset.classes)] == [cset.caption(k) for k in cset.classes]
    assert [cset.label_of(c) for c in data.captions] == list(cset.classes) * 2
    again, labels = cset.make(2 * len(cset.classes), seed=0)  # deterministic: the files are the generator's images
    assert torch.allclose((data.pixels(range(len(data))) + 1) / 2, as_tensor(again), atol=1e-6)
    assert cset.make(4, seed=1)[0][0].tobytes() != again[0].tobytes()
    prior = builtin_prior("tiny-shapes-eps")
    tokenizer = AutoTokenizer.from_pretrained(prior / "tokenizer")
    assert unseen_words(tokenizer, training_captions(prior), data.captions)  # so d2f train's auto recipe applies


@pytest.mark.slow
@pytest.mark.parametrize("name", ["letters", "patterns"])
def test_each_classifier_reads_held_out_real_images(name):
    cset = class_set(name)
    reader = reader_for(cset, steps=300, seed=5)
    images, labels = cset.make(200, seed=2001)
    correct, n = class_accuracy(reader, as_tensor(images), labels)
    assert n == 200 and correct / n >= 0.9


def test_the_table_reports_each_record():
    from own_images_auto import report

    auto = {"lr": {"value": 0.003, "because": "10 caption word(s) are new"}}
    record = dict(
        dataset="letters", held_aside=False, classes=["A", "B"], caption_example="a letter A", automatic=auto,
        train_seconds=251.0, threads="1", ceiling={"correct": 500, "n": 500}, chance=0.5,
        before={"accuracy": 0.1, "low": 0.05, "high": 0.17, "correct": 10, "n": 100},
        after={"accuracy": 0.82, "low": 0.73, "high": 0.88, "correct": 82, "n": 100},
        heldout_curve=[{"step": 0, "fd_heldout": 9.87}, {"step": 1000, "fd_heldout": 1.25}],
    )  # fmt: skip
    older = {**record, "after": {**record["after"], "accuracy": 0.5}}
    table = report([older, record])  # the newest record of a dataset wins
    row = next(line for line in table.splitlines() if line.startswith("| letters"))
    assert "**0.82 [0.73, 0.88]**" in row and "0.10 [0.05, 0.17]" in row and "lr=0.003" in row
    assert "9.9 -> 1.2" in row and "| 251 |" in row and "500/500" in row and "| check |" in row
    assert json.dumps(record)  # a record is plain JSON
    # a run with another model or options goes to the second table, by its command, never into the plain one
    words = dict(record, command="d2f train --data FOLDER --model tiny-shapes-eps-words", model="tiny-shapes-eps-words",
                 options=[], after={**record["after"], "accuracy": 0.91, "low": 0.84, "high": 0.95})  # fmt: skip
    table = report([older, record, words])
    plain, other = table.split("## Other models and options")
    assert "0.91" not in plain and "**0.82 [0.73, 0.88]**" in plain
    row = next(line for line in other.splitlines() if "tiny-shapes-eps-words` |" in line)
    assert "| - | 0.91 [0.84, 0.95] | - |" in row and "| -/251/- |" in row
