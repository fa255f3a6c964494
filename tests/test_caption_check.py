"""Before training, d2f names the caption words the model's text encoder never learnt
(``d2f.training.caption_check``): the built-in priors record their training captions, SD-format folders that do
not are not checked. When it finds such words, the "auto" settings take the new-content recipe
(``d2f.training.auto``): said in one line, recorded in ``d2f_run.json``, overridable, kept on ``--resume``."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from helpers import builtin_prior
from transformers import AutoTokenizer

from d2f.training import TrainConfig, train
from d2f.training.auto import NEW_CONTENT, STYLE
from d2f.training.caption_check import text_encoder_words, training_captions, unseen_words
from d2f.world.build.priors import training_captions as world_captions
from d2f.world.data import builtin_data
from d2f.world.digits import write_digits

FAST = dict(steps=1, batch_size=2, sample_steps=2, validate_every=0, warmup_steps=0, lora_rank=4, checkpoint_every=0)


def _record(folder) -> dict:
    return json.loads((folder / "d2f_run.json").read_text())


def test_unseen_words_are_found_token_by_token():
    prior = builtin_prior("tiny-shapes-eps")
    tokenizer = AutoTokenizer.from_pretrained(prior / "tokenizer")
    known = training_captions(prior)
    assert known == world_captions() and "a red circle" in known
    assert unseen_words(tokenizer, known, world_captions()) == []
    # case and punctuation are the tokenizer's business: "A Red circle." holds no new word
    assert unseen_words(tokenizer, known, ["A Red circle.", "a photo", "colourful strokes"]) == []
    captions = ["a digit 3", "a digit 4", "a red circle", "a photo of a dog, sunny"]
    assert unseen_words(tokenizer, known, captions) == ["digit", "3", "4", "of", "dog", "sunny"]


def test_a_folder_without_a_caption_record_is_not_checked(tmp_path, tiny_sd_eps):
    assert training_captions(tiny_sd_eps) is None
    (tmp_path / "d2f_build.json").write_text("not json")
    assert training_captions(tmp_path) is None


def test_new_words_turn_on_the_new_content_recipe_said_and_recorded(tmp_path):
    prior = builtin_prior("tiny-shapes-eps")
    data = write_digits(tmp_path / "digits", num_images=10)
    events = []
    train(TrainConfig(model=str(prior), data=str(data), output=str(tmp_path / "a"), **FAST), callback=events.append)
    said = [e for e in events if e["event"] == "automatic"]
    assert len(said) == 1 and said[0]["settings"] == NEW_CONTENT
    # the built-in prior whose text encoder knows the words is named (the same eps prediction and tokenizer)
    assert (
        said[0]["suggested_model"] == "tiny-shapes-eps-words" and "--model tiny-shapes-eps-words" in said[0]["message"]
    )
    assert "11 caption word(s)" in said[0]["message"] and "'digit', '0', '1'" in said[0]["message"]
    assert "--no-train-text-encoder" in said[0]["message"] and "--lr" in said[0]["message"]
    record = _record(tmp_path / "a")
    assert {k: record["settings"][k] for k in NEW_CONTENT} == NEW_CONTENT and record["lora"]["text_encoder"]
    assert {k: v["value"] for k, v in record["automatic"].items()} == NEW_CONTENT
    assert all("new to" in v["because"] for v in record["automatic"].values())
    # --resume keeps what was decided (and does not call the auto settings changed)
    events.clear()
    more = {**FAST, "steps": 2}
    again = TrainConfig(model=str(prior), data=str(data), output=str(tmp_path / "a"), resume=True, **more)
    train(again, callback=events.append)
    assert not [e for e in events if e["event"] == "automatic"]
    assert _record(tmp_path / "a")["automatic"] == record["automatic"]
    assert {k: _record(tmp_path / "a")["settings"][k] for k in NEW_CONTENT} == NEW_CONTENT


def test_what_the_user_gives_wins_and_a_refused_text_encoder_is_named(tmp_path):
    prior = builtin_prior("tiny-shapes-eps")
    data = write_digits(tmp_path / "digits", num_images=10)
    events = []
    given = dict(train_text_encoder=False, lr=2e-3)
    train(TrainConfig(model=str(prior), data=str(data), output=str(tmp_path / "b"), **given, **FAST),
          callback=events.append)  # fmt: skip
    unseen = [e for e in events if e["event"] == "captions_unseen"]
    assert len(unseen) == 1 and unseen[0]["count"] == 11
    assert "--no-train-text-encoder" in unseen[0]["message"] and "stays frozen" in unseen[0]["message"]
    record = _record(tmp_path / "b")
    assert record["settings"]["lr"] == 2e-3 and record["settings"]["train_text_encoder"] is False
    assert set(record["automatic"]) == {"t_sampling"} and record["settings"]["t_sampling"] == "logit-normal"


def test_known_captions_keep_the_demo_defaults(tmp_path):
    events = []
    train(TrainConfig(data="shapes-target", output=str(tmp_path / "c"), eval_samples=0, **FAST),
          callback=events.append, builtin=builtin_data)  # fmt: skip
    assert not [e for e in events if e["event"] in ("automatic", "captions_unseen")]
    record = _record(tmp_path / "c")
    assert {k: record["settings"][k] for k in STYLE} == STYLE
    assert {v["because"] for v in record["automatic"].values()} == {"no new caption words"}


def test_d2f_train_says_its_automatic_choice_from_the_command_line(tmp_path):
    data = write_digits(tmp_path / "digits", num_images=10)
    flags = ["--steps", "1", "--batch-size", "2", "--sample-steps", "2", "--validate-every", "0"]
    flags += ["--warmup-steps", "0", "--lora-rank", "4", "--checkpoint-every", "0"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    command = [sys.executable, "-m", "d2f", "train", "--data", str(data), "--output", str(tmp_path / "run"), *flags]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "new content: 11 caption word(s)" in done.stdout + done.stderr
    assert _record(tmp_path / "run")["settings"]["train_text_encoder"] is True


def test_a_prior_whose_text_encoder_knows_the_words_keeps_it_frozen(tmp_path):
    """``tiny-shapes-eps-words`` lists the words its text encoder was pretrained on: the digits are new to its UNet
    (so the new-content step size and time density) but not to its text encoder (so no text-encoder LoRA, and no
    notice about unseen words); a word outside its list still counts as new to the text encoder."""
    prior = builtin_prior("tiny-shapes-eps-words")
    words = text_encoder_words(prior)
    assert words and "digit" in words and "7" in words and "ωμέγα" not in words
    data = write_digits(tmp_path / "digits", num_images=10)
    events = []
    train(TrainConfig(model=str(prior), data=str(data), output=str(tmp_path / "w"), **FAST), callback=events.append)
    said = [e for e in events if e["event"] == "automatic"]
    expected = dict(NEW_CONTENT, train_text_encoder=False)
    assert (
        len(said) == 1
        and said[0]["settings"] == expected
        and not [e for e in events if e["event"] == "captions_unseen"]
    )
    assert (
        "new to tiny-shapes-eps-words's UNet" in said[0]["message"]
        and "with --train-text-encoder /" in said[0]["message"]
    )
    record = _record(tmp_path / "w")
    assert {k: record["settings"][k] for k in expected} == expected and not record["lora"]["text_encoder"]
    tokenizer = AutoTokenizer.from_pretrained(prior / "tokenizer")
    known = training_captions(prior)
    assert unseen_words(tokenizer, known + words, ["a digit 7", "a ωμέγα"]) == ["ωμέγα"]
