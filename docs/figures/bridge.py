"""The one-page picture of the Diff2Flow bridge (docs/bridge.md): writes docs/figures/bridge.png.

    python docs/figures/bridge.py [--out DIR]

Left: the three coordinate changes that read a diffusion model (tau, z, o) as a flow-matching model
(t, x_t, u_hat). Middle and right: SD 1.x's schedule (``Schedule.preset("sd15")``: scaled_linear, N = 1000;
SD 2.x keeps it) through the bridge: the time map t(tau) with the covered range [t_min, t_max], and the loss
weights w(t) of docs/math.md §9 with the clamp. Every number drawn is computed here with d2f.core and printed;
tests/test_bridge_page.py runs this script and recomputes every number docs/bridge.md quotes.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from d2f.core.schedule import Schedule  # noqa: E402
from d2f.core.timemap import t_of_tau, t_range, tau_of_t  # noqa: E402
from d2f.parametrizations import loss_weight  # noqa: E402

HERE = Path(__file__).resolve().parent
F64 = torch.float64


def sd_numbers(schedule: Schedule) -> dict[str, float]:
    """The schedule's bridge numbers that the figure labels (docs/math.md §4-§6, §9)."""
    t_min, t_max = t_range(schedule)
    ends = torch.tensor([t_min, 0.5, t_max], dtype=F64)
    w_eps = loss_weight(schedule, ends, "epsilon")
    # v weight = c(t)^2
    w_v = loss_weight(schedule, ends, "v_prediction")
    return {
        "t_min": t_min,
        "t_max": t_max,
        # c peaks at sqrt(2) where t = 1/2
        "tau_peak": float(tau_of_t(schedule, torch.tensor(0.5, dtype=F64))),
        "c_at_t_min": float(w_v[0].sqrt()),
        "w_eps_t_min": float(w_eps[0]),
        "w_eps_t_max": float(w_eps[2]),
        "w_v_t_min": float(w_v[0]),
        "w_v_t_max": float(w_v[2]),
    }


def _box(ax, x, y, text, color):
    ax.text(x, y, text, ha="center", va="center", fontsize=10, bbox=dict(boxstyle="round,pad=0.4", fc=color, ec="0.3"))


def _arrow(ax, start, end, text, both=False, dx=0.02):
    style = "<|-|>" if both else "-|>"
    ax.annotate("", xy=end, xytext=start, arrowprops=dict(arrowstyle=style, color="0.2", lw=1.3))
    mid = ((start[0] + end[0]) / 2 + dx, (start[1] + end[1]) / 2)
    ax.text(*mid, text, ha="left", va="center", fontsize=8.5)


def draw_diagram(ax, numbers: dict[str, float]):
    """Two rows (diffusion above, FM below), three columns (time, state, output), one arrow per change."""
    ax.set_xlim(0, 1), ax.set_ylim(0, 1), ax.axis("off")
    ax.set_title("the three coordinate changes of the bridge (docs/math.md)", fontsize=9)
    top, bottom, cols = 0.8, 0.3, (0.1, 0.42, 0.77)
    diff, fm = "#dde8f5", "#f5e6d3"
    ax.text(0.5, 0.93, "diffusion model: what the network knows", ha="center", fontsize=9, color="#2a5a8a")
    _box(ax, cols[0], top, r"$\tau \in [0, N-1]$", diff)
    _box(ax, cols[1], top, r"$z = \alpha x_1 + \sigma \epsilon$", diff)
    _box(ax, cols[2], top, r"$o = \mathrm{net}(z, \tau)$" + "\n" + r"$\epsilon$, $v$ or $x_1$", diff)
    ax.text(0.5, 0.1, "FM model: what d2f trains and integrates", ha="center", fontsize=9, color="#8a5a2a")
    _box(ax, cols[0], bottom, r"$t \in [0, 1]$", fm)
    _box(ax, cols[1], bottom, r"$x_t = t x_1 + (1-t) x_0$", fm)
    _box(ax, cols[2], bottom, r"$\hat u = \hat x_1 - \hat\epsilon$", fm)
    _arrow(
        ax,
        (cols[0], bottom + 0.08),
        (cols[0], top - 0.07),
        "(1) time map, §4\n" + r"$t = \frac{\alpha}{\alpha + \sigma}$" + "\n" + r"$= \mathrm{sigmoid}(\lambda/2)$",
        both=True,
    )
    _arrow(
        ax, (cols[1], bottom + 0.07), (cols[1], top - 0.07), "(2) scale, §6\n" + r"$z = c\, x_t$, $c = \alpha + \sigma$"
    )
    _arrow(ax, (cols[2], top - 0.1), (cols[2], bottom + 0.07), "(3) output, §7\n" + r"$o \to (\hat x_1, \hat\epsilon)$")
    ax.annotate("", xy=(cols[2] - 0.12, top), xytext=(cols[1] + 0.14, top), arrowprops=dict(arrowstyle="-|>", lw=1))
    ax.text(
        0.5,
        0.01,
        r"clamp, §5: $t_{\mathrm{eff}} = \mathrm{clip}(t, t_{\min}, t_{\max})$ for $\tau, \alpha, \sigma, c$;"
        + f"  SD: [{numbers['t_min']:.4f}, {numbers['t_max']:.4f}]",
        ha="center",
        fontsize=8.5,
    )


