"""The built-in priors' tokenizer: a CLIP byte-level BPE that d2f writes itself.

Stable Diffusion's ``CLIPTokenizer`` reads two files:

- ``vocab.json``: token -> id. CLIP's layout: the 256 *byte-unicode* characters (each byte mapped to a
  printable character), the same 256 with the end-of-word suffix ``</w>``, then one token per merge,
  then ``<|startoftext|>`` and ``<|endoftext|>``. Without merges that is 514 tokens.
- ``merges.txt``: ranked pairs ``"left right"``; BPE repeatedly joins the lowest-ranked adjacent pair.

We add merges so that every word of the shapes world's captions ("a", the colours, the shapes)
becomes **one** token, e.g. for ``red</w>``: ``r e`` then ``re d</w>``. Any other word still
tokenizes (into bytes), so arbitrary prompts work, they just mean nothing to the model.

``model_max_length`` is small (16): the default (about 1e30) would make the pipeline pad to it. The
text encoder's ``max_position_embeddings`` must be at least this.
"""

from __future__ import annotations

import json
from pathlib import Path

from d2f.world.shapes import COLOURS, SHAPES

MODEL_MAX_LENGTH = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"


def caption_words() -> list[str]:
    """The words that get their own token: ``a``, the colour names and the shape names."""
    return ["a", *COLOURS, *SHAPES]


def bytes_to_unicode() -> dict[int, str]:
    """CLIP's (and GPT-2's) byte -> printable character table: printable latin-1 bytes map to
    themselves, the other 68 bytes to code points from 256 upward, so every byte is one visible
    character and BPE never sees whitespace or control characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _bpe(word: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply ranked merges to a list of symbols the way BPE does: join the lowest-ranked pair,
    all its occurrences, until no ranked pair is left."""
    while len(word) > 1:
        pairs = [(ranks.get((a, b), float("inf")), i) for i, (a, b) in enumerate(zip(word, word[1:]))]
        rank, first = min(pairs)
        if rank == float("inf"):
            break
        a, b = word[first], word[first + 1]
        merged, i = [], 0
        while i < len(word):
            if i + 1 < len(word) and word[i] == a and word[i + 1] == b:
                merged.append(a + b)
                i += 2
            else:
                merged.append(word[i])
                i += 1
        word = merged
    return word


def build_merges(words: list[str]) -> list[tuple[str, str]]:
    """Merges that turn each word into a single token.

    Words are added one at a time. For each, we run BPE with the merges so far (a new word may
    already be partly merged by an earlier one: "green" after "red" starts as ``g re e n</w>``) and
    append left-to-right joins of the pieces it ends up with. New merges rank below all earlier
    ones, so they can never fire inside an earlier word before that word is already one token."""
    merges: list[tuple[str, str]] = []
    ranks: dict[tuple[str, str], int] = {}
    for word in words:
        pieces = _bpe([*word[:-1], word[-1] + SUFFIX], ranks)
        left = pieces[0]
        for right in pieces[1:]:
            if (left, right) not in ranks:
                ranks[(left, right)] = len(merges)
                merges.append((left, right))
            left = left + right
    return merges


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocab order: bytes, bytes + ``</w>``, one token per merge, then the two specials."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + SUFFIX for c in chars] + [a + b for a, b in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(tokens)}


def write_vocab_files(folder: str | Path) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (with CLIP's ``#version`` header) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    merges = build_merges(caption_words())
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(build_vocab(merges), ensure_ascii=False, indent=0))
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_path, merges_path


def build_tokenizer(folder: str | Path | None = None, model_max_length: int = MODEL_MAX_LENGTH):
    """A ``transformers.CLIPTokenizer`` over the world's vocabulary.

    With ``folder``, the vocab files are written there too (for inspection or reuse); the returned
    tokenizer is built from the same in-memory vocab and merges either way. Shapes: ``tokenizer(
    prompts, padding="max_length", max_length=model_max_length)`` gives ``input_ids`` (B, 16)."""
    from transformers import CLIPTokenizer

    merges = build_merges(caption_words())
    if folder is not None:
        write_vocab_files(folder)
    return CLIPTokenizer(
        vocab=build_vocab(merges),
        merges=merges,
        model_max_length=model_max_length,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )
