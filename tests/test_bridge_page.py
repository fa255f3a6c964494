"""The numbers quoted on docs/bridge.md and docs/math.md, recomputed: a page that drifts fails, naming the number.

Each ``Quote`` is a number in the text, found by the words around it, and the value it must show: SD's schedule
numbers recomputed with ``d2f.core`` (and ``loss_weight``), float-format facts from torch, and the one result
math.md quotes, read from tutorial 3's committed outputs. A quoted number passes when it is the value rounded to
the digits it prints (``0.0640`` for 0.06404, ``244`` for 243.8). The tests also feed doctored page texts to the
same check, to show that each quote can fail, and run docs/figures/bridge.py into a temporary folder so the
drawing cannot rot.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from d2f.core.schedule import PRESETS, Schedule
from d2f.core.timemap import scale, t_of_tau, t_range, tau_of_t
from d2f.parametrizations import loss_weight
from d2f.sampling import ddim_timesteps

ROOT = Path(__file__).resolve().parent.parent
BRIDGE = ROOT / "docs" / "bridge.md"
MATH = ROOT / "docs" / "math.md"
FIGURE_SCRIPT = ROOT / "docs" / "figures" / "bridge.py"
TUTORIAL_3 = ROOT / "tutorials" / "03_velocity_and_sampling.ipynb"
F64 = torch.float64
NUM = r"([0-9]+(?:\.[0-9]+)?)"
# the rows of tutorial 3's accuracy table that math.md §10 quotes: (prior, sampler, steps)
TUTORIAL_3_ROWS = [
    (prior, sampler, 25) for prior in ("tiny-shapes-eps", "tiny-shapes-v") for sampler in ("euler", "ddim")
]


def lit(text: str) -> str:
    """``text`` as a regex that matches it literally, any run of whitespace (a line break too) for a space."""
    return r"\s+".join(re.escape(part) for part in text.split())


@dataclass(frozen=True)
class Quote:
    """A quoted number: ``pattern`` has one group, the number; every match in the text must show ``value``."""

    name: str
    pattern: str
    value: float


def q(name: str, before: str, value: float, after: str = "") -> Quote:
    return Quote(name, lit(before) + r"\s*" + NUM + (r"\s*" + lit(after) if after else ""), value)


def shows(printed: str, value: float) -> bool:
    """True if ``printed`` is ``value`` rounded to the digits it prints."""
    decimals = len(printed.split(".")[1]) if "." in printed else 0
    return abs(float(printed) - value) <= 0.5 * 10.0**-decimals * (1 + 1e-9)


def check_numbers(text: str, quotes: list[Quote]) -> list[str]:
    """One line per quote that is missing from ``text`` or shows a number other than its value."""
    failures = []
    for quote in quotes:
        matches = list(re.finditer(quote.pattern, text))
        if not matches:
            failures.append(f"{quote.name}: not found (pattern {quote.pattern!r}); reword the test or the page")
        for match in matches:
            if not shows(match.group(1), quote.value):
                failures.append(f"{quote.name}: the page says {match.group(1)}, its source gives {quote.value:.6g}")
    return failures


@functools.cache
def sd() -> dict[str, float]:
    """SD 1.x's bridge numbers (``Schedule.preset("sd15")``), computed with d2f.core."""
    schedule = Schedule.preset("sd15")
    n = schedule.num_train_timesteps
    t_min, t_max = t_range(schedule)
    ends = torch.tensor([t_min, 0.5, t_max], dtype=F64)
    w = {p: loss_weight(schedule, ends, p).tolist() for p in ("epsilon", "v_prediction", "sample")}
    # E[w(t_eff)] under t ~ U[0, 1], and the share of it on t < 0.2 (trapezoid rule on a fine grid)
    t = torch.linspace(0, 1, 200_001, dtype=F64)
    w_eps = loss_weight(schedule, t, "epsilon")
    mean_w = float(torch.trapezoid(w_eps, t))
    low = t <= 0.2
    zero_snr = Schedule.preset("sd15", zero_terminal_snr=True)
    abar = schedule.alphas_cumprod
    # abar_0 as fp16 stores it; sigma_0 = sqrt(1 - abar_0)
    abar0_fp16 = float(abar[0].to(torch.float16))
    # alpha and sigma at tau = N-1 (the noise end) and tau = 0 (the data end)
    ends_tau = torch.tensor([n - 1.0, 0.0], dtype=F64)
    alpha, sigma = schedule.alpha(ends_tau), schedule.sigma(ends_tau)
    timesteps = ddim_timesteps(n, 50)
    return {
        "beta_start": PRESETS["sd15"]["beta_start"],
        "beta_end": PRESETS["sd15"]["beta_end"],
        "N": n,
        "t_min": t_min,
        "t_max": t_max,
        "tau_peak": float(tau_of_t(schedule, torch.tensor(0.5, dtype=F64))),
        "c_t_min": float(scale(schedule, torch.tensor(t_min, dtype=F64))),
        "c_t_max": float(scale(schedule, torch.tensor(t_max, dtype=F64))),
        "alpha_last": float(alpha[0]),
        "sigma_0": float(sigma[1]),
        "abar_last": float(abar[-1]),
        "sigma_over_alpha_last": float(sigma[0] / alpha[0]),
        # under t ~ U[0, 1]: P(t < t_min) = t_min, P(t > t_max) = 1 - t_max
        "clamped_low_pct": 100 * t_min,
        "clamped_high_pct": 100 * (1 - t_max),
        "clamped_pct": 100 * (t_min + 1 - t_max),
        # P(tau(t) < 100) = P(t > t(100)) = 1 - t(100)
        "p_tau_below_100_pct": 100 * (1 - float(t_of_tau(schedule, torch.tensor(100.0, dtype=F64)))),
        "uniform_i_below_100_pct": 100 * 100 / n,
        "mean_w_eps": mean_w,
        "w_eps_share_below_0.2_pct": 100 * float(torch.trapezoid(w_eps[low], t[low])) / mean_w,
        **{f"w_{p}_{at}": w[p][k] for p in w for k, at in enumerate(("t_min", "half", "t_max"))},
        "ddim_first": float(timesteps[0]),
        "ddim_second": float(timesteps[1]),
        "ddim_last": float(timesteps[-1]),
        "ztsnr_t_N-2_e-4": 1e4 * float(t_of_tau(zero_snr, torch.tensor(n - 2.0, dtype=F64))),
        "abar_0": float(abar[0]),
        "abar_0_fp16": abar0_fp16,
        "sigma_0_fp16_excess_pct": 100 * (math.sqrt((1 - abar0_fp16) / (1 - float(abar[0]))) - 1),
        # the spacing of floats in [512, 1024) is 512 * eps
        "fp16_spacing_512": 512 * torch.finfo(torch.float16).eps,
        "bf16_spacing_512": 512 * torch.finfo(torch.bfloat16).eps,
    }


