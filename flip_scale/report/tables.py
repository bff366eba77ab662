"""Tables as (headers, rows) of strings: per-run throughput and cost, and Table 8 with the
paper's numbers beside ours. Rendering to Markdown/HTML lives in render.py."""
from __future__ import annotations

from .grouping import fmt_value
from .paper import DATASET_COLUMNS, TABLE_8, TABLE_8_COLUMNS, same_schedule
from .runs import Run, paper_data

DASH = "-"


def _num(v, fmt: str) -> str:
    return DASH if v is None else format(v, fmt)


def _acc(run: Run) -> str:
    pts = run.accuracy_points()
    if not pts:
        return DASH
    return ", ".join(f"{d} {p[-1][1]:.1f}" for d, p in sorted(pts.items()))


RUN_HEADERS = ["run", "model", "data", "mask", "batch", "samples seen", "status", "final loss", "zero-shot top-1",
               "samples/s", "samples/s/GPU", "GPUs", "wall h", "GPU-hours", "train FLOPs", "MFU"]


def runs_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    rows = []
    for r in runs:
        sps = r.samples_per_sec
        status = "done" if r.finished else f"running ({r.samples_seen / max(r.samples, 1):.0%})"
        rows.append([
            r.name, r.model, r.data, fmt_value("mask", r.mask_ratio), fmt_value("batch", r.batch),
            f"{fmt_value('samples', r.samples_seen)} / {fmt_value('samples', r.samples)}", status,
            _num(r.final_loss, ".4f"), _acc(r), _num(sps, ",.1f"),
            _num(sps / r.world_size if sps else None, ",.1f"), str(r.world_size), f"{r.total_wall_hours:.3f}",
            f"{r.total_gpu_hours:.3f}", f"{r.samples_seen * r.train_flops_per_sample:.3g}",
            _num(100 * r.mfu if r.mfu is not None else None, ".1f") + ("%" if r.mfu is not None else ""),
        ])
    return RUN_HEADERS, rows


def our_table_8_values(run: Run) -> dict[str, float | None]:
    """Our numbers in Table 8's columns (percent), from the run's eval/*.json files."""
    out = {}
    for col, (names, key) in DATASET_COLUMNS.items():
        hit = next((run.evals[d] for d in run.evals if d.lower() in names and key in run.evals[d]), None)
        out[col] = 100 * float(hit[key]) if hit else None
    return out


def _pretraining_of(run: Run, runs: list[Run]) -> Run | None:
    """The run whose weights `run` started from (train.init_from names its directory), if loaded."""
    init = run.config.train.init_from
    if not init:
        return None
    from pathlib import Path

    target = Path(init)
    for r in runs:
        if r is not run and (r.path.resolve() == target.resolve() or
                             (not target.is_absolute() and r.path.resolve().parts[-len(target.parts):] == target.parts)):
            return r
    return None


def _matches(run: Run, case: dict, runs: list[Run]) -> bool:
    """Like with like: Table 8's numbers are measured after unmasked tuning (its baseline row is
    Table 2's tuned L/16), so a case matches the mask-0 tuning run whose pre-training (its
    init_from, among the loaded runs) has the case's model, data, schedule and 50% mask."""
    pre = _pretraining_of(run, runs) if run.mask_ratio == 0 else None
    return (pre is not None and pre.model == case["model"] == run.model and paper_data(pre.data) == case["data"]
            and same_schedule(pre.samples, case["samples"]) and abs(pre.mask_ratio - 0.5) < 1e-9)


TABLE_8_HEADERS = ["case", "model", "data", "samples", "run"] + [
    f"{c} paper / ours" for c in ("IN-1k", "Flickr I->T", "COCO I->T", "Flickr T->I", "COCO T->I")]


def table_8(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """The paper's six cases with our matching run beside each (the unmasked tuning of a 50%-mask
    pre-training with the same model, data and schedule, as the paper measured them); runs
    matching no case (a pre-training alone among them) follow with the paper's columns empty."""
    rows, used = [], set()
    for case in TABLE_8:
        match = next((r for r in runs if _matches(r, case, runs) and r.finished), None) or \
            next((r for r in runs if _matches(r, case, runs)), None)
        ours = our_table_8_values(match) if match else {}
        data = case["data"]
        if match:
            used.add(id(match))
            pre_data = _pretraining_of(match, runs).data
            if pre_data != data:  # a stand-in (relaion2b for LAION-2B): say which data ours used
                data = f"{data} (ours: {pre_data})"
        rows.append([case["case"], case["model"], data, fmt_value("samples", case["samples"]),
                     match.name if match else DASH]
                    + [f"{case[c]:.1f} / {_num(ours.get(c), '.1f')}" for c in TABLE_8_COLUMNS])
    for r in runs:
        if id(r) in used:
            continue
        ours = our_table_8_values(r)
        rows.append([f"(ours) {r.name}", r.model, r.data, fmt_value("samples", r.samples), r.name]
                    + [f"{DASH} / {_num(ours.get(c), '.1f')}" for c in TABLE_8_COLUMNS])
    return TABLE_8_HEADERS, rows
