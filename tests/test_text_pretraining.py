"""The ``-words`` prior's text encoder (``d2f.world.build.text_pretraining``): its objective reads the tokens it
claims to, and a short pretraining separates captions that a from-scratch encoder trained on other words does not."""

from __future__ import annotations

import torch
from helpers import builtin_prior
from transformers import AutoTokenizer, CLIPTextModel

from d2f.world.build import text_pretraining as tp


def _tokenizer():
    return AutoTokenizer.from_pretrained(builtin_prior("tiny-shapes-eps") / "tokenizer")


def test_word_captions_draw_one_to_max_words_of_the_list():
    words = ["red", "circle", "digit", "7"]
    captions = tp.word_captions(words, 200, torch.Generator().manual_seed(0))
    lengths = [len(c.removeprefix("a ").split()) for c in captions]
    assert min(lengths) == 1 and max(lengths) == tp.MAX_WORDS
    assert {w for c in captions for w in c.removeprefix("a ").split()} == set(words)
    assert 60 < sum(c.startswith("a ") for c in captions) < 140  # half are led by "a"


class _Oracle(torch.nn.Module):
    """A "text encoder" whose state at k is the one-hot of w_k, w_{k-1} and w_{k-2} in three blocks."""

    def __init__(self, vocab: int, eos: int):
        super().__init__()
        self.vocab, self.config = vocab, type("Config", (), {"eos_token_id": eos})

    def forward(self, ids):
        hot = torch.nn.functional.one_hot(ids, self.vocab).float()
        back = [hot, torch.roll(hot, 1, dims=1), torch.roll(hot, 2, dims=1)]
        return type("Out", (), {"last_hidden_state": torch.cat(back, dim=-1)})


def test_recovery_loss_targets_the_token_and_the_two_before_it():
    """With heads that copy the right block of an oracle's states, each token term is ~0 (logits 50 apart) and
    the accuracy 1; shifting the blocks (each head reading the wrong token) gives accuracy near 0."""
    tok = _tokenizer()
    vocab = len(tok)
    ids = tok(["a red circle", "a digit 7 of"], padding="max_length", max_length=12, return_tensors="pt").input_ids
    oracle = _Oracle(vocab, tok.eos_token_id)
    heads = tp.Heads(3 * vocab, vocab)
    with torch.no_grad():
        for j, head in enumerate(heads.back):
            head.weight.zero_(), head.bias.zero_()
            head.weight[:, j * vocab : (j + 1) * vocab] = 50 * torch.eye(vocab)
        heads.bag.weight.zero_(), heads.bag.bias.fill_(0.0)
    loss, accuracy = tp.recovery_loss(oracle, heads, ids)
    assert accuracy == 1.0
    bag_only = torch.nn.functional.binary_cross_entropy_with_logits(torch.zeros(2, vocab), torch.zeros(2, vocab))
    assert loss.item() < bag_only.item() * vocab / 3  # the token terms vanish; the (untrained) bag term remains
    with torch.no_grad():
        heads.back[0].weight.copy_(heads.back[1].weight)  # head 0 now reads w_{k-1}
    assert tp.recovery_loss(oracle, heads, ids)[1] < 0.2


def test_pretraining_separates_captions_of_new_words():
    """150 steps on 300 words, "digit" and the digits among them: captions that differ in one digit get states
    further apart than the shipped prior's encoder, which never saw the digits, gives them (0.90 where they differ
    most; 0.74 after these 150 steps, -0.10 for the shapes captions it learnt); the token head reads held-out
    captions."""
    tok = _tokenizer()
    torch.manual_seed(0)
    words = tp.english_words(400)[:290] + ["digit"] + [str(k) for k in range(10)]
    digits = [f"a digit {k}" for k in range(10)]
    shipped = CLIPTextModel.from_pretrained(builtin_prior("tiny-shapes-eps") / "text_encoder")
    assert tp.separation(shipped, tok, digits) > 0.88
    text_encoder, record = tp.pretrain_text_encoder(tok, steps=150, batch_size=32, words=words)
    # chance is about 1/300 (the heads start knowing nothing)
    assert record["held_out_token_accuracy"] > 0.3 and record["num_words"] == 301
    separated = tp.separation(text_encoder, tok, digits)
    print(f"separation {separated:.3f}")
    assert separated < 0.82
