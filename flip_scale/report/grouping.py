"""Which properties differ between runs, labels that name only those, and the scaling panels."""
from __future__ import annotations

from .paper import FIGURE_5_AXES
from .runs import Run

# The properties a scaling study varies; `samples` is the run's planned length (its schedule).
AXES = {
    "model": lambda r: r.model,
    "data": lambda r: r.data,
    "samples": lambda r: r.samples,
    "mask": lambda r: r.mask_ratio,
    "batch": lambda r: r.batch,
}
PANEL_TITLES = {"model": "model scaling", "data": "data scaling", "samples": "schedule scaling",
                "mask": "mask ratio", "batch": "batch size"}


def fmt_value(axis: str, value) -> str:
    if axis == "samples":
        return f"{value / 1e9:g}B" if value >= 1e8 else f"{value:,}"
    if axis == "mask":
        return f"{value:.0%}"
    if axis == "batch":
        return f"{value // 1024}k" if value >= 1024 and value % 1024 == 0 else str(value)
    return str(value)


def varying_axes(runs: list[Run]) -> list[str]:
    return [a for a, get in AXES.items() if len({get(r) for r in runs}) > 1]


def label(run: Run, axes: list[str]) -> str:
    if not axes:
        return run.name
    return ", ".join(f"{a} {fmt_value(a, AXES[a](run))}" for a in axes)


def panels(runs: list[Run]) -> list[tuple[str, str | None, list[Run]]]:
    """(title, axis, runs) per panel: Figure 5's model / data / schedule axes first, then any
    other axis that varies. A panel holds the runs that differ in its axis and agree on all
    others (the paper's controlled comparisons); if no such pairs exist it shows all runs."""
    vary = varying_axes(runs)
    order = [a for a in FIGURE_5_AXES.values() if a in vary] + [a for a in vary if a not in FIGURE_5_AXES.values()]
    if not order:
        return [("all runs", None, runs)]
    out = []
    for axis in order:
        others = [a for a in vary if a != axis]
        groups: dict[tuple, list[Run]] = {}
        for r in runs:
            groups.setdefault(tuple(AXES[a](r) for a in others), []).append(r)
        chosen = [r for g in groups.values() if len({AXES[axis](x) for x in g}) > 1 for r in g]
        out.append((PANEL_TITLES[axis], axis, chosen or runs))
    return out
