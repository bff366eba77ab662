"""Keep the recipes' `# Time:` header lines equal to the planner's total wall-clock.

    python -m flip_scale.planning.headers            rewrite the lines that differ
    python -m flip_scale.planning.headers --check    exit 1 listing the recipes whose line is stale

Each run recipe states its hardware (`# Hardware: N nodes x 8 H100`); its time is `flip-scale
plan RECIPE --nodes N --gpus-per-node 8 --gpu h100` at the plan's defaults (35% MFU, 400 Gb/s
per GPU, the default loader, filesystem and failure rate): compute plus exposed communication,
checkpoint writes and the expected cost of failures. What follows `flip-scale plan` in the old
line (the FLOPs speed-up notes) is kept.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

HARDWARE = re.compile(r"^# Hardware: (\d+) nodes x 8 H100", re.M)
TIME = re.compile(r"^# Time: .*$", re.M)
NOTE = re.compile(r"\(flip-scale plan(?: total)?[^;)]*(?:; loader-bound[^;)]*)?(;[^)]*)?\)\s*$")


def hours(seconds: float) -> str:
    return f"{seconds / 3600:.1f} h"


def time_line(path: Path, old: str) -> str:
    from ..plan import load_plan_config, make_plan

    nodes = int(HARDWARE.search(path.read_text()).group(1))
    plan = make_plan(load_plan_config(str(path), [], nodes * 8), nodes, 8, "h100")
    c, t = plan["compute"], plan["total"]
    m = NOTE.search(old)
    note = m.group(1) if m and m.group(1) else ""
    ld = plan["loader"]
    loader = (f"; loader-bound: {ld['cores_per_gpu_needed']} CPU cores per GPU needed, {ld['cpus_per_gpu']} planned"
              if plan["step"]["data_bound"] else "")
    return (f"# Time:     {hours(t['wall_s'])} ({t['gpu_days']:,.0f} GPU-days) on {nodes} x 8 H100 "
            f"(flip-scale plan total: compute {hours(c['wall_s'])} at {plan['mfu']:.0%} MFU + "
            f"{plan['step']['comm_exposed_s'] * 1e3:.0f} ms/step exposed communication + checkpoints and "
            f"expected failures{loader}{note})")


def run_recipes(root: Path) -> list[Path]:
    out = []
    for path in sorted(root.rglob("*.yaml")):
        text = path.read_text()
        if HARDWARE.search(text) and TIME.search(text):
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", default=str(Path(__file__).resolve().parents[2] / "recipes"))
    ap.add_argument("--check", action="store_true", help="only report stale lines (exit 1 if any)")
    args = ap.parse_args(argv)
    stale = []
    for path in run_recipes(Path(args.recipes)):
        text = path.read_text()
        old = TIME.search(text).group(0)
        new = time_line(path, old)
        if new != old:
            stale.append(path)
            if not args.check:
                path.write_text(text.replace(old, new, 1))
            print(f"{path}: {new[len('# Time:'):].strip()}")
    if args.check and stale:
        print(f"{len(stale)} recipe header(s) stale: run python -m flip_scale.planning.headers", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
