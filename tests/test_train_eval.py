"""In-training zero-shot evaluation: logged against samples seen, kept in summary.json and eval/."""
import json

import pytest

from flip_scale.config import load_recipe
from flip_scale.data.synthetic import write_synthetic_zeroshot
from flip_scale.train.trainer import run_training

from conftest import TINY

pytestmark = pytest.mark.slow


def test_zeroshot_every_k_steps_is_logged_with_samples_seen(tmp_path):
    zs = tmp_path / "zs"
    write_synthetic_zeroshot(str(zs), 96, image_size=32)
    run = tmp_path / "run"
    cfg = load_recipe(TINY, [f"train.out_dir={run}", "train.samples=1280", f"eval.zeroshot={zs}",
                             "eval.every_steps=10", "checkpoint.every_steps=0"])
    summary = run_training(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if any(k.startswith("eval/") for k in r)]
    assert [r["samples_seen"] for r in evals] == [640, 1280]
    # one record per logged step: the eval keys ride on the step's training record
    assert all("loss" in r and "lr" in r for r in records)
    assert len({r["step"] for r in records}) == len(records)
    key = next(k for k in evals[0] if k.endswith("/acc1"))
    assert 0.0 <= evals[-1][key] <= 1.0
    (name, result), = summary["evals"].items()
    assert result["n"] == 96 and result["samples_seen"] == 1280
    assert json.loads((run / "eval" / f"{name}.json").read_text())["acc1"] == result["acc1"]
