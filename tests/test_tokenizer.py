"""The built-in tokenizer: BPE learnt as the algorithm says, SD's 77-token window, ordinary captions whole."""

import random
from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from d2f.world.build.tokenizer import MODEL_MAX_LENGTH, load_tokenizer, symbols, train_merges

CAPTIONS = [
    "a handwritten digit 3",  # 20 tokens in the old 16-token tokenizer: it was cut
    "a red circle",
    "a photo of a golden retriever playing in the snow",
    "an oil painting of a lighthouse on a rocky coast at sunset, dramatic clouds, highly detailed",
    "Portrait of an old fisherman with a grey beard and a yellow raincoat, studio lighting, 85mm lens",
    "a watercolour sketch of the Eiffel Tower in spring, soft pastel colours",
    "line art of a cat sleeping on a stack of books, black ink on white paper",
]


def naive_merges(counts: dict[str, float], num_merges: int) -> list[tuple[str, str]]:
    """BPE written the slow way: recount every pair of every word before each merge."""
    words = {w: symbols(w) for w in counts}
    merges = []
    for _ in range(num_merges):
        pairs = Counter()
        for w, syms in words.items():
            for pair in zip(syms, syms[1:]):
                pairs[pair] += counts[w]
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        for w, syms in words.items():
            out, k = [], 0
            while k < len(syms):
                if k + 1 < len(syms) and (syms[k], syms[k + 1]) == best:
                    out.append(syms[k] + syms[k + 1])
                    k += 2
                else:
                    out.append(syms[k])
                    k += 1
            words[w] = out
    return merges


def test_merges_of_the_textbook_example():
    """Sennrich et al. (2016)'s example: 'es' (9) and 'es'+'t</w>' (9) first, then 'lo' (7)."""
    merges = train_merges({"low": 5, "lower": 2, "newest": 6, "widest": 3}, 3)
    assert merges == [("e", "s"), ("es", "t</w>"), ("l", "o")]


@settings(max_examples=40, deadline=None)
@given(
    st.dictionaries(st.text("abcde", min_size=1, max_size=7), st.integers(1, 20), min_size=1, max_size=12),
    st.integers(1, 30),
)
def test_incremental_bpe_equals_the_naive_algorithm(counts, num_merges):
    assert train_merges(counts, num_merges) == naive_merges(counts, num_merges)


def test_ordinary_captions_fit_the_window_and_come_back_whole():
    tok = load_tokenizer()
    assert tok.model_max_length == MODEL_MAX_LENGTH == 77  # SD's window
    for caption in CAPTIONS:
        ids = tok(caption).input_ids
        assert len(ids) < MODEL_MAX_LENGTH, (caption, len(ids))
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        # nothing collapsed to an unknown token: decoding gives the caption back (CLIP lower-cases)
        decoded = tok.decode(ids, skip_special_tokens=True)  # spaces around punctuation and digits differ
        assert decoded.replace(" ", "") == caption.lower().replace(" ", "")


def test_common_words_are_single_tokens_and_any_text_still_tokenizes():
    tok = load_tokenizer()
    for word in ["a", "red", "circle", "square", "photo", "painting", "dog", "house"]:
        assert len(tok(word).input_ids) == 3, word  # start, the word, end (rarer ones, "digit", are 2 pieces)
    rng = random.Random(0)
    text = "".join(chr(rng.randint(0x20, 0x2FFF)) for _ in range(20))  # any unicode: bytes are the fallback
    assert len(tok(text).input_ids) > 2
