"""Captions checked before training: words the model's text encoder never learnt, and captions too long for it.

A text encoder passes on only what it learnt. A word that never occurred in its training captions keeps its
random initial embedding, and the layers above learnt to listen to other tokens, so captions that differ only in
such words reach the UNet as nearly the same states: a UNet-only LoRA can learn the images' look but not which
caption asks for which, and ``--train-text-encoder`` lets the encoder learn the new words. The built-in prior's
digits show both (the measurements: docs/own-images.md). ``d2f.training.auto`` turns that option on when this
check finds such words.

SD's CLIP text encoder learnt from hundreds of millions of captions, so only a model that records its training
captions is checked: the built-in priors list theirs in ``d2f_build.json`` (``captions``, written by
``d2f.world.build``). A prior whose text encoder was pretrained on words alone before its UNet (``-words``) also
lists those words (``WORDS_FILE``): a word there is known to the text encoder though its UNet never drew it.
The check works on tokens, so it holds for any tokenizer: a caption token that no training
caption has is unseen, and the notice names the words it comes from.
"""

from __future__ import annotations

import json
from pathlib import Path

BUILD_RECORD = "d2f_build.json"
WORDS_FILE = "d2f_text_encoder_words.txt"  # one word per line: what a pretrained text encoder learnt
SHOWN = 8  # words named in the notice


def training_captions(model_folder: str | Path) -> list[str] | None:
    """The captions the model's text encoder was trained on, if its folder records them (else None)."""
    path = Path(model_folder) / BUILD_RECORD
    if not path.is_file():
        return None
    try:
        captions = json.loads(path.read_text()).get("captions")
    except (OSError, ValueError, AttributeError):
        return None
    return captions if isinstance(captions, list) else None


def text_encoder_words(model_folder: str | Path) -> list[str] | None:
    """The words the model's text encoder was pretrained on before its UNet, if its folder lists them (else None)."""
    path = Path(model_folder) / WORDS_FILE
    try:
        return path.read_text().split() if path.is_file() else None
    except (OSError, UnicodeDecodeError):
        return None


def unseen_words(tokenizer, known_captions: list[str], captions: list[str]) -> list[str]:
    """The distinct words of ``captions`` (in first-seen order) holding a token that no known caption has."""
    seen = {token for ids in tokenizer(list(known_captions)).input_ids for token in ids}
    distinct = list(dict.fromkeys(captions))
    unseen: dict[str, None] = {}
    tokens_of: dict[str, set[int]] = {}  # a word's tokens, alone and after a space (a byte-level BPE marks it)
    for caption, ids in zip(distinct, tokenizer(distinct, truncation=False).input_ids):
        new = set(ids) - seen
        if not new:
            continue
        found = False
        for word in filter(None, (w.strip(".,;:!?\"'()") for w in caption.split())):
            if word not in tokens_of:
                alone, spaced = tokenizer([word, " " + word], add_special_tokens=False).input_ids
                tokens_of[word] = set(alone + spaced)
            if new & tokens_of[word]:
                unseen.setdefault(word.lower(), None)
                found = True
        if not found:  # a tokenization no single word reproduces: name the tokens (punctuation aside)
            for text in (tokenizer.decode([token]).strip() for token in sorted(new)):
                if any(ch.isalnum() for ch in text):
                    unseen.setdefault(text, None)
    return list(unseen)


def captions_over_window(tokenizer, captions: list[str]) -> list[str]:
    """The distinct captions whose tokens (with the start and end tokens) do not fit the tokenizer's window."""
    distinct = sorted(set(captions))
    lengths = [len(ids) for ids in tokenizer(distinct, truncation=False).input_ids] if distinct else []
    return [c for c, n in zip(distinct, lengths) if n > tokenizer.model_max_length]


def check_caption_lengths(run) -> None:
    """A notice when captions of the run's data do not fit the text encoder's window (they will be cut)."""
    tokenizer = run.pipe.tokenizer
    cut = captions_over_window(tokenizer, run.data.captions)
    if cut:
        run.notice(
            "captions_cut",
            f"{len(cut)} caption(s) of {run.cfg.data} are longer than the text encoder's "
            f"{tokenizer.model_max_length}-token window and will be cut, e.g. {cut[0][:60]!r}",
            count=len(cut),
        )
