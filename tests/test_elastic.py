"""Elastic resume: FSDP checkpoints reshard through torch.distributed.checkpoint (2 -> 1 and
1 -> 2 ranks, same global batch); DeepSpeed refuses a different world size with one clear line."""
import pytest

from ftutil import finish, launch_ranks, losses

pytestmark = pytest.mark.slow

FSDP = ["parallel.backend=fsdp", "train.log_every_steps=1", "checkpoint.every_steps=6"]


def run(run_dir, world, samples, extra=()):
    results = finish(launch_ranks(run_dir, world, [*FSDP, f"train.samples={samples}", *extra]))
    for rc, err in results:
        assert rc == 0, err[-3000:]
    return results


@pytest.mark.parametrize("first, second", [(2, 1), (1, 2)])
def test_fsdp_resumes_on_another_world_size(tmp_path, first, second):
    ref = tmp_path / "ref"
    run(ref, first, 64 * 12)
    reference = dict(losses(ref))

    elastic = tmp_path / "elastic"
    run(elastic, first, 64 * 12)
    (elastic / "checkpoints" / "step_00000012").rename(elastic / "checkpoints" / "unused")  # keep step 6 only
    (elastic / "checkpoints" / "latest").write_text("step_00000006")
    results = run(elastic, second, 64 * 12)
    assert any(f"world size changed {first} -> {second}" in err for _, err in results)
    resumed = dict(losses(elastic))
    assert sorted(resumed) == list(range(1, 13))
    for step in range(7, 13):  # same global batch, same data, same masks: only reduction order differs
        assert resumed[step] == pytest.approx(reference[step], rel=1e-4, abs=1e-4), step


def test_deepspeed_refuses_another_world_size_with_one_line(tmp_path):
    over = ["parallel.backend=deepspeed", "parallel.zero_stage=2", "train.samples=384", "checkpoint.every_steps=3"]
    for rc, err in finish(launch_ranks(tmp_path, 2, over)):
        assert rc == 0, err[-3000:]
    (rc, err), = finish(launch_ranks(tmp_path, 1, [*over, "train.samples=640"]))
    assert rc == 2
    assert "same world size" in err and "relaunch with 2 ranks" in err
