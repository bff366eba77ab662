"""Which properties differ between runs, labels that name only those, and the scaling panels.

A panel titled for an axis ("mask ratio") is a controlled comparison: its runs differ from each
other in that axis alone. Runs that take part in no such comparison (they differ from every
other run in several axes at once) share one panel whose title names those axes; nothing is
drawn under a title that would claim more than the runs show.
"""
from __future__ import annotations

from dataclasses import dataclass

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
AXIS_NAMES = {"model": "model", "data": "data", "samples": "schedule", "mask": "mask", "batch": "batch"}


@dataclass
class Panel:
    title: str
    axis: str | None          # the one axis its runs differ in; None: several (or none)
    runs: list[Run]
    label_axes: list[str]     # what the legend names: only what differs among this panel's runs


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
    return ", ".join(f"{AXIS_NAMES[a]} {fmt_value(a, AXES[a](run))}" for a in axes)


def _order(axes: list[str]) -> list[str]:
    """Figure 5's model / data / schedule axes first, then the others in AXES order."""
    fig5 = [a for a in FIGURE_5_AXES.values() if a in axes]
    return fig5 + [a for a in AXES if a in axes and a not in fig5]


def panels(runs: list[Run]) -> list[Panel]:
    """One panel per controlled comparison (runs equal in every axis but one, at least two values
    of that one), then at most one panel for the runs left over, which says how they differ."""
    vary = varying_axes(runs)
    if not vary:
        return [Panel("all runs" if len(runs) > 1 else runs[0].name, None, list(runs), [])]
    out: list[Panel] = []
    covered: set[int] = set()
    for axis in _order(vary):
        others = [a for a in vary if a != axis]
        groups: dict[tuple, list[Run]] = {}
        for r in runs:
            groups.setdefault(tuple(AXES[a](r) for a in others), []).append(r)
        controlled = [(key, g) for key, g in groups.items() if len({AXES[axis](x) for x in g}) > 1]
        for key, members in controlled:
            title = PANEL_TITLES[axis]
            if len(controlled) > 1:  # several comparisons along this axis: say what each holds fixed
                fixed = [a for a, v in zip(others, key) if len({k[others.index(a)] for k, _ in controlled}) > 1]
                title += " at " + ", ".join(f"{AXIS_NAMES[a]} {fmt_value(a, AXES[a](members[0]))}" for a in fixed)
            out.append(Panel(title, axis, members, [axis]))
            covered.update(id(r) for r in members)
    rest = [r for r in runs if id(r) not in covered]
    if len(rest) > 1:
        differ = _order(varying_axes(rest))
        names = ", ".join(AXIS_NAMES[a] for a in differ)
        out.append(Panel(f"runs differing in several axes ({names})", None, rest, differ))
    elif rest:  # one run on its own: say how it differs from the run nearest to it
        lone = rest[0]
        nearest = min((r for r in runs if r is not lone), key=lambda r: len(varying_axes([lone, r])))
        differ = _order(varying_axes([lone, nearest]))
        names = ", ".join(AXIS_NAMES[a] for a in differ)
        out.append(Panel(f"{lone.name}: differs from the nearest run ({nearest.name}) in {names}", None, rest, differ))
    return out
