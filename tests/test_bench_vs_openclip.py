"""bench/bench_vs_openclip.py and bench/op_times.py (issue 23) on the tiny towers: one table per
thread count in one invocation, speed-ups against both unmasked baselines, and the per-op
recorder's phases, which also show what a step runs at mask 0."""
import json
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))

pytest.importorskip("open_clip")

import bench_vs_openclip as bench  # noqa: E402
from op_times import by_key, min_over_steps, record_step, side_by_side  # noqa: E402

TINY = dict(image_size=32, batch=8, text_length=16)


@pytest.fixture(autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_threads_default_is_all_cores_then_one():
    cores = bench.available_cores()
    assert bench.parse_threads("all,1") == ([cores, 1] if cores > 1 else [1])
    assert bench.parse_threads("2, 2,1") == [2, 1]
    with pytest.raises(SystemExit, match="--threads: 'x' is neither"):
        bench.parse_threads("x")
    with pytest.raises(SystemExit, match="--threads: 0 threads"):
        bench.parse_threads("0")


def test_one_invocation_gives_a_table_per_thread_count_with_both_baselines():
    result = bench.run([0.0, 0.5], trials=1, steps=1, warmup=1, log=lambda *_: None, threads=(2, 1), model="tiny",
                       **TINY)
    assert [t["threads"] for t in result["tables"]] == [2, 1]
    # One thread: the process's CPU time; several: wall time (what a user waits for).
    assert result["tables"][0]["timing"] == "wall time" and result["tables"][1]["timing"] == "process CPU time"
    for t in result["tables"]:
        base, masked = t["rows"]
        key = "wall" if t["threads"] > 1 else "cpu"
        assert base["ours_step_s"] == base[f"ours_{key}_s"] and masked["open_clip_step_s"] == masked[f"open_clip_{key}_s"]
        assert base["speedup_vs_ours_unmasked"] == 1.0
        assert masked["speedup_vs_ours_unmasked"] == pytest.approx(base["ours_step_s"] / masked["ours_step_s"])
        assert masked["speedup_vs_open_clip_unmasked"] == pytest.approx(base["open_clip_step_s"] / masked["ours_step_s"])
        assert masked["open_clip_speedup_vs_its_unmasked"] == pytest.approx(
            base["open_clip_step_s"] / masked["open_clip_step_s"])
    text = bench.table(result)
    assert "**2 thread(s)**, wall time" in text and "**1 thread(s)**, process CPU time" in text
    assert "vs open_clip unmasked" in text


def test_json_holds_both_tables():
    r = subprocess.run([sys.executable, "bench/bench_vs_openclip.py", "--json", "--model", "tiny", "--image-size", "32",
                        "--batch", "8", "--text-length", "16", "--masks", "0", "0.75", "--trials", "1", "--warmup", "1",
                        "--threads", "2,1"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out["speed_ratio"]) == {"2", "1"} and set(out["speed_ratio"]["1"]) == {"0.0", "0.75"}
    assert out["timing"] == {"2": "wall time", "1": "process CPU time"}
    assert all(v > 0 for t in out["speed_ratio"].values() for v in t.values())


def test_bad_threads_is_one_line():
    r = subprocess.run([sys.executable, "bench/bench_vs_openclip.py", "--threads", "two"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode != 0 and r.stderr.strip().splitlines() == ["--threads: 'two' is neither 'all' nor a thread count"]


def _ours(mask: float):
    e = bench.our_engine(model="tiny", **TINY)
    e.set_mask_ratio(mask)
    e.step()
    return e


def test_step_phases_and_mask_zero_runs_no_masking():
    calls = record_step(_ours(0.0).step)
    phases = list(dict.fromkeys(c.phase for c in calls))
    assert phases == ["forward", "backward", "norm/clip", "optimizer", "after"]
    names = {c.name for c in calls}
    # Mask 0: no masking noise (splitmix64's integer ops), no sort, no gather of kept tokens.
    assert not names & {"argsort", "sort", "gather", "bitwise_xor", "__rshift__", "bitwise_right_shift"}, names
    masked = {c.name for c in record_step(_ours(0.5).step)}
    assert {"sort", "gather", "bitwise_xor"} <= masked  # argsort runs as aten sort
    # The optimizer is one fused kernel per weight-decay group; the norm, the clip and the
    # non-finite test a handful of multi-tensor calls, not one call per parameter.
    opt = by_key([c for c in calls if c.phase == "optimizer"], "name")
    assert opt["_fused_adamw_"]["count"] == 2
    # (16 calls on torch 2.14 for the 72 tensors of tiny: _foreach_norm, stack, the norm, the clip
    # coefficient, _foreach_mul_, isfinite's pieces, the cast.)
    norm = [c.name for c in calls if c.phase == "norm/clip"]
    assert "_foreach_norm" in norm and len(norm) <= 20, norm


def test_min_over_steps_and_side_by_side():
    e = _ours(0.0)
    calls = min_over_steps(e.step, 2)
    assert all(c.wall_s >= 0 and c.cpu_s >= 0 for c in calls)
    text = side_by_side({("ours", 1): calls, ("ours", 2): calls}, "phase")
    assert "| forward |" in text and "1.00x" in text and "step (sum of ops)" in text
    ops = side_by_side({("ours", 1): calls}, "name", top=3, always=("_fused_adamw_",))
    assert len(ops.splitlines()) == 2 + 4 + 1 or "_fused_adamw_" in ops
