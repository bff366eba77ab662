"""The simulation beside the analytic plan: run it in a subprocess with a timeout, match its
collectives to the planner's rows, and format both, flagging differences over 10%."""
from __future__ import annotations

import json
import subprocess
import sys

FLAG_RATIO = 0.10  # a simulated figure more than 10% from the analytic one is flagged
DEFAULT_TIMEOUT_S = 1200


class SimulationError(ValueError):
    """The simulation could not run (timeout, crash): one line for the user."""


def run_simulation(recipe: str, overrides: list[str], nodes: int, gpus_per_node: int, gpu: str,
                   gpu_memory_gb: float | None, timeout_s: float = DEFAULT_TIMEOUT_S) -> dict:
    """`python -m flip_scale.simulation` in a subprocess: fake tensors and a fake process group
    change global torch state, and a layout that will not finish must not hang the plan."""
    cmd = [sys.executable, "-m", "flip_scale.simulation", recipe, *overrides, "--nodes", str(nodes),
           "--gpus-per-node", str(gpus_per_node), "--gpu", gpu]
    if gpu_memory_gb is not None:
        cmd += ["--gpu-memory-gb", str(gpu_memory_gb)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise SimulationError(f"--simulate: the simulation did not finish in {timeout_s:g} s "
                              f"(--simulate-timeout)") from None
    lines = proc.stdout.strip().splitlines()
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise SimulationError(f"--simulate: the simulation failed (exit {proc.returncode}): {err}")
    return json.loads(lines[-1])


def _key(row: dict) -> tuple:
    return (row["phase"], row["kind"], row["group"])


def match_collectives(simulated: list[dict], planned: list[dict]) -> list[dict]:
    """One row per (phase, kind, group) found in either: simulated and planned calls and bytes."""
    plan_rows: dict = {}
    for c in planned:
        r = plan_rows.setdefault(_key(c), {"calls": 0, "total_bytes": 0.0, "bytes_per_rank": 0.0, "names": []})
        r["calls"] += c["calls"]
        r["total_bytes"] += c["total_bytes"]
        r["bytes_per_rank"] += c["bytes_per_rank"]
        r["names"].append(c["name"])
    sim_rows = {_key(s): s for s in simulated}
    out = []
    for key in sorted(set(plan_rows) | set(sim_rows), key=lambda k: (_PHASES.index(k[0]), k[1], k[2])):
        s, p = sim_rows.get(key), plan_rows.get(key)
        out.append({"phase": key[0], "kind": key[1], "group": key[2],
                    "name": ", ".join(p["names"]) if p else "(not in the plan)",
                    "calls": s["calls"] if s else 0, "planned_calls": p["calls"] if p else 0,
                    "bytes_per_rank": s["bytes_per_rank"] if s else 0.0,
                    "planned_bytes_per_rank": p["bytes_per_rank"] if p else 0.0})
    return out


_PHASES = ["forward", "loss_forward", "loss_backward", "backward", "step"]


def differs(simulated: float, planned: float) -> bool:
    if planned == 0:
        return simulated != 0
    return abs(simulated - planned) / planned > FLAG_RATIO


def _flag(simulated: float, planned: float) -> str:
    if not differs(simulated, planned):
        return ""
    pct = f"{(simulated / planned - 1) * 100:+.0f}%" if planned else "not planned"
    return f"   <- differs from the plan by more than {FLAG_RATIO:.0%} ({pct})"


def _gb(x: float) -> str:
    return f"{x / 1e9:.3f} GB" if x >= 1e8 else f"{x / 1e6:.3f} MB"


def analytic_breakdown(mem: dict) -> dict:
    """The analytic plan's parts at its peak, in the simulation's five categories."""
    return {"parameters": mem["weights_gb"] + mem["master_gb"] + mem["working_copies_gb"],
            "gradients": mem["grads_gb"], "optimizer_state": mem["moments_gb"],
            "activations": mem["activations_gb"] + mem["loss_gb"], "temporaries": mem["workspace_gb"]}


def format_simulation(plan: dict) -> list[str]:
    sim = plan["simulation"]
    if sim.get("skipped"):
        return ["simulated: nothing"] + [f"  {n}" for n in sim.get("notes", [])]
    lines = [f"simulated: one rank of {plan['world_size']} running the real step (fake process group, fake tensors, "
             f"torch {sim.get('torch', '?')}; warm second step; {sim['seconds']:.0f} s):"]
    lines += [f"  {n}" for n in sim.get("notes", [])]
    ck = "checkpointing" if plan["activation_checkpointing"] else "no_checkpointing"
    mem = plan["memory"][ck]
    lines.append(f"  peak memory per GPU {sim['peak_gb']:.2f} GB, analytic {mem['total_gb']:.2f} GB"
                 f"{_flag(sim['peak_gb'], mem['total_gb'])}")
    lines.append(f"  peak at: {sim['peak_at']}")
    lines.append(f"  {'':28s}{'simulated':>12s}{'analytic':>12s}")
    ana = analytic_breakdown(mem)
    for part, value in sim["breakdown_gb"].items():
        lines.append(f"  {part.replace('_', ' '):28s}{value:10.2f}GB{ana[part]:10.2f}GB")
    lines.append(f"  collectives per step and rank{'':20s}{'calls':>6s}{'planned':>9s}{'bytes/rank':>14s}"
                 f"{'planned':>14s}")
    for r in match_collectives(sim["collectives"], plan["comm"]["collectives"]):
        label = f"{r['phase']} {r['kind']} (group {r['group']})"
        lines.append(f"    {label:46s}{r['calls']:6d}{r['planned_calls']:9d}{_gb(r['bytes_per_rank']):>14s}"
                     f"{_gb(r['planned_bytes_per_rank']):>14s}"
                     + (_flag(r["bytes_per_rank"], r["planned_bytes_per_rank"]) or
                        ("   <- calls differ" if r["calls"] != r["planned_calls"] else "")))
    lines.append(f"  communication per step and rank {_gb(sim['comm_bytes_per_rank'])}, analytic "
                 f"{_gb(plan['comm']['bytes_per_rank'])}"
                 f"{_flag(sim['comm_bytes_per_rank'], plan['comm']['bytes_per_rank'])}")
    return lines


def public(sim: dict) -> dict:
    """The `simulation` section of `plan --json` (INTERFACE.md), GB = 1e9 bytes."""
    keys = ("peak_gb", "peak_at", "breakdown_gb", "collectives", "comm_bytes_per_rank", "seconds", "notes",
            "skipped", "torch", "tracker_kinds_gb", "sharded_param_bytes", "optimizer_state_bytes")
    return {k: sim[k] for k in keys if k in sim}
