"""Before training, d2f names the caption words the model's text encoder never learnt
(``d2f.training.caption_check``): the built-in priors record their training captions, SD-format folders that do
not are not checked."""

from __future__ import annotations

from helpers import builtin_prior
from transformers import AutoTokenizer

from d2f.training import TrainConfig, train
from d2f.training.caption_check import training_captions, unseen_words
from d2f.world.build.priors import training_captions as world_captions
from d2f.world.digits import write_digits

FAST = dict(steps=1, batch_size=2, sample_steps=2, validate_every=0, warmup_steps=0, lora_rank=4, checkpoint_every=0)


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


def test_d2f_train_names_the_unseen_words_unless_the_text_encoder_trains(tmp_path):
    prior = builtin_prior("tiny-shapes-eps")
    data = write_digits(tmp_path / "digits", num_images=10)
    events = []
    train(TrainConfig(model=str(prior), data=str(data), output=str(tmp_path / "a"), **FAST), callback=events.append)
    unseen = [e for e in events if e["event"] == "captions_unseen"]
    assert len(unseen) == 1 and unseen[0]["count"] == 11  # "digit" and "0" ... "9"
    assert "'digit', '0', '1'" in unseen[0]["message"] and "--train-text-encoder" in unseen[0]["message"]
    events.clear()
    train(TrainConfig(model=str(prior), data=str(data), output=str(tmp_path / "b"), train_text_encoder=True, **FAST),
          callback=events.append)  # fmt: skip
    assert not [e for e in events if e["event"] == "captions_unseen"]
