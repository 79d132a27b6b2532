"""tune's picture: every timed candidate's speed against FP32 and its validation top-1 loss.

The front (no other candidate both faster and more accurate), the budget and the winner are
marked, and each run-off finalist with its speed against the leader (or "tie"), so the choice
can be checked at a glance: the winner is on or near the front, below the budget line, and
candidates to its right are above that line or lost the run-off.
"""

from __future__ import annotations

from pathlib import Path

from vitdeploy.core.errors import UserError
from vitdeploy.delivery.report import pareto


def runoff_label(runoff: dict | None) -> str:
    """A finalist's run-off outcome beside its name: 'tie 0.99x (0.95-1.03)', 'slower 0.91x (...)'."""
    if not runoff or not runoff.get("speed"):
        return " (run-off winner)" if runoff and runoff["outcome"].startswith("winner") else ""
    speed = runoff["speed"]
    word = runoff["outcome"].split(" ")[0]
    return f" ({word} {speed['ratio']:.2f}x, {speed['lowest']:.2f}-{speed['highest']:.2f} vs {runoff['versus']})"


def plot_front(report: dict, target: Path) -> Path:
    """`target` (PNG) from a tune report (`tune.json`'s content); returns it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("tune's picture needs matplotlib: pip install 'vitdeploy[report]'") from None
    timed = [c for c in report["candidates"] if c["drop"] is not None and (c["speedup_geomean"] or c["drop"] == 0)]
    points = [(c["speedup_geomean"] or 1.0, -c["drop"], c["name"]) for c in timed]
    fig, ax = plt.subplots(figsize=(8, 5), dpi=120)
    models = list(dict.fromkeys(c.get("student") for c in timed))  # the model tuned, then each student
    for i, model in enumerate(models):
        mine = [c for c in timed if c.get("student") == model]
        xs, ys = [c["speedup_geomean"] or 1.0 for c in mine], [-c["drop"] for c in mine]
        ax.scatter(xs, ys, s=30, zorder=3, color=f"C{i}", label=model or "the model tuned")
        for x, y, c in zip(xs, ys, mine, strict=True):
            setting = (c["name"].removeprefix(f"{model}.") if model else c["name"]) + runoff_label(c.get("runoff"))
            ax.annotate(setting, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    win = next((x, y) for x, y, name in points if name == report["winner"])
    ax.scatter(*win, s=220, marker="*", color="#2ca02c", zorder=4, label=f"chosen: {report['winner']}")
    front = pareto([(x, y) for x, y, _ in points], larger_x_is_better=True)
    ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="#d62728", label="Pareto front", zorder=2)
    ax.axhline(-report["max_drop"], color="#7f7f7f", linestyle=":", label=f"budget: {report['max_drop']:g} points")
    ax.axvline(1.0, color="#bbbbbb", linewidth=0.8)
    cells = ", ".join(f"{p} b{b}" for p in report["settings"]["providers"] for b in report["settings"]["batches"])
    ax.set_xlabel(f"speed against FP32 (geometric mean over {cells})")
    ax.set_ylabel(f"top-1 change (points, {report['validation_images']} held-out images)")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(target)
    plt.close(fig)
    return target
