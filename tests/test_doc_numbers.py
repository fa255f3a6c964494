"""Every number quoted in README.md and the user pages under docs/ comes from a committed file.

Two checks, both on the text only (no torch, no model):

* ``QUOTES``: (page, the quoted text, its source file, how to recompute the text from that file). The quoted text
  must be on the page and equal to what the function makes from the source.
* ``SOURCES`` and the scan: every other decimal number in a page's prose (fenced code and inline code left out)
  must be a number of one of the page's source files, at the precision quoted (22.76 in a file covers 22.8 on
  a page). That is a presence check (a number may match another cell of the same file by chance); the numbers
  that carry a page's message are in ``QUOTES``, recomputed exactly. A new number typed by hand, or a result that
  changed in its file, fails with the page, the number and the files searched. ``NOT_RESULTS`` lists the few
  decimal numbers that are not results, each with why.

The recipe for SD on a GPU must be the same command in README.md, docs/sd-on-a-gpu.md and tutorial 5.
docs/bridge.md and docs/math.md are another page's business and are not scanned here.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RES = "benchmarks/results/"
EPS_BUILD, V_BUILD = "d2f/assets/tiny-shapes-eps/d2f_build.json", "d2f/assets/tiny-shapes-v/d2f_build.json"
EVALUATOR_BUILD = "d2f/assets/evaluator/d2f_build.json"
WORDS_BUILD = "d2f/assets/tiny-shapes-eps-words/d2f_build.json"
NB01 = "tutorials/01_schedules.ipynb"  # prints SD's covered range and where c peaks

# page -> the committed files its numbers come from
SOURCES = {
    "README.md": [
        RES + f for f in ("objectives.md", "reflow.md", "reflow_variants.md", "own_images_auto.md", "sd_cpu.md")
    ]
    + [NB01],
    "docs/world.md": [RES + "world_build.md", RES + "fd_floor.md", RES + "text_encoders.md", EPS_BUILD, V_BUILD]
    + [EVALUATOR_BUILD, WORDS_BUILD],
    "docs/training.md": [RES + "objectives.md", RES + "train_cost.json", RES + "train_defaults.md"],
    "docs/sampling.md": ["benchmarks/sampling.md", V_BUILD],
    "docs/data-and-models.md": [RES + "world_build.md"],
    "docs/own-images.md": [RES + f for f in ("own_images.md", "own_images_3000.md", "own_images_new_content.md")]
    + [RES + f for f in ("own_images_sweep.md", "world_build.md", "own_images_auto.md", "command_times.md")],
    "docs/objectives.md": [RES + "objectives.md", RES + "sd_cpu.md"],
    "docs/reflow.md": [RES + f for f in ("reflow.md", "reflow_variants.md", "command_times.md")],
    "docs/sd-on-a-gpu.md": [RES + "sd_cpu.md", NB01],
    "docs/notes.md": [RES + "own_images.md", RES + "own_images_3000.md", RES + "own_images_new_content.md"]
    + [RES + "own_images_sweep.md"],
    "docs/library.md": [],
    "docs/dropin-loss.md": [],
}

# decimal numbers that are not results: (page, the text that holds them, why)
NOT_RESULTS = [
    ("docs/reflow.md", "within 1.5x of", "the goal the issue set, not a measurement"),
    ("docs/reflow.md", "the 1.5x FD goal", "the same goal"),
    ("docs/sd-on-a-gpu.md", "2.25 times the latents", "arithmetic: (768 / 512)^2"),
    ("docs/training.md", "an EMA (decay 0.999)", "the paper's setting, not a measurement"),
    ("docs/notes.md", "transformers < 5.24 while peft 0.22", "version numbers"),
    ("docs/notes.md", "torch 2.11", "a version number"),
    ("docs/notes.md", "(5.24's", "a version number"),
]
# never results: model, section and paper names (SD 1.5, §9.1, notebook section 3.2, arXiv:2209.03003)
NAMES = re.compile(r"(SD|Diffusion) \d\.\d( ?/ ?\d\.\d)?|§\d+(\.\d+)?(-\d+)?|section \d+\.\d+|arXiv:\d+\.\d+")
DECIMAL = re.compile(r"\d+\.\d+")


# --- reading the sources -----------------------------------------------------------------------------------------


def read(path: str) -> str:
    return (ROOT / path).read_text(encoding="utf-8")


def notebook_text(path: str) -> str:
    """The text outputs of a notebook (what it printed), not its code or images."""
    out = []
    for cell in json.loads(read(path))["cells"]:
        for o in cell.get("outputs", []):
            out.append("".join(o.get("text") or o.get("data", {}).get("text/plain", "")))
    return "\n".join(out)


def source_numbers(path: str) -> list[float]:
    """Every number a source holds: a JSON file's values, a notebook's printed text, a text file's numerals."""
    if path.endswith(".json"):
        values, stack = [], [json.loads(read(path))]
        while stack:
            v = stack.pop()
            if isinstance(v, dict):
                stack.extend(v.values())
            elif isinstance(v, list):
                stack.extend(v)
            elif isinstance(v, (int, float)) and not isinstance(v, bool):
                values.append(float(v))
            elif isinstance(v, str):
                values.extend(float(x) for x in re.findall(r"\d+(?:\.\d+)?", v))
        return values
    text = notebook_text(path) if path.endswith(".ipynb") else read(path)
    return [float(x) for x in re.findall(r"\d+(?:\.\d+)?", text)]


