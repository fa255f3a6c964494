"""How far apart each built-in prior's text encoder puts the captions of a dataset's classes.

    python benchmarks/text_encoders.py        # seconds; writes benchmarks/results/text_encoders.md

For each prior and each caption set (the world's 24 shape captions, which every prior was trained on, and the
class captions of ``d2f.world.class_sets``, which no UNet was), ``d2f.world.build.text_pretraining.separation``:
the cosine similarity of two captions' states at the position where they differ most, averaged over pairs.
Near 1, the UNet's cross-attention sees the same thing for "a digit 3" and "a digit 7" and a UNet-only LoRA
cannot learn which is which; ``tiny-shapes-eps-words``' text encoder was pretrained on English words to keep
them apart.
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "results" / "text_encoders.md"


def main() -> None:
    from transformers import AutoTokenizer, CLIPTextModel

    from d2f.pipeline.models import ASSETS, builtin_names
    from d2f.world.build.text_pretraining import separation
    from d2f.world.class_sets import CLASS_SETS, class_set
    from d2f.world.shapes import all_prompts

    caption_sets = {"shapes (trained on)": all_prompts()}
    for name in CLASS_SETS:
        cset = class_set(name)
        caption_sets[f'{name} ("{cset.caption(cset.classes[0])}")'] = [cset.caption(k) for k in cset.classes]
    lines = [
        "# Caption separation by each built-in prior's text encoder (`benchmarks/text_encoders.py`)",
        "",
        "Cosine similarity of two captions' text-encoder states at the position where they differ most, mean over "
        "the pairs of a set's captions (`d2f.world.build.text_pretraining.separation`): 1.00 is no difference the "
        "UNet could attend to.",
        "",
        "| prior | " + " | ".join(caption_sets) + " |",
        "| --- | " + " | ".join("---:" for _ in caption_sets) + " |",
    ]
    for prior in builtin_names():
        tokenizer = AutoTokenizer.from_pretrained(ASSETS / prior / "tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(ASSETS / prior / "text_encoder").eval()
        cells = [f"{separation(text_encoder, tokenizer, captions):.2f}" for captions in caption_sets.values()]
        lines.append(f"| {prior} | " + " | ".join(cells) + " |")
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())


if __name__ == "__main__":
    main()