def weight_row(label: str, names: tuple[str, str, str]) -> list[Quote]:
    """The three SD cells (t_max, 1/2, t_min) of a row of bridge.md's loss-weight table."""
    skip = r"[^|\n]*\|\s*"
    return [Quote(f"weight table: {n}", lit(label) + r"\s*" + skip * k + NUM, sd()[n]) for k, n in enumerate(names)]


def ddim_quotes() -> list[Quote]:
    """The trailing timesteps of 50-step DDIM, "999, 979, \\dots, 19"."""
    return [
        Quote("ddim_first", NUM + r",\s*\d+,\s*\\dots", sd()["ddim_first"]),
        Quote("ddim_second", r"\d+,\s*" + NUM + r",\s*\\dots,\s*\d", sd()["ddim_second"]),
        Quote("ddim_last", r"\d+,\s*\\dots,\s*" + NUM, sd()["ddim_last"]),
    ]


def schedule_quotes(v: dict[str, float]) -> list[Quote]:
    """SD's schedule and covered range, quoted the same way on both pages."""
    return [
        q("beta_start", "betas from", v["beta_start"]),
        q("beta_end", f"betas from {v['beta_start']} to", v["beta_end"]),
        q("N", "$N =", v["N"], "$"),
        q("t_min", r"t_{\min} \approx", v["t_min"]),
        q("t_max", r"t_{\max} \approx", v["t_max"]),
    ]


def bridge_quotes() -> list[Quote]:
    v = sd()
    return [
        *schedule_quotes(v),
        q("tau_peak", r"$\tau \approx", v["tau_peak"]),
        q("c_t_min", r"c(t_{\min}) \approx", v["c_t_min"]),
        q("c_t_max", r"c(t_{\max}) \approx", v["c_t_max"]),
        q("alpha_last", r"\alpha_{N-1} \approx", v["alpha_last"]),
        q("sigma_0", r"\sigma_0 \approx", v["sigma_0"]),
        q("clamped_low_pct", "uniform $t$, **", v["clamped_low_pct"], "%** of the draws lie below"),
        q("clamped_high_pct", "and **", v["clamped_high_pct"], "%** above"),
        *ddim_quotes(),
        *weight_row("| `epsilon` | $1/t^2$ |", ("w_epsilon_t_max", "w_epsilon_half", "w_epsilon_t_min")),
        *weight_row(
            "| `v_prediction` | $c^2$ |", ("w_v_prediction_t_max", "w_v_prediction_half", "w_v_prediction_t_min")
        ),
        *weight_row("| `sample` | $1/(1-t)^2$ |", ("w_sample_t_max", "w_sample_half", "w_sample_t_min")),
    ]