def section(text: str, title_start: str) -> str:
    """The body of the markdown section titled ``title_start`` (then nothing, or ' (...' or ': ...'), up to the
    next heading; so a new section ("Cost decomposition") does not shadow an old one ("Cost")."""
    m = re.search(rf"^#+ {re.escape(title_start)}(?:$| \(|:).*?$(.*?)(?=^#+ |\Z)", text, re.M | re.S)
    assert m, f"no section {title_start!r}"
    return m.group(1)


def wilson(k: int, n: int, z: float = 1.96) -> str:
    # Wilson score interval: (p + z^2/2n +- z sqrt(p(1-p)/n + z^2/4n^2)) / (1 + z^2/n), p = k/n
    p, d = k / n, 1 + z * z / n
    center, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return f"[{center - half:.2f}, {center + half:.2f}]"


# --- recomputing the quoted texts --------------------------------------------------------------------------------


def objectives_difference(block: str, metric: str, other: str, label: str):
    """'FD -377.6 [-378.9, -376.4]' from a block's line 'fd(diff2flow) - fd(fm) = -377.6 (95 % CI -378.9 to ...'."""

    def make(path):
        body = section(read(path), block)
        m = re.search(rf"{metric}\(diff2flow\) - {metric}\({other}\) = (\S+) \(95 % CI (\S+) to (\S+),", body)
        return f"{label} {m.group(1)} [{m.group(2)}, {m.group(3)}]".strip()

    return make


def longer_row(step: int):
    """'| 500 | 140.6 / 0.43 | 102.1 / 0.65 | 400.7 / 0.03 | +38.5 [+10.1, +66.9] | -0.22 [-0.26, -0.19] |': one
    step of the 3000-step block's curves (Diff2Flow, diffusion, naive FM), then Diff2Flow minus diffusion."""

    def make(path):
        rows = {}
        for line in section(read(path), LONGER).splitlines():
            cells = [c.strip() for c in line.strip("|").split("|")]
            rows[cells[0]] = cells
        column = rows["objective"].index(f"step {step}: FD / prompt acc")
        diff = rows["paired difference"].index(f"step {step}")
        means = [rows[o][column] for o in ("diffusion", "fm")]
        gaps = [rows[f"{m}(diff2flow) - {m}(diffusion)"][diff] for m in ("fd", "prompt_accuracy")]
        return "| " + " | ".join([str(step), rows["diff2flow"][column], *means, *gaps]) + " |"

    return make


