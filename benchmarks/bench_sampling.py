"""Few-step accuracy of one ODE under three discretisations: FM Euler, FM Heun and DDIM.

    python benchmarks/bench_sampling.py [--priors tiny-shapes-eps tiny-shapes-v] [--out benchmarks/sampling.png]

For every budget of 2, 4, 8, 16, 32 and 64 network calls, on each built-in prior (zero-shot, no finetuning):

- all samplers start from the same state, the covered range's noise end: DDIM's z = noise at tau = N-1, i.e.
  the FM state x = z / c(t_min) at t_min (docs/math.md §11), and integrate to the data end t = 1;
- FM Euler: ``time_grid`` uniform on [t_min, 1], K = budget steps; DDIM: trailing timesteps (``ddim_grid``),
  K = budget; FM Heun: K = (budget + 1) // 2 steps, 2K - 1 <= budget calls (its last step is Euler);
- error: the RMS distance in latent space to a reference end point (FM Heun with 500 steps = 999 calls, the
  "1000-step reference" one might expect; second order, so its own error is far below every entry), averaged over the
  batch;
- prompt accuracy: the world's evaluator (``d2f.world.metrics.prompt_accuracy``) on the decoded images.

Same prompts (the world's 24, twice), seeds 0..47, guidance 7.5. Prints a markdown table and writes a PNG
of error against network calls.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from d2f.core.schedule import Schedule
from d2f.core.timemap import scale, t_range
from d2f.pipeline import decode, initial_noise, load_pipeline, sample_latents
from d2f.sampling import ddim_grid, time_grid

BUDGETS = (2, 4, 8, 16, 32, 64)
SAMPLERS = ("euler", "heun", "ddim")


def grid_for(sampler: str, calls: int, schedule: Schedule, t_min: float) -> tuple[torch.Tensor, int]:
    """(grid, network calls used) for a budget of ``calls``."""
    if sampler == "ddim":
        return ddim_grid(schedule, calls), calls
    if sampler == "heun":
        steps = (calls + 1) // 2
        return time_grid(steps, t_start=t_min), 2 * steps - 1
    return time_grid(calls, t_start=t_min), calls


def rms(a: torch.Tensor, b: torch.Tensor) -> float:
    """Mean over the batch of the per-sample RMS difference."""
    return float((a - b).flatten(1).pow(2).mean(1).sqrt().mean())


def bench_prior(name: str, prompts: list[str], guidance: float, ref_steps: int) -> list[dict]:
    from d2f.world.metrics import prompt_accuracy

    pipe = load_pipeline(name)
    schedule = Schedule.from_config(dict(pipe.scheduler.config))
    t_min = t_range(schedule)[0]
    z = initial_noise(pipe, len(prompts), 32, 32, seed=0)
    x = z / float(scale(schedule, torch.tensor(t_min)))  # the FM state of z at t_min

    def run(sampler: str, ts) -> torch.Tensor:
        # a given noise is the FM state at ts[0] as it is: every sampler starts from exactly the same x
        return sample_latents(pipe, prompts, sampler=sampler, steps=1, guidance=guidance, noise=x, ts=ts)

    start = time.time()
    reference = run("heun", time_grid(ref_steps, t_start=t_min))
    ref_acc = prompt_accuracy(decode(pipe, reference), prompts)
    print(
        f"{name}: reference (FM Heun, {ref_steps} steps) in {time.time() - start:.0f} s, prompt accuracy {ref_acc:.3f}",
        flush=True,
    )
    rows = []
    for budget in BUDGETS:
        for sampler in SAMPLERS:
            ts, calls = grid_for(sampler, budget, schedule, t_min)
            latents = run(sampler, ts)
            rows.append(
                dict(
                    prior=name,
                    budget=budget,
                    sampler=sampler,
                    calls=calls,
                    error=rms(latents, reference),
                    prompt_accuracy=prompt_accuracy(decode(pipe, latents), prompts),
                    reference_accuracy=ref_acc,
                )
            )
    return rows


def table(rows: list[dict]) -> str:
    lines = [
        "| prior | calls | FM Euler error | FM Heun error | DDIM error | FM Euler acc | FM Heun acc | DDIM acc |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    by = {(r["prior"], r["budget"], r["sampler"]): r for r in rows}
    for prior in dict.fromkeys(r["prior"] for r in rows):
        for budget in BUDGETS:
            e, h, d = (by[(prior, budget, s)] for s in SAMPLERS)
            lines.append(
                f"| {prior} | {budget} | {e['error']:.4f} | {h['error']:.4f} ({h['calls']}) | "
                f"{d['error']:.4f} | {e['prompt_accuracy']:.2f} | {h['prompt_accuracy']:.2f} | "
                f"{d['prompt_accuracy']:.2f} |"
            )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    priors = list(dict.fromkeys(r["prior"] for r in rows))
    fig, axes = plt.subplots(1, len(priors), figsize=(5 * len(priors), 4), squeeze=False)
    for ax, prior in zip(axes[0], priors):
        for sampler, label in zip(SAMPLERS, ("FM Euler", "FM Heun", "DDIM")):
            pts = [(r["calls"], r["error"]) for r in rows if r["prior"] == prior and r["sampler"] == sampler]
            ax.loglog(*zip(*pts), "o-", label=label)
        ax.set(xlabel="network calls", ylabel="RMS latent error vs reference", title=f"{prior} (zero-shot)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--priors", nargs="+", default=["tiny-shapes-eps", "tiny-shapes-v"])
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--repeats", type=int, default=2, help="Images per world prompt (24 prompts).")
    parser.add_argument("--ref-steps", type=int, default=500, help="FM Heun steps of the reference.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/sampling.png"))
    args = parser.parse_args(argv)
    from d2f.world.shapes import all_prompts

    prompts = all_prompts() * args.repeats
    rows = [r for name in args.priors for r in bench_prior(name, prompts, args.guidance, args.ref_steps)]
    print(
        f"\n{len(prompts)} images, guidance {args.guidance}; error = mean RMS latent distance to FM Heun "
        f"with {args.ref_steps} steps from the same start (z at tau = N-1); Heun's calls in brackets\n"
    )
    print(table(rows))
    plot(rows, args.out)
    print(f"\nplot written to {args.out}")


if __name__ == "__main__":
    main()
