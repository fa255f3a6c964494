"""Defaults chosen by what the data needs: said out loud, and recorded in ``d2f_run.json``.

Three settings default to "auto" (``None`` in ``TrainConfig``): ``--train-text-encoder``, ``--lr`` and
``--t-sampling``. Before the first step, with the data loaded, ``resolve_automatic`` decides them by one measured
rule, prints one line per decision (and how to override it) and records it under ``automatic``:

- **New content** (the captions hold words the model's text encoder never learnt, found by
  ``d2f.training.caption_check``; only models that record their training captions, such as the built-in priors,
  are checked, and only a LoRA run can train the text encoder): the text encoder's LoRA on, ``lr = 3e-3`` and
  logit-normal t. Measured on d2f's digits (``benchmarks/results/own_images_sweep.md``): at the default budget the
  three together read 0.70 / 0.60 (two training seeds) where the text encoder's LoRA alone reads 0.23 and none of
  them 0.10 (chance 0.10); a UNet-only LoRA cannot tell the new words apart, the larger step and mid-t steps learn
  new glyphs in 1000 steps rather than 3000. Checked on further d2f-made datasets in
  ``benchmarks/results/own_images_auto.md``.
- **New to the UNet only** (a ``-words`` prior, whose text encoder was pretrained on English words before its UNet,
  as SD's CLIP was; ``caption_check.WORDS_FILE``): ``lr = 3e-3`` and logit-normal t, the text encoder stays frozen,
  as SD's does (measured against its LoRA in ``benchmarks/results/own_images_auto.md``).
- **Otherwise** (a style shift of what the model already draws, such as the demo; or a model that does not record
  its captions, such as SD, whose CLIP knows ordinary English): text encoder frozen, ``lr = 1e-3``, uniform t, the
  demo's measured defaults (``benchmarks/results/train_defaults.md``).

A resumed run takes the values its record holds, so ``--resume`` never changes what was decided. Any of the three
given by the user (command line or ``--config``) is kept as given; the rest follow the rule.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from d2f.training.caption_check import SHOWN, text_encoder_words, training_captions, unseen_words

# the settings that default to "auto", and the flag that overrides each decision
AUTOMATIC = {"train_text_encoder": "--no-train-text-encoder", "lr": "--lr", "t_sampling": "--t-sampling"}
STYLE = {"train_text_encoder": False, "lr": 1e-3, "t_sampling": "uniform"}  # the demo's measured defaults
NEW_CONTENT = {"train_text_encoder": True, "lr": 3e-3, "t_sampling": "logit-normal"}  # own_images_sweep.md


def unseen_caption_words(run) -> tuple[list[str] | None, list[str] | None]:
    """The data's caption words the model never learnt: ``(new to its UNet, new to its text encoder too)``. The two
    are the same list unless the text encoder was pretrained on words of its own (``caption_check.WORDS_FILE``).
    ``(None, None)`` where the model records no training captions (nothing to check) or the batches come from
    elsewhere (reflow's pairs)."""
    if run.source is not None or not Path(run.ref.source).is_dir():
        return None, None
    known = training_captions(run.ref.source)
    if not known:
        return None, None
    new = unseen_words(run.pipe.tokenizer, known, run.data.captions)
    words = text_encoder_words(run.ref.source)
    if not new or words is None:
        return new, new
    return new, unseen_words(run.pipe.tokenizer, known + words, run.data.captions)


def resolve_automatic(run) -> dict:
    """Set every "auto" setting of ``run.cfg`` (see the module doc); returns ``{name: {"value", "because"}}``
    for the decisions made, which the run records. Prints (``run.notice``) one line for the decision, or one
    naming the new words when the text encoder's LoRA stays off all the same."""
    auto = [name for name in AUTOMATIC if getattr(run.cfg, name) is None]
    new, unknown = unseen_caption_words(run)  # new to the UNet; of those, new to the text encoder too
    decided = {}
    if auto and run.previous is not None:  # --resume: what the run decided when it started
        recorded = run.previous.get("settings", {})
        run.cfg = replace(run.cfg, **{name: recorded.get(name, STYLE[name]) for name in auto})
        decided = dict(run.previous.get("automatic") or {})
    elif auto:
        new_content = bool(new) and run.cfg.lora_rank > 0  # a full finetune has no text-encoder LoRA to train
        rule = dict(NEW_CONTENT, train_text_encoder=bool(unknown)) if new_content else STYLE
        if new_content and unknown:
            because = f"{len(unknown)} caption word(s) are new to {run.ref.name}'s text encoder ({_shown(unknown)})"
        elif new_content:
            because = (
                f"{len(new)} caption word(s) are new to {run.ref.name}'s UNet ({_shown(new)}) but not to its text "
                "encoder, which was pretrained on them"
            )
        elif new:
            because = "a full finetune (--lora-rank 0) cannot train the text encoder's LoRA"
        elif run.source is not None:
            because = "the batches come from elsewhere (reflow's pairs): the UNet alone trains"
        else:
            because = "no new caption words" if new == [] else "the model records no training captions to check"
        decided = {name: {"value": rule[name], "because": because} for name in auto}
        run.cfg = replace(run.cfg, **{name: rule[name] for name in auto})
        if new_content:
            changes = ", ".join(_as_option(name, rule[name]) for name in auto)
            knows = builtin_that_knows(run, unknown) if unknown else None
            run.notice(
                "automatic",
                f"new content: {because}, so d2f train uses {changes} (measured for new words: "
                f"benchmarks/results/own_images_auto.md); override with {' / '.join(_override(n, rule) for n in auto)}"
                + (
                    f". The built-in {knows}'s text encoder knows these words: --model {knows} learns them with a "
                    "frozen text encoder, faster (docs/own-images.md)"
                    if knows
                    else ""
                ),
                settings={name: rule[name] for name in auto},
                words=(unknown or new)[:SHOWN],
                **({"suggested_model": knows} if knows else {}),
            )
    if unknown and not run.cfg.train_text_encoder and run.previous is None:
        why = "a full finetune trains the UNet only" if run.cfg.lora_rank == 0 else "--no-train-text-encoder"
        _notice_unseen(run, unknown, why)
    return decided


def builtin_that_knows(run, words: list[str]) -> str | None:
    """For a built-in model: another built-in prior whose pretrained text encoder knows every caption word this
    one's never learnt (``tiny-shapes-eps-words``), of the same prediction type and tokenizer; else None."""
    from d2f.pipeline.models import ASSETS, builtin_names

    if Path(run.ref.source).resolve().parent != ASSETS.resolve():  # by name or by its folder
        return None
    mine = json.loads((Path(run.ref.source) / "tokenizer" / "vocab.json").read_text())
    kind = run.pipe.scheduler.config.get("prediction_type", "epsilon")
    for name in builtin_names():
        folder = ASSETS / name
        known, learnt = training_captions(folder), text_encoder_words(folder)
        if folder.resolve() == Path(run.ref.source).resolve() or not known or not learnt:
            continue
        config = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
        if config.get("prediction_type", "epsilon") != kind:
            continue
        if json.loads((folder / "tokenizer" / "vocab.json").read_text()) != mine:
            continue
        if not unseen_words(run.pipe.tokenizer, known + learnt, run.data.captions):
            return name
    return None


def _shown(words: list[str]) -> str:
    return ", ".join(repr(w) for w in words[:SHOWN]) + (", ..." if len(words) > SHOWN else "")


def _override(name: str, rule: dict) -> str:
    """The flag that undoes a decision: the text encoder's is the opposite of what was chosen."""
    if name == "train_text_encoder":
        return "--no-train-text-encoder" if rule[name] else "--train-text-encoder"
    return AUTOMATIC[name]


def _as_option(name: str, value) -> str:
    if name == "train_text_encoder":
        return "--train-text-encoder" if value else "--no-train-text-encoder"
    return f"--{name.replace('_', '-')} " + (f"{value:g}" if isinstance(value, float) else str(value))


def _notice_unseen(run, words: list[str], why: str) -> None:
    run.notice(
        "captions_unseen",
        f"{len(words)} caption word(s) are new to {run.ref.name}'s text encoder, which never learnt them "
        f"({_shown(words)}) and the text encoder stays frozen ({why}): the UNet alone can hardly tell them apart",
        count=len(words),
        words=words[:SHOWN],
    )
