"""A text encoder that knows ordinary words before any image is seen: the ``-words`` priors' ``CLIPTextModel``.

The built-in priors train their text encoder jointly with the UNet on a few dozen captions, so a word outside
them keeps its random embedding and reaches the UNet as a faint state nearly identical to every other unseen
word's ("a digit 3" and "a digit 7" look alike). SD avoids that by taking CLIP, pretrained on hundreds of millions
of captions, and keeping it frozen. This module does the miniature of that: text only, before the UNet exists.

**Data.** Caption-like word sequences: 1 to ``MAX_WORDS`` words drawn uniformly from ``NUM_WORDS`` of wordfreq's
most frequent English words (letters and digits only), each sequence led by "a" half of the time. Uniform, not by
frequency, so that a rare word is learnt as well as a common one.

**Objective: every token recoverable from the states.** With ``h_k`` the final state (after the last layer norm,
what the UNet reads) at position ``k`` of the token ids ``w_0 .. w_n`` (``w_0`` the start token, ``w_n`` the end
token), three linear heads read the token at ``k`` and the two before it, and one reads the whole caption from the
end token's state::

    L = sum_{j=0..2} mean_k CE(head_j(h_k), w_{k-j})  +  BCE(head_bag(h_n), bag(w)) / |w|

CLIP's attention is causal, so ``h_k`` sees ``w_0..w_k``: the first term makes each state name its token and the
word it ends (a rare word is two or three BPE tokens), the second makes the end state, and the padding states that
follow it, carry the caption. Distinct captions then give distinct states: the property the UNet needs to learn
"a digit 3" from "a digit 7" with a LoRA of its own, as an SD UNet does with a frozen CLIP.

``separation`` measures it: the cosine similarity of two captions' states where they differ most.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

NUM_WORDS = 20000  # wordfreq's most frequent English words, before keeping letters and digits only
MAX_WORDS = 6
BACK = 3  # heads: the token at k, k-1 and k-2


def english_words(num_words: int = NUM_WORDS) -> list[str]:
    """The pretraining vocabulary: wordfreq's ``num_words`` most frequent English words that are letters or
    digits only (about 19,700 of 20,000), in frequency order."""
    from wordfreq import top_n_list

    return [w for w in top_n_list("en", num_words) if re.fullmatch(r"[a-z0-9]+", w)]


def word_captions(words: list[str], count: int, gen: torch.Generator) -> list[str]:
    """``count`` caption-like sequences of 1..MAX_WORDS uniformly drawn words, half of them led by "a"."""
    lengths = torch.randint(1, MAX_WORDS + 1, (count,), generator=gen).tolist()
    picks = torch.randint(0, len(words), (sum(lengths),), generator=gen).tolist()
    lead = (torch.rand(count, generator=gen) < 0.5).tolist()
    out, at = [], 0
    for n, a in zip(lengths, lead):
        out.append(("a " if a else "") + " ".join(words[i] for i in picks[at : at + n]))
        at += n
    return out


class Heads(torch.nn.Module):
    """The pretraining heads (thrown away after): ``BACK`` token readers and one bag-of-tokens reader."""

    def __init__(self, hidden: int, vocab: int):
        super().__init__()
        self.back = torch.nn.ModuleList(torch.nn.Linear(hidden, vocab) for _ in range(BACK))
        self.bag = torch.nn.Linear(hidden, vocab)


def recovery_loss(text_encoder, heads: Heads, ids: torch.Tensor) -> tuple[torch.Tensor, float]:
    """The objective of the module doc on a batch of ids (B, 77) padded after the end token; returns the loss and
    the top-1 accuracy of the token head (j = 0) on the real positions."""
    states = text_encoder(ids).last_hidden_state  # (B, 77, H)
    eos = text_encoder.config.eos_token_id
    end = (ids == eos).int().argmax(dim=1)  # the first end token of each row
    positions = torch.arange(ids.shape[1])
    loss, accuracy = 0.0, float("nan")
    for j, head in enumerate(heads.back):
        # position k reads w_{k-j}: real positions k with j <= k <= end
        real = (positions[None] >= j) & (positions[None] <= end[:, None])
        logits = head(states[real])
        target = ids[:, : ids.shape[1] - j]
        target = torch.cat([torch.zeros_like(ids[:, :j]), target], dim=1)[real]
        loss = loss + F.cross_entropy(logits, target)
        if j == 0:
            accuracy = (logits.argmax(-1) == target).float().mean().item()
    bag = torch.zeros(ids.shape[0], heads.bag.out_features)
    for row, n in enumerate(end.tolist()):
        bag[row, ids[row, 1:n]] = 1.0  # the caption's tokens, start and end aside
    end_states = states[torch.arange(ids.shape[0]), end]
    # summed over the vocabulary, per token of the caption: a mean over ~8k mostly-absent tokens would vanish
    loss = loss + F.binary_cross_entropy_with_logits(heads.bag(end_states), bag, reduction="sum") / bag.sum()
    return loss, accuracy


def pretrain_text_encoder(
    tokenizer,
    steps: int = 1500,
    batch_size: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    num_words: int = NUM_WORDS,
    log: Callable[[int, float], None] | None = None,
    words: list[str] | None = None,
):
    """A ``CLIPTextModel`` (``components.make_text_encoder``) trained by ``recovery_loss`` on ``word_captions``
    of ``words`` (default ``english_words(num_words)``). Returns ``(text_encoder, record)``: the record names the
    recipe and the token head's accuracy on held-out captions."""
    from d2f.world.build.components import make_text_encoder
    from d2f.world.build.lr_schedule import warmup_cosine

    torch.manual_seed(seed)
    words = words or english_words(num_words)
    text_encoder = make_text_encoder(tokenizer)
    heads = Heads(text_encoder.config.hidden_size, len(tokenizer))
    params = [*text_encoder.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    sched = warmup_cosine(opt, steps)
    gen = torch.Generator().manual_seed(seed)

    def encode(texts):
        return tokenizer(
            texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
        ).input_ids

    text_encoder.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        loss, _ = recovery_loss(text_encoder, heads, encode(word_captions(words, batch_size, gen)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        if log:
            log(step, loss.item())
    text_encoder.eval()
    with torch.no_grad():
        held_out = encode(word_captions(words, 512, torch.Generator().manual_seed(seed + 10_000)))
        _, accuracy = recovery_loss(text_encoder, heads, held_out)
    record = dict(
        objective="token recovery: CE of w_k, w_{k-1}, w_{k-2} from h_k, and BCE of the caption's tokens from the "
        "end state (d2f.world.build.text_pretraining)",
        data=f"1-{MAX_WORDS} words drawn uniformly from {len(words)} of wordfreq's {num_words} most frequent "
        "English words (letters and digits only), half led by 'a'",
        steps=steps,
        batch_size=batch_size,
        lr=lr,
        optimizer="AdamW(weight_decay=0.01), 5% warmup, cosine to 0.1x, grad clip 1.0",
        seed=seed,
        final_loss=round(loss.item(), 4),
        held_out_token_accuracy=round(accuracy, 4),
        num_words=len(words),
    )
    return text_encoder, record


@torch.no_grad()
def separation(text_encoder, tokenizer, captions: list[str]) -> float:
    """How alike the text encoder makes ``captions``, as the UNet's cross-attention could tell them: for each pair of
    distinct captions, the cosine similarity of their states at the position where the two differ most (of the 77),
    averaged over pairs. 1.0: nowhere apart; SD's UNet can attend to the one position that differs."""
    ids = tokenizer(
        captions, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    ).input_ids
    states = F.normalize(text_encoder(ids).last_hidden_state, dim=-1)  # (B, 77, H)
    cos = torch.einsum("akh,bkh->abk", states, states).min(dim=-1).values  # (B, B): the most different position
    pairs = ~torch.eye(len(captions), dtype=torch.bool)
    return cos[pairs].mean().item()


def write_text_encoder_words(folder: Path) -> Path:
    """The pretraining word list, one per line, as ``d2f.training.caption_check.text_encoder_words`` reads it."""
    from d2f.training.caption_check import WORDS_FILE

    path = folder / WORDS_FILE
    path.write_text("\n".join(english_words()) + "\n")
    return path
