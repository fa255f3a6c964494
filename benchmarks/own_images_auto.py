"""The plain command on "your own images": ``d2f train --data FOLDER``, nothing else, on d2f-made class datasets.

    OMP_NUM_THREADS=1 python benchmarks/own_images_auto.py                 # digits, letters, then patterns (~30 min)
    OMP_NUM_THREADS=1 python benchmarks/own_images_auto.py letters         # some of them
    python benchmarks/own_images_auto.py --report-only                     # the table from the records

For each dataset of ``d2f.world.class_sets`` (digits, letters, patterns: images of a few classes that no part of
the built-in world saw, captioned by class, e.g. "a letter B"):

1. writes 1000 images (seed 0) as an imagefolder, the layout of a user's folder;
2. trains the set's classifier on fresh images of the generator and reports its accuracy on 500 held-out real
   images (the ceiling: a sample can only be read as well as a real image is);
3. runs ``d2f train --data FOLDER --output RUN`` with no other option: the caption check finds the new words and
   ``d2f.training.auto`` picks the new-content recipe by itself (recorded under ``automatic`` in ``d2f_run.json``);
4. samples the prior before and the run after, 10 images per class from the same noise, each model's default
   sampler and guidance, and reads them with the classifier: accuracy with a 95% Wilson interval.

The recipe was chosen on the digits (``own_images_sweep.md``); letters and patterns never took part in choosing it,
and patterns, the held-aside set, were first run after the rule was fixed. Records are appended to
``benchmarks/results/own_images_auto.jsonl`` (one per dataset); the table is ``own_images_auto.md``, the grids
``docs/own_images_auto_NAME.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from own_images import grid, sample  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "own_images_auto"
SETS = ("digits", "letters", "patterns")
HELD_ASIDE = ("patterns",)
DEFAULT_MODEL = "tiny-shapes-eps"  # d2f train's default --model
PER_CLASS, NOISE_SEED = 10, 1000


def heldout_curve(run: Path) -> list[dict]:
    """The run's validation lines: step, FD and KID of its samples to the held-out images (d2f.training.holdout)."""
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    keys = ("step", "fd_heldout", "kid_heldout")
    return [{k: line[k] for k in keys} for line in lines if line.get("kind") == "validation" and "fd_heldout" in line]


