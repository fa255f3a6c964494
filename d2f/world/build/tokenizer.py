"""The built-in priors' tokenizer: a CLIP byte-level BPE trained here on ordinary English.

Stable Diffusion's ``CLIPTokenizer`` reads two files:

- ``vocab.json``: token -> id. CLIP's layout: the 256 *byte-unicode* characters (each byte mapped to a
  printable character), the same 256 with the end-of-word suffix ``</w>``, then one token per merge,
  then ``<|startoftext|>`` and ``<|endoftext|>``.
- ``merges.txt``: ranked pairs ``"left right"``; BPE repeatedly joins the lowest-ranked adjacent pair.

The merges are learnt by byte-pair encoding (Sennrich et al. 2016, "Neural machine translation of rare
words with subword units") from the 30,000 most frequent English words of ``wordfreq`` (an offline word
list, a build-time dependency only), each weighted by its frequency: ``NUM_MERGES`` of them give a vocabulary
of about 8,000 tokens in which common words are one token and rare ones a few. Because the base symbols
are all 256 bytes, **any** text tokenizes (byte fallback): no caption is ever mapped to an unknown token.

The window is SD's: ``MODEL_MAX_LENGTH = 77`` tokens including start and end, so an ordinary caption is
never cut (``d2f train`` counts the captions that are, and says so).
"""

from __future__ import annotations

import heapq
import json
import re
from collections import defaultdict
from pathlib import Path

MODEL_MAX_LENGTH = 77
NUM_MERGES = 7680  # + 512 byte tokens + 2 specials ~ 8,192
NUM_WORDS = 30000
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
SUFFIX = "</w>"
SHIPPED = Path(__file__).resolve().parents[2] / "assets" / "tiny-shapes-eps" / "tokenizer"


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


def symbols(word: str) -> list[str]:
    """A word as BPE's starting symbols: its UTF-8 bytes as byte-unicode characters, the last one
    carrying the end-of-word suffix (``"red"`` -> ``["r", "e", "d</w>"]``)."""
    table = bytes_to_unicode()
    chars = [table[b] for b in word.encode("utf-8")]
    return [*chars[:-1], chars[-1] + SUFFIX]


def train_merges(counts: dict[str, float], num_merges: int) -> list[tuple[str, str]]:
    """Byte-pair encoding: repeatedly merge the most frequent adjacent pair of symbols (ties: the
    lexicographically smallest pair, so the result is deterministic), ``num_merges`` times or until no
    pair is left. ``counts``: word -> weight.

    Pair counts are kept up to date incrementally (only words that contain the merged pair change) with a
    heap of candidates whose stale entries are skipped when popped."""
    words = [symbols(w) for w in counts]
    weights = list(counts.values())
    pair_count: dict[tuple[str, str], float] = defaultdict(float)
    where: dict[tuple[str, str], set[int]] = defaultdict(set)

    def add(i: int, sign: int) -> set[tuple[str, str]]:
        touched = set()
        for pair in zip(words[i], words[i][1:]):
            pair_count[pair] += sign * weights[i]
            (where[pair].add if sign > 0 else where[pair].discard)(i)
            touched.add(pair)
        return touched

    for i in range(len(words)):
        add(i, +1)
    heap = [(-c, p) for p, c in pair_count.items()]
    heapq.heapify(heap)
    merges: list[tuple[str, str]] = []
    while heap and len(merges) < num_merges:
        negative, pair = heapq.heappop(heap)
        if not where[pair] or -negative != pair_count[pair]:
            continue  # stale: the pair's count changed after this entry was pushed
        merges.append(pair)
        a, b = pair
        touched = set()
        for i in sorted(where[pair]):
            touched |= add(i, -1)
            word, merged, k = words[i], [], 0
            while k < len(word):
                if k + 1 < len(word) and word[k] == a and word[k + 1] == b:
                    merged.append(a + b)
                    k += 2
                else:
                    merged.append(word[k])
                    k += 1
            words[i] = merged
            touched |= add(i, +1)
        for p in touched:
            if where[p]:
                heapq.heappush(heap, (-pair_count[p], p))
    return merges


def english_word_counts(num_words: int = NUM_WORDS) -> dict[str, float]:
    """The ``num_words`` most frequent English words (letters only: CLIP's pre-tokenizer splits digits and
    punctuation off anyway) with their frequencies, from ``wordfreq``."""
    try:
        from wordfreq import top_n_list, word_frequency
    except ImportError as e:
        raise ImportError("training the tokenizer needs an offline word list: pip install wordfreq") from e
    words = [w for w in top_n_list("en", num_words) if re.fullmatch(r"[a-z]+", w)]
    return {w: word_frequency(w, "en") for w in words}


def build_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's vocab order: bytes, bytes + ``</w>``, one token per merge, then the two specials (a merge
    whose result another merge already made adds no second token)."""
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + SUFFIX for c in chars] + [a + b for a, b in merges] + [BOS, EOS]
    return {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}


def write_vocab_files(folder: str | Path, merges: list[tuple[str, str]]) -> tuple[Path, Path]:
    """Write ``vocab.json`` and ``merges.txt`` (with CLIP's ``#version`` header) into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(build_vocab(merges), ensure_ascii=False, indent=0), encoding="utf-8")
    merges_path.write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return vocab_path, merges_path


def make_tokenizer(merges: list[tuple[str, str]], model_max_length: int = MODEL_MAX_LENGTH):
    """A ``transformers.CLIPTokenizer`` over these merges. Shapes: ``tokenizer(prompts, padding=
    "max_length", max_length=model_max_length)`` gives ``input_ids`` (B, 77)."""
    from transformers import CLIPTokenizer

    return CLIPTokenizer(
        vocab=build_vocab(merges),
        merges=merges,
        model_max_length=model_max_length,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=EOS,
        unk_token=EOS,
    )


def read_merges(folder: str | Path = SHIPPED) -> list[tuple[str, str]]:
    """The merges of a tokenizer folder (default: the one the built-in priors ship)."""
    lines = (Path(folder) / "merges.txt").read_text(encoding="utf-8").splitlines()
    return [tuple(line.split(" ")) for line in lines[1:] if line]


def load_tokenizer(folder: str | Path = SHIPPED, model_max_length: int = MODEL_MAX_LENGTH):
    """The built-in tokenizer (or the one in ``folder``), e.g. for tiny test models."""
    return make_tokenizer(read_merges(folder), model_max_length)
