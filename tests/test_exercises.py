"""The tutorials' exercises grade what they claim to: each grader (``tutorials/exercises.py``) passes the
reference solution (``tutorials/solutions/``), refuses the stub and plausible wrong answers, and each
notebook still ships the stub (the learner's job), followed by the cell that grades it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

TUTORIALS = Path(__file__).resolve().parent.parent / "tutorials"
sys.path.insert(0, str(TUTORIALS))
import exercises  # noqa: E402

# exercise -> the notebook it is in
NOTEBOOK = {
    "tau_from_t": "02_time_map",
    "velocity_from_v": "03_velocity_and_sampling",
    "ddim_step_as_fm_euler": "03_velocity_and_sampling",
    "paired_velocity": "06_reflow",
}


def stub(name):
    def function(*args):
        raise NotImplementedError

    function.__name__ = name
    return function


def wrong_answers(name):
    """Plausible mistakes a learner makes, each of which the grader must catch."""
    right = exercises.solution(name)
    if name == "tau_from_t":

        def segment_solve(lam_table, lam, flipped=False):
            i = torch.searchsorted(-lam_table, -lam).clamp(1, len(lam_table) - 1) - 1
            frac = (lam_table[i] - lam) / (lam_table[i] - lam_table[i + 1])
            return i + 1 - frac if flipped else i + frac

        yield lambda lam_table, t: segment_solve(lam_table, torch.log(t / (1 - t)))  # lam = logit(t): no factor 2
        yield lambda lam_table, t: segment_solve(lam_table, 2 * torch.log(t / (1 - t)), flipped=True)  # from i + 1
        yield lambda lam_table, t: (1 - t) * (len(lam_table) - 1)  # the naive linear map
    elif name == "velocity_from_v":
        yield lambda v, z, a, s: -right(v, z, a, s)  # eps_hat - x1_hat: the sign flipped
        yield lambda v, z, a, s: (s * z - a * v) - (a * z + s * v)  # alpha and sigma swapped
        yield lambda v, z, a, s: (a * z - s * v) - v  # the v output taken as the noise estimate
    elif name == "ddim_step_as_fm_euler":
        step = lambda z, e, a, s, a2, s2: (a2 / (a2 + s2) - a / (a + s)) * ((z - s * e) / a - e)  # noqa: E731
        yield lambda z, e, a, s, a2, s2: (a2 + s2) * (z / (a + s) - step(z, e, a, s, a2, s2))  # the sign flipped
        yield lambda z, e, a, s, a2, s2: z / (a + s) + step(z, e, a, s, a2, s2)  # x' returned, not z' = c' x'
        yield lambda z, e, a, s, a2, s2: z + (a2 - a) * ((z - s * e) / a - e)  # t replaced by alpha
    else:
        yield lambda x, t, x0, x1, h: -right(x, t, x0, x1, h)  # x0 - x1
        yield lambda x, t, x0, x1, h: right(x, 1 - t, x0, x1, h)  # x_t = t x0 + (1 - t) x1
        yield lambda x, t, x0, x1, h: right(x, t, x0, x1, 2 * h)  # the Gaussian's variance h^2 taken as h^2 / 4


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_the_solution_passes(name, capsys):
    solution = exercises.solution(name)
    assert exercises.grade(solution) is solution
    assert "passes the check" in capsys.readouterr().out


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_the_stub_falls_back_to_the_solution_or_fails_when_strict(name, capsys, monkeypatch):
    check = exercises.EXERCISES[name][0]
    with pytest.raises(NotImplementedError):
        check(stub(name))
    used = exercises.grade(stub(name))
    assert used.__code__.co_filename.startswith(str(TUTORIALS / "solutions"))
    assert "still open" in capsys.readouterr().out
    monkeypatch.setenv("D2F_EXERCISES", "strict")
    with pytest.raises(NotImplementedError):
        exercises.grade(stub(name))


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_wrong_answers_fail(name):
    check = exercises.EXERCISES[name][0]
    wrong = list(wrong_answers(name))
    assert len(wrong) == 3
    for answer in wrong:
        answer.__name__ = name
        with pytest.raises(AssertionError):
            check(answer)
        with pytest.raises(AssertionError):
            exercises.grade(answer)  # a wrong answer is not replaced by the solution


@pytest.mark.parametrize("name", sorted(exercises.EXERCISES))
def test_the_notebook_ships_the_stub_and_grades_it(name):
    nb = json.loads((TUTORIALS / f"{NOTEBOOK[name]}.ipynb").read_text())
    sources = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code"]
    stubs = [k for k, s in enumerate(sources) if f"def {name}(" in s]
    assert len(stubs) == 1, f"{NOTEBOOK[name]}: one cell must define {name}"
    assert "raise NotImplementedError" in sources[stubs[0]], "the committed notebook must leave the job open"
    assert f"grade({name})" in sources[stubs[0] + 1], "the cell after the stub must grade it"
    markdown = [("".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "markdown"]
    assert any("**Your job" in m and name in m for m in markdown), "a 'Your job' cell must introduce it"
