"""``benchmarks/own_images_sweep.py``: its two caption sets describe the same images, and its table says what ran."""

from __future__ import annotations

import json
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"
sys.path.insert(0, str(BENCH))

from own_images_sweep import KNOWN, VARIANTS, report, write_data  # noqa: E402

from d2f.world.shapes import all_prompts  # noqa: E402


def test_known_captions_relabel_the_same_images(tmp_path):
    digit = [
        json.loads(x) for x in (write_data(tmp_path / "d", "digit") / "metadata.jsonl").read_text().split("\n") if x
    ]
    known = [
        json.loads(x) for x in (write_data(tmp_path / "k", "known") / "metadata.jsonl").read_text().split("\n") if x
    ]
    assert [r["file_name"] for r in digit] == [r["file_name"] for r in known] and len(digit) == 1000
    assert all(k["text"] == KNOWN[int(d["text"].split()[-1])] for d, k in zip(digit, known))
    assert len(set(KNOWN)) == 10 and set(KNOWN) <= set(all_prompts())  # ten captions the prior learnt
    assert (tmp_path / "d" / "00007.png").read_bytes() == (tmp_path / "k" / "00007.png").read_bytes()


def test_report_lists_every_record_with_its_interval():
    records = [
        dict(
            variant="unet", captions="digit", options=[], correct=9, n=100, failed=False, final_loss=0.37, device="CPU"
        ),
        dict(
            variant="te-lr1e-2",
            captions="digit",
            options=VARIANTS["te-lr1e-2"][1],
            correct=0,
            n=1,
            failed=True,
            final_loss=None,
            device="CPU",
        ),  # fmt: skip
    ]
    table = report(records)
    assert "| unet | digit | (none: a UNet LoRA) | 0.09 [0.05, 0.16] | 0.37 | CPU |" in table
    assert "| te-lr1e-2 | digit | `--train-text-encoder --lr 1e-2` |" in table and "| failed |" in table