def tuned_row(objective: str, label: str = ""):
    """'| diff2flow | 0.003 | 149.8 | 0.41 | +63.3 [+42.4, +80.0] | -0.25 [-0.29, -0.20] |': an objective at its
    picked LR, paired with diffusion at its own, from the report's equal-tuning table (its seeds column left out)."""

    def make(path):
        body = section(read(path), "Equal tuning")
        line = next(ln for ln in body.splitlines() if ln.startswith(f"| {objective} |"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        diffs = [re.sub(r"^(\S+) \(95 % CI (\S+) to (\S+), \d+ seeds\)$", r"\1 [\2, \3]", c) for c in cells[5:7]]
        return "| " + " | ".join([label or objective, cells[1], *cells[3:5], *diffs]) + " |"

    return make


def tuned_pair(objective: str):
    """'FD +63.3 [+42.4, +80.0], prompt accuracy -0.25 [-0.29, -0.20]': the differences of ``tuned_row``."""

    def make(path):
        cells = tuned_row(objective)(path).strip("| ").split(" | ")
        return f"FD {cells[4]}, prompt accuracy {cells[5]}"

    return make


def decomposition_row(what: str):
    """'| +128.8 [+100.9, +149.5] | -0.08 [-0.09, -0.07] | +61.2 [...] | -0.10 [...] |': one step of the
    decomposition, FD and prompt accuracy on the eps then the v prior, from each prior's section's lines
    '- WHAT: fd(b) - fd(a) = +128.8 (95 % CI +100.9 to +149.5, 5 seeds)'."""

    def make(path):
        cells = []
        for model in ("tiny-shapes-eps", "tiny-shapes-v"):
            title = f"## Decomposition: Diff2Flow taken apart ({model},"
            body = read(path).split(title, 1)[1].split("\n## ", 1)[0]
            for metric in ("fd", "prompt_accuracy"):
                m = re.search(
                    rf"^- {re.escape(what)}: {metric}\(\S+\) - {metric}\(\S+\) = (\S+) \(95 % CI (\S+) to (\S+),",
                    body,
                    re.M,
                )
                cells.append(f"{m.group(1)} [{m.group(2)}, {m.group(3)}]")
        return "| " + " | ".join(cells) + " |"

    return make


def cost_ratio(path):
    """'0.946 [0.866, 1.013]' from the Cost table's diff2flow row."""
    m = re.search(r"^\| diff2flow \| \S+ \| (\S+) \((\S+) to (\S+)\) \|", section(read(path), "Cost"), re.M)
    return f"{m.group(1)} [{m.group(2)}, {m.group(3)}]"


def table_row(block_title: str, row_start: str, columns: slice, fmt: str, after: str = ""):
    """Cells of the first row starting with ``row_start`` in a markdown section (or the whole file, or the part
    after the text ``after``), formatted by ``fmt``."""

    def make(path):
        body = section(read(path), block_title) if block_title else read(path)
        body = body[body.index(after) :]
        line = next(ln for ln in body.splitlines() if ln.startswith(row_start))
        return fmt.format(*[c.strip() for c in line.strip("|").split("|")][columns])

    return make


def step0(*wanted: tuple[str, str, str], sep: str = " / "):
    """The untouched prior's metrics, from the objectives grid's step-0 evaluations: (cell key start, metric, fmt)."""

    def make(path):
        cells = [json.loads(line) for line in read(path).splitlines()]
        step0s = {c["curve"][0]["step0_key"]: c["curve"][0]["metrics"] for c in cells if c.get("kind") == "cell"}
        values = [next(m for k, m in step0s.items() if k.startswith(key))[metric]["value"] for key, metric, _ in wanted]
        return sep.join(fmt.format(v) for v, (_, _, fmt) in zip(values, wanted))

    return make


def prior_quality(path):
    """A row of the priors' quality table, from the prior's build record."""
    build = json.loads(read(path))
    q = build["quality"]
    k = round(q["prompt_accuracy"] * q["num_samples"])
    return f"| {build['name']} | {q['prompt_accuracy']:.2f} | {wilson(k, q['num_samples'])} |"


def covered_range(path):
    m = re.search(r"SD: t in (\[\S+, \S+\])", notebook_text(path))
    return m.group(1)


def vocabulary_cost(path):
    """'about 0.3': known words minus the dataset's own words, both at 3000 steps."""
    rows = {r["variant"]: r["correct"] / r["n"] for r in map(json.loads, read(path).splitlines())}
    return f"about {rows['known-unet-3k'] - rows['te-3k']:.1f}"


def train_cost_rows(path):
    """The numbers of every row of the cost table, in the file's order."""
    rows = json.loads(read(path))["rows"]
    return "\n".join(
        f"| {r['seconds_per_step']:.4f} | {r['ratio_to_diffusion']:.2f} | {r['ratio_min']:.2f} - {r['ratio_max']:.2f} |"
        for r in rows
    )


OBJ, DEMO, NOVEL = RES + "objectives.md", "The demo's budget", "New content"
LONGER = "A longer budget"  # the 3000-step block (issue #24, question 4)
PA = "prompt_accuracy"
D2F, DIF = "tiny-shapes-eps|shapes-target|diff2flow", "tiny-shapes-eps|shapes-target|diffusion"  # cell keys
OWN = RES + "own_images_new_content.md"
AUTO = RES + "own_images_auto.jsonl"


def newest(path: str, key: str, value: str, **also) -> dict:
    """The last record of a JSONL results file whose ``key`` is ``value`` and whose other keys are as ``also`` says
    (a rerun appends; the newest counts)."""
    records = map(json.loads, read(path).splitlines())
    return [r for r in records if r[key] == value and all(r.get(k) == v for k, v in also.items())][-1]


PLAIN = "d2f train --data FOLDER"
BEST_REFLOW = "8192 pairs, 8000 steps"  # the best reflow variant (benchmarks/reflow_variants.py)
ROW8 = "| " + " | ".join(["{}"] * 8) + " |"  # a whole table row of 8 cells, as written
WORDS = PLAIN + " --model tiny-shapes-eps-words"  # the prior whose text encoder knows English words


def plain_command(dataset: str, which: str = "after", command: str = PLAIN):
    """'0.63 [0.53, 0.72]': a dataset's accuracy with its interval, the newest record of own_images_auto.jsonl
    for ``command`` (default: the plain one)."""

    def make(path):
        score = newest(path, "dataset", dataset, command=command)[which]
        return f"{score['accuracy']:.2f} [{score['low']:.2f}, {score['high']:.2f}]"

    return make


def heldout_fd(dataset: str):
    """'192.1 to 2.0': the held-out FD of a dataset's run (the plain command) at step 0 and at the end."""

    def make(path):
        curve = newest(path, "dataset", dataset, command=PLAIN)["heldout_curve"]
        return f"{curve[0]['fd_heldout']:.1f} to {curve[-1]['fd_heldout']:.1f}"

    return make


def command_time(command: str):
    """'230 s wall, 220 s by its own count': the newest timing of a command alone on the machine."""

    def make(path):
        r = newest(path, "command", command)
        return f"{r['wall_seconds']:.0f} s wall, {r['own_seconds']:.0f} s by its own count"

    return make


QUOTES = [
    ("docs/own-images.md", None, RES + "command_times.jsonl", command_time("own-images")),
    *[("README.md", None, AUTO, plain_command(name)) for name in ("digits", "letters", "patterns")],
    *[
        ("docs/own-images.md", None, AUTO, plain_command(name, which))
        for name in ("digits", "letters", "patterns")
        for which in ("before", "after")
    ],
    *[("docs/own-images.md", None, AUTO, heldout_fd(name)) for name in ("digits", "letters", "patterns")],
    *[
        (page, None, AUTO, plain_command(name, "after", command))
        for page, commands in (
            ("README.md", (WORDS,)),
            ("docs/own-images.md", (WORDS, WORDS + " --train-text-encoder")),
        )
        for command in commands
        for name in ("digits", "letters", "patterns")
    ],
    # issue #24's equal tuning: every objective at its own picked LR against diffusion at its own
    *[
        ("docs/objectives.md", None, OBJ, tuned_row(objective, label))
        for objective, label in (
            ("diffusion", ""),
            ("diff2flow", ""),
            ("diff2flow-discrete", "diff2flow-discrete (the loss-only bridge)"),
            ("diff2flow-unweighted", ""),
            ("diffusion-fm-t", ""),
            ("fm", "naive fm"),
        )
    ],  # fmt: skip
    ("README.md", None, OBJ, tuned_pair("diff2flow")),
    *[("docs/objectives.md", None, OBJ, longer_row(step)) for step in (500, 1000, 2000, 3000)],
    *[
        (page, "FD -0.8 [-1.2, -0.4]", OBJ, objectives_difference(LONGER, "fd", "diffusion", "FD"))
        for page in ("README.md", "docs/objectives.md")
    ],
    (
        "docs/objectives.md",
        "prompt accuracy -0.02 [-0.03, -0.01]",
        OBJ,
        objectives_difference(LONGER, "prompt_accuracy", "diffusion", "prompt accuracy"),
    ),
    (
        "docs/objectives.md",
        "0.89 / FD 24.4",
        RES + "objectives.jsonl",
        step0(
            *[
                ("tiny-shapes-v|shapes-base|diffusion|48px|", m, f)
                for m, f in (("prompt_accuracy", "{:.2f}"), ("fd", "FD {:.1f}"))
            ]
        ),
    ),
    ("README.md", "FD -377.6 [-378.9, -376.4]", OBJ, objectives_difference(DEMO, "fd", "fm", "FD")),
    ("README.md", "+0.87 [+0.86, +0.88]", OBJ, objectives_difference(DEMO, "prompt_accuracy", "fm", "")),
    ("README.md", "FD +5.7 [+3.8, +7.6]", OBJ, objectives_difference(DEMO, "fd", "diffusion", "FD")),
    ("README.md", "-0.06 [-0.07, -0.04]", OBJ, objectives_difference(DEMO, "prompt_accuracy", "diffusion", "")),
    ("README.md", "+0.17 [+0.14, +0.20]", OBJ, objectives_difference(NOVEL, "prompt_accuracy", "diffusion", "")),
    ("README.md", "FD -11.0 [-11.8, -10.1]", OBJ, objectives_difference(NOVEL, "fd", "diffusion", "FD")),
    ("README.md", "0.946 [0.866, 1.013]", OBJ, cost_ratio),
    ("README.md", "0.94 [0.89, 0.96]", RES + "reflow.md", table_row("", "| student: prior | 2 |", slice(3, 4), "{}")),
    *[
        ("README.md", None, RES + "reflow_variants.md", table_row("", f"| student | {BEST_REFLOW} | {n} |", cols, fmt))
        for n, cols, fmt in ((2, slice(4, 6), "{} and FD {}"), (1, slice(4, 5), "{} at one"))
    ],
    ("README.md", "0.40 [0.33, 0.47]", RES + "reflow.md", table_row("", "| teacher: prior | 2 |", slice(3, 4), "{}")),
    # issue #23's goal table, both teachers: each row as the benchmark's report writes it
    *[
        (page, None, RES + "reflow_variants.md", table_row("Both teachers", f"| {teacher} |", slice(0, 8), ROW8))
        for page in ("README.md", "docs/reflow.md")
        for teacher in ("prior", "finetune")
    ],
    (
        "README.md",
        "4.37 GiB at 64 px",
        RES + "sd_cpu.md",
        table_row("", "| SD 1.5 | LoRA rank 4 (cache", slice(4, 5), "{} at 64 px"),
    ),
    ("README.md", "[0.0640, 0.9717]", NB01, covered_range),
    ("docs/sd-on-a-gpu.md", "[0.0640, 0.9717]", NB01, covered_range),
    ("docs/objectives.md", "0.946 [0.866, 1.013]", OBJ, cost_ratio),
    *[
        ("docs/objectives.md", None, OBJ, decomposition_row(what))
        for what in (
            "Diff2Flow's time density",
            "the FM target on the clamped ends",
            "the loss weight w(t)",
            "the loss weight at diffusion's timesteps (the loss-only bridge)",
            "the input scaling c(t)",
        )
    ],
    (
        "docs/objectives.md",
        "175.0 / 178.9",
        RES + "objectives.jsonl",
        step0((D2F, "fd", "{:.1f}"), (DIF, "fd", "{:.1f}")),
    ),
    ("docs/objectives.md", "0.98 / 1.00", RES + "objectives.jsonl", step0((D2F, PA, "{:.2f}"), (DIF, PA, "{:.2f}"))),
    (
        "docs/training.md",
        "175.0 and 0.98",
        RES + "objectives.jsonl",
        step0((D2F, "fd", "{:.1f}"), (D2F, PA, "{:.2f}"), sep=" and "),
    ),
    ("docs/training.md", None, RES + "train_cost.json", train_cost_rows),
    ("docs/world.md", "| tiny-shapes-eps | 1.00 | [0.94, 1.00] |", EPS_BUILD, prior_quality),
    ("docs/world.md", "| tiny-shapes-v | 1.00 | [0.94, 1.00] |", V_BUILD, prior_quality),
    ("docs/world.md", "| tiny-shapes-eps-words | 1.00 | [0.94, 1.00] |", WORDS_BUILD, prior_quality),
    *[
        (
            "docs/world.md",
            None,
            RES + "text_encoders.md",
            table_row("", f"| {prior} |", slice(0, 5), "| {} | {} | {} | {} | {} |"),
        )
        for prior in ("tiny-shapes-eps", "tiny-shapes-eps-words")
    ],
    ("docs/own-images.md", "about 0.3", RES + "own_images_sweep.jsonl", vocabulary_cost),
    # notebook prose (the script is the source of the notebook); only quoted, not scanned
    (
        "tutorials/05_ecosystem.py",
        "peaks at 6.85 GiB at 512 px",
        RES + "sd_cpu.md",
        table_row("", "| SD 1.5 | LoRA rank 4 (cache on)", slice(4, 5), "peaks at {} at 512 px", after="512 px ("),
    ),
]


# --- the checks, as functions of a page's text (so that a test can feed them an edited copy) --------------------


def flat(text: str) -> str:
    """One space for every run of whitespace, so that a quote may wrap anywhere on the page."""
    return " ".join(text.split())


def quote_errors(page: str, text: str) -> list[str]:
    text, errors = flat(text), []
    for qpage, quoted, source, make in QUOTES:
        if qpage != page:
            continue
        expected = make(source)
        for line in expected.splitlines() if quoted is None else [quoted]:
            if quoted is not None and expected != quoted:
                errors.append(f"{page}: quotes {quoted!r} but {source} gives {expected!r}")
            elif line not in text:
                errors.append(f"{page}: {line!r} (from {source}) is not on the page")
    return errors


def prose(page: str, text: str) -> str:
    """The page without code, link targets, quoted texts, non-results and names: what the scan reads."""
    text = flat(text)
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    for qpage, quoted, source, make in QUOTES:
        if qpage == page:
            for q in make(source).splitlines() if quoted is None else [quoted]:
                text = text.replace(q, " ")
    for npage, held, _why in NOT_RESULTS:
        if npage == page:
            text = text.replace(held, " ")
    return NAMES.sub(" ", text)


def unsourced(page: str, text: str) -> list[str]:
    values = [v for s in SOURCES[page] for v in source_numbers(s)]
    errors = []
    for m in DECIMAL.finditer(prose(page, text)):
        quoted, digits = m.group(), len(m.group().split(".")[1])
        if not any(f"{v:.{digits}f}" == quoted for v in values):
            context = prose(page, text)[max(0, m.start() - 40) : m.end() + 20].replace("\n", " ")
            errors.append(f"{page}: {quoted} ('...{context}...') is in none of {SOURCES[page] or 'its (no) sources'}")
    return errors


# --- the tests --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("page", sorted(SOURCES))
def test_every_quoted_number_comes_from_its_file(page):
    text = read(page)
    errors = quote_errors(page, text) + unsourced(page, text)
    assert not errors, "\n".join(errors)


def test_quotes_in_tutorial_prose_come_from_their_files():
    pages = sorted({page for page, *_ in QUOTES} - set(SOURCES))
    errors = [e for page in pages for e in quote_errors(page, read(page).replace("\n# ", "\n"))]
    assert pages and not errors, "\n".join(errors)


def test_the_readme_links_every_docs_page_and_the_bridge_first():
    readme = read("README.md")
    links = re.findall(r"\]\((docs/[^)#]+)", readme)
    assert links[0] == "docs/bridge.md", links[:3]
    missing = [p for p in SOURCES if p.startswith("docs/") and p not in links]
    assert not missing, f"docs pages the README does not link: {missing}"
    assert len(readme.splitlines()) <= 250


def test_a_changed_number_fails_with_page_number_and_source():
    text = read("docs/reflow.md")
    assert not unsourced("docs/reflow.md", text)
    errors = unsourced("docs/reflow.md", text.replace("/ 146.2 |", "/ 147.2 |"))
    assert len(errors) == 1 and "docs/reflow.md: 147.2" in errors[0] and RES + "reflow.md" in errors[0], errors
    # a quoted interval that drifts from its file fails too
    readme = read("README.md")
    errors = quote_errors("README.md", readme.replace("0.946 [0.866, 1.013]", "0.95 [0.87, 1.01]"))
    assert len(errors) == 1 and "'0.946 [0.866, 1.013]' (from benchmarks/results/objectives.md)" in errors[0], errors


def test_a_new_hand_typed_number_fails():
    text = read("docs/sampling.md") + "\nOn a GPU it is 13.57 times faster.\n"
    errors = unsourced("docs/sampling.md", text)
    assert len(errors) == 1 and "docs/sampling.md: 13.57" in errors[0], errors


def sd_commands(text: str) -> set[str]:
    """The one-line ``d2f train`` commands of SD 1.5 / 2.1 in a page's bash blocks."""
    lines = re.findall(r"^\s*d2f train --model (?:stable-diffusion-v1-5|sd2-community)/.*$", text, re.M)
    return {line.strip() for line in lines}


def tutorial_commands() -> dict[str, str]:
    """SD15, SD21, SMOKE, CONTROL and SAMPLE as tutorial 5 builds them (its assignments, run alone)."""
    src = read("tutorials/05_ecosystem.py")
    names: dict[str, str] = {}
    exec(src[src.index("SD15 = (") : src.index("COMMANDS = {")], names)  # string literals and .replace only
    return {k: names[k] for k in ("SD15", "SD21", "SMOKE", "CONTROL", "SAMPLE")}


def test_one_gpu_recipe_in_the_readme_the_docs_page_and_tutorial_5():
    tutorial = tutorial_commands()
    readme, docs = read("README.md"), read("docs/sd-on-a-gpu.md")
    assert sd_commands(readme) == {tutorial["SD15"], tutorial["SD21"]}
    assert sd_commands(docs) == {tutorial[k] for k in ("SD15", "SD21", "SMOKE", "CONTROL")}
    assert tutorial["SAMPLE"] in docs
    for text in (readme, docs, read("tutorials/05_ecosystem.py")):
        assert 'pip install -e ".[train,plot]"' in text
        # the old install line, which lacks what d2f train needs, as a command of its own
        assert not re.search(r"^[#\s]*pip install -e \.\s*(#.*)?$", text, re.M)
