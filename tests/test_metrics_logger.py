"""The log step's one all-gather on two real gloo ranks: the record carries the slowest rank's
data wait (not rank 0's), the worst p99 batch wait, the mean loss over ranks, and the decisions
every rank takes together (a stop seen by one rank, a checkpoint due by wall time on one rank)."""
import json
import os
import time

import pytest
import torch
import torch.multiprocessing as mp

pytestmark = pytest.mark.slow


def _worker(rank, world, init_file, out_dir):
    import torch.distributed as dist

    from flip_scale.distributed.stragglers import StragglerMonitor
    from flip_scale.metrics import MetricsWriter
    from flip_scale.train.metrics_logger import MetricsLogger

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    writer = MetricsWriter(out_dir, enabled=rank == 0)
    logger = MetricsLogger(writer, torch.device("cpu"), world, global_batch=8, total_steps=4, total_samples=32,
                           max_nonfinite_steps=3, log_every_steps=2, say=lambda _: None,
                           stragglers=StragglerMonitor(device="cpu", host=f"host{rank}"))
    logger.start(0)
    for step in (1, 2):
        time.sleep(0.3)  # the window's wall time: 0.6 s, of which rank 1 "waited" 0.25 s
        # Rank 1 is the slow loader: 0.2 s and 0.05 s per batch; rank 0 waits 1 ms.
        logger.add_data_wait(0.001 if rank == 0 else (0.2 if step == 1 else 0.05))
        logger.accumulate(step, torch.tensor(1.0 + rank), torch.tensor(0.5))
    agreed = logger.sync(stop_requested=rank == 1, checkpoint_time_due=rank == 0)
    logger.maybe_log(2, 16, 1e-3, logit_scale=lambda: 10.0)
    writer.close()
    with open(os.path.join(out_dir, f"agreed{rank}.json"), "w") as f:
        json.dump([agreed.stop, agreed.checkpoint_time_due], f)
    dist.destroy_process_group()


def test_log_step_reports_the_slowest_rank_and_agrees_flags(tmp_path):
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    assert all(json.loads((tmp_path / f"agreed{r}.json").read_text()) == [True, True] for r in (0, 1))
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert record["loss"] == pytest.approx(1.5)  # mean over both ranks' losses (1.0 and 2.0)
    assert record["data_wait_p99_s"] == pytest.approx(0.2)  # rank 1's worst batch, not rank 0's 1 ms
    assert record["data_wait_frac"] > record["data_wait_frac_rank0"]
    assert record["straggler/max_data_wait_s"] == pytest.approx(0.25)
    assert record["straggler/slowest_host"] == f"host{record['straggler/slowest_rank']}"
    assert record["skipped/nonfinite_loss_steps"] == 0
