"""PNG figures: loss and zero-shot accuracy against wall-clock time (the paper's Figure 1 axes),
samples seen, GPU-hours and FLOPs, one panel per controlled comparison (the paper's Figure 5
layout; grouping.py decides which runs share a panel). Runs in progress are dashed."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .grouping import label, panels
from .runs import Run

X_AXES = {"wall": "wall-clock training time", "samples": "samples seen", "gpu_hours": "GPU-hours (wall time x GPUs)",
          "flops": "training FLOPs (3x forward)"}


def wall_unit(runs: list[Run]) -> tuple[str, float]:
    """(unit, seconds per unit) that keeps the wall-clock axis readable: demos last seconds to
    minutes, cluster runs days."""
    longest_s = 3600 * max((r.total_wall_hours for r in runs), default=0.0)
    if longest_s <= 600:
        return "s", 1.0
    if longest_s <= 3 * 3600:
        return "min", 60.0
    return "h", 3600.0


def _matplotlib():
    import matplotlib

    matplotlib.use("Agg")  # files only; no display on clusters
    import matplotlib.pyplot as plt

    return plt


def _x(run: Run, samples_seen: list[float], x: str) -> list[float]:
    if x == "samples":
        return list(samples_seen)
    if x == "flops":
        return [s * run.train_flops_per_sample for s in samples_seen]
    # Wall time / GPU-hours at a given sample count: interpolated along the run's own records.
    seen = [r["samples_seen"] for r in run.records]
    hours = run.gpu_hours() if x == "gpu_hours" else run.wall_hours()
    if not seen:
        return [float("nan")] * len(samples_seen)
    if run.finished:  # the end point is the summary's wall time
        end = run.total_gpu_hours if x == "gpu_hours" else run.total_wall_hours
        seen, hours = seen + [run.samples_seen], hours + [end]
    return list(np.interp(samples_seen, [0] + seen, [0.0] + hours))


def _series(run: Run, metric: str) -> list[tuple[str, list[float], list[float]]]:
    """(suffix, samples_seen, values) curves of a run for a metric."""
    if metric == "loss":
        recs = [r for r in run.records if r.get("loss") is not None]
        return [("", [r["samples_seen"] for r in recs], [r["loss"] for r in recs])] if recs else []
    out = []
    for dataset, pts in run.accuracy_points().items():
        out.append((dataset, [p[0] for p in pts], [p[1] for p in pts]))
    return out


def has_metric(runs: list[Run], metric: str) -> bool:
    return any(_series(r, metric) for r in runs)


def plot_metric(runs: list[Run], metric: str, x: str, path: Path) -> Path:
    plt = _matplotlib()
    groups = panels(runs)
    fig, axes = plt.subplots(1, len(groups), figsize=(5.2 * len(groups), 4.2), squeeze=False)
    multi_dataset = len({d for r in runs for d, *_ in _series(r, metric) if d}) > 1
    unit, per_unit = wall_unit(runs)
    for ax, panel in zip(axes[0], groups):
        for run in panel.runs:
            color = f"C{runs.index(run) % 10}"  # a run keeps its colour in every panel
            for suffix, seen, values in _series(run, metric):
                name = label(run, panel.label_axes) + (f" [{suffix}]" if multi_dataset else "")
                name += "" if run.finished else " (running)"
                marker = "o" if len(values) < 12 else None
                xs = _x(run, seen, x)
                if x == "wall":
                    xs = [3600 * h / per_unit for h in xs]
                ax.plot(xs, values, color=color, linestyle="-" if run.finished else "--",
                        marker=marker, markersize=4, label=name)
        ax.set_title(panel.title, fontsize=12 if len(panel.title) < 40 else 9)
        ax.set_xlabel(X_AXES[x] + (f" ({unit})" if x == "wall" else ""))
        ax.set_ylabel("zero-shot top-1 (%)" if metric == "zeroshot" else "contrastive loss")
        if x == "flops":
            ax.set_xscale("log")
        else:
            ax.set_xlim(left=0)  # curves start at zero samples / zero cost
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


METRIC_NAMES = {"zeroshot": "zero-shot top-1 accuracy", "loss": "contrastive loss"}


def caption(path: Path) -> str:
    """What a figure written by write_plots shows, from its file name (METRIC_vs_X.png)."""
    metric, _, x = Path(path).stem.partition("_vs_")
    if metric not in METRIC_NAMES or x not in X_AXES:
        return Path(path).stem.replace("_", " ")
    text = f"{METRIC_NAMES[metric]} against {X_AXES[x]}"
    if metric == "zeroshot" and x == "wall":
        text += " (the axes of the paper's Figure 1)"
    return text


def write_plots(runs: list[Run], out_dir: Path) -> list[Path]:
    written = []
    for metric in ("zeroshot", "loss"):
        if not has_metric(runs, metric):
            continue  # no evaluations yet: no empty accuracy figures
        for x in X_AXES:
            written.append(plot_metric(runs, metric, x, out_dir / f"{metric}_vs_{x}.png"))
    return written
