"""Straggler reports over 2 real gloo processes: the slowest rank, its host and the median agree on
every rank; the warning comes once, after `patience` slow log steps in a row, and names the host."""
import json
import os

import torch.multiprocessing as mp

from conftest import free_port

# (rank 0 time, rank 1 time) per log step: rank 1 is slow on steps 2-5, fine at 6, slow again 7-9.
TIMES = [(0.10, 0.10), (0.10, 0.50), (0.10, 0.50), (0.10, 0.50), (0.10, 0.50), (0.10, 0.11),
         (0.10, 0.40), (0.10, 0.40), (0.10, 0.40)]


def _worker(rank, world, port, out_dir):
    import torch.distributed as dist

    from flip_scale.distributed.stragglers import StragglerMonitor

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    logged = []
    mon = StragglerMonitor(threshold=0.2, patience=3, host=f"node{rank + 1}", log=logged.append)
    reports = [mon.report(step_time_s=t[rank], data_wait_s=0.05 * rank, step=10 * (i + 1))
               for i, t in enumerate(TIMES)]
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"reports": reports, "logged": logged, "warnings": mon.warnings}, f)
    dist.destroy_process_group()


def test_straggler_report_names_the_slow_rank_and_warns_after_patience(tmp_path):
    mp.start_processes(_worker, args=(2, free_port(), str(tmp_path)), nprocs=2, start_method="spawn")
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["reports"] == r1["reports"]  # the same fields on every rank
    second = r0["reports"][1]
    assert second["straggler/slowest_rank"] == 1 and second["straggler/slowest_host"] == "node2"
    assert second["straggler/slowest_s"] == 0.5 and abs(second["straggler/median_s"] - 0.3) < 1e-9
    assert abs(second["straggler/slowest_data_wait_s"] - 0.05) < 1e-9
    # One warning per slow streak, at its 3rd log step: steps 40 and 90; only rank 0 prints it.
    assert len(r0["logged"]) == 2 and r1["logged"] == []
    assert r0["warnings"] == r1["warnings"] == r0["logged"]
    first, again = r0["logged"]
    assert first.startswith("straggler: rank 1 on host node2 slower than the median for 3 log steps in a row "
                            "at step 40: 0.500 s vs median 0.300 s"), first
    assert "at step 90" in again and "node2" in again


def test_single_process_reports_itself_and_never_warns():
    from flip_scale.distributed.stragglers import StragglerMonitor

    mon = StragglerMonitor(patience=1, host="solo")
    r = mon.report(0.2, 0.01)
    assert r["straggler/slowest_rank"] == 0 and r["straggler/median_s"] == 0.2 and mon.warnings == []
