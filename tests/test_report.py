"""`flip-scale report` over real tiny runs differing in mask ratio, one of them still in progress."""
import json
import os
import re
import signal
import subprocess

import pytest
from PIL import Image, ImageStat

from flip_scale.config import load_recipe
from flip_scale.data.synthetic import write_synthetic_zeroshot
from flip_scale.eval.cli import main_eval
from flip_scale.report.cli import main_report, make_report
from flip_scale.report.grouping import panels, varying_axes
from flip_scale.report.paper import TABLE_8
from flip_scale.distributed.env import cleanup
from flip_scale.train.preemption import Preempted
from flip_scale.train.trainer import Trainer, run_training

from conftest import ROOT, TINY, cli

MASKS = (0.0, 0.5, 0.75)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_runs")
    # 10 steps of 64 each, logged every 2: five points per curve, a few seconds per run.
    common = ["train.samples=640", "train.log_every_steps=2", "checkpoint.every_steps=0"]
    dirs = []
    for mask in MASKS:
        out = root / f"mask{int(mask * 100)}"
        run_training(load_recipe(TINY, [f"train.out_dir={out}", f"model.mask_ratio={mask}"] + common))
        dirs.append(out)
    # The real evaluator on a small held-out synthetic set writes RUN/eval/<dataset>.json.
    zs = write_synthetic_zeroshot(str(root / "zs"), 96, image_size=32)
    for out in dirs:
        assert main_eval([str(out), "--zeroshot", zs, "--no-progress"]) == 0
    live = root / "live"
    cfg = load_recipe(TINY, [f"train.out_dir={live}", "model.mask_ratio=0.5", "train.global_batch_size=32",
                             "train.samples=640", "train.log_every_steps=2", "checkpoint.every_steps=0"])

    def stop_at_step_10(msg):  # a real in-progress run: preempted (SIGUSR1) halfway, no summary
        if msg.startswith("step 10/"):
            os.kill(os.getpid(), signal.SIGUSR1)

    trainer = Trainer(cfg, log=stop_at_step_10)
    try:
        trainer.setup()
        with pytest.raises(Preempted):
            trainer.train()
    finally:
        cleanup()
        trainer.close()
    assert not (live / "summary.json").exists()
    return dirs + [live]


def _png_ok(path, min_w=400, min_h=300):
    with Image.open(path) as im:
        assert im.format == "PNG" and im.width >= min_w and im.height >= min_h
        stat = ImageStat.Stat(im.convert("L"))
        assert stat.stddev[0] > 5  # not a blank canvas: there are lines and text on it
        assert stat.extrema[0][0] < 100  # something dark was drawn


def test_grouping_names_what_differs(runs):
    from flip_scale.report.runs import load_runs

    loaded = load_runs(runs)
    assert varying_axes(loaded) == ["mask", "batch"]
    groups = panels(loaded)
    assert [p.title for p in groups] == ["mask ratio", "batch size"]
    # Controlled comparisons: the three batch-64 runs differ only in mask ratio; the two 50% runs
    # only in batch. Each legend names its panel's axis alone.
    assert sorted(r.mask_ratio for r in groups[0].runs) == [0.0, 0.5, 0.75] and groups[0].label_axes == ["mask"]
    assert sorted(r.name for r in groups[1].runs) == ["live", "mask50"] and groups[1].label_axes == ["batch"]
    live = next(r for r in loaded if r.name == "live")
    # The signal came while step 10 was logged; ranks agree on a stop at the next log step (12).
    assert not live.finished and live.samples_seen == 384 and live.world_size == 1


def test_cli_report_plots_tables_and_html(runs, tmp_path):
    out = tmp_path / "report"
    r = subprocess.run(cli("report", *runs, "--output", out), capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    pngs = sorted(out.glob("*.png"))
    names = {p.name for p in pngs}
    for metric in ("zeroshot", "loss"):
        for x in ("wall", "samples", "gpu_hours", "flops"):
            assert f"{metric}_vs_{x}.png" in names
    for p in pngs:
        _png_ok(p)
    # Two panels (mask ratio, batch size) side by side: wider than tall.
    with Image.open(out / "loss_vs_samples.png") as im:
        assert im.width > 1.5 * im.height

    md = (out / "report.md").read_text()
    runs_section = md.split("## Runs")[1].split("## Table 8")[0]
    rows = [line for line in runs_section.splitlines() if line.startswith("| ") and not line.startswith("| run")]
    assert [row.split(" | ")[0].strip("| ") for row in rows] == ["mask0", "mask50", "mask75", "live"]
    masks = [row.split(" | ")[3] for row in rows]
    assert masks == ["0%", "50%", "75%", "50%"]
    assert "running (60%)" in rows[3] and all("done" in row for row in rows[:3])  # stopped at step 12 of 20
    # Our zero-shot accuracy from eval/*.json is in the table (percent, 1 decimal).
    for row, run in zip(rows[:3], runs[:3]):
        acc = json.loads((run / "eval" / "zs.json").read_text())["acc1"]
        assert f"zs {100 * acc:.1f}" in row
    table8 = md.split("## Table 8")[1].split("## Figures")[0]
    t8_rows = [line for line in table8.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    assert len(t8_rows) == len(TABLE_8) + 4  # the paper's six cases, then our four runs
    assert t8_rows[0].startswith("| baseline | vit_l16 | LAION-400M | 12.8B") and "74.3 / -" in t8_rows[0]
    assert "78.8 / -" in t8_rows[5]

    index = (out / "index.html").read_text()
    srcs = re.findall(r'<img src="([^"]+)"', index)
    assert sorted(srcs) == sorted(names)
    assert "<table" in index and "mask75" in index
    assert "mask0" in r.stdout  # the runs table goes to stdout too


def test_flops_and_gpu_hours_axes(runs):
    result = make_report(runs[:3], str(runs[0].parent / "rep2"))
    loaded = result["runs"]
    by_mask = {r.mask_ratio: r for r in loaded}
    # Same samples, fewer FLOPs per sample at higher masking: FLIP's saving shows on the x axis.
    assert by_mask[0.0].train_flops_per_sample > by_mask[0.5].train_flops_per_sample > by_mask[0.75].train_flops_per_sample
    for r in loaded:
        hours = r.gpu_hours()
        assert all(b >= a for a, b in zip(hours, hours[1:])) and hours[0] > 0
        assert r.total_gpu_hours == pytest.approx(r.summary["wall_time_s"] / 3600)


def test_missing_run_dir_is_one_line(tmp_path, capsys):
    assert main_report([str(tmp_path / "nope"), "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "not a run directory" in err and len(err.strip().splitlines()) == 1


def test_missing_matplotlib_is_one_line_naming_the_extra(runs, tmp_path, capsys, monkeypatch):
    import sys

    for name in ("matplotlib", "matplotlib.pyplot"):
        monkeypatch.setitem(sys.modules, name, None)  # what `import matplotlib` meets when not installed
    assert main_report([str(r) for r in runs] + ["--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "'matplotlib' is not installed" in err and "flip-scale[report]" in err and len(err.strip().splitlines()) == 1