@functools.cache
def tutorial_3_accuracy() -> dict[tuple[str, str, int], float]:
    """Prompt accuracy by (prior, sampler, steps), from the table in tutorial 3's committed outputs (§3.4)."""
    nb = json.loads(TUTORIAL_3.read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    rows = re.findall(r"^(tiny-shapes-\w+)\s+(euler|ddim)\s+(\d+)\s+([0-9.]+)\s+\[", text, flags=re.M)
    return {(prior, sampler, int(steps)): float(acc) for prior, sampler, steps, acc in rows}


def math_quotes() -> list[Quote]:
    v = sd()
    accuracy = tutorial_3_accuracy()
    return [
        *schedule_quotes(v),
        q("alpha_last", "(SD: $", v["alpha_last"], "$ and $"),
        q("sigma_0", "$ and $", v["sigma_0"], "$), so every"),
        q("tau_peak", r"\tau \approx", v["tau_peak"]),
        q("w_epsilon_t_max", r"$\approx", v["w_epsilon_t_max"], r"$ at $t_{\max}$"),
        q("w_epsilon_half", r"$t_{\max}$, $", v["w_epsilon_half"], "$ at $t = 1/2$"),
        q("w_epsilon_t_min", r"$\approx", v["w_epsilon_t_min"], r"$ at $t_{\min}$"),
        q("clamped_low_pct", "uniform $t$:", v["clamped_low_pct"], "% and"),
        q("clamped_high_pct", "% and", v["clamped_high_pct"], "% of all samples"),
        q("p_tau_below_100_pct", r"1 - t(100) \approx", v["p_tau_below_100_pct"], r"\,\%"),
        q("uniform_i_below_100_pct", "against", v["uniform_i_below_100_pct"], "% for uniform $i$"),
        q("mean_w_eps", r"\mathbb{E}[1/t_{\text{eff}}^2] \approx", v["mean_w_eps"]),
        q("w_eps_share_below_0.2_pct", "carries about", v["w_eps_share_below_0.2_pct"], "%"),
        q("clamped_pct", "Those", v["clamped_pct"], "% of samples"),
        *ddim_quotes(),
        q("abar_last", r"$\bar{\alpha}_{N-1}$ is only $", v["abar_last"]),
        q("c_t_min", r"c(t_{\min}) \approx", v["c_t_min"]),
        q("ztsnr_t_N-2_e-4", r"t_{N-2} \approx", v["ztsnr_t_N-2_e-4"], r"\times 10^{-4}"),
        q("abar_0", r"$\bar{\alpha}_0 =", v["abar_0"]),
        q("abar_0_fp16", "rounds to $", v["abar_0_fp16"]),
        q("sigma_0_fp16_excess_pct", r"makes $\sigma_0$", v["sigma_0_fp16_excess_pct"], "% too large"),
        q("sigma_over_alpha_last", r"$\sigma/\alpha \approx", v["sigma_over_alpha_last"]),
        q("fp16_spacing_512", "are spaced by", v["fp16_spacing_512"]),
        q("bf16_spacing_512", "in bf16 by", v["bf16_spacing_512"]),
        *[
            q(
                f"tutorial 3 prompt accuracy, {' '.join(map(str, key))}",
                "reach prompt accuracy",
                accuracy.get(key, -1.0),
            )
            for key in TUTORIAL_3_ROWS
        ],
    ]


PAGES = {"bridge": (BRIDGE, bridge_quotes), "math": (MATH, math_quotes)}


@pytest.mark.parametrize("page", sorted(PAGES))
def test_quoted_numbers_match_d2f(page):
    path, quotes = PAGES[page]
    failures = check_numbers(path.read_text(), quotes())
    assert not failures, f"{path.relative_to(ROOT)} has drifted:\n" + "\n".join(failures)


def test_tutorial_3_table_is_read():
    # the four 25-step rows math.md §10 quotes; a renamed or reformatted table must fail here, not pass vacuously
    assert set(TUTORIAL_3_ROWS) <= set(tutorial_3_accuracy()), f"tutorial 3's table: {sorted(tutorial_3_accuracy())}"


def test_every_decimal_on_the_bridge_page_is_checked():
    """A new decimal number on docs/bridge.md needs a Quote: each lies inside a checked match (or is a name)."""
    text = BRIDGE.read_text()
    covered = [m.span(1) for quote in bridge_quotes() for m in re.finditer(quote.pattern, text)]
    names = [m.span() for m in re.finditer(r"SD 2\.1|§\d+\.\d+|section \d\.\d", text)]
    unchecked = [
        m.group()
        for m in re.finditer(r"\d+\.\d+", text)
        if not any(lo <= m.start() and m.end() <= hi for lo, hi in covered + names)
    ]
    assert not unchecked, f"docs/bridge.md quotes numbers no test checks: {unchecked}; add a Quote for each"


@pytest.mark.parametrize("page", sorted(PAGES))
def test_a_doctored_page_fails_naming_the_number(page):
    """Change each quoted number in turn (and delete one): the check names exactly that quote."""
    path, quotes = PAGES[page]
    text = path.read_text()
    for quote in quotes():
        match = re.search(quote.pattern, text)
        printed = match.group(1)
        decimals = len(printed.split(".")[1]) if "." in printed else 0
        wrong = f"{float(printed) * 2 + 1:.{decimals}f}"
        doctored = text[: match.start(1)] + wrong + text[match.end(1) :]
        failures = check_numbers(doctored, [quote])
        assert failures and quote.name in failures[0] and wrong in failures[0], (quote.name, failures)
    reworded = check_numbers(text.replace(r"t_{\min} \approx", "t_min is about"), quotes())
    assert any(f.startswith("t_min: not found") for f in reworded), reworded


@pytest.mark.parametrize("path", [BRIDGE, MATH], ids=["bridge", "math"])
def test_the_notebook_sections_cited_exist(path):
    """Each citation "notebook N, section N.M" names a heading "## N.M" of tutorials/0N_*.py."""
    cited = re.findall(r"[Nn]otebook (\d), section (\d\.\d)", path.read_text())
    assert cited, f"{path.name} cites no notebook section (the pattern of this test is out of date)"
    for notebook, section in cited:
        (script,) = (ROOT / "tutorials").glob(f"0{notebook}_*.py")
        assert f"# ## {section} " in script.read_text(), f"{path.name} cites notebook {notebook}, section {section}"


def test_shows_rounds_to_the_printed_digits():
    assert shows("0.0640", 0.06404) and shows("244", 243.8) and shows("4", 4.000000000000001)
    assert not shows("0.0641", 0.06404) and not shows("243", 243.8) and not shows("0.93", 1.0)


def test_math_md_links_the_bridge_page_first():
    head = MATH.read_text().split("\n## ")[0]
    assert "(bridge.md)" in head, "docs/math.md must link docs/bridge.md above its first section"


def test_the_drawing_script_runs_and_agrees_with_the_page(tmp_path):
    spec = importlib.util.spec_from_file_location("bridge_figure", FIGURE_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    path = module.main(tmp_path)
    assert path == tmp_path / "bridge.png" and path.stat().st_size > 10_000
    # and as a user runs it, in a process of its own
    run = subprocess.run([sys.executable, str(FIGURE_SCRIPT), "--out", str(tmp_path / "cli")], capture_output=True)
    assert run.returncode == 0 and (tmp_path / "cli" / "bridge.png").stat().st_size > 10_000, run.stderr[-2000:]
    assert (ROOT / "docs" / "figures" / "bridge.png").is_file(), "commit the figure: python docs/figures/bridge.py"
    assert "(figures/bridge.png)" in BRIDGE.read_text()
    # the figure labels the numbers the page quotes
    drawn = module.sd_numbers(Schedule.preset("sd15"))
    want = {"t_min": "t_min", "t_max": "t_max", "tau_peak": "tau_peak", "c_at_t_min": "c_t_min"}
    want |= {"w_eps_t_min": "w_epsilon_t_min", "w_eps_t_max": "w_epsilon_t_max"}
    want |= {"w_v_t_min": "w_v_prediction_t_min", "w_v_t_max": "w_v_prediction_t_max"}
    assert drawn.keys() == want.keys()
    for key, name in want.items():
        assert drawn[key] == pytest.approx(sd()[name], rel=1e-12), key