def draw_time_map(ax, schedule: Schedule, numbers: dict[str, float]):
    """t(tau) = sigmoid(lam(tau) / 2) over the table, with the covered range and the c peak."""
    tau = torch.linspace(0, schedule.num_train_timesteps - 1, 500, dtype=F64)
    ax.plot(tau, t_of_tau(schedule, tau), color="#2a5a8a")
    for name in ("t_min", "t_max"):
        ax.axhline(numbers[name], color="0.5", ls="--", lw=0.8)
    ax.text(450, numbers["t_max"] - 0.05, f"t_max = t(0) = {numbers['t_max']:.4f}", fontsize=8, color="0.3")
    ax.text(200, numbers["t_min"] + 0.02, f"t_min = t(N-1) = {numbers['t_min']:.4f}", fontsize=8, color="0.3")
    ax.plot([numbers["tau_peak"]], [0.5], "o", color="#8a5a2a", ms=4)
    ax.text(
        numbers["tau_peak"] + 30,
        0.52,
        "t = 1/2, c peaks at " + r"$\sqrt{2}$" + f"\nat tau = {numbers['tau_peak']:.2f}",
        fontsize=8,
    )
    ax.set_xlabel(r"diffusion timestep $\tau$"), ax.set_ylabel(r"FM time $t$  (0 = noise, 1 = data)")
    ax.set_title("(1) the time map, SD 1.x", fontsize=9)


def draw_weights(ax, schedule: Schedule, numbers: dict[str, float]):
    """w(t) = ||u_hat - u||^2 / ||o - target||^2 (§9): 1/t^2 for epsilon, c^2 for v, at t_eff."""
    t = torch.linspace(0, 1, 801, dtype=F64)
    ax.semilogy(t, loss_weight(schedule, t, "epsilon"), color="#2a5a8a", label=r"epsilon: $1/t^2$")
    ax.semilogy(t, loss_weight(schedule, t, "v_prediction"), color="#8a5a2a", label=r"v: $c^2$")
    for lo, hi in ((0, numbers["t_min"]), (numbers["t_max"], 1)):
        ax.axvspan(lo, hi, color="0.85")
    ax.text(
        numbers["t_min"] + 0.03,
        numbers["w_eps_t_min"],
        f"{numbers['w_eps_t_min']:.0f} at t_min",
        fontsize=7.5,
        va="center",
    )
    ax.text(0.52, 2.3, r"$c^2 = 2$ at $t = 1/2$", fontsize=7.5)
    ax.text(0.5, 0.92, "grey: clamped", fontsize=7.5, ha="center", color="0.35")
    ax.set_ylim(0.8, 400), ax.set_xlabel(r"FM time $t$"), ax.set_ylabel("loss weight w(t) vs the native loss")
    ax.set_title("Diff2Flow's loss weights, SD 1.x", fontsize=9)
    ax.legend(fontsize=8, loc="upper right")


def main(out: Path = HERE) -> Path:
    schedule = Schedule.preset("sd15")
    numbers = sd_numbers(schedule)
    fig = plt.figure(figsize=(13, 4.2))
    grid = fig.add_gridspec(1, 3, width_ratios=[1.7, 1, 1], wspace=0.3)
    draw_diagram(fig.add_subplot(grid[0]), numbers)
    draw_time_map(fig.add_subplot(grid[1]), schedule, numbers)
    draw_weights(fig.add_subplot(grid[2]), schedule, numbers)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "bridge.png"
    fig.savefig(path, dpi=90, bbox_inches="tight")
    plt.close(fig)
    for name, value in numbers.items():
        print(f"{name:12s} {value:.6g}")
    return path


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE, help="folder for bridge.png (default: docs/figures)")
    print(main(parser.parse_args().out))