def measure(name: str, work: Path, model: str = "tiny-shapes-eps", options: tuple[str, ...] = ()) -> dict:
    from d2f.world.class_reader import as_tensor, class_accuracy
    from d2f.world.class_sets import class_set, reader_for
    from d2f.world.estimators import wilson_interval

    cset = class_set(name)
    data = work / name
    if not (data / "metadata.jsonl").is_file():
        cset.write(data, num_images=1000, seed=0)
    reader = reader_for(cset, log=print)
    real, labels = cset.make(500, seed=2000)
    ceiling = class_accuracy(reader, as_tensor(real), labels)
    print(f"{name}: classifier on held-out real images {ceiling[0]}/{ceiling[1]}", flush=True)

    run = work / "-".join(
        [f"{name}-run", *([model] if model != DEFAULT_MODEL else []), *(o.strip("-") for o in options)]
    )
    chosen = [*(["--model", model] if model != DEFAULT_MODEL else []), *options]
    command = [sys.executable, "-m", "d2f", "train", "--data", str(data), "--output", str(run), "--overwrite", *chosen]
    started = time.time()
    subprocess.run(command, check=True, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
    wall = time.time() - started
    record = json.loads((run / "d2f_run.json").read_text())

    prompts = [cset.caption(k) for _ in range(PER_CLASS) for k in cset.classes]
    truth = [cset.label_of(p) for p in prompts]
    rows, scores = {}, {}
    for which, (m, lora) in {"before": (model, None), "after": (None, str(run))}.items():
        images = sample(m, lora, prompts, NOISE_SEED)
        correct, n = class_accuracy(reader, images, truth)
        low, high = wilson_interval(correct, n)
        rows[which] = images
        scores[which] = dict(correct=correct, n=n, accuracy=correct / n, low=low, high=high)
        print(f"{name} {which}: {correct}/{n} = {correct / n:.2f} [{low:.2f}, {high:.2f}]", flush=True)
    # the plain command's grid is the docs' figure; any other run's stays in its folder
    grid(rows, (ROOT / "docs" if not chosen else run) / f"own_images_auto_{name}.png", labels=cset.classes)
    return {
        "dataset": name,
        "held_aside": name in HELD_ASIDE,
        "classes": list(cset.classes),
        "caption_example": cset.caption(cset.classes[0]),
        "command": " ".join(["d2f train --data FOLDER", *chosen]),
        "model": model,
        "options": list(options),
        "automatic": record.get("automatic"),
        "held_out": record["data"].get("held_out"),
        "heldout_curve": heldout_curve(run),
        "steps": record["settings"]["steps"],
        "train_seconds": record.get("summary", {}).get("seconds"),
        "wall_seconds": wall,
        "threads": os.environ.get("OMP_NUM_THREADS"),
        "ceiling": {"correct": ceiling[0], "n": ceiling[1]},
        "chance": 1 / len(cset.classes),
        **scores,
    }


def report(records: list[dict]) -> str:
    plain = [r for r in records if r.get("command", "d2f train --data FOLDER") == "d2f train --data FOLDER"]
    latest = {r["dataset"]: r for r in plain}  # the newest record of each dataset
    lines = [
        "# The plain command on your own images (`benchmarks/own_images_auto.py`)",
        "",
        "`d2f train --data FOLDER` with no other option, on d2f-made datasets the built-in prior never saw "
        "(`d2f.world.class_sets`, 1000 images each, 32 px). For each, the caption check found words the prior's "
        "text encoder never learnt, and `d2f train` chose the new-content recipe by itself (`d2f.training.auto`: "
        "the text encoder's LoRA, `--lr 3e-3`, `--t-sampling logit-normal`; the `automatic` column is what its "
        "`d2f_run.json` recorded). Accuracy: the fraction of 10 samples per class that the set's classifier reads "
        "as the class the caption asks for, with a 95 % Wilson interval; same noise before and after.",
        "",
        "| dataset | role | caption | automatic | before | after, default budget | chance | classifier on real "
        "| FD to held-out images, step 0 -> end | training s |",
        "| --- | --- | --- | --- | --- | --- | ---: | --- | --- | ---: |",
    ]
    for name in [s for s in SETS if s in latest]:
        r = latest[name]
        auto = ", ".join(f"{k}={v['value']}" for k, v in (r["automatic"] or {}).items())
        cell = lambda s: f"{s['accuracy']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"  # noqa: E731
        role = "held aside" if r["held_aside"] else ("chosen on" if name == "digits" else "check")
        seconds = f"{r['train_seconds']:.0f}" if r.get("train_seconds") else "-"
        curve = r.get("heldout_curve") or []
        fd = f"{curve[0]['fd_heldout']:.1f} -> {curve[-1]['fd_heldout']:.1f}" if curve else "-"
        lines.append(
            f'| {name} | {role} | "{r["caption_example"]}" | {auto} | {cell(r["before"])} | **{cell(r["after"])}** '
            f"| {r['chance']:.2f} | {r['ceiling']['correct']}/{r['ceiling']['n']} | {fd} | {seconds} |"
        )
    lines += [
        "",
        "Roles: the recipe was chosen on the digits (`own_images_sweep.md`); letters never took part in choosing it; "
        "patterns were held aside and first run after the rule was fixed. Training seconds are `d2f train`'s own "
        "count (`summary.seconds`), on 2 CPU cores with `OMP_NUM_THREADS` as recorded "
        f"({', '.join(sorted({str(r.get('threads')) for r in latest.values()}))}), beside other jobs: not a "
        "timing on an idle machine. Grids: `docs/own_images_auto_NAME.png` (first row before, second after, one "
        "sample per class). FD to held-out images: what `d2f train` prints at each validation for a user's folder "
        "(`fd_heldout` in `metrics.jsonl`: the VAE encoder's features of 48 samples for the captions of the 64 "
        "held-out images against those images, `d2f.training.holdout`); it needs no classifier.",
    ]
    return "\n".join(lines + words_report(records)) + "\n"


def words_report(records: list[dict]) -> list[str]:
    """The table of the runs on other models or with options (the ``-words`` prior, UNet only or with the text
    encoder's LoRA): newest record of each (command, dataset)."""
    other = {
        (r["command"], r["dataset"]): r
        for r in records
        if r.get("options") or r.get("model", DEFAULT_MODEL) != DEFAULT_MODEL
    }
    if not other:
        return []
    commands = list(dict.fromkeys(c for c, _ in other))
    lines = [
        "",
        "## Other models and options",
        "",
        "The same datasets, measurement and budget; the command as given (FOLDER the dataset), `automatic` as "
        "recorded. `tiny-shapes-eps-words` is the prior whose text encoder learnt English words before the UNet "
        "was trained under it, frozen (`d2f.world.build.text_pretraining`, docs/world.md).",
        "",
        "| command | " + " | ".join(SETS) + " | automatic | training s |",
        "| --- | " + " | ".join("---" for _ in SETS) + " | --- | ---: |",
    ]
    cell = lambda s: f"{s['accuracy']:.2f} [{s['low']:.2f}, {s['high']:.2f}]"  # noqa: E731
    for command in commands:
        rows = {name: other.get((command, name)) for name in SETS}
        some = next(r for r in rows.values() if r)
        auto = ", ".join(f"{k}={v['value']}" for k, v in (some["automatic"] or {}).items()) or "-"
        seconds = "/".join(f"{r['train_seconds']:.0f}" if r and r.get("train_seconds") else "-" for r in rows.values())
        accs = " | ".join(cell(r["after"]) if r else "-" for r in rows.values())
        lines.append(f"| `{command}` | {accs} | {auto} | {seconds} |")
    return lines


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("sets", nargs="*", help=f"datasets, of {', '.join(SETS)} (default: all, in this order)")
    p.add_argument("--work", default="runs/own-images-auto", help="folder for the datasets and the runs")
    p.add_argument("--report-only", action="store_true", help="rewrite the table from the records")
    p.add_argument("--model", default=DEFAULT_MODEL, help="--model of d2f train (default: its default)")
    p.add_argument("--option", action="append", default=[], help="an option passed on to d2f train (repeatable)")
    args = p.parse_args(argv)
    if set(args.sets) - set(SETS):
        p.error(f"unknown dataset(s) {', '.join(sorted(set(args.sets) - set(SETS)))}; choose from {', '.join(SETS)}")
    jsonl = RESULTS.with_suffix(".jsonl")
    if not args.report_only:
        for name in args.sets or SETS:
            record = measure(name, Path(args.work), args.model, tuple(args.option))
            with open(jsonl, "a") as f:
                f.write(json.dumps(record) + "\n")
    records = [json.loads(line) for line in jsonl.read_text().splitlines()] if jsonl.is_file() else []
    RESULTS.with_suffix(".md").write_text(report(records))
    print(report(records))


if __name__ == "__main__":
    main()
