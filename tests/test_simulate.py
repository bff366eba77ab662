"""`flip-scale plan --simulate`: the real step of vit_b16 as one rank of 2 x 8 GPUs (fake process
group, fake tensors, FSDPMemTracker) against the analytic plan of the same layout."""
from __future__ import annotations

import json
import resource
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from flip_scale.simulation import run as sim_run
from flip_scale.simulation.compare import match_collectives

ROOT = Path(__file__).resolve().parents[1]
RECIPE = str(ROOT / "recipes" / "flip" / "b16_laion400m.yaml")


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def plan(*args, timeout=300):
    cmd = [sys.executable, "-m", "flip_scale", "plan", *map(str, args)]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_vit_b16_on_16_ranks_matches_the_plan():
    # A small batch (16 per rank) keeps it under a minute; reshard auto exercises the card's
    # capacity reaching the backend (both towers stay gathered on an 80 GB card at this batch,
    # so backward re-gathers only the root, in the plan and in the simulation alike).
    before = _children_cpu_s()
    r = plan(RECIPE, "train.global_batch_size=256", "parallel.reshard_after_forward=auto", "--nodes", 2,
             "--gpus-per-node", 8, "--gpu", "h100", "--simulate", "--json", timeout=900)
    assert r.returncode == 0, r.stderr
    # Under a minute of CPU (the plan and the simulation's subprocess; ~20 s measured): CPU time,
    # not wall-clock, which a shared machine stretches many times over.
    assert _children_cpu_s() - before < 60
    p = json.loads(r.stdout)
    sim = p["simulation"]
    assert set(sim) >= {"peak_gb", "peak_at", "breakdown_gb", "collectives", "comm_bytes_per_rank", "seconds"}
    # Communication: every (phase, kind, group) row equal in calls and bytes, nothing missing either way.
    rows = match_collectives(sim["collectives"], p["comm"]["collectives"])
    assert {(r["phase"], r["kind"], r["group"]) for r in rows} == {
        ("forward", "all_gather", 8), ("backward", "all_gather", 8), ("backward", "reduce_scatter", 8),
        ("backward", "all_reduce", 2), ("loss_forward", "all_gather", 16), ("loss_backward", "reduce_scatter", 16),
        ("step", "all_reduce", 8), ("step", "all_reduce", 16)}
    for row in rows:
        assert row["calls"] == row["planned_calls"], row
        assert row["bytes_per_rank"] == pytest.approx(row["planned_bytes_per_rank"], rel=1e-12), row
    backward_gathers = next(r for r in rows if (r["phase"], r["kind"]) == ("backward", "all_gather"))
    assert backward_gathers["calls"] == 1  # auto kept both towers gathered: only the root again
    assert sim["comm_bytes_per_rank"] == pytest.approx(p["comm"]["bytes_per_rank"], rel=1e-12)
    # Memory: the peak within 10%, the sharded parameters and the optimizer state exact.
    mem = p["memory"]["no_checkpointing"]
    assert sim["peak_gb"] == pytest.approx(mem["total_gb"], rel=0.10)
    # (the plan's weights and moments include the replicated fp32 logit scale, outside FSDP)
    replicated = p["params"]["replicated"]
    assert sim["sharded_param_bytes"] + 4 * replicated == round(mem["weights_gb"] * 1e9)
    assert sim["optimizer_state_bytes"] == round(mem["moments_gb"] * 1e9)
    assert sum(sim["breakdown_gb"].values()) == pytest.approx(sim["peak_gb"], rel=1e-6)


def test_text_output_flags_what_differs_and_deepspeed_says_what_is_not_simulated():
    r = plan(RECIPE, "parallel.backend=deepspeed", "parallel.shard_group_size=null", "--nodes", 2,
             "--gpus-per-node", 8, "--gpu", "h100", "--simulate")
    assert r.returncode == 0, r.stderr
    tail = r.stdout[r.stdout.index("simulated: nothing"):].splitlines()
    assert tail[1].strip().startswith("skip: parallel.backend deepspeed is not simulated")
    assert len(tail) <= 3  # the header, the skip line, at most the torch-version note


def test_format_flags_a_row_more_than_10_percent_off():
    from flip_scale.plan import load_plan_config, make_plan
    from flip_scale.simulation.compare import format_simulation

    p = make_plan(load_plan_config(RECIPE, ["train.global_batch_size=256"], 16), 2, 8, "h100")
    ana = p["memory"]["no_checkpointing"]["total_gb"]
    by_key: dict = {}  # the planner's rows as the simulation reports them: one per (phase, kind, group)
    for c in p["comm"]["collectives"]:
        row = by_key.setdefault((c["phase"], c["kind"], c["group"]), {"phase": c["phase"], "kind": c["kind"],
                                                                       "group": c["group"], "calls": 0,
                                                                       "bytes_per_rank": 0.0})
        row["calls"] += c["calls"]
        row["bytes_per_rank"] += c["bytes_per_rank"]
    rows = list(by_key.values())
    first = next(i for i, r in enumerate(rows) if (r["phase"], r["kind"]) == ("forward", "all_gather"))
    rows[first] = {**rows[first], "bytes_per_rank": rows[first]["bytes_per_rank"] * 1.5}
    p["simulation"] = {"peak_gb": ana * 1.2, "peak_at": "loss backward", "seconds": 1.0, "notes": [],
                       "breakdown_gb": {"parameters": 0, "gradients": 0, "optimizer_state": 0, "activations": 0,
                                        "temporaries": 0},
                       "collectives": rows, "comm_bytes_per_rank": sum(r["bytes_per_rank"] for r in rows)}
    text = "\n".join(format_simulation(p))
    flagged = [line for line in text.splitlines() if "differs from the plan" in line]
    assert any(line.strip().startswith("peak memory per GPU") and "+20%" in line for line in flagged)
    assert any(line.strip().startswith("forward all_gather") and "+50%" in line for line in flagged)
    assert not any("loss_forward" in line for line in flagged)


def test_torch_version_note(monkeypatch):
    monkeypatch.setattr(torch, "__version__", sim_run.TESTED_TORCH + "+cu130")
    assert sim_run.torch_version_note() is None
    monkeypatch.setattr(torch, "__version__", "2.99.0")
    note = sim_run.torch_version_note()
    assert "2.14.1" in note and "2.99.0" in note and "\n" not in note


def test_a_gpu_decides_reshard_auto_with_the_planners_capacity():
    from flip_scale.planning.hardware import nominal_memory_gb

    # what torch reports for the cards (bytes) -> the planner's --gpu sizes
    assert nominal_memory_gb(85_028_995_072) == 80       # H100 SXM 80GB
    assert nominal_memory_gb(150_754_820_096) == 141     # H200
    assert nominal_memory_gb(42_298_834_944) == 40       # A100 40GB
    assert nominal_memory_gb(16_000_000_000) == 16.0     # a card the planner does not know
